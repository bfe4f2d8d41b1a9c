"""Checkpoints: a bit-exact round trip through the store, and refusal of damaged objects."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from controller_service.contract.store import open_store
from tests.test_training import TwoHeadNet, make_batches
from trainer_image.engine.checkpoint import (
    Checkpoint,
    CheckpointError,
    capture_rng_state,
    decode_checkpoint,
    encode_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from trainer_image.engine.config import TrainConfig
from trainer_image.engine.loop import Trainer
from trainer_image.weighting.fixed import FixedWeights

KEY = "runs/r1/checkpoints/r001-m03.pt"


def trained_checkpoint() -> tuple[Checkpoint, Trainer]:
    model = TwoHeadNet()
    config = TrainConfig(lr=0.05, log_every=0)
    trainer = Trainer(model, config, total_iterations=10)
    trainer.train_interval(iter(make_batches(3)), FixedWeights({"a": 2.0, "b": 0.5}), 3)
    checkpoint = Checkpoint(
        model_name="two-head",
        model_config={"width": 4},
        model_state=model.state_dict(),
        trainer_state=trainer.state_dict(),
        rng_state=capture_rng_state(),
        weights={"a": 2.0, "b": 0.5},
        run="r1",
        round=1,
        member=3,
    )
    return checkpoint, trainer


def test_round_trip_is_bit_exact_and_training_continues_identically(tmp_path: Path) -> None:
    store = open_store(tmp_path.as_uri())
    checkpoint, trainer = trained_checkpoint()
    uri = save_checkpoint(store, KEY, checkpoint)
    assert uri == store.uri_of(KEY)

    loaded = load_checkpoint(store, uri)
    assert (loaded.run, loaded.round, loaded.member) == ("r1", 1, 3)
    assert loaded.weights == {"a": 2.0, "b": 0.5}
    assert loaded.model_config == {"width": 4}
    for key, value in checkpoint.model_state.items():
        assert torch.equal(value, loaded.model_state[key]), key

    # Continue both: the original and a trainer rebuilt from the checkpoint.
    model = TwoHeadNet()
    model.load_state_dict(loaded.model_state)
    resumed = Trainer(model, trainer.config, total_iterations=10)
    resumed.load_state_dict(loaded.trainer_state)
    assert resumed.iteration == 3
    more = make_batches(5)[3:]
    strategy = FixedWeights({"a": 2.0, "b": 0.5})
    trainer.train_interval(iter(more), strategy, 2)
    resumed.train_interval(iter(more), strategy, 2)
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key


def test_rng_states_round_trip() -> None:
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    state = decode_checkpoint(
        encode_checkpoint(Checkpoint("m", {}, {}, rng_state=capture_rng_state())), "mem"
    ).rng_state
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng_state(state)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[: len(data) - 100], "truncated"),
        (lambda data: data[:-1] + bytes([data[-1] ^ 1]), "SHA-256"),
        (lambda data: b"PK\x03\x04" + data[4:], "not an adaseg checkpoint"),
        (lambda data: data.replace(b'"size": ', b'"size": x', 1), "corrupt checkpoint header"),
        (lambda data: data.replace(b"adaseg-checkpoint/v1", b"adaseg-checkpoint/v9", 1), "v9"),
    ],
)
def test_damaged_checkpoint_is_refused_with_its_name(tmp_path: Path, damage, message) -> None:
    store = open_store(tmp_path.as_uri())
    checkpoint, _ = trained_checkpoint()
    store.put(KEY, damage(encode_checkpoint(checkpoint)))
    with pytest.raises(CheckpointError, match=message) as error:
        load_checkpoint(store, KEY)
    assert store.uri_of(KEY) in str(error.value)


def test_missing_checkpoint_names_the_object(tmp_path: Path) -> None:
    store = open_store(tmp_path.as_uri())
    with pytest.raises(CheckpointError, match="does not exist") as error:
        load_checkpoint(store, KEY)
    assert store.uri_of(KEY) in str(error.value)


def test_plain_torch_file_is_refused(tmp_path: Path) -> None:
    store = open_store(tmp_path.as_uri())
    path = tmp_path / "plain.pt"
    torch.save(TwoHeadNet().state_dict(), path)
    store.put("plain.pt", path.read_bytes())
    with pytest.raises(CheckpointError, match="plain.pt"):
        load_checkpoint(store, "plain.pt")
