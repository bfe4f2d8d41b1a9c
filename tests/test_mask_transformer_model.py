"""The mask transformer as a model: targets, losses and heads, ReMaX switches, mask-wise
merging, config round trip, and a short training run that converges with ReMaX on."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from trainer_image.data.coco_panoptic import Segment
from trainer_image.data.loader import make_loader
from trainer_image.engine.optim import head_parameters
from trainer_image.models import MODELS, PanopticPrediction, build_model
from trainer_image.models.mask_postprocess import mask_panoptic_inference
from trainer_image.models.mask_transformer import (
    MaskTransformer,
    MaskTransformerTargets,
    loss_names_for,
)

CATEGORIES = [
    {"id": 1, "name": "a", "isthing": True},
    {"id": 11, "name": "b", "isthing": False},
]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_targets_pad_segments_and_leave_crowds_out() -> None:
    ids = np.array([[1, 1, 2, 0], [3, 3, 3, 3], [4, 4, 3, 3]], dtype=np.int32)
    segments = [
        Segment(1, 1, 2, False, (0, 0, 2, 1)),
        Segment(2, 1, 1, True, (2, 0, 1, 1)),  # crowd: no target, still class 0 in semantic
        Segment(3, 11, 6, False, (0, 1, 4, 2)),
        Segment(4, 1, 2, False, (0, 2, 2, 1)),
    ]
    split = SimpleNamespace(category_index={1: 0, 11: 1})
    out = MaskTransformerTargets(max_segments=4)(ids, segments, split)
    assert out["semantic"].tolist() == [[0, 0, 0, 255], [1, 1, 1, 1], [0, 0, 1, 1]]
    assert out["segment_ids"].tolist() == [1, 3, 4, 0]
    assert out["segment_classes"].tolist() == [0, 1, 0, -1]
    # over the limit: the largest segments stay (3 with 6 px, then 1 before 4: area ties by id)
    small = MaskTransformerTargets(max_segments=2)(ids, segments, split)
    assert small["segment_ids"].tolist() == [1, 3] and small["segment_classes"].tolist() == [0, 1]
    crowd_void = MaskTransformerTargets(4, ignore_crowd_in_semantic=True)(ids, segments, split)
    assert crowd_void["semantic"][0, 2] == 255


def test_mask_wise_merging_by_hand() -> None:
    """4×4 image, classes a (thing, id 1) and b (stuff, id 11). q0: a, left half; q1, q2:
    b, right half rows 0-2 and row 3 (merged into one stuff segment); q3: no object; q4: a
    with a low score; q5: a, the left half plus pixel (0, 2) — it loses the left half to q0
    and owns only 1 of its 9 pixels, under the overlap threshold 0.8: dropped, and (0, 2)
    is void (q1 still owns 5 of its 6 pixels, enough)."""
    on, off = 6.0, -6.0
    left = torch.full((4, 4), off)
    left[:, :2] = on
    top_right, bottom_right = torch.full((4, 4), off), torch.full((4, 4), off)
    top_right[:3, 2:] = on
    bottom_right[3:, 2:] = on
    q5 = left.clone()
    q5[0, 2] = on
    masks = torch.stack([left, top_right, bottom_right, torch.full((4, 4), on), left, q5])
    classes = torch.tensor(
        [[6.0, 0, 0], [0, 3.0, 0], [0, 3.0, 0], [0, 0, 6.0], [1.0, 0, 0.9], [5.0, 0, 0]]
    )
    (prediction,) = mask_panoptic_inference(
        classes[None], masks[None], torch.tensor([True, False]), torch.tensor([1, 11])
    )
    assert prediction.ids.dtype == torch.int32
    assert prediction.ids.tolist() == [[1, 1, 0, 2], [1, 1, 2, 2], [1, 1, 2, 2], [1, 1, 2, 2]]
    assert prediction.segments == [
        {"id": 1, "category_id": 1, "isthing": True, "area": 8},
        {"id": 2, "category_id": 11, "isthing": False, "area": 7},
    ]
    # no query above the score threshold: an all-void map
    (empty,) = mask_panoptic_inference(
        classes[None, 3:5], masks[None, 3:5], torch.tensor([True, False]), torch.tensor([1, 11])
    )
    assert int(empty.ids.abs().sum()) == 0 and empty.segments == []


@pytest.fixture(scope="module")
def batch(synth_train) -> dict:
    torch.manual_seed(0)
    model = build_model("mask_transformer", synth_train.categories)
    loader = make_loader(synth_train, 4, train=True, target_builder=model.target_builder())
    return next(iter(loader))


def test_losses_heads_and_published_weights(synth_train, batch) -> None:
    torch.manual_seed(0)
    model = build_model("mask_transformer", synth_train.categories)
    assert isinstance(model, MaskTransformer) and MODELS["mask_transformer"] is MaskTransformer
    losses = model(batch)
    assert tuple(losses) == model.loss_names == loss_names_for(2)
    assert len(losses) == 10 and model.loss_names[:3] == ("class", "mask", "dice")
    for name, value in losses.items():
        assert value.ndim == 0 and torch.isfinite(value) and float(value.detach()) >= 0, name
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters()), "an unused parameter"
    # each class loss owns its class head, semantic its head; mask and dice share one
    heads = head_parameters(model)
    assert set(heads) == set(model.loss_names)
    for name in model.loss_names:
        own = heads[name]
        if name.startswith(("mask", "dice")):
            assert own == [], name
        else:
            assert own, name
    assert {id(p) for p in heads["class"]} == {id(p) for p in model.class_heads[-1].parameters()}
    assert model.published_weights == {
        **{n: 2.0 for n in model.loss_names if n.startswith("class")},
        **{n: 5.0 for n in model.loss_names if n.startswith(("mask", "dice"))},
        "semantic": 1.0,
    }
    deep = MaskTransformer.config_loss_names("gpu")
    assert len(deep) == 31 and deep[-1] == "semantic"
    # the gpu preset's loss grid (stride 4) and a deeper decoder, on the tiny network
    torch.manual_seed(0)
    strided = build_model(
        "mask_transformer", synth_train.categories, loss_stride=4, decoder_layers=3
    )
    values = strided(batch)
    assert len(values) == 13 and all(torch.isfinite(v) for v in values.values())


def test_remask_and_reclass_change_only_their_losses_and_only_in_training(
    synth_train, batch
) -> None:
    """Same weights, same batch: ReMask changes the mask and dice losses and leaves the
    class losses; ReClass changes the class losses and leaves the masks; in eval mode
    both switches do nothing."""
    torch.manual_seed(0)
    model = build_model("mask_transformer", synth_train.categories)

    def losses(**switches) -> dict[str, float]:
        model.config.update({"remask": False, "reclass": False, **switches})
        with torch.no_grad():
            return {k: float(v) for k, v in model(batch).items()}

    model.train()
    base, remask, reclass = losses(), losses(remask=True), losses(reclass=True)
    for name in model.loss_names:
        if name.startswith("class"):
            assert remask[name] == pytest.approx(base[name], abs=1e-6), name
            assert abs(reclass[name] - base[name]) > 1e-4, name
        elif name.startswith(("mask", "dice")):
            assert abs(remask[name] - base[name]) > 1e-5, name
            assert reclass[name] == pytest.approx(base[name], abs=1e-6), name
    assert remask["semantic"] == pytest.approx(base["semantic"])
    model.eval()
    assert losses(remask=True, reclass=True) == pytest.approx(losses())


def test_config_round_trip_predict_and_bad_config(synth_train, batch) -> None:
    torch.manual_seed(0)
    model = build_model("mask_transformer", synth_train.categories, remask=True, num_queries=8)
    config = json.loads(json.dumps(model.config))
    categories = config.pop("categories")
    again = build_model("mask_transformer", categories, **config)
    again.load_state_dict(model.state_dict())
    images = batch["image"][:2]
    first, second = model.predict(images), again.predict(images)
    assert model.training  # predict restores the mode
    for a, b in zip(first, second, strict=True):
        assert isinstance(a, PanopticPrediction) and a.ids.shape == images.shape[-2:]
        assert torch.equal(a.ids, b.ids) and a.segments == b.segments
        assert set(torch.unique(a.ids).tolist()) - {0} == {s["id"] for s in a.segments}
    with pytest.raises(ValueError, match="unknown mask_transformer config keys"):
        build_model("mask_transformer", synth_train.categories, remaks=True)
    with pytest.raises(ValueError, match="unknown preset"):
        build_model("mask_transformer", synth_train.categories, preset="huge")
    with pytest.raises(ValueError, match="multiple of 4"):
        build_model("mask_transformer", synth_train.categories, hidden_dim=30)
    with pytest.raises(KeyError, match="target_builder"):
        model({"image": images})


def test_training_with_remax_on_converges(synth_train) -> None:
    """25 SGD steps on one batch of 2 with ReMask and ReClass on: every loss is finite
    throughout and the total falls to well under its start (to about half here)."""
    torch.manual_seed(0)
    model = build_model("mask_transformer", synth_train.categories, remask=True, reclass=True)
    loader = make_loader(synth_train, 2, train=True, target_builder=model.target_builder())
    fixed = next(iter(loader))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    totals = []
    for _ in range(25):
        losses = model(fixed)
        total = sum(losses.values())
        assert torch.isfinite(total)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(float(total.detach()))
    assert np.mean(totals[-5:]) < 0.6 * np.mean(totals[:5]), totals
