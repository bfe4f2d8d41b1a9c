"""The `adaseg` command: a thin dispatcher over the commands of every package.

Each command lives in its own module exposing ``add_arguments(parser)`` and
``main(args) -> int``. Modules are imported only for the command being run, so
``adaseg serve`` never pays for importing the trainer or kfp.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("controller_service.api.serve", "run the controller REST service"),
    "worker": ("trainer_image.cli.worker", "train population members leased from a controller"),
    "transfer": ("trainer_image.cli.transfer", "train a fresh model with weights from a policy"),
    "train": ("trainer_image.cli.train", "train with a static weighting strategy (baselines)"),
    "data": ("trainer_image.cli.data", "synthesize COCO-panoptic data and proxy splits"),
    "pq": ("trainer_image.cli.pq", "panoptic quality of predictions on files (pq_compute drop-in)"),
    "fuse": ("trainer_image.cli.fuse", "two models and their two-level fusion, PQ side by side"),
    "models": ("trainer_image.cli.models", "list the registered models, presets and loss names"),
    "pipeline": ("pipelines.cli", "compile or submit the Kubeflow pipelines"),
    "demo": ("pipelines.demo", "run the whole method locally and print a comparison table"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "usage: adaseg COMMAND [options]\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"adaseg: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"adaseg {name}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(module.main(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
