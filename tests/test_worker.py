"""Workers against the real controller: whole tiny runs, kills, SIGTERM, bad input.

Every worker is a real ``python -m controller_service worker`` process; the
controller is the real service (tests/fixtures/controller.py), the S3 store moto's server
(behind a proxy that stages outages, tests/fixtures/tcp_proxy.py).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from controller_service.contract.client import ControllerClient
from controller_service.contract.keys import report_metrics_key
from controller_service.contract.store import open_store
from controller_service.runs.views import schedule_position
from tests.fixtures.controller import ControllerProcess, start_controller
from trainer_image.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

LOSSES = ["semantic", "center", "offset"]
WORKER_TIMEOUT = 180.0


def start_worker(
    controller: ControllerProcess,
    run_id: str,
    data_dir: Path,
    log_path: Path,
    worker_id: str,
    iterations: int = 2,
    env: Mapping[str, str] | None = None,
    extra: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "controller_service", "worker"]
    argv += ["--controller", controller.url, "--run", run_id, "--data", str(data_dir)]
    argv += ["--store", controller.store_uri, "--device", "cpu", "--worker-id", worker_id]
    argv += ["--iterations", str(iterations), "--batch-size", "2", "--proxy-val", "4"]
    argv += ["--log-every", "1", *extra]
    log_file = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        return subprocess.Popen(
            argv, env={**controller.env, **(env or {})}, stdout=log_file, stderr=subprocess.STDOUT
        )
    finally:
        log_file.close()


def wait_for_line(proc: subprocess.Popen[bytes], log_path: Path, text: str) -> None:
    """Block until ``text`` appears in the worker's log (fail if the worker exits first)."""
    deadline = time.monotonic() + WORKER_TIMEOUT
    while time.monotonic() < deadline:
        if text in log_path.read_text(errors="replace"):
            return
        assert proc.poll() is None, f"worker exited before {text!r}:\n{log_path.read_text()}"
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no {text!r} in the worker log after {WORKER_TIMEOUT}s")


def finish(proc: subprocess.Popen[bytes], log_path: Path) -> int:
    try:
        return proc.wait(timeout=WORKER_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"worker did not finish:\n{log_path.read_text()}")


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerProcess]:
    """One controller (file store) for the module's tests: each creates its own run."""
    root = tmp_path_factory.mktemp("worker-controller")
    (root / "store").mkdir()
    process = start_controller((root / "store").as_uri(), log_dir=root)
    yield process
    process.stop()


def check_complete_run(run: dict, store_uri: str, rounds: int, population: int, per_epoch: int):
    """Every round closed with every member trained, reported and checkpointed, and each
    checkpoint holds what the member did (weights, run/round/member, schedule position)."""
    assert run["status"] == "finished", run
    assert [h["round"] for h in run["history"]] == list(range(rounds + 1))
    store = open_store(store_uri)
    assert store.exists(f"runs/{run['id']}/checkpoints/init.pt")
    for record in run["history"]:
        trained = list(record["candidates"])
        assert len(trained) == (1 if record["round"] == 0 else population), record
        for candidate in trained:
            assert candidate["outcome"] == "trained", candidate
            assert 0.0 <= candidate["pq"] <= 100.0
            assert set(candidate["losses"]) == set(LOSSES)
            checkpoint = load_checkpoint(store, candidate["checkpoint_uri"])
            assert (checkpoint.run, checkpoint.round, checkpoint.member) == (
                run["id"],
                record["round"],
                candidate["member"],
            )
            assert checkpoint.weights == pytest.approx(candidate["weights"])
            # round t trains epoch max(t - 1, 0) of a T-epoch schedule (the pseudo epoch
            # at round 1's position): global iterations [e*q, (e+1)*q) of T*q
            epoch, epochs = schedule_position(record["round"], rounds)
            state = checkpoint.trainer_state
            assert state["iteration"] == (epoch + 1) * per_epoch
            assert state["total_iterations"] == epochs * per_epoch == rounds * per_epoch
            key = report_metrics_key(run["id"], record["round"], candidate["member"])
            assert store.get_json(key)["iterations"] == per_epoch


