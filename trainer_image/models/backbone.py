"""A ResNet-like backbone of BasicBlocks, sized entirely by configuration.

torchvision's ResNet cannot be used (its operators do not load with this
CPU torch), and a fixed ResNet-50 would not train in seconds on a CPU. So the
same few lines build both the tiny CI/demo network and a ResNet-18-shaped one
for GPUs: ``width`` is the first stage's channels (doubled per stage) and
``blocks`` the number of BasicBlocks per stage. The stem reaches stride 4;
every further stage halves the resolution (4, 8, 16, ...).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

NORMS = ("bn", "gn", "none")


def make_norm(kind: str, channels: int) -> nn.Module:
    """Normalization by name: BatchNorm (the published choice), GroupNorm
    (independent of the batch size, for 1–2 images per GPU) or none."""
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; expected one of {NORMS}")


def he_init(network: nn.Module) -> None:
    """He init for every conv (fan-out, as the published models use for their non-pretrained
    parts), unit scale and zero shift for every norm; other layers keep PyTorch's init."""
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def conv_norm_relu(
    in_channels: int,
    out_channels: int,
    norm: str,
    kernel_size: int = 3,
    stride: int = 1,
    dilation: int = 1,
) -> nn.Sequential:
    """The conv → norm → ReLU unit every part of the network is made of."""
    padding = dilation * (kernel_size // 2)
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=norm == "none",
        ),
        make_norm(norm, out_channels),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """Two 3×3 convs with an identity (or 1×1 projection) shortcut (He et al. 2016)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = conv_norm_relu(in_channels, out_channels, norm, stride=stride)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=norm == "none")
        self.norm2 = make_norm(norm, out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=norm == "none"),
                make_norm(norm, out_channels),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.norm2(self.conv2(self.conv1(x))) + self.shortcut(x))


class ResNetBackbone(nn.Module):
    """Stem to stride 4, then ``len(blocks)`` stages at strides 4, 8, 16, ...

    ``forward`` returns every stage's output (shallow to deep), because the
    decoder needs the stride-4 and stride-8 features as skips.
    """

    def __init__(self, width: int, blocks: Sequence[int], norm: str = "bn") -> None:
        super().__init__()
        if width < 1 or len(blocks) < 2 or any(b < 1 for b in blocks):
            raise ValueError(
                f"need width >= 1 and at least two stages of >= 1 block, got {width}, {blocks}"
            )
        self.stem = nn.Sequential(
            conv_norm_relu(3, width, norm, stride=2),
            conv_norm_relu(width, width, norm, stride=2),
        )
        self.channels: list[int] = []
        self.strides: list[int] = []
        stages = []
        in_channels = width
        for index, count in enumerate(blocks):
            out_channels = width * 2**index
            stride = 1 if index == 0 else 2
            layers = [BasicBlock(in_channels, out_channels, stride, norm)]
            layers += [BasicBlock(out_channels, out_channels, 1, norm) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
            self.channels.append(out_channels)
            self.strides.append(4 * 2**index)
            in_channels = out_channels
        self.stages = nn.ModuleList(stages)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = []
        x = self.stem(images)
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
