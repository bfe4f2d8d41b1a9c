"""AntVisionPS's two-level fusion: hand-made merges, the per-class choice, ground truth
through the fusion, the model adapters, and the ``adaseg fuse`` / ``adaseg models`` commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from controller_service.cli import main as cli_main
from controller_service.contract.store import open_store
from trainer_image.data.loader import normalize_image
from trainer_image.engine.checkpoint import Checkpoint, save_checkpoint
from trainer_image.eval.evaluate import summarize
from trainer_image.eval.pq import PQEvaluator
from trainer_image.models import build_model
from trainer_image.models.fusion import (
    FIRST,
    SECOND,
    FusionInput,
    FusionSettings,
    choose_sources,
    class_pq,
    deeplab_view,
    fuse,
    mask_transformer_view,
    panoptic_fpn_merge,
)

PIXELS = FusionSettings(reference_size=None, stuff_area=4)  # areas in pixels


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def box(height: int, width: int, rows: slice, cols: slice) -> torch.Tensor:
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[rows, cols] = True
    return mask


def one_hot(labels: list[list[int]], classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(labels), classes).permute(2, 0, 1).float()


def test_choose_sources_takes_the_better_class_pq() -> None:
    first = {1: 0.5, 2: 0.2, 3: 0.4}
    second = {1: 0.3, 2: 0.6, 3: 0.4, 4: 0.1}
    assert choose_sources(first, second, [1, 2, 3, 4, 5]) == {
        1: FIRST,
        2: SECOND,
        3: FIRST,  # a tie stays with the first
        4: SECOND,  # only the second saw it
        5: FIRST,
    }
    result = {"per_class": {1: {"pq": 0.25, "sq": 0.5, "rq": 0.5}}}
    assert class_pq(result) == {1: 0.25}


def test_panoptic_fpn_merge_by_hand() -> None:
    """6×6, classes a, b (things, ids 1, 2), s, t (stuff, ids 11, 12). A (0.9) rows 0-1;
    B (0.8) rows 1-2, half under A: kept, cut to row 2; C (0.7) wholly under A and B:
    dropped; D (0.05) under the score threshold. Stuff s fills 21 free pixels; t has 3 <
    4: void."""
    h = w = 6
    masks = torch.stack(
        [
            box(h, w, slice(0, 2), slice(0, 4)),
            box(h, w, slice(1, 3), slice(0, 4)),
            box(h, w, slice(0, 3), slice(2, 4)),
            box(h, w, slice(3, 6), slice(0, 6)),
        ]
    )
    classes = torch.tensor([0, 1, 0, 1])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.05])
    labels = [[0, 0, 0, 0, 2, 2]] * 3 + [[2, 2, 2, 2, 2, 3]] * 3
    settings = FusionSettings(instance_score_threshold=0.1, stuff_area=4, reference_size=None)
    out = panoptic_fpn_merge(
        masks, classes, scores, one_hot(labels, 4), torch.tensor([True, True, False, False]),
        torch.tensor([1, 2, 11, 12]), settings,
    )  # fmt: skip
    assert out.ids.dtype == torch.int32
    assert out.ids.tolist() == [
        [1, 1, 1, 1, 3, 3],
        [1, 1, 1, 1, 3, 3],
        [2, 2, 2, 2, 3, 3],
        [3, 3, 3, 3, 3, 0],
        [3, 3, 3, 3, 3, 0],
        [3, 3, 3, 3, 3, 0],
    ]
    assert out.segments == [
        {"id": 1, "category_id": 1, "isthing": True, "area": 8},
        {"id": 2, "category_id": 2, "isthing": True, "area": 4},
        {"id": 3, "category_id": 11, "isthing": False, "area": 21},
    ]


def two_views() -> tuple[FusionInput, FusionInput]:
    """4×4, classes a, b (things 1, 2), s1, s2, s3 (stuff 11-13). On columns 2-3 the first
    model says s1 (0.55) or s3 (0.45), the second s2 (0.55) or s3 (0.45): alone each picks
    its own, averaged s3 wins."""
    h = w = 4
    semantic_first = torch.zeros(5, h, w)
    semantic_second = torch.zeros(5, h, w)
    semantic_first[0, :, :2] = semantic_second[0, :, :2] = 1.0
    semantic_first[2, :, 2:], semantic_first[4, :, 2:] = 0.55, 0.45
    semantic_second[3, :, 2:], semantic_second[4, :, 2:] = 0.55, 0.45
    first = FusionInput(
        semantic_first,
        torch.stack([box(h, w, slice(0, 2), slice(0, 2)), box(h, w, slice(2, 4), slice(0, 2))]),
        torch.tensor([0, 1]),
        torch.tensor([0.7, 0.8]),
    )
    second = FusionInput(
        semantic_second,
        torch.stack([box(h, w, slice(0, 2), slice(0, 3)), box(h, w, slice(2, 4), slice(0, 3))]),
        torch.tensor([0, 1]),
        torch.tensor([0.9, 0.6]),
    )
    return first, second


THINGS = torch.tensor([True, True, False, False, False])
IDS = torch.tensor([1, 2, 11, 12, 13])


def test_fusion_takes_things_per_class_and_averages_stuff() -> None:
    first, second = two_views()
    # class a from the second model (its 6-pixel box), class b from the first (4 pixels)
    out = fuse(first, second, torch.tensor([SECOND, FIRST, 0, 0, 0]), THINGS, IDS, PIXELS)
    assert out.ids.tolist() == [[1, 1, 1, 3], [1, 1, 1, 3], [2, 2, 3, 3], [2, 2, 3, 3]]
    assert out.segments == [
        {"id": 1, "category_id": 1, "isthing": True, "area": 6},
        {"id": 2, "category_id": 2, "isthing": True, "area": 4},
        {"id": 3, "category_id": 13, "isthing": False, "area": 6},
    ]
    # the other way round: a from the first (4 px), b from the second (6 px)
    flipped = fuse(first, second, torch.tensor([FIRST, SECOND, 0, 0, 0]), THINGS, IDS, PIXELS)
    assert flipped.ids.tolist() == [[1, 1, 3, 3], [1, 1, 3, 3], [2, 2, 2, 3], [2, 2, 2, 3]]
    # neither model alone has s3: each one's own semantics give s1 or s2
    alone = [
        panoptic_fpn_merge(v.masks, v.classes, v.scores, v.semantic, THINGS, IDS, PIXELS)
        for v in (first, second)
    ]
    assert [s["category_id"] for s in alone[0].segments if not s["isthing"]] == [11]
    assert [s["category_id"] for s in alone[1].segments if not s["isthing"]] == [12]


def ground_truth_view(split, record) -> FusionInput:
    """A perfect model's view of one image: one-hot semantics (uniform on void) and every
    non-crowd thing segment as an instance of score 1."""
    ids = split.load_panoptic(record)
    classes = len(split.categories)
    semantic = torch.full((classes, *ids.shape), 1.0 / classes)
    masks, labels = [], []
    for segment in record.segments:
        mask = torch.from_numpy(ids == segment.id)
        label = split.category_index[segment.category_id]
        semantic[:, mask] = 0.0
        semantic[label, mask] = 1.0
        if split.categories[label].isthing and not segment.iscrowd:
            masks.append(mask)
            labels.append(label)
    masks_t = torch.stack(masks) if masks else torch.zeros(0, *ids.shape, dtype=torch.bool)
    return FusionInput(semantic, masks_t, torch.tensor(labels, dtype=torch.long),
                       torch.ones(len(labels)))  # fmt: skip


def test_ground_truth_through_the_fusion_scores_pq_100(synth_val) -> None:
    """The merge loses nothing of a perfect input: the fused map of two perfect views is the
    ground truth again (crowds and void left void), PQ 100 on every image."""
    things = torch.tensor([c.isthing for c in synth_val.categories])
    ids = torch.tensor([c.id for c in synth_val.categories])
    source = torch.tensor([FIRST if i % 2 else SECOND for i in range(len(ids))])
    settings = FusionSettings(stuff_area=0)
    evaluator = PQEvaluator(synth_val.categories)
    for record in synth_val.records:
        view = ground_truth_view(synth_val, record)
        fused = fuse(view, view, source, things, ids, settings)
        evaluator.add(fused.ids, fused.segments, synth_val.load_panoptic(record), record.segments)
    scores = summarize(evaluator.result())
    assert scores["pq"] == pytest.approx(100.0) and scores["pq_th"] == pytest.approx(100.0)


# thresholds an untrained model passes, so that it has instances to hand over
LOW_THRESHOLDS = {
    "panoptic_deeplab": {"center_threshold": -1.0, "thing_area": 0},
    "mask_transformer": {"object_mask_threshold": 0.0, "overlap_threshold": 0.0},
}


@pytest.mark.parametrize("name", sorted(LOW_THRESHOLDS))
def test_adapters_give_the_model_prediction_and_a_consistent_view(name, synth_val) -> None:
    torch.manual_seed(0)
    model = build_model(name, synth_val.categories, **LOW_THRESHOLDS[name])
    images = torch.stack([normalize_image(synth_val.load_image(r)) for r in synth_val.records[:2]])
    view = {"panoptic_deeplab": deeplab_view, "mask_transformer": mask_transformer_view}[name]
    predictions, inputs = view(model, images)
    expected = model.predict(images)
    things = model.thing_classes
    assert sum(item.masks.shape[0] for item in inputs) > 0
    for prediction, reference, item in zip(predictions, expected, inputs, strict=True):
        assert torch.equal(prediction.ids, reference.ids)
        assert prediction.segments == reference.segments
        assert item.semantic.shape == (len(synth_val.categories), *images.shape[-2:])
        assert torch.allclose(item.semantic.sum(0), torch.ones(images.shape[-2:]), atol=1e-4)
        count = item.masks.shape[0]
        assert item.classes.shape == item.scores.shape == (count,)
        assert bool(things[item.classes].all()) and bool((item.masks.flatten(1).sum(1) > 0).all())


def save_fresh(store, key: str, name: str, categories, seed: int = 0) -> str:
    torch.manual_seed(seed)
    model = build_model(name, categories)
    return save_checkpoint(store, key, Checkpoint(name, model.config, model.state_dict()))


def test_fuse_command_prints_three_pqs_and_names_bad_input(
    synth_dir: Path, synth_val, tmp_path: Path, capfd
) -> None:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    store = open_store(store_dir.as_uri())
    first = save_fresh(store, "a/deeplab.pt", "panoptic_deeplab", synth_val.categories)
    second = save_fresh(store, "b/mask.pt", "mask_transformer", synth_val.categories)
    common = ["fuse", "--store", store_dir.as_uri(), "--data", str(synth_dir), "--device", "cpu"]
    common += ["--batch-size", "4", "--select-images", "3"]
    code = cli_main([*common, "--first", first, "--second", "b/mask.pt"])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert "panoptic_deeplab (first)" in out and "mask_transformer (second)" in out
    assert "two-level fusion" in out and "things from: circle →" in out
    assert "PQ on 5 images" in out and "3 held-out images" in out

    code = cli_main([*common, "--first", first, "--second", second, "--json"])
    out, _ = capfd.readouterr()
    result = json.loads(out)
    assert code == 0 and result["report_images"] == 5 and result["select_images"] == 3
    for key in ("first", "second", "fusion"):
        assert 0.0 <= result[key]["pq"] <= 100.0
    assert set(result["sources"]) == {c.name for c in synth_val.categories if c.isthing}

    code = cli_main([*common, "--first", "a/missing.pt", "--second", second])
    _, err = capfd.readouterr()
    assert code == 2 and "a/missing.pt does not exist" in err and "Traceback" not in err
    other = [{"id": c.id + 100, "name": c.name, "isthing": c.isthing} for c in synth_val.categories]
    save_fresh(store, "c/other.pt", "mask_transformer", other)
    code = cli_main([*common, "--first", first, "--second", "c/other.pt"])
    _, err = capfd.readouterr()
    assert code == 2 and "different categories" in err


def test_models_command_lists_both_families(capfd) -> None:
    assert cli_main(["models", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capfd.readouterr().out)}
    assert {"panoptic_deeplab", "mask_transformer"} <= set(rows)
    tiny = rows["mask_transformer"]["presets"]["tiny"]
    assert len(tiny["loss_names"]) == 10 and tiny["config"]["decoder_layers"] == 2
    assert len(rows["mask_transformer"]["presets"]["gpu"]["loss_names"]) == 31
    assert rows["panoptic_deeplab"]["presets"]["tiny"]["loss_names"] == [
        "semantic",
        "center",
        "offset",
    ]
    assert cli_main(["models"]) == 0
    text = capfd.readouterr().out
    assert "preset tiny: 10 losses: class, mask, dice" in text
    assert np.all([name in text for name in ("panoptic_deeplab", "mask_transformer")])