@pytest.mark.parametrize("store_kind", ["file", "s3"])
def test_worker_completes_a_tiny_run(
    store_kind: str, controller_factory, synth_dir: Path, tmp_path: Path, request
) -> None:
    env: dict[str, str] = {}
    if store_kind == "s3":
        env = request.getfixturevalue("s3_env")
        controller = controller_factory(request.getfixturevalue("s3_store_uri"), env=env)
    else:
        controller = request.getfixturevalue("controller")
    client = ControllerClient(controller.url)
    run = client.create_run(LOSSES, population=2, rounds=2, seed=7, lease_seconds=30)
    log_path = tmp_path / "worker.log"
    proc = start_worker(controller, run.id, synth_dir, log_path, "w1", env=env)
    assert finish(proc, log_path) == 0, log_path.read_text()
    log = log_path.read_text()
    # progress and phases are visible in the pod log
    assert "it/s" in log and "img/s" in log and "ETA" in log
    for phase in ("phase=init", "phase=train", "phase=eval", "phase=save", "phase=report"):
        assert phase in log, phase
    final = client.get_run(run.id, history=True).model_dump()
    check_complete_run(final, controller.store_uri, rounds=2, population=2, per_epoch=2)
    # round t+1 starts from the best of round t (the broadcast)
    best_of_1 = final["history"][1]["candidates"][final["history"][1]["best_member"]]
    assert final["history"][2]["init_checkpoint_uri"] == best_of_1["checkpoint_uri"]


def test_killed_workers_leave_the_run_to_finish_through_lease_expiry(
    controller: ControllerProcess, synth_dir: Path, tmp_path: Path
) -> None:
    """Worker A gets SIGTERM in round 0 (exits 143, no report); worker B picks round 0 up
    after the lease expires (init.pt exists: it is loaded, not re-made) and is SIGKILLed
    mid-interval in round 1; worker C finishes the run with every round complete."""
    client = ControllerClient(controller.url)
    run = client.create_run(LOSSES, population=2, rounds=2, seed=3, lease_seconds=3)
    run_id, iterations = run.id, 3
    logs = {name: tmp_path / f"worker-{name}.log" for name in "ABC"}

    worker_a = start_worker(controller, run_id, synth_dir, logs["A"], "A", iterations)
    wait_for_line(worker_a, logs["A"], "[round 0 member 0] it 1/")
    worker_a.send_signal(signal.SIGTERM)
    assert finish(worker_a, logs["A"]) == 143
    log_a = logs["A"].read_text()
    assert "SIGTERM" in log_a and "(stopped)" in log_a  # at the next step, not the end
    assert "phase=eval" not in log_a and "phase=report" not in log_a

    worker_b = start_worker(controller, run_id, synth_dir, logs["B"], "B", iterations)
    wait_for_line(worker_b, logs["B"], "[round 1 member 0] it 1/")
    worker_b.kill()
    worker_b.wait(timeout=10)
    log_b = logs["B"].read_text()
    assert "[round 0 member 0] phase=load" in log_b  # the existing init.pt, not a new one
    assert "[round 1 member 0] phase=eval" not in log_b  # killed mid-interval

    worker_c = start_worker(controller, run_id, synth_dir, logs["C"], "C", iterations)
    assert finish(worker_c, logs["C"]) == 0, logs["C"].read_text()
    final = client.get_run(run_id, history=True).model_dump()
    check_complete_run(final, controller.store_uri, rounds=2, population=2, per_epoch=iterations)
    round0 = final["history"][0]["candidates"][0]
    assert (round0["worker"], round0["attempts"]) == ("B", 2)
    round1 = {c["member"]: c for c in final["history"][1]["candidates"]}
    assert (round1[0]["worker"], round1[0]["attempts"]) == ("C", 2)


def prometheus_value(text: str, name: str) -> float:
    """The value of an unlabelled series in Prometheus text."""
    (line,) = [line for line in text.splitlines() if line.startswith(f"{name} ")]
    return float(line.split()[1])


