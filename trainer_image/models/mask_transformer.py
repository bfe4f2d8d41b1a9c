"""A compact mask transformer (Mask2Former-style) with many named losses, and ReMaX's relaxations.

Our second model family: the panoptic state of the art predicts a set of masks, each
with a class, instead of per-pixel heads, and trains them with a loss per decoder
layer — the many-loss setting Ada-Segment is for (README.md, "Model families").

**Architecture.** The ResNet-like backbone of ``backbone.py`` → a pixel decoder (an
FPN: lateral 1×1 convs, top-down sums, a 3×3 conv per level) whose finest level
(stride 4) is projected to the *mask features* and whose three coarsest levels are
the transformer's memory → ``num_queries`` learned object queries (content +
positional embeddings) → ``decoder_layers`` transformer decoder layers, each
cross-attention → self-attention → FFN (post-norm, as Mask2Former), visiting the
memory levels coarse to fine in turn (with a 2-D sine position encoding and a
learned level embedding). Prediction set 0 is made from the queries before the
first layer, set i after layer i; each set has its own class head (LayerNorm +
linear to K + 1 logits, the last one "no object") and its own mask head (LayerNorm
+ 3-layer MLP to a mask embedding, whose dot product with the mask features gives
the mask logits). An auxiliary semantic head (3×3 conv + 1×1) on the stride-4
features predicts K-class logits per pixel.

**Cross-attention: masked attention (Mask2Former), not kMaX's k-means
cross-attention.** Each layer lets a query attend only to the pixels its previous
mask prediction covers (σ ≥ 0.5, resized to the memory level; a query whose mask
is empty attends everywhere). It fits our losses (Mask2Former's sigmoid mask
losses and per-layer matching, whose published weights we expose) and keeps the
attention a plain ``nn.MultiheadAttention`` with a boolean mask, fast on a CPU.
k-means cross-attention (an argmax over queries per pixel replacing the softmax
over pixels) belongs with kMaX's softmax-over-queries mask loss and its own loss
set; we did not build it.

**Losses** (``mask_losses.py``): for the final set ``class``, ``mask``, ``dice``;
for each earlier set i ``class_i``, ``mask_i``, ``dice_i`` (i = 0 .. L−1); and
``semantic``, the auxiliary per-pixel cross-entropy (void ignored). Every set is
Hungarian-matched on its own (``matching.py``), on the mask logits' own stride-4
grid against the targets sampled there (Mask2Former matches on sampled points too);
the losses then take the matched masks to ``loss_stride``. ``loss_parameters``
gives each class loss its class head and the semantic loss the semantic head; a
set's mask and dice losses both train its mask head, so both list it and the
trainer counts it as shared between them (``training.head_parameters``): no head
of its own for those two, and the lr/λ rule applies to the class and semantic
heads.
At the default depth (2 layers) that is 3 × 3 + 1 = 10 losses; the ``gpu``
preset (9 layers, as Mask2Former) has 31. ``published_weights`` are Mask2Former's:
class 2.0, mask 5.0, dice 5.0 at every layer (the no-object weight 0.1 is inside
the class loss); Mask2Former has no semantic loss, so it gets 1.0.

**ReMaX** (Sun et al., "ReMaX: Relaxing for Better Training on Efficient Panoptic
Segmentation", NeurIPS 2023), two config switches, active only in training
(``model.training``): evaluation and ``predict`` never change. Our reading, from
the paper's abstract and figure 2 and an MMDetection re-implementation (read,
not copied):

* *ReMask* (``remask``). The paper: with a sigmoid mask loss, false positives cost
  up to 10³× more than false negatives early in training, which makes training
  unstable; an auxiliary semantic branch relaxes each query's mask before the
  panoptic loss: the class prediction times the semantic prediction (``p ⊗ m_sem``,
  a per-query, per-pixel "is this pixel of my class" map) is combined with the mask
  as ``m̂ = m + m ⊙ (p ⊗ m_sem)`` (figure 2: matrix product, Hadamard product and
  sum; the re-implementation applies it to the mask logits), and no gradient of the
  panoptic loss reaches ``m_sem`` ("stop grad"). We apply exactly that to the
  matched masks' logits before the mask and dice losses: ``x̂ = x + x·s``,
  ``s_q(p) = Σ_c p̄_{q,c} · q_c(p)`` (p̄: the query's class probabilities
  renormalised over the K real classes; q: the semantic head's softmax), ``s``
  detached from the semantic head (the paper's stop-gradient) and from the class
  head (so each loss trains the heads ``loss_parameters`` names; the
  re-implementation detaches both too). Matching uses the unrelaxed masks.
  What it does here, plainly: kMaX (ReMaX's base) normalises masks with a softmax
  over queries at every pixel, so raising the logits of the queries the semantic
  branch agrees with pushes the other queries — the false positives — down there.
  Our masks are Mask2Former's independent sigmoids, so nothing competes: the
  relaxation keeps every logit's sign (a relaxed mask covers the same pixels),
  scales it by up to 2 where the semantic branch confirms the query's class (a
  confident right pixel costs less, a confident wrong pixel of a same-class
  neighbour more) and leaves pixels of other classes as they were. It does *not*
  damp the false-positive penalty of an independent sigmoid. We tried the version
  that does — the false-positive term charged on ``s·σ(x)`` — and it failed: a
  damped penalty has a vanishing gradient once a mask saturates, and within 4
  epochs every mask covered the whole image (with ReClass also on: PQ 0.0 on a dev
  split, 17.5 with both off, both at Mask2Former's inference thresholds).
* *ReClass* (``reclass``, ``reclass_eta`` η = 0.1 as the re-implementation). A
  matched query's class target is softened by what its predicted mask covers:
  ``(1 − η) · onehot(c) + η · o``, ``o_k`` the share of the query's mask
  probability lying on ground-truth pixels of class k (void excluded), so a mask
  that spills onto other classes is not pushed to full confidence in ``c``. (The
  re-implementation normalises the overlap by each class's area and adds it to
  the one-hot target without renormalising; we keep a distribution.) Unmatched
  queries keep the hard "no object" target.

Sizes (``preset``; any key can be overridden):

* ``tiny`` (default): backbone width 16, blocks 1-1-1 (strides 4/8/16), hidden 32,
  4 heads, FFN 64, 24 queries, 2 decoder layers, losses on the full-resolution
  masks — 0.16 M parameters, trains on a CPU at 64–128 px (tests, demo, benchmarks).
  Inference keeps queries scoring above 0.4 that own half their mask (chosen on a
  dev dataset; Mask2Former's 0.8 and 0.8 lost 8 PQ there).
* ``gpu``: ResNet-18 layout (width 64, blocks 2-2-2-2, strides 4–32), hidden 256,
  8 heads, FFN 2048, 100 queries, 9 decoder layers (Mask2Former's), losses on the
  stride-4 grid, Mask2Former's inference thresholds (0.8, 0.8) — for 512–640 px crops.

Batches come from ``target_builder()`` (:class:`MaskTransformerTargets`): the
segments of each image padded to ``max_segments``, plus the semantic map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer_image.models.backbone import NORMS, ResNetBackbone, conv_norm_relu, he_init
from trainer_image.models.losses import IGNORE_LABEL, hard_pixel_cross_entropy
from trainer_image.models.mask_losses import (
    class_cross_entropy,
    dice_loss,
    mask_bce_loss,
    reclass_targets,
    remask_logits,
    remask_prior,
)
from trainer_image.models.mask_postprocess import mask_panoptic_inference
from trainer_image.models.matching import MatchCosts, match
from trainer_image.models.postprocess import PanopticPrediction
from trainer_image.models.registry import (
    batch_to_device,
    preset_config,
    register_categories,
    register_model,
)

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "width": 16,
        "blocks": [1, 1, 1],
        "hidden_dim": 32,
        "heads": 4,
        "ffn_dim": 64,
        "num_queries": 24,
        "decoder_layers": 2,
        "max_segments": 32,
        "loss_stride": 1,
        # inference: chosen on a dev dataset (synthetic seed 1, 24 epochs): PQ 31.0 there,
        # against 22.9 with Mask2Former's 0.8 / 0.8 (a tiny model is less confident)
        "object_mask_threshold": 0.4,
        "overlap_threshold": 0.5,
    },
    "gpu": {
        "width": 64,
        "blocks": [2, 2, 2, 2],
        "hidden_dim": 256,
        "heads": 8,
        "ffn_dim": 2048,
        "num_queries": 100,
        "decoder_layers": 9,
        "max_segments": 128,
        "loss_stride": 4,
        # inference: Mask2Former's panoptic thresholds
        "object_mask_threshold": 0.8,
        "overlap_threshold": 0.8,
    },
}

DEFAULTS: dict[str, Any] = {
    "norm": "bn",
    # losses (Mask2Former's no-object weight and matching costs)
    "no_object_weight": 0.1,
    "cost_class": 2.0,
    "cost_mask": 5.0,
    "cost_dice": 5.0,
    "semantic_top_k": 1.0,
    "ignore_crowd_in_semantic": False,
    # ReMaX (training only)
    "remask": False,
    "reclass": False,
    "reclass_eta": 0.1,
}

# Mask2Former's hand-tuned weights (class, mask, dice), the same at every layer.
CLASS_WEIGHT, MASK_WEIGHT, DICE_WEIGHT, SEMANTIC_WEIGHT = 2.0, 5.0, 5.0, 1.0

# Batch keys forward() needs ("panoptic" is the loader's id map).
_NEEDED = ("image", "panoptic", "semantic", "segment_ids", "segment_classes")


def loss_names_for(decoder_layers: int) -> tuple[str, ...]:
    """The loss names of a model with ``decoder_layers`` layers: the final set's three,
    each earlier set's three (``_i``: set i, 0 = before the first layer), then
    ``semantic``."""
    names = ["class", "mask", "dice"]
    for index in range(decoder_layers):
        names += [f"class_{index}", f"mask_{index}", f"dice_{index}"]
    return (*names, "semantic")


def published_weights_for(decoder_layers: int) -> dict[str, float]:
    """Mask2Former's weights over the loss names of that depth (module docstring)."""
    per_kind = {"class": CLASS_WEIGHT, "mask": MASK_WEIGHT, "dice": DICE_WEIGHT}
    return {
        name: SEMANTIC_WEIGHT if name == "semantic" else per_kind[name.split("_")[0]]
        for name in loss_names_for(decoder_layers)
    }


