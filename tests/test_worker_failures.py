"""The worker's failure path, unit by unit: a member it cannot train is reported ``failed``
with the reason, the worker moves on to its next lease, and it gives up after N failures in a
row. The controller is a scripted stand-in here (its side of ``failed`` is tested against the
real service in test_worker.py); the store, data, model and training are real."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from controller_service.contract import schemas
from controller_service.contract.store import ObjectStore, StoreError, open_store
from trainer_image.cli.base import EXIT_CODES, ExitCode
from trainer_image.engine.checkpoint import Checkpoint, encode_checkpoint
from trainer_image.engine.config import TrainConfig
from trainer_image.jobs.ending import Ending
from trainer_image.jobs.member import Worker, WorkerOptions
from trainer_image.jobs.session import DataOptions
from trainer_image.jobs.store_retry import RetryingStore

LOSSES = ["semantic", "center", "offset"]
RUN = "r1"
TRUNCATED = f"runs/{RUN}/checkpoints/truncated.pt"


class ScriptedController:
    """Hands out the given assignments, one per lease, then says ``finished``; records every
    report by kind. Only what ``Worker`` calls."""

    def __init__(self, assignments: Iterable[Mapping[str, Any]]) -> None:
        self.queue = list(assignments)
        self.reports: list[tuple[str, str, Any]] = []  # (kind, assignment id, reason or PQ)

    def get_run(self, run_id: str) -> schemas.RunRecord:
        return schemas.RunRecord.model_validate(
            {
                "id": run_id, "name": None, "status": "running", "failure": None, "round": 0,
                "rounds": 1, "population": 2, "loss_names": LOSSES, "config": {"seed": 3},
                "created_at": 0.0, "updated_at": 0.0, "init_checkpoint_uri": "",
                "initial_losses": None, "best": None, "current": None,
            }
        )  # fmt: skip

    def lease(self, run_id: str, worker: str) -> schemas.LeaseResponse:
        if not self.queue:
            return schemas.LeaseResponse(state="finished")
        return schemas.LeaseResponse(state="assigned", assignment=self.queue.pop(0))

    def heartbeat(self, run_id: str, assignment_id: str) -> dict[str, Any]:
        return {"state": "leased"}

    def report(self, run_id: str, assignment_id: str, pq: float, **rest: Any) -> dict[str, Any]:
        self.reports.append(("report", assignment_id, pq))
        return {"state": "accepted"}

    def report_diverged(self, run_id: str, assignment_id: str, reason: str) -> dict[str, Any]:
        self.reports.append(("diverged", assignment_id, reason))
        return {"state": "accepted"}

    def report_failed(self, run_id: str, assignment_id: str, reason: str) -> dict[str, Any]:
        self.reports.append(("failed", assignment_id, reason))
        return {"state": "accepted"}

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.reports]


def assignment(store: ObjectStore, name: str, init_uri: str, round_: int = 1) -> dict[str, Any]:
    return {
        "id": name,
        "round": round_,
        "member": 0,
        "epoch": 0,
        "epochs": 1,
        "weights": dict.fromkeys(LOSSES, 1.0),
        "init_checkpoint_uri": init_uri,
        "checkpoint_uri": store.uri_of(f"runs/{RUN}/checkpoints/{name}.pt"),
        "lease_seconds": 60,
        "deadline": 0.0,
    }


def fresh(store: ObjectStore, name: str) -> dict[str, Any]:
    """A round-0 assignment that creates ``init.pt`` and trains: one that succeeds."""
    return assignment(store, name, store.uri_of(f"runs/{RUN}/checkpoints/init.pt"), round_=0)


def worker(store: ObjectStore, data: Path, controller: ScriptedController, **kw: Any) -> Worker:
    options = WorkerOptions(
        run=RUN,
        data=DataOptions(data, batch_size=2, proxy_val=4),
        worker_id="w",
        iterations=1,
        train=TrainConfig(log_every=0),
        **kw,
    )
    return Worker(controller, store, options)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    store = open_store((tmp_path / "store").as_uri())
    payload = encode_checkpoint(Checkpoint("panoptic_deeplab", {}, {}))
    store.put(TRUNCATED, payload[: len(payload) - 10])
    return store


def test_a_truncated_checkpoint_is_reported_failed_and_three_in_a_row_stop_the_worker(
    store: ObjectStore, synth_dir: Path
) -> None:
    bad = store.uri_of(TRUNCATED)
    controller = ScriptedController([assignment(store, f"a{i}", bad) for i in range(5)])
    assert worker(store, synth_dir, controller).run() is Ending.FAILING
    assert controller.kinds() == ["failed"] * 3  # the 4th and 5th were never leased
    assert len(controller.queue) == 2
    for _, _, reason in controller.reports:
        assert reason.startswith("CheckpointError: ") and bad in reason and "truncated" in reason
    assert EXIT_CODES[Ending.FAILING] is ExitCode.FAILING == 3


def test_a_success_resets_the_count_of_failures_in_a_row(
    store: ObjectStore, synth_dir: Path
) -> None:
    bad = store.uri_of(TRUNCATED)
    script = [assignment(store, "a", bad), assignment(store, "b", bad), fresh(store, "c")]
    script += [assignment(store, "d", bad), assignment(store, "e", bad)]
    controller = ScriptedController(script)
    assert worker(store, synth_dir, controller).run() is Ending.FINISHED
    assert controller.kinds() == ["failed", "failed", "report", "failed", "failed"]
    assert store.exists(f"runs/{RUN}/checkpoints/c.pt")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("file:///etc/passwd", "is not inside the store"),
        ("s3://other-bucket/runs/r1/checkpoints/init.pt", "is not inside the store"),
        ("{store}/runs/../../../etc/passwd", "invalid object key"),
    ],
)
def test_a_checkpoint_uri_outside_the_store_is_reported_failed(
    store: ObjectStore, synth_dir: Path, uri: str, message: str
) -> None:
    uri = uri.format(store=store.uri)
    controller = ScriptedController([assignment(store, "a", uri)])
    assert worker(store, synth_dir, controller).run() is Ending.FINISHED
    ((kind, _, reason),) = controller.reports
    assert kind == "failed" and message in reason


def test_png_ids_missing_from_the_json_are_reported_failed(
    store: ObjectStore, synth_dir: Path, tmp_path: Path
) -> None:
    """The dataset opens (its JSON is valid) but its PNGs hold ids the JSON does not list:
    found when the member trains, reported with the PNG's name."""
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    json_path = data / "annotations" / "panoptic_train.json"
    content = json.loads(json_path.read_text())
    for annotation in content["annotations"]:
        annotation["segments_info"].pop()
    json_path.write_text(json.dumps(content))
    controller = ScriptedController([fresh(store, "a")])
    assert worker(store, data, controller).run() is Ending.FINISHED
    ((kind, _, reason),) = controller.reports
    assert kind == "failed" and reason.startswith("DatasetError: ")
    assert str(data / "annotations" / "panoptic_train") in reason
    assert "not in segments_info" in reason


