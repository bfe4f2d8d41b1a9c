"""Transfer runs and static baselines: one process vs torchrun, resume, strategies, errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from controller_service.contract.client import ControllerClient
from controller_service.contract.store import open_store
from tests.fixtures.controller import ControllerProcess, start_controller
from tests.fixtures.data import real_sample_layout
from trainer_image.engine.checkpoint import load_checkpoint
from trainer_image.engine.config import TrainConfig
from trainer_image.jobs.ending import Ending
from trainer_image.jobs.epochs import JobOptions, run_job
from trainer_image.jobs.session import DataOptions
from trainer_image.jobs.train import ConstantStrategy
from trainer_image.weighting.registry import build_strategy

LOSSES = ["semantic", "center", "offset"]
TORCHRUN = Path(sys.executable).with_name("torchrun")
# separable losses (GroupNorm, every pixel in the semantic mean), so that
# 2 processes x 2 images compute what 1 process x 4 images does
SEPARABLE = '{"norm": "gn", "semantic_top_k": 1.0}'
# float32 sums in another order: measured at most 1.4e-6 (losses) and 4e-7 (weights)
RANKS_REL = 1e-5


def finish_run_with_fake_trainer(
    client: ControllerClient, run_id: str, base_losses: Mapping[str, float]
) -> dict:
    """Drive a run to ``finished`` over HTTP as a scripted trainer: losses near
    ``base_losses`` and a PQ that prefers balanced weighted losses."""
    while True:
        answer = client.lease(run_id, "fake-trainer")
        if answer.state == "finished":
            return client.get_run(run_id, history=True).model_dump()
        if answer.state == "wait":
            time.sleep(min(answer.retry_after, 0.05))
            continue
        assignment = answer.assignment.model_dump()
        weights = assignment["weights"]
        weighted = [math.log(weights[name] * base_losses[name]) for name in base_losses]
        spread = max(weighted) - min(weighted)
        losses = {
            name: value * (1.0 + 0.01 * assignment["member"] + 0.02 * assignment["round"])
            for name, value in base_losses.items()
        }
        client.report(
            run_id,
            assignment["id"],
            losses=losses,
            pq=max(0.0, 50.0 - 5.0 * spread),
            checkpoint_uri=assignment["checkpoint_uri"],
        )


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerProcess]:
    """One controller for the module (its tests use separate transfer ids)."""
    root = tmp_path_factory.mktemp("transfer-controller")
    (root / "store").mkdir()
    process = start_controller((root / "store").as_uri(), log_dir=root)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def policy_run(controller: ControllerProcess) -> str:
    """A finished run (m = 2, T = 2) whose policy the transfer runs use."""
    client = ControllerClient(controller.url)
    run = client.create_run(LOSSES, population=2, rounds=2, seed=11)
    finished = finish_run_with_fake_trainer(
        client, run.id, {"semantic": 2.7, "center": 0.03, "offset": 6.0}
    )
    assert finished["status"] == "finished"
    return run.id


def transfer_argv(
    controller: ControllerProcess, run_id: str, data_dir: Path, transfer_id: str
) -> list[str]:
    return [
        "transfer",
        "--controller", controller.url,
        "--policy-run", run_id,
        "--data", str(data_dir),
        "--store", controller.store_uri,
        "--epochs", "3",
        "--iterations-per-epoch", "2",
        "--batch-size", "4",
        "--device", "cpu",
        "--transfer-id", transfer_id,
        "--model-config", SEPARABLE,
        "--log-every", "0",
    ]  # fmt: skip


def run_process(argv: Sequence[str], env: Mapping[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, env=dict(env), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.slow
def test_torchrun_two_processes_get_the_weights_of_one_process(
    controller: ControllerProcess, policy_run: str, synth_dir: Path
) -> None:
    """2 processes x 2 images train, report and get weighted like 1 process x 4 images, to
    float32 rounding (RANKS_REL). The centre and offset losses are weighted means whose
    denominator is all-reduced (models/losses.py); with per-rank denominators (a mean of
    means) the losses differed by up to 7e-3 and the weights by 1e-2. With BatchNorm
    instead of GroupNorm the per-rank batch statistics alone give differences of up to
    1e-2 (measured), which is why this model is configured with GroupNorm."""
    single = transfer_argv(controller, policy_run, synth_dir, "one")
    run_process([sys.executable, "-m", "controller_service", *single], controller.env)
    double = transfer_argv(controller, policy_run, synth_dir, "two")
    output = run_process(
        [str(TORCHRUN), "--nproc_per_node", "2", "-m", "controller_service", *double],
        {**controller.env, "OMP_NUM_THREADS": "1"},
    ).stdout
    store = open_store(controller.store_uri)
    one = store.get_json("transfers/one/metrics.json")
    two = store.get_json("transfers/two/metrics.json")
    assert json.loads(output) == two  # rank 0 printed the metrics, the other rank nothing
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["weights"][0] == two["weights"][0] == dict.fromkeys(LOSSES, 1.0)
    # every epoch's loss vector is the global batch's (not a mean of rank means), so the
    # weights asked with it are the single process's too
    for epoch, (l1, l2) in enumerate(zip(one["losses"], two["losses"], strict=True)):
        assert l2 == pytest.approx(l1, rel=RANKS_REL), f"losses of epoch {epoch + 1}"
    for epoch, (w1, w2) in enumerate(zip(one["weights"], two["weights"], strict=True)):
        assert w2 == pytest.approx(w1, rel=RANKS_REL), f"weights of epoch {epoch + 1}"
    # the weights really came from the policy: epoch 2 is Eq. 7 applied to l^1
    client = ControllerClient(controller.url)
    expected = client.weights(policy_run, two["losses"][0], epoch=1, epochs=3).weights
    assert two["weights"][1] == pytest.approx(expected, rel=1e-9)
    for metrics in (one, two):
        assert set(metrics) >= {"pq", "pq_th", "pq_st", "sq", "rq", "wall_seconds"}
        assert 0.0 <= metrics["pq"] <= 100.0
        assert (metrics["mode"], metrics["policy_run"]) == ("ensemble", policy_run)
    assert load_checkpoint(store, "transfers/two/final.pt").weights == two["weights"][-1]
    assert not store.exists("transfers/two/last.pt")


def test_a_finished_transfer_prints_its_metrics_and_does_not_train_again(
    controller: ControllerProcess, policy_run: str, synth_dir: Path, capfd
) -> None:
    from controller_service.cli import main

    store = open_store(controller.store_uri)
    store.put_json("transfers/done/metrics.json", {"pq": 12.5, "mode": "ensemble"})
    assert main(transfer_argv(controller, policy_run, synth_dir, "done")) == 0
    assert json.loads(capfd.readouterr().out) == {"pq": 12.5, "mode": "ensemble"}
    assert not store.exists("transfers/done/final.pt")


def test_static_mode_asks_once_and_keeps_the_weights(
    controller: ControllerProcess, policy_run: str, synth_dir: Path, capfd
) -> None:
    from controller_service.cli import main

    argv = transfer_argv(controller, policy_run, synth_dir, "static")
    argv[argv.index("--epochs") + 1] = "2"
    argv[argv.index("--iterations-per-epoch") + 1] = "1"
    assert main([*argv, "--mode", "static-final"]) == 0
    metrics = json.loads(capfd.readouterr().out)
    best = (
        ControllerClient(controller.url)
        .get_run(policy_run, history=True)
        .model_dump()["best"]["weights"]
    )
    assert metrics["weights"] == [pytest.approx(best)] * 2
    assert metrics["mode"] == "static-final"


def test_first_epoch_policy_trains_epoch_1_at_the_weights_for_the_searchs_l1(
    controller: ControllerProcess, policy_run: str, synth_dir: Path, capfd
) -> None:
    """--first-epoch policy: epoch 1 at Eq. 7 for epoch 0 on the search's l¹ (the run's
    initial losses), not at weights 1; later epochs ask with the transfer's own losses."""
    from controller_service.cli import main

    argv = transfer_argv(controller, policy_run, synth_dir, "policy-start")
    argv[argv.index("--epochs") + 1] = "2"
    argv[argv.index("--iterations-per-epoch") + 1] = "1"
    assert main([*argv, "--first-epoch", "policy"]) == 0
    metrics = json.loads(capfd.readouterr().out)
    client = ControllerClient(controller.url)
    search_l1 = client.get_run(policy_run).initial_losses
    first = client.weights(policy_run, search_l1, epoch=0, epochs=2).weights
    second = client.weights(policy_run, metrics["losses"][0], epoch=1, epochs=2).weights
    assert metrics["weights"] == [pytest.approx(first, rel=1e-9), pytest.approx(second, rel=1e-9)]
    assert metrics["weights"][0] != dict.fromkeys(LOSSES, 1.0)
    assert metrics["first_epoch"] == "policy"


