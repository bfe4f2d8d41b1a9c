"""The default model: a small, configurable Panoptic-DeepLab (Cheng et al. 2020).

ResNet-like backbone → ASPP on the deepest stage → a decoder that upsamples
to stride 4 fusing the stride-8 and stride-4 features → three heads:
semantic (C classes), centre heatmap (1 channel), centre offset (2 channels).
Unlike the published dual decoder, one decoder is shared, so the three losses
compete for the same backbone *and* decoder — the situation loss weighting is
about. Each loss trains its own head; ``loss_parameters`` says which.

Sizes (``preset``; any key can be overridden):

* ``tiny`` (default): width 16, one block per stage at strides 4/8/16,
  decoder 32, heads 32 — 0.18 M parameters; trains in seconds on a CPU
  at 64–128 px (CI, the demo, the benchmarks).
* ``gpu``: ResNet-18 layout (width 64, blocks 2-2-2-2, strides 4–32),
  ASPP dilations 3/6/9 at stride 32 (the published 6/12/18 at stride 16),
  decoder 256, heads 128 — 18 M parameters, for 512–640 px crops.

Images are expected normalised as the loader gives them (``IMAGE_MEAN``/``IMAGE_STD``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer_image.models.backbone import NORMS, ResNetBackbone, conv_norm_relu, he_init
from trainer_image.models.losses import hard_pixel_cross_entropy, weighted_l1, weighted_mse
from trainer_image.models.postprocess import PanopticPrediction, panoptic_postprocess
from trainer_image.models.registry import (
    batch_to_device,
    preset_config,
    register_categories,
    register_model,
)
from trainer_image.targets import REFERENCE_SIZE, PanopticDeepLabTargets

PUBLISHED_WEIGHTS = {"semantic": 1.0, "center": 200.0, "offset": 0.01}
"""Panoptic-DeepLab's hand-tuned loss weights: the 'published' baseline."""

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "width": 16,
        "blocks": [1, 1, 1],
        "aspp_dilations": [1, 2],
        "decoder_channels": 32,
        "head_channels": 32,
    },
    "gpu": {
        "width": 64,
        "blocks": [2, 2, 2, 2],
        "aspp_dilations": [3, 6, 9],
        "decoder_channels": 256,
        "head_channels": 128,
    },
}

DEFAULTS: dict[str, Any] = {
    "norm": "bn",
    # semantic loss
    "semantic_top_k": 0.2,
    # targets (values at the reference size, scaled to the image; see targets.py)
    "sigma": 8.0,
    "small_instance_area": 64 * 64,
    "small_instance_weight": 3.0,
    "ignore_crowd_in_semantic": False,
    "min_sigma": 2.0,
    "reference_size": REFERENCE_SIZE,
    # post-processing (same convention)
    "center_threshold": 0.1,
    "nms_kernel": 7,
    "top_k_instances": 200,
    "stuff_area": 4096,
    "thing_area": 64,
}

