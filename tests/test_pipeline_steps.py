"""What the pipelines' tasks run, without KFP: worker ids and training command lines.

The worker id of a member task must survive a KFP retry: the controller gives a
worker that leases again under the same name the member it already holds, so a
retried task resumes at once instead of waiting for its old lease to expire.
The command lines must carry the pipeline's model parameters to ``adaseg``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from controller_service.contract.client import ControllerClient
from pipelines import steps
from tests.fixtures.controller import ControllerProcess
from tests.test_dockerfiles import parse_adaseg_args

JOB = "0b6a2c1e-8f4d-4a59-9a3e-5d2f1c7b9e10"  # a KFP run id, as {{$.pipeline_job_uuid}} gives it


def test_worker_id_is_the_run_id_and_slot_whatever_the_pod(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = steps.worker_id(JOB, "m03")
    # a retry runs in another pod: another host name, another process
    monkeypatch.setattr(socket, "gethostname", lambda: "adaseg-search-x7k2p-2817263541")
    monkeypatch.setenv("HOSTNAME", "adaseg-search-x7k2p-2817263541")
    assert steps.worker_id(JOB, "m03") == first == f"kfp-{JOB}-m03"
    other_process = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from pipelines import steps; print(steps.worker_id({JOB!r}, 'm03'))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert other_process.stdout.strip() == first
    # unique per member and per pipeline run
    assert steps.worker_id(JOB, "m04") != first
    assert steps.worker_id("another-run", "m03") != first
    with pytest.raises(ValueError, match="run id and a slot"):
        steps.worker_id("", "m03")


def test_a_retried_member_task_gets_its_own_lease_back(
    controller_factory: Callable[..., ControllerProcess],
) -> None:
    """The controller's side of the contract: same name, same assignment, at once."""
    controller = controller_factory(env={"ADASEG_LEASE_HOLD_SECONDS": "0"})  # "wait" at once
    client = ControllerClient(controller.url)
    run = client.create_run(["semantic", "center", "offset"], population=2, rounds=1)
    first_attempt = client.lease(run.id, steps.worker_id(JOB, "m00"))
    assert first_attempt.state == "assigned"
    # the task's pod dies without reporting; KFP starts the task again
    retry = client.lease(run.id, steps.worker_id(JOB, "m00"))
    assert retry.state == "assigned"
    assert retry.assignment.id == first_attempt.assignment.id
    # round 0 has one assignment: any other name has to wait for it
    assert client.lease(run.id, steps.worker_id(JOB, "m01")).state == "wait"


def test_a_run_without_loss_names_gets_those_of_the_trainers_model(
    controller_factory: Callable[..., ControllerProcess],
) -> None:
    """The pipelines' ``loss_names`` default ([]): the run is created with the names of the
    model the member tasks train, at their ``model_config`` (the mask transformer's depth
    sets its count), so no other model needs its list written out."""
    controller = controller_factory()
    client = ControllerClient(controller.url)

    def created(names: list[str] | None = None, **model) -> list[str]:
        run_id = steps.create_run(controller.url, names or [], 2, 1, 0, **model)
        return list(client.get_run(run_id).loss_names)

    assert created(model="", model_config={"preset": "gpu"}) == ["semantic", "center", "offset"]
    tiny = created(model="mask_transformer", model_config={})
    deeper = created(model="mask_transformer", model_config={"decoder_layers": 4})
    assert len(tiny) == 10 and tiny[:3] == ["class", "mask", "dice"] and tiny[-1] == "semantic"
    assert len(deeper) == 3 * 5 + 1
    # explicit names win over the model's; an unknown model is named before any run exists
    assert created(["a", "b"], model="mask_transformer", model_config={}) == ["a", "b"]
    runs_before = len(client.list_runs())
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        steps.create_run(controller.url, [], 2, 1, 0, model="nope")
    assert len(client.list_runs()) == runs_before