def test_first_epoch_policy_needs_the_searchs_losses() -> None:
    from trainer_image.jobs.transfer import ControllerWeights

    with pytest.raises(ValueError, match="initial losses"):
        ControllerWeights(object(), "r", "ensemble", 2, LOSSES, first_epoch="policy")
    with pytest.raises(ValueError, match="first_epoch must be one of"):
        ControllerWeights(None, "r", "ensemble", 2, LOSSES, first_epoch="later")


def job(tmp: Path, data_dir: Path, job_id: str, epochs: int = 2) -> JobOptions:
    return JobOptions(
        job_id=job_id,
        data=DataOptions(root=data_dir, batch_size=4),
        epochs=epochs,
        iterations_per_epoch=2,
        device="cpu",
        model_config={"norm": "gn"},
        train=TrainConfig(log_every=0),
    )


def test_an_interrupted_job_resumes_to_the_same_result(synth_dir: Path, tmp_path: Path) -> None:
    """Stopped at the start of epoch 2, run again: it resumes from last.pt, learnable weights
    included, and ends bit-identical to a job that was never interrupted."""
    store = open_store(tmp_path.as_uri())

    def uncertainty(model, dist):
        return ConstantStrategy(build_strategy("uncertainty", model))

    straight = run_job(job(tmp_path, synth_dir, "straight"), store, uncertainty).metrics
    calls = iter(range(100))
    stopped = run_job(
        job(tmp_path, synth_dir, "resumed"),
        store,
        uncertainty,
        should_stop=lambda: next(calls) >= 2,
    )
    assert stopped.ending is Ending.STOPPED and stopped.metrics is None
    assert store.exists("transfers/resumed/last.pt")
    assert not store.exists("transfers/resumed/metrics.json")
    resumed = run_job(job(tmp_path, synth_dir, "resumed"), store, uncertainty).metrics
    for key in ("weights", "losses", "pq", "sq", "rq"):
        assert resumed[key] == straight[key], key
    assert straight["weights"][0] != straight["weights"][1]  # the weights did learn