class DownStore(ObjectStore):
    """A store whose every call fails as an unreachable server does."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.calls = 0

    def _down(self, *args: Any) -> Any:
        self.calls += 1
        raise StoreError("S3 get failed: connection refused") from ConnectionRefusedError()

    put = get = exists = list = list_dirs = delete = check = _down


def test_a_store_error_after_the_retries_is_reported_failed(synth_dir: Path) -> None:
    down = DownStore("s3://bucket/store")
    store = RetryingStore(down, retry_seconds=0.3, sleep_first=0.05)
    controller = ScriptedController([assignment(store, "a", store.uri_of(TRUNCATED))])
    assert worker(store, synth_dir, controller).run() is Ending.FINISHED
    ((kind, _, reason),) = controller.reports
    assert kind == "failed" and "connection refused" in reason and "gave up after" in reason
    assert down.calls > 1


def test_sigterm_during_a_failing_call_abandons_instead_of_reporting(
    store: ObjectStore, synth_dir: Path
) -> None:
    """A stopping worker reports nothing: its lease expires and the member is issued again."""
    controller = ScriptedController([assignment(store, "a", store.uri_of(TRUNCATED))])
    member = worker(store, synth_dir, controller)
    member.stop.lease_lost.set()  # as the heartbeat thread does when the lease is lost
    member.stop.terminated.set()
    member.seed, member.loss_names = 3, LOSSES
    assert member.work(schemas.Assignment(**controller.queue.pop(0))).value == "abandoned"
    assert controller.reports == []
