"""The controller never wedges: extreme input, hung store calls, SIGTERM, full disks, two
controllers on one store. Real service processes where a process is the point; the real app
in-process (FastAPI's TestClient) where the operating system has to be made to fail.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from controller_service.api.app import create_app
from controller_service.api.settings import Settings
from controller_service.contract.client import ControllerClient
from controller_service.contract.keys import run_state_key
from controller_service.contract.store import MIN_FREE_BYTES, FileStore
from tests.fixtures.controller import ControllerProcess, start_controller

NAMES = ["semantic", "center", "offset"]
LOSSES = {"semantic": 1.2, "center": 0.03, "offset": 4.0}


def test_the_wedge_reproduction_is_refused_and_the_service_keeps_answering(shared_controller):
    """Issue 10's reproduction: sigma 1e308 (absolute), lease, report ordinary losses. The
    run is now refused at creation (422, naming sigma); the largest sigma allowed and the
    most extreme losses allowed run a round without a hang, and every endpoint answers."""
    url = shared_controller.url
    refused = httpx.post(
        f"{url}/v1/runs", json={"loss_names": NAMES, "sigma": 1e308, "sigma_mode": "absolute"}
    )
    assert refused.status_code == 422 and "sigma" in refused.text
    client = ControllerClient(url, timeout=30)
    run = client.create_run(NAMES, population=2, rounds=2, sigma=1000.0, sigma_mode="absolute")
    zero = client.lease(run.id, "w").assignment
    extreme = {"semantic": 1e-30, "center": 1e30, "offset": 1.0}
    assert client.report(run.id, zero.id, extreme, 10.0, zero.checkpoint_uri).state == "accepted"
    after = client.get_run(run.id)
    assert after.status in ("running", "failed")
    if after.status == "running":  # the round was drawn: every weight is a usable number
        for lease in client.open_round(run.id).weights:
            assert all(0 < w <= 1e12 for w in lease.values())
    for path in ("/healthz", "/readyz", "/metrics", "/v1/runs", f"/v1/runs/{run.id}"):
        assert httpx.get(url + path, timeout=5).status_code == 200, path


@pytest.fixture
def fifo_controller(tmp_path: Path) -> ControllerProcess:
    """A controller whose store holds a run whose state file is a FIFO: reading it blocks
    for ever, as a hung disk or NFS mount would."""
    store = tmp_path / "store"
    (store / "runs" / "hung").mkdir(parents=True)
    os.mkfifo(store / "runs" / "hung" / "state.json")
    env = {"ADASEG_STUCK_SECONDS": "1", "ADASEG_SHUTDOWN_SECONDS": "1"}
    controller = start_controller(store.as_uri(), env=env, log_dir=tmp_path)
    yield controller
    controller.kill()


def test_liveness_fails_on_a_hung_store_call_and_sigterm_still_stops_the_process(
    fifo_controller,
):
    url = fifo_controller.url
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    hung = threading.Thread(
        target=lambda: httpx.get(url + "/v1/runs/hung", timeout=30), daemon=True
    )
    hung.start()
    time.sleep(2.0)  # the read of runs/hung has held its run for longer than 1 s
    health = httpx.get(url + "/healthz", timeout=10)
    assert health.status_code == 503
    assert "run hung: lock held for" in health.json()["detail"]
    # other runs and the probes are still served while one run hangs
    assert httpx.get(url + "/readyz", timeout=5).status_code == 200
    assert ControllerClient(url).create_run(NAMES, population=2, rounds=1).status == "running"

    began = time.monotonic()
    fifo_controller.proc.send_signal(signal.SIGTERM)
    fifo_controller.proc.wait(timeout=20)
    # 1 s of graceful shutdown, then the hard exit at most 5 s later, whatever the thread does
    assert time.monotonic() - began < 8.0


def test_a_second_controller_on_the_same_store_refuses_to_start(controller, tmp_path):
    argv = [sys.executable, "-m", "controller_service", "serve", "--store", controller.store_uri]
    second = subprocess.run(
        [*argv, "--port", "1"], capture_output=True, text=True, timeout=60, env=controller.env
    )
    assert second.returncode == 2
    assert f"in use by controller pid {controller.proc.pid}" in second.stderr
    assert httpx.get(controller.url + "/readyz").status_code == 200  # the first is unharmed
    # once the first is gone (kill -9 included), the store is free at once
    controller.kill()
    restarted = start_controller(controller.store_uri, log_dir=tmp_path)
    try:
        assert httpx.get(restarted.url + "/readyz").status_code == 200
    finally:
        restarted.stop()


def test_a_second_controller_on_the_same_s3_store_refuses_to_start(
    controller_factory, s3_store_uri, s3_env
):
    env = {**s3_env, "ADASEG_WRITER_LEASE_SECONDS": "1"}
    first = controller_factory(s3_store_uri, env=env)
    argv = [sys.executable, "-m", "controller_service", "serve", "--store", s3_store_uri]
    second = subprocess.run(
        [*argv, "--port", "1"], capture_output=True, text=True, timeout=60, env=first.env
    )
    assert second.returncode == 2 and "renews its writer lease" in second.stderr
    assert httpx.get(first.url + "/readyz").status_code == 200


def app_client(tmp_path: Path, **settings: object) -> TestClient:
    store = FileStore(tmp_path / "store")
    app = create_app(Settings(store=store.uri, **settings), store=store)
    return TestClient(app)


def test_a_full_disk_is_not_ready_and_a_write_on_enospc_answers_503(tmp_path, monkeypatch):
    with app_client(tmp_path) as client:
        run = client.post("/v1/runs", json={"loss_names": NAMES, "population": 2}).json()["id"]
        assert client.get("/readyz").status_code == 200
        real_statvfs = os.statvfs

        class Full:
            def __init__(self, stats: os.statvfs_result) -> None:
                self.f_frsize, self.f_bavail = (
                    stats.f_frsize,
                    (MIN_FREE_BYTES // 2) // stats.f_frsize,
                )

        monkeypatch.setattr(os, "statvfs", lambda path: Full(real_statvfs(path)))
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503 and "MiB free" in not_ready.json()["detail"]
        monkeypatch.undo()

        def no_space(src: str, dst: str) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        store = FileStore(tmp_path / "store")
        before = {key: store.get(key) for key in store.list("runs/")}
        monkeypatch.setattr(os, "replace", no_space)
        refused = client.post(f"/v1/runs/{run}/leases", json={"worker": "w"})
        assert refused.status_code == 503 and "ENOSPC" in refused.json()["detail"]
        monkeypatch.undo()
        assert {key: store.get(key) for key in store.list("runs/")} == before
        # nothing was issued: the same assignment comes out once the disk has room
        answer = client.post(f"/v1/runs/{run}/leases", json={"worker": "w"}).json()
        assert answer["assignment"]["id"] == "r000-m00-a1"
        assert client.get("/healthz").json() == {"status": "ok"}


def test_report_metrics_are_bounded_and_kept_out_of_the_run_state(tmp_path):
    with app_client(tmp_path) as client:
        run = client.post("/v1/runs", json={"loss_names": NAMES, "population": 2}).json()["id"]
        zero = client.post(f"/v1/runs/{run}/leases", json={"worker": "w"}).json()["assignment"]
        report = {"losses": LOSSES, "pq": 5.0, "checkpoint_uri": zero["checkpoint_uri"]}
        big = client.post(
            f"/v1/runs/{run}/assignments/{zero['id']}/report",
            json={**report, "metrics": {"blob": "x" * 70_000}},
        )
        assert big.status_code == 422 and "metrics" in big.text
        metrics = {"images_per_second": 51.5, "note": "y" * 60_000}
        ok = client.post(
            f"/v1/runs/{run}/assignments/{zero['id']}/report", json={**report, "metrics": metrics}
        )
        assert ok.status_code == 200, ok.text
        store = FileStore(tmp_path / "store")
        assert len(store.get(run_state_key(run))) < 60_000  # not in the hot state
        record = client.get(f"/v1/runs/{run}/rounds/0", params={"metrics": "true"}).json()
        assert record["candidates"][0]["metrics"] == metrics
