"""Optimisation settings of every trainer: one dataclass the CLIs fill from their flags."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class TrainConfig:
    """Optimisation settings; the defaults are the paper's (Panoptic FPN 1x)."""

    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # Max norm of each parameter group's *effective* gradient (grad × its lr scale); None: off.
    grad_clip: float | None = 10.0
    # Heads at lr/λ_i (the paper); off trains every head at lr, as plain weighted losses do.
    head_lr_scaling: bool = True
    # The cosine ends at lr × min_lr_factor.
    min_lr_factor: float = 0.0
    # Mixed precision applies on CUDA only; on CPU it costs more than it gives.
    amp: bool = True
    amp_dtype: str = "bfloat16"
    # torch.compile: None compiles on CUDA only (see engine/compile.py); True/False force it.
    compile: bool | None = None
    log_every: int = 20

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("momentum", "weight_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.amp_dtype not in {"bfloat16", "float16"}:
            raise ValueError(f"amp_dtype must be bfloat16 or float16, got {self.amp_dtype!r}")
        if not 0.0 <= self.min_lr_factor <= 1.0:
            raise ValueError(f"min_lr_factor must be in [0, 1], got {self.min_lr_factor}")