def test_train_cli_baselines(synth_dir: Path, tmp_path: Path, capfd) -> None:
    from controller_service.cli import main

    common = ["--data", str(synth_dir), "--store", tmp_path.as_uri(), "--epochs", "1"]
    common += ["--iterations-per-epoch", "1", "--batch-size", "2", "--device", "cpu"]
    assert main(["train", "--strategy", "published", "--out-id", "pub", *common]) == 0
    metrics = json.loads(capfd.readouterr().out)
    assert metrics["weights"] == [{"semantic": 1.0, "center": 200.0, "offset": 0.01}]
    assert metrics["strategy"] == "published"

    assert main(["train", "--strategy", "gradnorm", "--out-id", "gn", *common]) == 0
    weights = json.loads(capfd.readouterr().out)["weights"][0]
    assert sum(weights.values()) == pytest.approx(3.0)

    assert main(["train", "--strategy", "fixed", "--weights", "1,2", "--out-id", "x", *common]) == 1
    assert "--weights has 2 values; the model's losses are" in capfd.readouterr().err
    assert main(["train", "--strategy", "fixed", "--out-id", "y", *common]) == 2
    assert "--weights goes with --strategy fixed" in capfd.readouterr().err


def test_transfer_refuses_an_unfinished_run_and_a_missing_data_dir(
    controller: ControllerProcess, synth_dir: Path, tmp_path: Path, capfd
) -> None:
    from controller_service.cli import main

    running = ControllerClient(controller.url).create_run(LOSSES, population=2, rounds=1)
    assert main(transfer_argv(controller, running.id, synth_dir, "early")) == 1
    assert f"run {running.id} is running, not finished" in capfd.readouterr().err
    missing = tmp_path / "nothing"
    assert main(transfer_argv(controller, running.id, missing, "nodata")) == 2
    assert f"data directory {missing} does not exist" in capfd.readouterr().err


@pytest.mark.parametrize("layout", ["coco-detectron2", "ade20k"])
def test_train_cli_reads_real_coco_and_ade20k_layouts(
    coco_sample_dir: Path, tmp_path: Path, layout: str, capfd
) -> None:
    """``adaseg train --data DIR`` (default --split train, --val-split val) on detectron2's
    COCO and ADE20K trees of the real sample: trains, evaluates PQ on val, no flag changed.
    Mixed image sizes with --batch-size 2 and no --crop-size are a usage error (exit 2)."""
    from controller_service.cli import main

    root = real_sample_layout(coco_sample_dir, tmp_path / "data", layout)
    common = ["--data", str(root), "--store", (tmp_path / "store").as_uri(), "--epochs", "1"]
    common += ["--iterations-per-epoch", "1", "--device", "cpu", "--log-every", "0"]
    assert (
        main(["train", "--strategy", "equal", "--out-id", "real", *common, "--batch-size", "1"])
        == 0
    )
    metrics = json.loads(capfd.readouterr().out)
    assert 0.0 <= metrics["pq"] <= 100.0 and metrics["data"] == str(root)

    assert (
        main(["train", "--strategy", "equal", "--out-id", "b2", *common, "--batch-size", "2"]) == 2
    )
    err = capfd.readouterr().err
    assert "images differ in size" in err and "change --batch-size or --crop-size" in err
    assert not open_store((tmp_path / "store").as_uri()).exists("transfers/b2/last.pt")
