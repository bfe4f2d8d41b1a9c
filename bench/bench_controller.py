"""Controller latency: lease and report round trips, and round turnover, against the real service.

Starts ``adaseg serve`` on a fresh ``file://`` store (the same launcher the
tests use), then for each worker count W runs one exploration run with
population W: W asyncio workers, one keep-alive connection each, lease,
"train" for up to ``--train-ms`` milliseconds and report, until the run is
finished. Measured on the client, so every figure includes HTTP and JSON:

* lease / report round trip, p50 and p99 (lease: only leases that found work
  at once; leases the service held until their round completed are counted
  apart, as are ``wait`` answers);
* round turnover: from sending the report that completes round t to the
  answer of the first lease of round t+1 (rewards, the Eq. 6 update, the draw
  of round t+1 and the state write happen in between), and the same from the
  answer to that report (without the time the report queued behind others);
* baselines, in the same run: ``GET /healthz`` round trip under the same
  concurrency (the HTTP stack), and one durable ``FileStore.put`` of a 50 kB
  object (what every state change waits for before it is answered); the
  machine is shared, so absolute figures move with its load, ratios less;
* the service's CPU time per request (from /proc), to tell service cost from
  waiting;
* ``without_http``: the same round turnover measured on the run repository
  directly (one thread, no HTTP, no other workers): the controller's own cost.

``--client raw`` (default) speaks HTTP/1.1 over asyncio streams: with 256
workers on 2 cores, httpx's own CPU cost (about 1 ms a request) would be what
is measured. ``--client httpx`` uses one ``httpx.AsyncClient`` per worker.

    .venv/bin/python bench/bench_controller.py                # W = 8 and 256
    .venv/bin/python bench/bench_controller.py --workers 8 --rounds 10 --client httpx
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fixtures

from controller_service.contract.store import FileStore  # noqa: E402
from controller_service.runs import MemberReport, RunRepository, RunSpec  # noqa: E402
from pipelines.local import start_controller  # noqa: E402

LOSS_NAMES = ["semantic", "center", "offset"]
BEST_WEIGHTS = {"semantic": 1.0, "center": 0.5, "offset": 2.0}


# -- two clients with the same small interface ----------------------------------------------------


class Http(Protocol):
    async def call(self, method: str, path: str, body: Any = None) -> tuple[Any, float]:
        """(JSON answer, seconds the service held the request: Server-Timing hold)."""

    async def close(self) -> None: ...


def _held(timing: str | None) -> float:
    return float(timing.split("dur=", 1)[1]) / 1000.0 if timing else 0.0


class RawHttp:
    """HTTP/1.1 keep-alive over one asyncio stream: a few microseconds of client CPU."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def call(self, method: str, path: str, body: Any = None) -> tuple[Any, float]:
        payload = json.dumps(body).encode() if body is not None else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        for _ in range(2):  # the service closes idle keep-alive connections: reconnect once
            if self._streams is None:
                self._streams = await asyncio.open_connection(self.host, self.port)
            reader, writer = self._streams
            try:
                writer.write(head.encode() + payload)
                status_line = await reader.readline()
            except ConnectionError:
                status_line = b""
            if status_line:
                break
            writer.close()
            self._streams = None
        status = int(status_line.split()[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, value = line.decode().split(":", 1)
            headers[name.strip().lower()] = value.strip()
        data = await reader.readexactly(int(headers.get("content-length", "0")))
        if status >= 400:
            raise RuntimeError(f"{method} {path}: {status} {data[:300]!r}")
        return json.loads(data), _held(headers.get("server-timing"))

    async def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()


class HttpxHttp:
    """One ``httpx.AsyncClient`` with one connection (its shared pool slows down with
    hundreds of connections)."""

    def __init__(self, url: str) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self._http = httpx.AsyncClient(base_url=url, limits=limits, timeout=300)

    async def call(self, method: str, path: str, body: Any = None) -> tuple[Any, float]:
        response = await self._http.request(method, path, json=body)
        response.raise_for_status()
        return response.json(), _held(response.headers.get("server-timing"))

    async def close(self) -> None:
        await self._http.aclose()


CLIENTS = {"raw": RawHttp, "httpx": HttpxHttp}


# -- workers ----------------------------------------------------------------------------------


@dataclass
class Samples:
    lease: list[float] = field(default_factory=list)
    report: list[float] = field(default_factory=list)
    waits: int = 0
    held: int = 0  # leases answered only after their round completed
    completing_report_sent: dict[int, float] = field(default_factory=dict)  # round -> t
    completing_report_answered: dict[int, float] = field(default_factory=dict)  # round -> t
    first_lease_answered: dict[int, float] = field(default_factory=dict)  # round -> t

    def turnovers(self, since: dict[int, float]) -> list[float]:
        return [
            self.first_lease_answered[t + 1] - moment
            for t, moment in since.items()
            if t + 1 in self.first_lease_answered
        ]


def percentiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values) * 1000.0
    return {
        "n": len(values),
        "p50_ms": round(float(np.percentile(array, 50)), 2),
        "p99_ms": round(float(np.percentile(array, 99)), 2),
        "max_ms": round(float(array.max()), 2),
    }


def fake_training(weights: dict[str, float]) -> tuple[dict[str, float], float]:
    """PQ peaks at BEST_WEIGHTS (in log space), so the policy has somewhere to go."""
    losses = {name: 2.0 / (1.0 + w) for name, w in weights.items()}
    distance = sum(np.log(weights[n] / BEST_WEIGHTS[n]) ** 2 for n in BEST_WEIGHTS)
    return losses, float(np.clip(60.0 - 10.0 * distance, 0.0, 100.0))


async def worker(http: Http, run_id: str, name: str, samples: Samples, train_ms: float) -> None:
    while True:
        began = time.perf_counter()
        answer, held = await http.call("POST", f"/v1/runs/{run_id}/leases", {"worker": name})
        answered = time.perf_counter()
        if answer["state"] == "finished":
            return
        if answer["state"] == "wait":
            samples.waits += 1
            await asyncio.sleep(answer["retry_after"])
            continue
        if held == 0.0:
            samples.lease.append(answered - began)
        else:
            samples.held += 1
        assignment = answer["assignment"]
        samples.first_lease_answered.setdefault(assignment["round"], answered)
        await asyncio.sleep(random.uniform(0, train_ms) / 1000.0)
        losses, pq = fake_training(assignment["weights"])
        body = {"losses": losses, "pq": pq, "checkpoint_uri": assignment["checkpoint_uri"]}
        path = f"/v1/runs/{run_id}/assignments/{assignment['id']}/report"
        began = time.perf_counter()
        answer, _ = await http.call("POST", path, body)
        answered = time.perf_counter()
        samples.report.append(answered - began)
        if answer["round_completed"]:
            samples.completing_report_sent[assignment["round"]] = began
            samples.completing_report_answered[assignment["round"]] = answered


async def one_call(make: type, url: str, method: str, path: str, body: Any = None) -> Any:
    """A request on a connection of its own (an idle keep-alive one would have timed out)."""
    http = make(url)
    try:
        return (await http.call(method, path, body))[0]
    finally:
        await http.close()


def repository_turnover(store_dir: Path, workers: int, rounds: int) -> dict[str, Any]:
    """The controller's own round turnover, without HTTP: one thread drives a
    ``RunRepository`` on a file store, and the report that completes each round plus the
    first lease of the next are timed (rewards, Eq. 6, the draw, snapshot and state writes)."""
    repository = RunRepository(FileStore(store_dir))
    spec = RunSpec(loss_names=tuple(LOSS_NAMES), population=workers, rounds=rounds, seed=1)
    run_id = repository.create(spec)["id"]
    completing, first_lease = [], []
    while True:
        leased = []
        while (answer := repository.lease(run_id, f"w{len(leased)}"))["state"] == "assigned":
            leased.append(answer["assignment"])
        if not leased:
            break
        for assignment in leased:
            losses, pq = fake_training(assignment["weights"])
            uri = assignment["checkpoint_uri"]
            report = MemberReport(losses=losses, pq=pq, checkpoint_uri=uri)
            began = time.perf_counter()
            done = repository.report(run_id, assignment["id"], report)["round_completed"]
        completing.append(time.perf_counter() - began)
        began = time.perf_counter()
        if repository.lease(run_id, "w0")["state"] == "assigned":
            first_lease.append(time.perf_counter() - began)
        assert done
    total = [a + b for a, b in zip(completing, first_lease, strict=False)]
    return {
        "completing_report": percentiles(completing),
        "first_lease": percentiles(first_lease),
        "turnover": percentiles(total),
    }


def store_write_baseline(store_dir: Path, size: int = 50_000, count: int = 50) -> list[float]:
    """The durable write every state change waits for: ``FileStore.put`` (temp file, fsync,
    rename, fsync of the directory) of a state-sized object, on the bench's own store disk."""
    store = FileStore(store_dir)
    data = b"x" * size
    latencies = []
    for _ in range(count):
        began = time.perf_counter()
        store.put("bench/baseline.json", data)
        latencies.append(time.perf_counter() - began)
    store.delete("bench/baseline.json")
    return latencies


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def healthz_baseline(make: type, url: str, workers: int, requests_each: int) -> list[float]:
    latencies: list[float] = []

    async def one() -> None:
        http = make(url)
        try:
            for _ in range(requests_each):
                began = time.perf_counter()
                await http.call("GET", "/healthz")
                latencies.append(time.perf_counter() - began)
        finally:
            await http.close()

    await asyncio.gather(*(one() for _ in range(workers)))
    return latencies


async def bench_workers(
    make: type, url: str, workers: int, rounds: int, train_ms: float, pid: int
) -> dict[str, Any]:
    body = {"loss_names": LOSS_NAMES, "population": workers, "rounds": rounds, "seed": 1}
    run_id = (await one_call(make, url, "POST", "/v1/runs", body))["id"]
    samples = Samples()

    async def one(name: str) -> None:
        connection = make(url)
        try:
            await worker(connection, run_id, name, samples, train_ms)
        finally:
            await connection.close()

    cpu_before, began = cpu_seconds(pid), time.perf_counter()
    await asyncio.gather(*(one(f"w{i}") for i in range(workers)))
    elapsed, cpu = time.perf_counter() - began, cpu_seconds(pid) - cpu_before
    rounds_done = await one_call(make, url, "GET", f"/v1/runs/{run_id}/rounds")
    requests = len(samples.lease) + samples.held + samples.waits + len(samples.report)
    return {
        "workers": workers,
        "rounds": rounds,
        "seconds": round(elapsed, 2),
        "lease": percentiles(samples.lease),
        "report": percentiles(samples.report),
        "turnover": percentiles(samples.turnovers(samples.completing_report_sent)),
        "turnover_after_answer": percentiles(samples.turnovers(samples.completing_report_answered)),
        "held_leases": samples.held,
        "waits": samples.waits,
        "invalid_draws": sum(item["invalid_draws"] for item in rounds_done),
        "service_cpu_ms_per_request": round(1000.0 * cpu / requests, 2),
        "service_cpu_share": round(cpu / elapsed, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 256])
    parser.add_argument("--rounds", type=int, default=None, help="default: 30 for W<=8, else 4")
    parser.add_argument(
        "--train-ms",
        type=float,
        default=5.0,
        help="fake training takes uniform(0, this) ms; 5 keeps the service saturated",
    )
    parser.add_argument("--client", choices=sorted(CLIENTS), default="raw")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    make = CLIENTS[args.client]

    with tempfile.TemporaryDirectory(prefix="adaseg-bench-") as tmp:
        store = Path(tmp) / "store"
        store.mkdir()
        began = time.perf_counter()
        controller = start_controller(store.as_uri(), log_path=Path(tmp) / "controller.log")
        results: dict[str, Any] = {
            "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Python "
            f"{platform.python_version()}",
            "client": args.client,
            "ready_s": round(time.perf_counter() - began, 2),
            "load_average_before": os.getloadavg()[0],
        }
        try:
            for workers in args.workers:
                rounds = args.rounds or (30 if workers <= 8 else 4)
                baseline = asyncio.run(healthz_baseline(make, controller.url, workers, 20))
                result = asyncio.run(
                    bench_workers(
                        make, controller.url, workers, rounds, args.train_ms, controller.proc.pid
                    )
                )
                result["healthz"] = percentiles(baseline)
                result["store_write"] = percentiles(store_write_baseline(store))
                result["without_http"] = repository_turnover(
                    Path(tmp) / f"repository-{workers}", workers, rounds
                )
                for kind in ("lease", "report"):
                    for base in ("healthz", "store_write"):
                        result[f"{kind}_p50_vs_{base}"] = round(
                            result[kind]["p50_ms"] / result[base]["p50_ms"], 1
                        )
                results[f"w{workers}"] = result
                print(json.dumps(result), flush=True)
        finally:
            controller.stop()
        results["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
