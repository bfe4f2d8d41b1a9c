"""Whether to ``torch.compile`` the model, and the eager fallback when the toolchain is missing.

On CUDA, Inductor generates Triton kernels, and Triton builds a small C
launcher for them with a C compiler at the first compiled step. The trainer
image's CUDA base (a PyTorch *runtime* image) ships none, so a compiled worker
would die at its first step. Before compiling for CUDA we therefore look for
the compiler as Triton does (``$CC`` if set, else ``gcc``, else ``clang`` on
PATH; Triton does not try ``cc``) and, without one, train eagerly with one
warning: slower, but training. CPU compilation (only with ``--compile``) is
Inductor's C++ backend and is not checked here.
"""

from __future__ import annotations

import logging
import os
import shutil

import torch
from torch import nn

log = logging.getLogger("adaseg.train")

_warned: set[str] = set()  # one warning per process, not one per assignment


def resolve_compile(setting: bool | None, device: torch.device) -> bool:
    """Whether compilation is asked for: ``None`` (the CLIs' default) on CUDA only, where the
    fused kernels repay the compile time within an interval; on CPU the compile takes longer
    than a CI-sized run. ``True``/``False`` (``--compile``/``--no-compile``) are obeyed."""
    return device.type == "cuda" if setting is None else bool(setting)


def triton_c_compiler() -> str | None:
    """The C compiler Triton would use, as a path; ``None`` when it would find none.

    ``$CC`` is taken as given by Triton, so a ``$CC`` that names no executable
    counts as missing rather than falling back to ``gcc``.
    """
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc)
    return shutil.which("gcc") or shutil.which("clang")


def missing_toolchain(device: torch.device) -> str | None:
    """What compiling for ``device`` needs and this machine lacks, or ``None``."""
    if device.type != "cuda" or triton_c_compiler() is not None:
        return None
    cc = os.environ.get("CC")
    named = f"$CC={cc!r} is not an executable" if cc else "no gcc or clang on PATH, $CC unset"
    return f"Triton needs a C compiler to build its kernels ({named})"


def maybe_compile(module: nn.Module, setting: bool | None, device: torch.device) -> nn.Module:
    """``torch.compile(module)`` when resolved on and possible, else ``module`` (eager)."""
    if not resolve_compile(setting, device):
        return module
    missing = missing_toolchain(device)
    if missing is not None:
        if missing not in _warned:
            _warned.add(missing)
            log.warning(
                "torch.compile skipped, training in eager mode: %s; install gcc or set $CC "
                "to compile, or pass --no-compile to silence this",
                missing,
            )
        return module
    return torch.compile(module)