class MaskTransformerTargets:
    """Per-sample targets: ``semantic`` (H, W) contiguous classes (255 void),
    ``segment_ids`` (M,) the non-crowd segments' ids in the panoptic map (0 padded),
    ``segment_classes`` (M,) their contiguous classes (−1 padded).

    Crowd regions are not targets (as Mask2Former's COCO mapper): their pixels are
    background for every mask. An image with more than ``max_segments`` segments
    keeps the largest ones. Pure numpy and picklable, for loader worker processes.
    """

    def __init__(self, max_segments: int = 32, ignore_crowd_in_semantic: bool = False) -> None:
        if max_segments < 1:
            raise ValueError(f"max_segments must be at least 1, got {max_segments}")
        self.max_segments = int(max_segments)
        self.ignore_crowd_in_semantic = bool(ignore_crowd_in_semantic)

    def __call__(
        self, ids: np.ndarray, segments: Sequence[Any], split: Any
    ) -> dict[str, np.ndarray]:
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"panoptic ids must be (H, W), got shape {ids.shape}")
        order = sorted(segments, key=lambda seg: seg.id)
        seg_ids = np.array([seg.id for seg in order], dtype=np.int64)
        seg_class = np.full(len(order) + 1, IGNORE_LABEL, dtype=np.int64)  # last: void
        for index, seg in enumerate(order):
            try:
                seg_class[index] = split.category_index[seg.category_id]
            except KeyError:
                raise ValueError(
                    f"segment {seg.id} has category_id {seg.category_id}, "
                    "which is not a category of the split"
                ) from None
        if order:
            slot = np.minimum(np.searchsorted(seg_ids, ids), len(order) - 1)
            slot = np.where(seg_ids[slot] == ids, slot, len(order))
        else:
            slot = np.zeros(ids.shape, dtype=np.int64)
        sem_class = seg_class.copy()
        if self.ignore_crowd_in_semantic:
            for index, seg in enumerate(order):
                if seg.iscrowd:
                    sem_class[index] = IGNORE_LABEL
        area = np.bincount(slot.ravel(), minlength=len(order) + 1)
        targets = [i for i, seg in enumerate(order) if not seg.iscrowd and area[i] > 0]
        targets = sorted(targets, key=lambda i: -area[i])[: self.max_segments]
        targets.sort()
        segment_ids = np.zeros(self.max_segments, dtype=np.int64)
        segment_classes = np.full(self.max_segments, -1, dtype=np.int64)
        segment_ids[: len(targets)] = seg_ids[targets]
        segment_classes[: len(targets)] = seg_class[targets]
        return {
            "semantic": sem_class[slot],
            "segment_ids": segment_ids,
            "segment_classes": segment_classes,
        }