def test_heartbeats_keep_a_lease_shorter_than_the_interval(
    controller_factory, synth_dir: Path, tmp_path: Path
) -> None:
    """Leases of 1 s (the shortest allowed), longer intervals: the heartbeat thread extends
    each lease, so no
    member is issued twice. Two workers, because the controller re-issues an expired lease
    only when asked: while A trains round 0, B keeps asking (retry_after is the time left on
    A's lease) and would be given A's member the moment its lease lapsed."""
    import httpx

    controller = controller_factory()  # its own: /metrics counts every run of the process
    client = ControllerClient(controller.url)
    lease, iterations = 1.0, 80  # 4-80 it/s on the machines seen: 1 s and more
    run = client.create_run(LOSSES, population=2, rounds=1, seed=2, lease_seconds=lease)
    logs = {name: tmp_path / f"worker-{name}.log" for name in "AB"}
    workers = {
        name: start_worker(controller, run.id, synth_dir, log, name, iterations)
        for name, log in logs.items()
    }
    for name, proc in workers.items():
        assert finish(proc, logs[name]) == 0, logs[name].read_text()
    final = client.get_run(run.id, history=True).model_dump()
    check_complete_run(final, controller.store_uri, rounds=1, population=2, per_epoch=iterations)
    members = [c for record in final["history"] for c in record["candidates"]]
    assert [c["attempts"] for c in members] == [1, 1, 1]
    # an interval that outlived its lease was kept only by heartbeats (the fastest member may
    # finish within one lease on a fast machine, so the claim is made of the longest)
    store = open_store(controller.store_uri)
    seconds = [
        store.get_json(report_metrics_key(run.id, r["round"], c["member"]))["train_seconds"]
        for r in final["history"]
        for c in r["candidates"]
    ]
    assert max(seconds) > lease
    metrics = httpx.get(f"{controller.url}/metrics").text
    assert prometheus_value(metrics, "adaseg_leases_expired_total") == 0.0
    assert prometheus_value(metrics, "adaseg_leases_issued_total") == 3.0


