"""``adaseg models``: every registered model with its presets and the loss names of each.

The loss names are what a run's ``loss_names`` must be for that model (a controller
run is created with them), so this is where to look them up.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["add_arguments", "describe_models", "main"]


def _presets(cls: type) -> dict[str, dict[str, Any]]:
    """A model class's presets: its ``presets`` attribute, else its module's ``PRESETS``."""
    presets = getattr(cls, "presets", None)
    if presets is None:
        presets = getattr(sys.modules[cls.__module__], "PRESETS", {})
    return dict(presets)


def describe_models() -> list[dict[str, Any]]:
    """``[{"name", "class", "doc", "presets": {preset: {"loss_names", "config"}}}]``, by name."""
    from trainer_image.models import MODELS
    from trainer_image.models.registry import model_loss_names

    rows = []
    for name in sorted(MODELS):
        cls = MODELS[name]
        doc = (cls.__doc__ or "").strip().splitlines()
        rows.append(
            {
                "name": name,
                "class": f"{cls.__module__}.{cls.__qualname__}",
                "doc": doc[0] if doc else "",
                "presets": {
                    preset: {
                        "loss_names": model_loss_names(name, {"preset": preset}),
                        "config": config,
                    }
                    for preset, config in _presets(cls).items()
                },
            }
        )
    return rows


def format_models(rows: list[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        lines.append(f"{row['name']}  ({row['class']})")
        if row["doc"]:
            lines.append(f"  {row['doc']}")
        for preset, info in row["presets"].items():
            names = info["loss_names"]
            lines.append(f"  preset {preset}: {len(names)} losses: {', '.join(names)}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the list as JSON")


def main(args: argparse.Namespace) -> int:
    rows = describe_models()
    print(json.dumps(rows, indent=1) if args.json else format_models(rows))
    return 0
