"""The search and transfer pipelines, run end to end with kfp.local.

Real everything: the controller service as a process on a ``file://`` store,
KFP's SubprocessRunner executing the compiled lightweight components in this
venv (as the trainer image would on a cluster), ``adaseg worker`` and
``adaseg transfer`` as their child processes, on a tiny synthetic dataset.
The transfer pipeline runs on 2 "GPUs", which on this CPU machine are two
torchrun processes speaking gloo: the command a 2-GPU pod would run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kfp import local

from controller_service.contract.client import ControllerClient
from controller_service.contract.keys import transfer_key
from controller_service.contract.store import open_store
from pipelines.search import search_pipeline
from pipelines.transfer import transfer_pipeline
from tests.fixtures.controller import ControllerProcess, start_controller
from trainer_image.engine.checkpoint import load_checkpoint

pytestmark = [
    pytest.mark.slow,
    # kfp warns that the trainer image's name does not say "python"; locally
    # the components run in this venv anyway.
    pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning"),
]

POPULATION = 2
ROUNDS = 1
TINY = {"iterations": 2, "batch_size": 4, "device": "cpu"}
# Not the pipelines' default (the GPU preset): a setting that only --model-config can bring,
# so the checkpoints show that the parameter reached the trainers.
MODEL = {"model": "panoptic_deeplab", "model_config": {"preset": "tiny", "head_channels": 16}}


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerProcess]:
    """One controller for both pipelines: the transfer reads the search's policy."""
    root = tmp_path_factory.mktemp("pipelines-local")
    (root / "store").mkdir()
    process = start_controller((root / "store").as_uri(), log_dir=root)
    yield process
    process.stop()


def run_locally(pipeline: Any, pipeline_root: Path, **arguments: Any) -> dict[str, Any]:
    """Run a pipeline with the SubprocessRunner in this venv; return its outputs."""
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(pipeline_root),
        raise_on_error=True,
    )
    return dict(pipeline(**arguments).outputs)


@pytest.fixture(scope="module")
def search(
    controller: ControllerProcess, synth_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The search pipeline's outputs (population 2, 1 round, 2 iterations per member)."""
    return run_locally(
        search_pipeline,
        tmp_path_factory.mktemp("kfp-search"),
        controller_url=controller.url,
        data_dir=str(synth_dir),
        store_uri=controller.store_uri,
        s3_endpoint="",
        population=POPULATION,
        rounds=ROUNDS,
        **TINY,
        **MODEL,
    )


def test_search_pipeline_finishes_the_run_and_reports_its_best_member(
    search: dict[str, Any], controller: ControllerProcess
) -> None:
    run = ControllerClient(controller.url).get_run(search["run_id"], history=True).model_dump()
    assert run["status"] == "finished"
    assert run["population"] == POPULATION
    assert [item["round"] for item in run["history"]] == list(range(ROUNDS + 1))
    best = run["best"]
    assert search["best_pq"] == pytest.approx(best["pq"])
    assert search["best_checkpoint_uri"] == best["checkpoint_uri"]
    store = open_store(controller.store_uri)
    assert store.exists(store.key_of(best["checkpoint_uri"]))
    checkpoint = load_checkpoint(store, best["checkpoint_uri"])
    assert checkpoint.model_name == MODEL["model"]
    assert checkpoint.model_config["head_channels"] == 16  # the pipeline's model_config
    # worker ids: the pipeline run's id and the member's slot, the same for every task retry
    workers = {c["worker"] for item in run["history"] for c in item["candidates"]}
    assert workers and all(re.fullmatch(r"kfp-.+-m0[01]", w) for w in workers), workers
    assert len({w.rsplit("-", 1)[0] for w in workers}) == 1, workers

    metrics = search["metrics"].metadata
    assert metrics["best_pq"] == pytest.approx(best["pq"])
    assert metrics["best_round"] == best["round"]
    assert metrics["population"] == POPULATION
    markdown = Path(search["report"].path).read_text()
    assert f"# Ada-Segment search `{run['id']}`" in markdown
    for item in run["history"]:  # a row per round, with the round's mean weights
        mean = item["mean_weights"]  # none in round 0: every weight is 1, no policy mean
        cells = " | ".join(f"{mean[n]:.4g}" if mean else "–" for n in run["loss_names"])
        assert f"| {item['round']} | {cells} |" in markdown
    html = Path(search["report_html"].path).read_text()
    assert html.count("data:image/png;base64,") == 2  # weights and PQ plots


def test_every_member_task_ran_the_worker(search: dict[str, Any]) -> None:
    """Member 0 (the reporter) and the loop's member 1 both ran to a clean exit:
    locally member 0 trains the whole run first and member 1 finds it finished."""
    root = Path(search["metrics"].path).parents[1]
    assert (root / "train-and-report" / "executor_output.json").exists()
    loop_members = list(root.glob("for-loop-*-iteration-*/train-member/executor_output.json"))
    assert len(loop_members) == POPULATION - 1, sorted(p.as_posix() for p in root.rglob("*"))


def test_transfer_pipeline_trains_with_the_searched_policy_on_two_processes(
    search: dict[str, Any],
    controller: ControllerProcess,
    synth_dir: Path,
    tmp_path: Path,
) -> None:
    outputs = run_locally(
        transfer_pipeline,
        tmp_path / "kfp",
        policy_run=search["run_id"],
        controller_url=controller.url,
        data_dir=str(synth_dir),
        store_uri=controller.store_uri,
        s3_endpoint="",
        epochs=2,
        mode="ensemble",
        gpus=2,
        iterations_per_epoch=2,
        batch_size=4,
        device="cpu",
        **MODEL,
    )
    transfer_id = outputs["transfer_id"]
    assert transfer_id.startswith(f"{search['run_id']}-ensemble-kfp")
    store = open_store(controller.store_uri)
    assert outputs["checkpoint_uri"] == store.uri_of(transfer_key(transfer_id, "final.pt"))
    assert store.exists(transfer_key(transfer_id, "final.pt"))
    final = load_checkpoint(store, transfer_key(transfer_id, "final.pt"))
    assert final.model_config["head_channels"] == 16  # the pipeline's model_config
    stored = store.get_json(transfer_key(transfer_id, "metrics.json"))
    assert stored["world_size"] == 2
    assert len(stored["weights"]) == 2  # one weight vector per epoch
    assert outputs["pq"] == pytest.approx(stored["pq"])
    assert outputs["metrics"].metadata["pq"] == pytest.approx(stored["pq"])
    markdown = Path(outputs["report"].path).read_text()
    assert f"# Ada-Segment transfer `{transfer_id}`" in markdown
    assert "| epoch |" in markdown