# Batch keys forward() needs; "semantic_weights" is optional (all ones).
_NEEDED = ("image", "semantic", "center", "center_weights", "offset", "offset_weights")


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabV3): 1×1, dilated 3×3s and an
    image-level pooling branch, concatenated and projected."""

    def __init__(self, in_channels: int, channels: int, dilations: Sequence[int], norm: str):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_norm_relu(in_channels, channels, norm, kernel_size=1)]
            + [conv_norm_relu(in_channels, channels, norm, dilation=d) for d in dilations]
        )
        # No norm on the pooled branch: BatchNorm cannot normalise one value per channel.
        self.pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, channels, 1), nn.ReLU(inplace=True)
        )
        self.project = conv_norm_relu(channels * (len(dilations) + 2), channels, norm, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x).expand(-1, -1, x.shape[2], x.shape[3])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class Decoder(nn.Module):
    """ASPP on the deepest feature, then upsample-and-fuse with the stride-8
    and stride-4 features (DeepLabV3+ style), ending at stride 4."""

    def __init__(
        self, in_channels: Sequence[int], channels: int, dilations: Sequence[int], norm: str
    ):
        super().__init__()
        self.aspp = ASPP(in_channels[-1], channels, dilations, norm)
        skip_channels = max(channels // 2, 1)
        self.skip_levels = list(range(min(2, len(in_channels) - 1) - 1, -1, -1))  # deep → shallow
        self.project = nn.ModuleList(
            conv_norm_relu(in_channels[level], skip_channels, norm, 1) for level in self.skip_levels
        )
        self.fuse = nn.ModuleList(
            conv_norm_relu(channels + skip_channels, channels, norm) for _ in self.skip_levels
        )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.aspp(features[-1])
        for level, project, fuse in zip(self.skip_levels, self.project, self.fuse, strict=True):
            skip = features[level]
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = fuse(torch.cat((x, project(skip)), dim=1))
        return x


class Head(nn.Module):
    """conv-norm-ReLU then a 1×1 predictor initialised near zero (published init)."""

    def __init__(self, in_channels: int, channels: int, outputs: int, norm: str):
        super().__init__()
        self.conv = conv_norm_relu(in_channels, channels, norm)
        self.predictor = nn.Conv2d(channels, outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.conv(x))


@register_model("panoptic_deeplab")
class PanopticDeepLab(nn.Module):
    """Panoptic-DeepLab with named, unweighted losses (see module docstring)."""

    loss_names = ("semantic", "center", "offset")
    published_weights = PUBLISHED_WEIGHTS  # `adaseg train --strategy published`
    model_name: str  # set by register_model

    def __init__(self, categories: Sequence[Any], preset: str = "tiny", **overrides: Any):
        super().__init__()
        cfg = preset_config("panoptic_deeplab", PRESETS, DEFAULTS, preset, overrides)
        cfg["blocks"] = [int(b) for b in cfg["blocks"]]
        cfg["aspp_dilations"] = [int(d) for d in cfg["aspp_dilations"]]
        if cfg["norm"] not in NORMS:
            raise ValueError(f"unknown norm {cfg['norm']!r}; expected one of {NORMS}")
        cats = register_categories(self, categories)
        self.config: dict[str, Any] = {"categories": cats, "preset": preset, **cfg}

        self.backbone = ResNetBackbone(cfg["width"], cfg["blocks"], cfg["norm"])
        self.decoder = Decoder(
            self.backbone.channels, cfg["decoder_channels"], cfg["aspp_dilations"], cfg["norm"]
        )
        self.output_stride = self.backbone.strides[0]
        d, h, norm = cfg["decoder_channels"], cfg["head_channels"], cfg["norm"]
        self.semantic_head = Head(d, h, len(cats), norm)
        self.center_head = Head(d, h, 1, norm)
        self.offset_head = Head(d, h, 2, norm)
        self._initialise()

    def _initialise(self) -> None:
        """He init for convs (as the paper does for non-pretrained parts);
        predictors start near zero, as published, so early losses are tame."""
        he_init(self)
        for head in (self.semantic_head, self.center_head, self.offset_head):
            nn.init.normal_(head.predictor.weight, 0.0, 0.001)
            nn.init.zeros_(head.predictor.bias)

    @property
    def device(self) -> torch.device:
        return self.semantic_head.predictor.weight.device

    def target_builder(self) -> PanopticDeepLabTargets:
        """The per-sample target builder for the data loader, with this model's settings."""
        c = self.config
        return PanopticDeepLabTargets(
            sigma=c["sigma"],
            small_instance_area=c["small_instance_area"],
            small_instance_weight=c["small_instance_weight"],
            ignore_crowd_in_semantic=c["ignore_crowd_in_semantic"],
            reference_size=c["reference_size"],
            min_sigma=c["min_sigma"],
        )

    def outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Head outputs at input resolution: semantic logits (B, C, H, W),
        centre heatmap (B, 1, H, W), offsets in pixels (B, 2, H, W)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        size = images.shape[-2:]
        x = self.decoder(self.backbone(images))

        def upsample(t: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t, size=size, mode="bilinear", align_corners=False)

        return {
            "semantic": upsample(self.semantic_head(x)),
            "center": upsample(self.center_head(x)),
            # predicted in stride-4 units, as published: keeps the predictor's outputs small
            "offset": upsample(self.offset_head(x)) * self.output_stride,
        }

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The three unweighted losses for a batch from the loader (image + targets)."""
        get = batch_to_device(batch, _NEEDED, self.device, optional=("semantic_weights",))
        out = self.outputs(get["image"])
        return {
            "semantic": hard_pixel_cross_entropy(
                out["semantic"],
                get["semantic"].long(),
                get.get("semantic_weights"),
                top_k=self.config["semantic_top_k"],
            ),
            "center": weighted_mse(out["center"], get["center"], get["center_weights"]),
            "offset": weighted_l1(out["offset"], get["offset"], get["offset_weights"]),
        }

    def loss_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Each loss's own head; the backbone and decoder are shared by all three."""
        return {
            "semantic": list(self.semantic_head.parameters()),
            "center": list(self.center_head.parameters()),
            "offset": list(self.offset_head.parameters()),
        }

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[PanopticPrediction]:
        """Panoptic maps for a batch of normalised images, on the model's device.

        Runs in eval mode (BatchNorm running statistics) and restores the mode.
        """
        was_training = self.training
        self.eval()
        try:
            out = self.outputs(images.to(self.device))
        finally:
            self.train(was_training)
        c = self.config
        return panoptic_postprocess(
            out["semantic"],
            out["center"],
            out["offset"],
            self.thing_classes,
            self.category_ids,
            threshold=c["center_threshold"],
            nms_kernel=c["nms_kernel"],
            top_k=c["top_k_instances"],
            stuff_area=c["stuff_area"],
            thing_area=c["thing_area"],
            reference_size=c["reference_size"],
        )