def run_cli(argv: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from controller_service.cli import main

    code = main(argv)
    out, err = capfd.readouterr()
    return code, out + err


def test_worker_errors_name_what_is_wrong(
    controller: ControllerProcess, synth_dir: Path, tmp_path: Path, capfd
) -> None:
    common = ["--store", controller.store_uri, "--device", "cpu"]
    missing = tmp_path / "no-such-data"
    code, text = run_cli(
        ["worker", "--controller", controller.url, "--run", "x", "--data", str(missing), *common],
        capfd,
    )
    assert code == 2 and f"data directory {missing} does not exist" in text

    code, text = run_cli(
        ["worker", "--controller", controller.url, "--run", "nope", "--data", str(synth_dir)]
        + common,
        capfd,
    )
    assert code == 1 and "run nope not found" in text

    code, text = run_cli(
        ["worker", "--controller", controller.url, "--run", "x", "--data", str(synth_dir)]
        + [*common, "--proxy-val", "1.0"],
        capfd,
    )
    assert code == 2 and "--proxy-val '1.0' is neither a fraction in (0, 1)" in text


def test_real_data_that_cannot_be_batched_fails_before_a_lease(
    controller: ControllerProcess, coco_sample_dir: Path, tmp_path: Path, capfd
) -> None:
    """Real COCO (mixed image sizes) with --batch-size 2 and no --crop-size: exit 2 with the
    flags to change, no traceback, and the member still pending, not leased and left to
    expire. The detectron2 COCO layout is read with the default --split train."""
    from tests.fixtures.data import real_sample_layout

    root = real_sample_layout(coco_sample_dir, tmp_path / "coco", "coco-detectron2", repeat=2)
    run = ControllerClient(controller.url).create_run(LOSSES, population=2, rounds=1)
    argv = ["worker", "--controller", controller.url, "--run", run.id, "--data", str(root)]
    argv += ["--store", controller.store_uri, "--device", "cpu", "--proxy-val", "1"]
    code, text = run_cli([*argv, "--batch-size", "2"], capfd)
    assert code == 2, text
    assert "images differ in size" in text and "change --batch-size or --crop-size" in text
    assert "Traceback" not in text
    current = ControllerClient(controller.url).get_run(run.id, history=True).model_dump()["current"]
    assert current["members"] == {"pending": 1, "leased": 0, "done": 0, "failed": 0}


def test_unreachable_controller_is_an_error_after_retries(synth_dir: Path, tmp_path, capfd):
    from tests.fixtures.net import free_port

    url = f"http://127.0.0.1:{free_port()}"
    argv = ["worker", "--controller", url, "--run", "r", "--data", str(synth_dir)]
    argv += ["--store", tmp_path.as_uri(), "--device", "cpu"]
    code, text = run_cli([*argv, "--store-retry-seconds", "0"], capfd)
    assert code == 1
    assert url in text and "failed after 6 attempts" in text  # the client's quick retries
    # with a retry window (the outage a worker rides out), it keeps trying that long
    code, text = run_cli([*argv, "--store-retry-seconds", "2"], capfd)
    assert code == 1 and re.search(r"failed after ([3-9]|\d\d) attempts", text), text


def test_a_member_whose_loss_goes_non_finite_is_reported_as_diverged(
    controller: ControllerProcess, synth_dir: Path
) -> None:
    """In-process worker with an absurd learning rate: the first step blows the weights up,
    the second loss is non-finite, and the controller hears "diverged", not silence."""
    from trainer_image.engine.config import TrainConfig
    from trainer_image.jobs.ending import Ending
    from trainer_image.jobs.member import Worker, WorkerOptions
    from trainer_image.jobs.session import DataOptions

    client = ControllerClient(controller.url)
    run = client.create_run(LOSSES, population=2, rounds=1, seed=1)
    options = WorkerOptions(
        run=run.id,
        data=DataOptions(synth_dir, batch_size=2, proxy_val=4),
        worker_id="w",
        iterations=3,
        train=TrainConfig(lr=1e30, log_every=0),
        max_assignments=1,
    )
    assert Worker(client, open_store(controller.store_uri), options).run() is Ending.FINISHED
    record = client.get_run(run.id, history=True).model_dump()
    candidate = record["history"][0]["candidates"][0]
    assert candidate["outcome"] == "diverged" and "non-finite loss" in candidate["reason"]
    assert candidate["checkpoint_uri"] is None
    assert record["status"] == "failed"  # the pseudo epoch cannot diverge and go on


class ShiftedOracle:
    """Predicts each image's ground truth shifted by 3 pixels: PQ strictly between 0 and 100."""

    def __init__(self, split) -> None:
        self.truth = {self.key(image(split, r)): r for r in split.records}
        self.split = split

    @staticmethod
    def key(picture) -> float:
        return round(float(picture.sum()), 1)

    def predict(self, images):
        import numpy as np
        import torch

        from trainer_image.models import PanopticPrediction

        predictions = []
        for picture in images:
            record = self.truth[self.key(picture)]
            shifted = np.roll(self.split.load_panoptic(record), shift=3, axis=1)
            listed = [{"id": s.id, "category_id": s.category_id} for s in record.segments]
            predictions.append(PanopticPrediction(torch.from_numpy(shifted), listed))
        return predictions


def image(split, record):
    from trainer_image.data.loader import normalize_image

    return normalize_image(split.load_image(record))


def test_cached_evaluation_equals_pq_on_the_raw_ground_truth(synth_val) -> None:
    """The cache's compact index maps give exactly the PQ of the original ids, batched or not."""
    from trainer_image.eval.evaluate import GroundTruthCache, evaluate_pq, summarize
    from trainer_image.eval.pq import PQEvaluator

    oracle = ShiftedOracle(synth_val)
    assert len(oracle.truth) == len(synth_val)  # every image has its own key
    reference = PQEvaluator(synth_val.categories)
    for record in synth_val.records:
        prediction = oracle.predict([image(synth_val, record)])[0]
        reference.add(
            prediction.ids, prediction.segments, synth_val.load_panoptic(record), record.segments
        )
    expected = summarize(reference.result())
    assert 0.0 < expected["pq"] < 100.0
    cache = GroundTruthCache(synth_val)
    assert evaluate_pq(oracle, synth_val, batch_size=3, cache=cache) == pytest.approx(expected)
    assert evaluate_pq(oracle, synth_val, batch_size=1, cache=cache) == pytest.approx(expected)


def test_a_member_whose_start_checkpoint_is_truncated_is_reported_failed(
    controller_factory, synth_dir: Path, tmp_path: Path
) -> None:
    """The common initial model ``init.pt`` is truncated, so the pseudo epoch cannot be
    trained: the worker reports ``failed`` with the reason each time it is given the member
    (instead of dying and leaving the lease to expire), and after 3 failures in a row exits
    with code 3. The controller counts the attempts (``max_attempts`` 3) and fails the run
    with the reason.

    """
    controller = controller_factory()
    client = ControllerClient(controller.url)
    run = client.create_run(LOSSES, population=2, rounds=1, seed=4, lease_seconds=30)
    store = open_store(controller.store_uri)
    from trainer_image.engine.checkpoint import Checkpoint, encode_checkpoint

    payload = encode_checkpoint(Checkpoint("panoptic_deeplab", {}, {}))
    store.put(f"runs/{run.id}/checkpoints/init.pt", payload[:-10])
    log_path = tmp_path / "worker.log"
    proc = start_worker(controller, run.id, synth_dir, log_path, "w1")
    assert finish(proc, log_path) == 3, log_path.read_text()
    log = log_path.read_text()
    assert log.count("phase=report failed: CheckpointError") == 3, log
    assert "3 assignments failed in a row" in log
    final = client.get_run(run.id, history=True).model_dump()
    assert final["status"] == "failed", final
    assert "truncated" in json.dumps(final)


def test_a_store_outage_longer_than_the_http_retries_loses_no_interval(
    controller_factory, s3_env, s3_store_uri, s3_proxy, synth_dir: Path, tmp_path: Path
) -> None:
    """The worker reaches S3 through a proxy that goes down while it trains round 0 and stays
    down for OUTAGE seconds, longer than the S3 client's own retries (about 7 s) and longer
    than the lease: the checkpoint upload retries until the store is back, the heartbeat
    thread keeps the lease, and the interval is reported once, never re-issued. The
    controller talks to S3 directly (it rides out outages on its own)."""
    import httpx

    outage = 15.0
    controller = controller_factory(s3_store_uri, env=s3_env)
    client = ControllerClient(controller.url)
    run = client.create_run(LOSSES, population=2, rounds=1, seed=6, lease_seconds=10)
    log_path = tmp_path / "worker.log"
    proc = start_worker(
        controller,
        run.id,
        synth_dir,
        log_path,
        "w1",
        env={**s3_env, "ADASEG_S3_ENDPOINT": s3_proxy.endpoint},
        extra=["--store-retry-seconds", "120"],
    )
    wait_for_line(proc, log_path, "[round 0 member 0] it 1/")  # init.pt is in the store
    s3_proxy.down()
    down_at = time.monotonic()
    try:
        wait_for_line(proc, log_path, "store put of")  # the upload met the outage
        time.sleep(max(0.0, down_at + outage - time.monotonic()))
        assert "[round 0 member 0] phase=save" not in log_path.read_text()
    finally:
        s3_proxy.up()
    assert finish(proc, log_path) == 0, log_path.read_text()
    log = log_path.read_text()
    assert "gave up" not in log and "phase=report failed" not in log
    retries = [line for line in log.splitlines() if "store put of" in line]
    assert len(retries) >= 2, retries  # more than the S3 client's own retries were needed
    final = client.get_run(run.id, history=True).model_dump()
    check_complete_run(final, s3_store_uri, rounds=1, population=2, per_epoch=2)
    members = [c for record in final["history"] for c in record["candidates"]]
    assert [c["attempts"] for c in members] == [1, 1, 1]
    metrics = httpx.get(f"{controller.url}/metrics").text
    assert prometheus_value(metrics, "adaseg_leases_expired_total") == 0.0
