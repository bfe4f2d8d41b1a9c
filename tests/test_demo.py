"""`adaseg demo --quick` end to end: real processes, real training, numbers from the store."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller_service.contract.client import ControllerClient
from controller_service.contract.store import open_store

TRAINED_ONE = re.compile(r"members done [1-9]")  # the exploration has trained a member
ROW = re.compile(
    r"^(baseline|Ada-Segment-A|Ada-Segment \(transfer)[^\d]*?\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)"
)


def _demo_argv(out: Path) -> list[str]:
    return [sys.executable, "-m", "controller_service", "demo", "--quick", "--out", str(out)]


def _demo(out: Path) -> str:
    result = subprocess.run(_demo_argv(out), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that name ``text`` (the demo's children all do)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


def _interrupt_mid_exploration(out: Path) -> str:
    """Start the demo, press Ctrl-C once the exploration has trained a member, return stdout."""
    # A shell that runs the suite in the background starts it with SIGINT ignored, and
    # Python then never raises KeyboardInterrupt: give the demo a terminal's default.
    proc = subprocess.Popen(
        _demo_argv(out),
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines = []
    deadline = time.monotonic() + 600
    for line in proc.stdout:
        lines.append(line)
        if TRAINED_ONE.search(line) or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    stdout = "".join(lines) + rest
    assert proc.returncode == 130, stdout
    assert "run the same command to resume" in stdout
    return stdout


def _table(stdout: str) -> dict[str, tuple[float, float, float]]:
    rows = {}
    for line in stdout.splitlines():
        match = ROW.match(line)
        if match:
            rows[match.group(1)] = tuple(float(x) for x in match.groups()[1:])
    return rows


@pytest.mark.slow
def test_quick_demo_resumes_after_ctrl_c_and_its_numbers_are_in_the_store(tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    # Ctrl-C mid-exploration stops every process the demo started ...
    first = _interrupt_mid_exploration(out)
    deadline = time.monotonic() + 15
    while _processes_mentioning(str(out)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_mentioning(str(out)) == []
    # ... and the same command resumes the run it created.
    run_id = re.search(r"created run ([0-9a-f]+)", first).group(1)
    stdout = _demo(out)
    assert f"resuming run {run_id}" in stdout
    table = _table(stdout)
    assert set(table) == {"baseline", "Ada-Segment-A", "Ada-Segment (transfer"}, stdout

    tag = re.search(r"adaseg demo (demo-[0-9a-f]+)", stdout).group(1)
    store = open_store((out / "store").as_uri())
    sources = {
        "baseline": f"transfers/{tag}-equal/metrics.json",
        "Ada-Segment-A": f"runs/{run_id}/eval/val-metrics.json",
        "Ada-Segment (transfer": f"transfers/{tag}-ensemble/metrics.json",
    }
    for row, key in sources.items():
        metrics = store.get_json(key)
        printed = table[row]
        assert printed == pytest.approx(
            (metrics["pq"], metrics["pq_th"], metrics["pq_st"]), abs=0.006
        ), row

    # The checkpoints behind those numbers exist and the run really went through its rounds.
    state = json.loads(store.get(f"runs/{run_id}/state.json"))
    assert state["status"] == "finished"
    assert store.exists(f"transfers/{tag}-equal/final.pt")
    assert store.exists(f"transfers/{tag}-ensemble/final.pt")
    assert store.exists(f"runs/{run_id}/checkpoints/init.pt")
    assert len(store.list(f"runs/{run_id}/policy/")) == 2  # --quick: 2 rounds
    assert store.get_json(sources["Ada-Segment-A"])["checkpoint_uri"].startswith(store.uri)
    for name in ("weights_per_round", "pq_per_round", "predictions"):
        png = out / "plots" / tag / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Running it again resumes from the store: nothing is trained twice, same table.
    again = _demo(out)
    assert again.count("already done") == 3 and "exploration already finished" in again
    assert _table(again) == table


@pytest.mark.slow
def test_quick_demo_against_a_running_controller_and_an_s3_store(
    tmp_path: Path, s3_env: dict[str, str], s3_store_uri: str, controller_factory
) -> None:
    """``adaseg demo --controller URL --store s3://...``: the cluster path, with the test's
    S3 server standing in for MinIO; every number and checkpoint lands in the bucket. With
    the second model family (``--model mask_transformer``, ten losses), so the demo's
    every phase is shown to take any registered model."""
    controller = controller_factory(store_uri=s3_store_uri, env=s3_env)
    out = tmp_path / "outputs"
    argv = _demo_argv(out) + ["--controller", controller.url, "--store", s3_store_uri]
    argv += ["--model", "mask_transformer"]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=900, env={**os.environ, **s3_env}
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "controller on" not in result.stdout  # it used ours, started none
    table = _table(result.stdout)
    tag = re.search(r"adaseg demo (demo-[0-9a-f]+)", result.stdout).group(1)
    store = open_store(s3_store_uri)
    metrics = store.get_json(f"transfers/{tag}-ensemble/metrics.json")
    assert table["Ada-Segment (transfer"] == pytest.approx(
        (metrics["pq"], metrics["pq_th"], metrics["pq_st"]), abs=0.006
    )
    assert store.exists(f"transfers/{tag}-equal/final.pt")
    assert not (out / "store").exists()  # nothing went to the default file store
    (run,) = ControllerClient(controller.url).list_runs()
    assert len(run.loss_names) == 10 and run.status == "finished"


def _start_until(out: Path, marker: str) -> tuple[subprocess.Popen, str]:
    """Start the demo and read its output until a line matches ``marker`` (a regex)."""
    proc = subprocess.Popen(
        _demo_argv(out),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = ""
    deadline = time.monotonic() + 600
    for line in proc.stdout:
        seen += line
        if re.search(marker, line) or time.monotonic() > deadline:
            break
    return proc, seen


def _wait_gone(out: Path, seconds: float = 30) -> list[str]:
    deadline = time.monotonic() + seconds
    while _processes_mentioning(str(out)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _processes_mentioning(str(out))


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGHUP])
def test_a_demo_killed_or_hung_up_takes_every_child_with_it(tmp_path: Path, how) -> None:
    """kill -9 (no clean-up code runs) or a closed terminal: the controller and the workers
    die with the demo, so a second demo never finds them driving its run."""
    out = tmp_path / "outputs"
    proc, seen = _start_until(out, TRAINED_ONE.pattern)
    assert TRAINED_ONE.search(seen), seen
    assert len(_processes_mentioning(str(out))) >= 4  # the demo, a controller, 2 workers
    proc.send_signal(how)
    proc.wait(timeout=60)
    assert _wait_gone(out) == []


@pytest.mark.slow
def test_a_second_demo_on_the_same_outputs_refuses_to_run(tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    first, seen = _start_until(out, "created run")
    try:
        assert "created run" in seen, seen
        second = subprocess.run(_demo_argv(out), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"in use by process {first.pid}" in second.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=60)
    assert _wait_gone(out) == []
