"""End to end: ``adaseg worker`` trains the mask transformer (ReMaX on) for a real controller.

A real ``python -m controller_service worker`` process against the real service
(tests/fixtures/controller.py) on the tiny synthetic set: the run is created with
the model's ten loss names, and every round reports all of them.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from controller_service.contract.client import ControllerClient
from controller_service.contract.store import open_store
from tests.fixtures.controller import ControllerProcess
from trainer_image.engine.checkpoint import load_checkpoint
from trainer_image.jobs.session import model_from_checkpoint
from trainer_image.models.mask_transformer import MaskTransformer

pytestmark = pytest.mark.slow

WORKER_TIMEOUT = 180.0


def test_worker_trains_the_mask_transformer_and_reports_every_loss(
    controller: ControllerProcess, synth_dir: Path, tmp_path: Path
) -> None:
    names = list(MaskTransformer.config_loss_names())
    assert len(names) >= 9
    client = ControllerClient(controller.url)
    run = client.create_run(names, population=2, rounds=1, seed=5, lease_seconds=60)
    config = {"remask": True, "reclass": True}
    argv = [sys.executable, "-m", "controller_service", "worker", "--controller", controller.url]
    argv += ["--run", run.id, "--data", str(synth_dir), "--store", controller.store_uri]
    argv += ["--device", "cpu", "--worker-id", "w1", "--iterations", "2", "--batch-size", "2"]
    argv += ["--proxy-val", "4", "--log-every", "1", "--model", "mask_transformer"]
    argv += ["--model-config", json.dumps(config)]
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        done = subprocess.run(
            argv,
            env={**controller.env, "OMP_NUM_THREADS": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=WORKER_TIMEOUT,
        )
    text = log_path.read_text()
    assert done.returncode == 0, text
    assert "class_0=" in text and "dice_1=" in text and "semantic=" in text

    final = client.get_run(run.id, history=True).model_dump()
    assert final["status"] == "finished", final
    assert [h["round"] for h in final["history"]] == [0, 1]
    store = open_store(controller.store_uri)
    for record in final["history"]:
        trained = record["candidates"]
        assert len(trained) == (1 if record["round"] == 0 else 2)
        for candidate in trained:
            assert candidate["outcome"] == "trained", candidate
            assert list(candidate["losses"]) == names or set(candidate["losses"]) == set(names)
            values = candidate["losses"].values()
            assert all(math.isfinite(v) and v >= 0 for v in values), candidate["losses"]
            assert 0.0 <= candidate["pq"] <= 100.0
            checkpoint = load_checkpoint(store, candidate["checkpoint_uri"])
            assert checkpoint.model_name == "mask_transformer"
            assert checkpoint.model_config["remask"] and checkpoint.model_config["reclass"]
    # the weights sampled for round 1 cover all ten losses, and the best model rebuilds
    member = final["history"][1]["candidates"][final["history"][1]["best_member"]]
    assert set(member["weights"]) == set(names)
    model = model_from_checkpoint(load_checkpoint(store, member["checkpoint_uri"]))
    assert model.loss_names == tuple(names)
