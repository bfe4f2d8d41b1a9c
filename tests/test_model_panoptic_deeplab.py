"""The default model: losses, which parameters they train, config round trip, registry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from trainer_image.data.coco_panoptic import Category, PanopticSplit, Segment
from trainer_image.models import (
    MODELS,
    PRESETS,
    PanopticDeepLab,
    PanopticModel,
    PanopticPrediction,
    build_model,
    register_model,
)

CATEGORIES = [
    Category(3, "dog", True, (1, 2, 3)),
    Category(7, "car", True, (4, 5, 6)),
    Category(20, "grass", False, (7, 8, 9)),
    Category(21, "sky", False, (9, 9, 9)),
]


def _batch(model: PanopticDeepLab, size: int = 32, images: int = 2) -> dict[str, torch.Tensor]:
    """Random images with the targets of a hand-made map: sky, grass, two dogs, a car."""
    ids = np.full((size, size), 2, dtype=np.int32)
    ids[: size // 4] = 1
    ids[10:18, 4:12] = 10
    ids[10:18, 14:22] = 11
    ids[22:28, 20:30] = 12
    segments = [
        Segment(1, 21, 0, False, (0, 0, 0, 0)),
        Segment(2, 20, 0, False, (0, 0, 0, 0)),
        Segment(10, 3, 0, False, (0, 0, 0, 0)),
        Segment(11, 3, 0, False, (0, 0, 0, 0)),
        Segment(12, 7, 0, False, (0, 0, 0, 0)),
    ]
    split = PanopticSplit(CATEGORIES, [], "/nonexistent", "/nonexistent")
    targets = model.target_builder()(ids, segments, split)
    batch = {k: torch.from_numpy(v).expand(images, *v.shape).clone() for k, v in targets.items()}
    batch["image"] = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(0))
    return batch


@pytest.fixture()
def model() -> PanopticDeepLab:
    torch.manual_seed(0)
    return build_model("panoptic_deeplab", CATEGORIES)


def test_forward_returns_three_finite_non_negative_losses(model: PanopticDeepLab) -> None:
    losses = model(_batch(model))
    assert tuple(losses) == model.loss_names == ("semantic", "center", "offset")
    for name, value in losses.items():
        assert value.ndim == 0 and torch.isfinite(value) and value.item() >= 0, name
    assert losses["semantic"].item() > 0 and losses["offset"].item() > 0


def _has_grad(parameters) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in parameters)


@pytest.mark.parametrize("loss", ["semantic", "center", "offset"])
def test_each_loss_trains_its_own_head_and_the_shared_backbone(
    model: PanopticDeepLab, loss: str
) -> None:
    heads = model.loss_parameters()
    assert set(heads) == set(model.loss_names)
    listed = [id(p) for params in heads.values() for p in params]
    assert len(listed) == len(set(listed)), "a parameter is listed under two losses"
    model.zero_grad(set_to_none=True)
    model(_batch(model))[loss].backward()
    assert _has_grad(heads[loss])
    for other in set(model.loss_names) - {loss}:
        assert not _has_grad(heads[other]), f"{loss} reached the {other} head"
    assert _has_grad(model.backbone.parameters()) and _has_grad(model.decoder.parameters())
    # everything else is shared: neither listed nor frozen
    shared = [p for p in model.parameters() if id(p) not in set(listed)]
    assert shared and all(p.requires_grad for p in shared)


def test_missing_targets_are_named(model: PanopticDeepLab) -> None:
    batch = _batch(model)
    del batch["offset_weights"]
    with pytest.raises(KeyError, match="offset_weights"):
        model(batch)


def test_predict_is_batched_and_restores_the_training_mode(model: PanopticDeepLab) -> None:
    model.train()
    images = torch.randn(3, 3, 40, 56)
    predictions = model.predict(images)
    assert model.training
    assert len(predictions) == 3 and all(isinstance(p, PanopticPrediction) for p in predictions)
    known = {c.id: c.isthing for c in CATEGORIES}
    for prediction in predictions:
        assert prediction.ids.shape == (40, 56) and prediction.ids.dtype == torch.int32
        for segment in prediction.segments:
            assert known[segment["category_id"]] == segment["isthing"]


def test_config_round_trip_rebuilds_the_same_model(model: PanopticDeepLab) -> None:
    config = json.loads(json.dumps(model.config))  # what a checkpoint stores
    assert [c["id"] for c in config["categories"]] == [3, 7, 20, 21]
    rebuilt = build_model(model.model_name, **config)
    before = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == before
    rebuilt.load_state_dict(model.state_dict())
    images = torch.randn(2, 3, 32, 32)
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(model.outputs(images)["center"], rebuilt.outputs(images)["center"])
    assert rebuilt.config == config


@pytest.mark.parametrize("name", ["panoptic_deeplab", "mask_transformer"])
def test_categories_are_taken_in_id_order_like_the_split(name: str) -> None:
    shuffled = [CATEGORIES[2], {"id": 1, "name": "cat", "isthing": 1}, CATEGORIES[0]]
    model = build_model(name, shuffled)
    assert [c["id"] for c in model.categories] == [1, 3, 20]
    assert model.category_ids.tolist() == [1, 3, 20]
    assert model.thing_classes.tolist() == [True, True, False]
    # derived from the config, so a checkpoint does not carry them
    assert not {"category_ids", "thing_classes"} & set(model.state_dict())
    with pytest.raises(ValueError, match="unique"):
        build_model(name, [CATEGORIES[0], CATEGORIES[0]])
    with pytest.raises(ValueError, match="isthing"):
        build_model(name, [{"id": 1, "name": "cat"}])
    with pytest.raises(ValueError, match="at least one category"):
        MODELS[name]([])  # built directly, without the registry's check


@pytest.mark.parametrize("name", ["panoptic_deeplab", "mask_transformer"])
def test_a_batch_without_the_models_targets_is_refused_by_name(name: str) -> None:
    model = build_model(name, CATEGORIES)
    with pytest.raises(KeyError, match=r"batch lacks \[.*'semantic'.*target_builder"):
        model({"image": torch.zeros(1, 3, 32, 32)})


def test_presets_and_overrides() -> None:
    gpu = build_model("panoptic_deeplab", CATEGORIES, preset="gpu", head_channels=64)
    assert gpu.config["width"] == PRESETS["gpu"]["width"] and gpu.config["head_channels"] == 64
    tiny = build_model("panoptic_deeplab", CATEGORIES)
    count = sum(p.numel() for p in tiny.parameters())
    assert count < sum(p.numel() for p in gpu.parameters()) / 50
    with pytest.raises(ValueError, match="preset"):
        build_model("panoptic_deeplab", CATEGORIES, preset="huge")
    with pytest.raises(ValueError, match="widht"):
        build_model("panoptic_deeplab", CATEGORIES, widht=8)


def test_registry_errors_and_extension() -> None:
    with pytest.raises(ValueError, match="unknown model 'nope'.*panoptic_deeplab"):
        build_model("nope", CATEGORIES)
    with pytest.raises(ValueError, match="category"):
        build_model("panoptic_deeplab", [])
    with pytest.raises(ValueError, match="already registered"):
        register_model("panoptic_deeplab")(type("Other", (), {}))

    @register_model("test_only_model")
    class Recorder:
        def __init__(self, categories, **config):
            self.categories, self.config = categories, config

    try:
        built = build_model("test_only_model", CATEGORIES, depth=3)
        assert isinstance(built, Recorder) and built.config == {"depth": 3}
        assert Recorder.model_name == "test_only_model"
    finally:
        del MODELS["test_only_model"]


def test_the_default_model_keeps_the_trainer_contract(model: PanopticDeepLab) -> None:
    assert isinstance(model, PanopticModel)
    assert MODELS["panoptic_deeplab"] is PanopticDeepLab
