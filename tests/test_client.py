"""The Python client against the real service: retries, backoff, and exceptions on 4xx."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from controller_service.contract.client import (
    ClientError,
    Conflict,
    ControllerClient,
    NotFound,
    ServerUnavailable,
)
from controller_service.net import free_port
from pipelines.local import ChildProcesses, ControllerProcess
from pipelines.local import start_controller as launch

NAMES = ["semantic", "center", "offset"]
LOSSES = {"semantic": 1.0, "center": 2.0, "offset": 0.5}


def test_client_retries_until_a_late_service_comes_up(tmp_path: Path):
    port = free_port()
    started: list[ControllerProcess] = []

    def start_late() -> None:  # from a thread that ends: the child must not die with it
        time.sleep(1.0)
        uri, log = (tmp_path / "store").as_uri(), tmp_path / "late.log"
        children = ChildProcesses(die_with_parent=False)
        started.append(launch(uri, port=port, log_path=log, children=children))

    (tmp_path / "store").mkdir()
    thread = threading.Thread(target=start_late)
    thread.start()
    try:
        client = ControllerClient(f"http://127.0.0.1:{port}", retries=12, backoff=0.05)
        began = time.monotonic()
        assert client.list_runs() == []  # connection refused at first, then retried
        assert time.monotonic() - began >= 0.9
    finally:
        thread.join()
        for controller in started:
            controller.stop()


def test_client_gives_up_with_server_unavailable():
    client = ControllerClient(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.01)
    with pytest.raises(ServerUnavailable, match="after 3 attempts"):
        client.get_run("anything")
    with pytest.raises(ServerUnavailable, match="not ready"):
        client.wait_ready(timeout=0.3)


def test_readiness_follows_the_store_and_5xx_is_retried(shared_controller: ControllerProcess):
    store_dir = Path(shared_controller.store_uri.removeprefix("file://"))
    client = ControllerClient(shared_controller.url, retries=1, backoff=0.01)
    client.wait_ready(timeout=5)
    away = store_dir.with_name("store-moved-away")
    store_dir.rename(away)
    try:
        with pytest.raises(ServerUnavailable, match="503"):
            client.wait_ready(timeout=0.5)
    finally:
        away.rename(store_dir)
    client.wait_ready(timeout=5)


def test_4xx_raise_typed_errors_with_the_servers_detail(shared_controller: ControllerProcess):
    client = ControllerClient(shared_controller.url)
    with pytest.raises(NotFound, match="no run 'nope'") as caught:
        client.get_run("nope")
    assert caught.value.status_code == 404
    with pytest.raises(ClientError, match="population") as caught:
        client.create_run(NAMES, population=1)
    assert caught.value.status_code == 422 and not isinstance(caught.value, (NotFound, Conflict))

    run = client.create_run(NAMES, population=2, rounds=1, lease_seconds=1.0).id
    with pytest.raises(Conflict, match="no policy snapshot"):
        client.weights(run, LOSSES, epoch=1, epochs=2)

    lost = client.lease(run, "slow").assignment
    assert client.heartbeat(run, lost.id).state == "leased"
    time.sleep(1.05)  # the lease expires ...
    again = client.lease(run, "fast").assignment  # ... and the member is issued again
    assert again.id == "r000-m00-a2"
    with pytest.raises(Conflict, match="issued again"):
        client.report(run, lost.id, LOSSES, 10.0, lost.checkpoint_uri)
    with pytest.raises(ClientError, match=r"losses\.center: is nan") as caught:
        client.report(run, again.id, {**LOSSES, "center": float("nan")}, 10.0, again.checkpoint_uri)
    assert caught.value.status_code == 422

    # a diverged pseudo epoch fails the run: leases are then refused with 409
    assert client.report_diverged(run, again.id, "loss became NaN").state == "accepted"
    assert client.get_run(run).status == "failed"
    with pytest.raises(Conflict, match="loss became NaN"):
        client.lease(run, "fast")


def test_path_parameters_are_url_encoded(shared_controller: ControllerProcess):
    """A run id like ``../runs`` stays one path segment: 404, not the run list."""
    client = ControllerClient(shared_controller.url)
    client.create_run(NAMES, population=2, rounds=1)  # the run list is not empty
    with pytest.raises(NotFound, match=r"GET /v1/runs/\.\.%2Fruns"):
        client.get_run("../runs")
    with pytest.raises(NotFound):
        client.heartbeat("x/../../runs", "r000-m00-a1")