def sine_position_encoding(
    height: int, width: int, channels: int, device: torch.device
) -> torch.Tensor:
    """(H·W, channels) 2-D sine encoding (DETR's, normalised to [0, 2π]): half the
    channels encode y, half x, in sin/cos pairs of geometric frequencies."""
    half = channels // 2
    dim = torch.arange(half, device=device, dtype=torch.float32)
    frequencies = 10000.0 ** (2 * torch.div(dim, 2, rounding_mode="floor") / half)
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * 2 * math.pi
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2 * math.pi

    def encode(values: torch.Tensor) -> torch.Tensor:
        angles = values[:, None] / frequencies
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(ys)[:, None, :].expand(height, width, half)
    pos_x = encode(xs)[None, :, :].expand(height, width, half)
    return torch.cat((pos_y, pos_x), dim=-1).reshape(height * width, channels)


class PixelDecoder(nn.Module):
    """An FPN over the backbone's stages: every level to ``channels``, top-down sums,
    a 3×3 conv per level. Returns the mask features (finest level, projected) and the
    memory levels for the transformer (the three coarsest, coarse first)."""

    def __init__(self, in_channels: Sequence[int], channels: int, norm: str) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(conv_norm_relu(c, channels, norm, 1) for c in in_channels)
        self.output = nn.ModuleList(conv_norm_relu(channels, channels, norm) for _ in in_channels)
        self.mask_projection = nn.Conv2d(channels, channels, 1)
        self.memory_levels = min(3, len(in_channels))

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        levels: list[torch.Tensor] = []  # deep → shallow
        x: torch.Tensor | None = None
        for feature, lateral, output in zip(
            reversed(features), reversed(self.lateral), reversed(self.output), strict=True
        ):
            y = lateral(feature)
            if x is not None:
                y = y + F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=False)
            x = output(y)
            levels.append(x)
        return self.mask_projection(levels[-1]), levels[: self.memory_levels]