def _flags(argv: list[str]) -> dict[str, str]:
    start = argv.index("worker") if "worker" in argv else argv.index("transfer")
    rest = argv[start + 1 :]
    return dict(zip(rest[::2], rest[1::2], strict=True))


def test_worker_command_passes_the_model_and_its_settings() -> None:
    argv = steps.worker_command(
        controller_url="http://c:8080",
        run_id="r1",
        data_dir="/data",
        store_uri="s3://adaseg/store",
        worker=steps.worker_id(JOB, "m01"),
        device="cuda",
        model="panoptic_deeplab",
        model_config={"preset": "gpu", "width": 32},
        python="python3",
    )
    flags = _flags(argv)
    assert flags["--model"] == "panoptic_deeplab"
    assert json.loads(flags["--model-config"]) == {"preset": "gpu", "width": 32}
    assert flags["--worker-id"] == f"kfp-{JOB}-m01"
    args = parse_adaseg_args(argv[argv.index("worker") :])  # the real parser accepts it
    assert args.model == "panoptic_deeplab"
    assert args.model_config == {"preset": "gpu", "width": 32}


def test_whole_numbers_of_a_kfp_struct_reach_the_trainer_as_ints() -> None:
    """KFP passes dict parameters as protobuf Structs: every number arrives as a float."""
    argv = steps.worker_command(
        controller_url="http://c:8080",
        run_id="r1",
        data_dir="/data",
        store_uri="file:///s",
        worker="w",
        model_config={"preset": "gpu", "head_channels": 16.0, "blocks": [2.0, 2.0], "sigma": 8.5},
    )
    config = json.loads(_flags(argv)["--model-config"])
    assert config == {"preset": "gpu", "head_channels": 16, "blocks": [2, 2], "sigma": 8.5}
    assert type(config["head_channels"]) is int and type(config["blocks"][0]) is int


def test_empty_model_parameters_leave_the_trainers_defaults() -> None:
    argv = steps.worker_command(
        controller_url="http://c:8080",
        run_id="r1",
        data_dir="/data",
        store_uri="file:///s",
        worker="w",
        model="",
        model_config={},
    )
    assert "--model" not in argv and "--model-config" not in argv


def test_transfer_command_passes_the_model_under_torchrun_too() -> None:
    argv = steps.transfer_command(
        controller_url="http://c:8080",
        policy_run="r1",
        data_dir="/data",
        store_uri="s3://adaseg/store",
        epochs=2,
        mode="ensemble",
        transfer_id="t1",
        gpus=4,
        model="panoptic_deeplab",
        model_config={"preset": "gpu"},
        python="python3",
    )
    assert argv[:3] == ["python3", "-m", "torch.distributed.run"]
    flags = _flags(argv)
    assert flags["--model"] == "panoptic_deeplab"
    assert json.loads(flags["--model-config"]) == {"preset": "gpu"}
    args = parse_adaseg_args(argv[argv.index("transfer") :])
    assert args.model_config == {"preset": "gpu"}


def test_a_model_config_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ValueError, match="JSON object"):
        steps.worker_command(
            controller_url="http://c:8080",
            run_id="r1",
            data_dir="/data",
            store_uri="file:///s",
            worker="w",
            model_config=["preset", "gpu"],  # type: ignore[arg-type]
        )


def test_publish_logs_each_metric_and_writes_each_page(tmp_path) -> None:
    from kfp import dsl

    metrics = dsl.Metrics(name="metrics", uri=str(tmp_path / "metrics"))
    pages = {str(tmp_path / "report.md"): "# PQ 41.5\n", str(tmp_path / "report.html"): "<p>é</p>"}
    steps.publish(metrics, {"pq": 41.5, "sq": 80.25}, pages)
    assert metrics.metadata == {"pq": 41.5, "sq": 80.25}
    for path, text in pages.items():
        assert Path(path).read_text(encoding="utf-8") == text
