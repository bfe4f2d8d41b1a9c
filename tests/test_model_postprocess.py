"""Post-processing on hand-made logits, heatmaps and offsets (16×16)."""

from __future__ import annotations

import torch

from trainer_image.models.postprocess import find_centers, panoptic_postprocess, scaled_kernel

GRASS, DOG, SKY, ROAD = 0, 1, 2, 3  # contiguous classes
CATEGORY_IDS = torch.tensor([7, 3, 9, 11])  # their COCO ids
THING_CLASSES = torch.tensor([False, True, False, False])
OPTIONS = {
    "threshold": 0.1,
    "nms_kernel": 3,
    "top_k": 10,
    "stuff_area": 10,
    "thing_area": 4,
    "reference_size": None,
}


def _scene() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sky rows 0-3, grass below; a 4×12 dog band (rows 8-11, cols 2-13) whose
    left and right halves point at two centres; a 2-pixel dog fragment with its
    own centre (below thing_area); 3 road pixels (below stuff_area)."""
    semantic = torch.full((16, 16), GRASS)
    semantic[0:4] = SKY
    semantic[8:12, 2:14] = DOG
    semantic[14, 13:15] = DOG
    semantic[14, 0:3] = ROAD
    logits = torch.nn.functional.one_hot(semantic, 4).permute(2, 0, 1).float() * 5

    heat = torch.zeros(1, 16, 16)
    heat[0, 9, 4] = 0.9
    heat[0, 10, 4] = 0.5  # next to a stronger peak: removed by NMS
    heat[0, 9, 11] = 0.8
    heat[0, 9, 8] = 0.05  # below the threshold
    heat[0, 14, 14] = 0.7

    y, x = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    target_y, target_x = torch.zeros(16, 16), torch.zeros(16, 16)
    target_y[8:12, 2:8], target_x[8:12, 2:8] = 9.4, 4.3
    target_y[8:12, 8:14], target_x[8:12, 8:14] = 9.2, 11.1
    target_y[14, 13:15], target_x[14, 13:15] = 14.0, 14.0
    offsets = torch.stack((target_y - y, target_x - x))
    return logits[None], heat[None], offsets[None]


def _summary(segments: list[dict]) -> list[tuple[int, bool, int]]:
    return sorted((s["category_id"], s["isthing"], s["area"]) for s in segments)


def test_two_instances_split_by_offsets_stuff_and_small_area_removal() -> None:
    (prediction,) = panoptic_postprocess(*_scene(), THING_CLASSES, CATEGORY_IDS, **OPTIONS)
    ids = prediction.ids
    assert ids.shape == (16, 16) and ids.dtype == torch.int32
    grass_area = 16 * 12 - 48 - 3 - 2
    assert _summary(prediction.segments) == [
        (3, True, 24),
        (3, True, 24),
        (7, False, grass_area),
        (9, False, 64),
    ]
    left, right = ids[8:12, 2:8], ids[8:12, 8:14]
    assert (left == left[0, 0]).all() and (right == right[0, 0]).all()
    assert left[0, 0] != right[0, 0] and left[0, 0] > 0 and right[0, 0] > 0
    assert (ids[0:4] == ids[0, 0]).all()
    assert (ids[14, 0:3] == 0).all()  # road: 3 px < stuff_area
    assert (ids[14, 13:15] == 0).all()  # dog fragment: 2 px < thing_area
    # ids are unique per segment and every non-void id in the map is listed
    listed = sorted(s["id"] for s in prediction.segments)
    assert len(set(listed)) == len(listed) == 4
    assert sorted(set(ids.unique().tolist()) - {0}) == listed
    for segment in prediction.segments:
        assert (ids == segment["id"]).sum().item() == segment["area"]


def test_batch_is_processed_per_image() -> None:
    logits, heat, offsets = _scene()
    batch = panoptic_postprocess(
        torch.cat((logits, logits)),
        torch.cat((heat, torch.zeros_like(heat))),  # second image: no centres at all
        torch.cat((offsets, offsets)),
        THING_CLASSES,
        CATEGORY_IDS,
        **OPTIONS,
    )
    (alone,) = panoptic_postprocess(logits, heat, offsets, THING_CLASSES, CATEGORY_IDS, **OPTIONS)
    assert torch.equal(batch[0].ids, alone.ids) and batch[0].segments == alone.segments
    # without centres, thing pixels are void and only stuff remains
    assert _summary(batch[1].segments) == [(7, False, 16 * 12 - 48 - 3 - 2), (9, False, 64)]
    assert (batch[1].ids[8:12, 2:14] == 0).all()


def test_find_centers_nms_threshold_and_top_k() -> None:
    _, heat, _ = _scene()
    centers, valid = find_centers(heat, threshold=0.1, nms_kernel=3, top_k=10)
    assert centers[0][valid[0]].tolist() == [[9.0, 4.0], [9.0, 11.0], [14.0, 14.0]]
    centers, valid = find_centers(heat, threshold=0.1, nms_kernel=3, top_k=1)
    assert centers[0][valid[0]].tolist() == [[9.0, 4.0]]
    centers, valid = find_centers(heat, threshold=0.95, nms_kernel=3, top_k=10)
    assert centers.shape == (1, 0, 2) and valid.shape == (1, 0)


def test_kernel_scales_with_the_image_and_stays_odd() -> None:
    assert scaled_kernel(7, 480, 640, 640) == 7
    assert scaled_kernel(7, 64, 64, 640) == 3
    assert scaled_kernel(7, 1280, 1280, 640) == 15
    assert scaled_kernel(7, 64, 64, None) == 7