class DecoderLayer(nn.Module):
    """Masked cross-attention → self-attention → FFN, each with a residual and a
    post-LayerNorm (Mask2Former's order)."""

    def __init__(self, channels: int, heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.cross = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.norm_cross = nn.LayerNorm(channels)
        self.self_attn = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.norm_self = nn.LayerNorm(channels)
        self.ffn = nn.Sequential(
            nn.Linear(channels, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, channels)
        )
        self.norm_ffn = nn.LayerNorm(channels)

    def forward(
        self,
        queries: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        blocked: torch.Tensor,
    ) -> torch.Tensor:
        attn_mask = blocked.repeat_interleave(self.heads, dim=0)
        attended = self.cross(
            queries + query_pos, memory + memory_pos, memory, attn_mask=attn_mask,
            need_weights=False,
        )[0]  # fmt: skip
        queries = self.norm_cross(queries + attended)
        q = queries + query_pos
        queries = self.norm_self(queries + self.self_attn(q, q, queries, need_weights=False)[0])
        return self.norm_ffn(queries + self.ffn(queries))


class ClassHead(nn.Module):
    """LayerNorm + linear to K + 1 class logits (the last: "no object")."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.linear = nn.Linear(channels, num_classes + 1)

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(queries))


class MaskHead(nn.Module):
    """LayerNorm + 3-layer MLP to a mask embedding (Mask2Former's ``mask_embed``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(
            nn.Linear(channels, channels),
            nn.ReLU(inplace=True),
            nn.Linear(channels, channels),
            nn.ReLU(inplace=True),
            nn.Linear(channels, channels),
        )

    def forward(self, queries: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bqc,bchw->bqhw", self.mlp(self.norm(queries)), mask_features)


@register_model("mask_transformer")
class MaskTransformer(nn.Module):
    """Mask2Former-style panoptic model with named, unweighted losses (module docstring)."""

    presets = PRESETS
    loss_names: tuple[str, ...] = loss_names_for(PRESETS["tiny"]["decoder_layers"])
    published_weights: dict[str, float] = published_weights_for(PRESETS["tiny"]["decoder_layers"])
    model_name: str  # set by register_model

    @classmethod
    def config_loss_names(cls, preset: str = "tiny", **overrides: Any) -> tuple[str, ...]:
        """The loss names a model of this config has, without building it."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
        layers = overrides.get("decoder_layers", PRESETS[preset]["decoder_layers"])
        return loss_names_for(int(layers))

    def __init__(self, categories: Sequence[Any], preset: str = "tiny", **overrides: Any):
        super().__init__()
        cfg = preset_config("mask_transformer", PRESETS, DEFAULTS, preset, overrides)
        cfg["blocks"] = [int(b) for b in cfg["blocks"]]
        for key in ("width", "hidden_dim", "heads", "ffn_dim", "num_queries", "max_segments"):
            cfg[key] = int(cfg[key])
            if cfg[key] < 1:
                raise ValueError(f"{key} must be at least 1, got {cfg[key]}")
        cfg["decoder_layers"] = int(cfg["decoder_layers"])
        cfg["loss_stride"] = int(cfg["loss_stride"])
        if cfg["decoder_layers"] < 0 or cfg["loss_stride"] not in (1, 2, 4):
            raise ValueError(
                "decoder_layers must be >= 0 and loss_stride 1, 2 or 4, got "
                f"{cfg['decoder_layers']} and {cfg['loss_stride']}"
            )
        if cfg["hidden_dim"] % 4 or cfg["hidden_dim"] % cfg["heads"]:
            raise ValueError(
                f"hidden_dim must be a multiple of 4 and of heads, got {cfg['hidden_dim']} "
                f"and {cfg['heads']} heads"
            )
        if cfg["norm"] not in NORMS:
            raise ValueError(f"unknown norm {cfg['norm']!r}; expected one of {NORMS}")
        for key in ("remask", "reclass", "ignore_crowd_in_semantic"):
            cfg[key] = bool(cfg[key])
        if not 0.0 <= float(cfg["reclass_eta"]) <= 1.0:
            raise ValueError(f"reclass_eta must lie in [0, 1], got {cfg['reclass_eta']}")
        if not float(cfg["no_object_weight"]) > 0:
            raise ValueError(f"no_object_weight must be > 0, got {cfg['no_object_weight']}")
        cats = register_categories(self, categories)
        self.config: dict[str, Any] = {"categories": cats, "preset": preset, **cfg}
        self.num_classes = len(cats)
        layers = cfg["decoder_layers"]
        self.loss_names = loss_names_for(layers)
        self.published_weights = published_weights_for(layers)
        self.costs = MatchCosts(cfg["cost_class"], cfg["cost_mask"], cfg["cost_dice"])

        d = cfg["hidden_dim"]
        self.backbone = ResNetBackbone(cfg["width"], cfg["blocks"], cfg["norm"])
        self.pixel_decoder = PixelDecoder(self.backbone.channels, d, cfg["norm"])
        self.level_embedding = nn.Embedding(self.pixel_decoder.memory_levels, d)
        self.query_features = nn.Embedding(cfg["num_queries"], d)
        self.query_positions = nn.Embedding(cfg["num_queries"], d)
        self.layers = nn.ModuleList(
            DecoderLayer(d, cfg["heads"], cfg["ffn_dim"]) for _ in range(layers)
        )
        self.class_heads = nn.ModuleList(ClassHead(d, self.num_classes) for _ in range(layers + 1))
        self.mask_heads = nn.ModuleList(MaskHead(d) for _ in range(layers + 1))
        self.semantic_head = nn.Sequential(
            conv_norm_relu(d, d, cfg["norm"]), nn.Conv2d(d, self.num_classes, 1)
        )
        self._initialise()

    def _initialise(self) -> None:
        """He init for convs, as the other model; attention and linears keep PyTorch's."""
        he_init(self)

    @property
    def device(self) -> torch.device:
        return self.query_features.weight.device

    def target_builder(self) -> MaskTransformerTargets:
        c = self.config
        return MaskTransformerTargets(c["max_segments"], c["ignore_crowd_in_semantic"])

    # -- network ---------------------------------------------------------------
    def outputs(self, images: torch.Tensor) -> dict[str, Any]:
        """Raw outputs: ``sets``, one (class logits (B, N, K + 1), mask logits (B, N, h, w))
        per prediction set, the final last, masks at stride 4; ``semantic`` (B, K, h, w)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        batch = images.shape[0]
        mask_features, levels = self.pixel_decoder(self.backbone(images))
        memories, positions, sizes = [], [], []
        for index, level in enumerate(levels):
            height, width = level.shape[-2:]
            sizes.append((height, width))
            memories.append(level.flatten(2).transpose(1, 2))
            pos = sine_position_encoding(height, width, level.shape[1], level.device)
            positions.append((pos + self.level_embedding.weight[index]).to(level.dtype)[None])
        queries = self.query_features.weight[None].expand(batch, -1, -1)
        query_pos = self.query_positions.weight[None].expand(batch, -1, -1)
        sets = []
        blocked = self._predict(0, queries, mask_features, sizes[0], sets)
        for index, layer in enumerate(self.layers):
            level = index % len(levels)
            queries = layer(queries, query_pos, memories[level], positions[level], blocked)
            next_size = sizes[(index + 1) % len(levels)]
            blocked = self._predict(index + 1, queries, mask_features, next_size, sets)
        return {"sets": sets, "semantic": self.semantic_head(levels[-1])}

    def _predict(
        self,
        index: int,
        queries: torch.Tensor,
        mask_features: torch.Tensor,
        attention_size: tuple[int, int],
        sets: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """Append prediction set ``index`` to ``sets``; return the next layer's attention
        mask: True where a query may not attend (its mask σ < 0.5 there)."""
        class_logits = self.class_heads[index](queries)
        mask_logits = self.mask_heads[index](queries, mask_features)
        sets.append((class_logits, mask_logits))
        with torch.no_grad():
            resized = F.interpolate(
                mask_logits.detach(), size=attention_size, mode="bilinear", align_corners=False
            )
            blocked = (resized.sigmoid() < 0.5).flatten(2)
            blocked[blocked.all(-1)] = False  # an empty mask attends everywhere
        return blocked

    # -- training --------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The named, unweighted losses for a batch from the loader (image + targets)."""
        get = batch_to_device(batch, _NEEDED, self.device)
        images = get["image"]
        out = self.outputs(images)
        stride = self.config["loss_stride"]
        size = (math.ceil(images.shape[-2] / stride), math.ceil(images.shape[-1] / stride))
        mask_stride = self.backbone.strides[0]  # the mask logits' own grid: matching is on it
        panoptic = get["panoptic"][:, ::stride, ::stride].flatten(1)
        coarse = get["panoptic"][:, ::mask_stride, ::mask_stride].flatten(1)
        semantic = get["semantic"][:, ::stride, ::stride].long()
        targets = []
        for b in range(images.shape[0]):
            valid = get["segment_classes"][b] >= 0
            ids = get["segment_ids"][b][valid][:, None]
            classes = get["segment_classes"][b][valid].long()
            targets.append((classes, (coarse[b][None] == ids).float(), panoptic[b][None] == ids))

        semantic_logits = _resize(out["semantic"], size)
        losses = {
            "semantic": hard_pixel_cross_entropy(
                semantic_logits, semantic, top_k=self.config["semantic_top_k"]
            )
        }
        remask = self.training and self.config["remask"]
        semantic_probs = semantic_logits.detach().float().softmax(1).flatten(2) if remask else None
        final = len(out["sets"]) - 1
        for index, (class_logits, mask_logits) in enumerate(out["sets"]):
            suffix = "" if index == final else f"_{index}"
            values = self._set_losses(
                class_logits, mask_logits, targets, size, semantic.flatten(1), semantic_probs
            )
            for kind, value in zip(("class", "mask", "dice"), values, strict=True):
                losses[f"{kind}{suffix}"] = value
        return {name: losses[name] for name in self.loss_names}

    def _set_losses(
        self,
        class_logits: torch.Tensor,
        mask_logits: torch.Tensor,
        targets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        size: tuple[int, int],
        semantic_labels: torch.Tensor,
        semantic_probs: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(class, mask, dice) of one prediction set.

        Matching per image on the mask logits' own stride-4 grid against the targets
        sampled there (Mask2Former matches on sampled points too); the losses on the
        matched masks only, resized to the loss grid ``size``; ReMaX's relaxations
        when training.
        """
        batch, queries, _ = class_logits.shape
        num_classes = self.num_classes
        coarse_logits = mask_logits.flatten(2)
        query_index, target_classes, target_masks, bounds = [], [], [], [0]
        for b, (classes, coarse, full) in enumerate(targets):
            rows, cols = match(class_logits[b], coarse_logits[b], classes, coarse, self.costs)
            query_index.append(rows)
            target_classes.append(classes[cols])
            target_masks.append(full[cols])
            bounds.append(bounds[-1] + len(rows))  # image b's matches: rows bounds[b]:bounds[b+1]
        counts = torch.tensor([len(rows) for rows in query_index], device=class_logits.device)
        image_of = torch.repeat_interleave(torch.arange(batch, device=counts.device), counts)
        query_of = torch.cat(query_index)
        matched_classes = torch.cat(target_classes)
        masks = torch.cat(target_masks).float()
        # one gather for the whole batch, then only the matched masks go to the loss grid
        logits = _resize(mask_logits[image_of, query_of][:, None], size).flatten(1)
        class_targets = torch.full(
            (batch, queries), num_classes, dtype=torch.long, device=class_logits.device
        )
        class_targets[image_of, query_of] = matched_classes
        reclass = self.training and self.config["reclass"]
        soft = F.one_hot(class_targets, num_classes + 1).float() if reclass else None
        prior = torch.empty_like(logits.detach()) if semantic_probs is not None else None
        matched_class_logits = class_logits[image_of, query_of]
        for b in range(batch if reclass or prior is not None else 0):
            lo, hi = bounds[b], bounds[b + 1]
            if soft is not None:
                soft[b, query_index[b]] = reclass_targets(
                    logits[lo:hi], semantic_labels[b], matched_classes[lo:hi], num_classes,
                    self.config["reclass_eta"],
                )  # fmt: skip
            if prior is not None:
                prior[lo:hi] = remask_prior(matched_class_logits[lo:hi], semantic_probs[b])
        if prior is not None:
            logits = remask_logits(logits, prior)
        count = int(logits.shape[0])
        return (
            class_cross_entropy(class_logits, class_targets, self.config["no_object_weight"], soft),
            mask_bce_loss(logits, masks, count),
            dice_loss(logits, masks, count),
        )

    def loss_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Each class loss its set's class head, the semantic loss its head; a set's
        mask and dice losses share its mask head (module docstring)."""
        final = len(self.class_heads) - 1
        heads: dict[str, list[nn.Parameter]] = {"semantic": list(self.semantic_head.parameters())}
        for index, (class_head, mask_head) in enumerate(
            zip(self.class_heads, self.mask_heads, strict=True)
        ):
            suffix = "" if index == final else f"_{index}"
            heads[f"class{suffix}"] = list(class_head.parameters())
            heads[f"mask{suffix}"] = list(mask_head.parameters())
            heads[f"dice{suffix}"] = list(mask_head.parameters())
        return {name: heads[name] for name in self.loss_names}

    # -- inference -------------------------------------------------------------
    @torch.no_grad()
    def inference_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eval-mode final outputs at input resolution: ``class_logits`` (B, N, K + 1),
        ``mask_logits`` (B, N, H, W). Restores the train/eval mode."""
        was_training = self.training
        self.eval()
        try:
            images = images.to(self.device)
            out = self.outputs(images)
        finally:
            self.train(was_training)
        class_logits, mask_logits = out["sets"][-1]
        return {
            "class_logits": class_logits.float(),
            "mask_logits": _resize(mask_logits, tuple(images.shape[-2:])).float(),
        }

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[PanopticPrediction]:
        """Panoptic maps of a batch of normalised images (mask-wise merging), on the
        model's device."""
        return self.panoptic(self.inference_outputs(images))

    def panoptic(self, outputs: dict[str, torch.Tensor]) -> list[PanopticPrediction]:
        """Mask-wise merging of :meth:`inference_outputs` with this model's thresholds."""
        return mask_panoptic_inference(
            outputs["class_logits"],
            outputs["mask_logits"],
            self.thing_classes,
            self.category_ids,
            object_mask_threshold=self.config["object_mask_threshold"],
            overlap_threshold=self.config["overlap_threshold"],
        )


def _resize(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) logits to ``size`` (a no-op at that size)."""
    if tuple(tensor.shape[-2:]) == tuple(size):
        return tensor
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)
