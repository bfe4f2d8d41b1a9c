"""examples/external_trainer.py runs against a real controller with a finished run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from controller_service.contract.client import ControllerClient
from tests.fixtures.controller import ControllerProcess
from tests.test_transfer import finish_run_with_fake_trainer

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "external_trainer.py"


def run_example(
    controller: ControllerProcess, seed: int, *flags: str
) -> tuple[ControllerClient, str, list[dict]]:
    """A finished run (fake trainer), then the example against it: the client, the run's id
    and the example's per-epoch lines."""
    client = ControllerClient(controller.url)
    run = client.create_run(["classification", "regression"], population=2, rounds=2, seed=seed)
    finish_run_with_fake_trainer(client, run.id, {"classification": 1.1, "regression": 120.0})
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--controller", controller.url, "--run", run.id, *flags],
        env=controller.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return client, run.id, [json.loads(line) for line in result.stdout.splitlines()]


def test_external_trainer_gets_its_weights_from_the_policy(controller: ControllerProcess) -> None:
    client, run_id, epochs = run_example(controller, 5, "--epochs", "3")
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert epochs[0]["weights"] == {"classification": 1.0, "regression": 1.0}
    for before, after in zip(epochs, epochs[1:], strict=False):
        expected = client.weights(run_id, before["losses"], epoch=before["epoch"], epochs=3)
        assert after["weights"] == expected.weights
    for epoch in epochs:  # the paper's head rule: each head at lr / its loss's weight
        trunk, classify, regress = epoch["lrs"]
        assert trunk == 1e-2
        assert classify == pytest.approx(1e-2 / epoch["weights"]["classification"])
        assert regress == pytest.approx(1e-2 / epoch["weights"]["regression"])


def test_external_trainer_can_start_at_the_policys_weights(controller: ControllerProcess) -> None:
    """first_epoch="policy": epoch 1 trains at Eq. 7 for epoch 0 on the search's l¹."""
    client, run_id, epochs = run_example(controller, 6, "--epochs", "2", "--first-epoch", "policy")
    first = epochs[0]
    search_l1 = client.get_run(run_id).initial_losses
    assert first["weights"] == client.weights(run_id, search_l1, epoch=0, epochs=2).weights
    assert first["weights"] != {"classification": 1.0, "regression": 1.0}
