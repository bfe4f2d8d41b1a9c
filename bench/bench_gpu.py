"""GPU check: the GPU preset with AMP and torch.compile, in one run of under 5 minutes.

    .venv/bin/python bench/bench_gpu.py              # on a machine with CUDA
    .venv/bin/python bench/bench_gpu.py --json out.json --no-e2e

Nothing here has run on a GPU yet (bench/README.md): it is the check to run the
day one is lent. Two parts, in one process and one run:

1. **Throughput** of every registered model (``trainer_image.models.MODELS``:
   ``panoptic_deeplab`` and any model registered since, with its ``gpu`` preset
   where it has one) in the trainers' own ``Trainer``, on batches of synthetic
   512×512 images with their real targets already on the GPU, in three modes:
   eager fp32 (the baseline), AMP (bf16 autocast), AMP + ``torch.compile`` (the
   trainers' CUDA default). Per mode: images/s over the timed steps, the
   warm-up's seconds (``torch.compile`` compiles there), the peak GPU memory;
   then each mode's speed-up over eager fp32 of the same run.
2. **The GPU path end to end**, as a pod runs it: ``adaseg serve``, a short
   exploration (``adaseg worker --device cuda --model-config '{"preset": "gpu"}'``:
   the pseudo epoch and one round of population 2) and a transfer (``adaseg
   transfer``, one epoch, the policy it found), with the CLIs' CUDA defaults (AMP
   and compile on); wall time per phase and the images/s the trainers report.

Without CUDA it says so and exits with status 2 before doing anything.
``--device cpu`` runs the same code on the CPU at any size, as a smoke test of
the script (tests/test_bench_gpu.py); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

EXIT_NO_CUDA = 2
GPU_CONFIG = {"preset": "gpu"}


@dataclass(frozen=True)
class Mode:
    """One way to run the same training step."""

    name: str
    amp: bool
    compile: bool


MODES = (
    Mode("eager fp32", amp=False, compile=False),  # the baseline
    Mode("AMP bf16", amp=True, compile=False),
    Mode("AMP + compile", amp=True, compile=True),  # the trainers' CUDA default
)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", help="registered models (default: all)")
    parser.add_argument("--size", type=positive_int, default=512, help="image side (px)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per step")
    parser.add_argument("--steps", type=positive_int, default=20, help="timed steps per mode")
    parser.add_argument(
        "--warmup", type=positive_int, default=3, help="untimed steps per mode (compile here)"
    )
    parser.add_argument(
        "--device", default="cuda", help="a CUDA device, e.g. cuda:1 (cpu: a smoke test only)"
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=[mode.name for mode in MODES],
        default=[mode.name for mode in MODES],
        help="modes to measure (default: all; the first is the baseline)",
    )
    parser.add_argument("--no-e2e", action="store_true", help="throughput only")
    parser.add_argument(
        "--e2e-iterations", type=positive_int, default=10, help="iterations per interval"
    )
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    if not args.device.startswith(("cuda", "cpu")):
        parser.error(f"--device must be cuda[:N] or cpu, got {args.device!r}")
    if MODES[0].name not in args.modes:
        parser.error(f"--modes must include the baseline, {MODES[0].name!r}")
    return args


def require_cuda(device: str) -> None:
    """Exit with a clear message, and status 2, where there is no CUDA to measure."""
    import torch

    if not torch.cuda.is_available():
        print(
            "bench_gpu.py measures the GPU path and this machine has no CUDA device "
            f"(torch {torch.__version__}, cuda {torch.version.cuda}); run it on a GPU "
            "machine. Nothing was measured.",
            file=sys.stderr,
        )
        sys.exit(EXIT_NO_CUDA)
    index = torch.device(device).index or 0
    if index >= torch.cuda.device_count():
        print(f"no {device}: {torch.cuda.device_count()} CUDA device(s)", file=sys.stderr)
        sys.exit(EXIT_NO_CUDA)


def build_for_gpu(name: str, categories: Sequence[Any]) -> tuple[Any, dict[str, Any]]:
    """The model ``name`` with its GPU preset, or its defaults if it has no presets."""
    from trainer_image.models import build_model

    try:
        return build_model(name, categories, **GPU_CONFIG), dict(GPU_CONFIG)
    except (TypeError, ValueError):
        return build_model(name, categories), {}


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_gib(device: Any) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def speedups(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Each mode's images/s over eager fp32's, for one model's rows of one run."""
    base = next(r["images_per_s"] for r in rows if r["mode"] == MODES[0].name)
    return {r["mode"]: r["images_per_s"] / base for r in rows}


def _batches(model: Any, data_root: Path, batch_size: int, device: Any) -> Iterator:
    """Synthetic batches with the model's real targets, made once and kept on the device."""
    import torch

    from trainer_image.data.coco_panoptic import PanopticSplit
    from trainer_image.data.loader import make_loader

    split = PanopticSplit.from_dir(data_root, "train")
    loader = make_loader(split, batch_size, train=True, target_builder=model.target_builder())
    on_device = [
        {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()}
        for b in itertools.islice(loader, 4)
    ]
    return itertools.cycle(on_device)


def throughput(name: str, args: argparse.Namespace, data_root: Path) -> list[dict[str, Any]]:
    """One model, every mode, on the same batches: images/s, warm-up seconds, peak memory."""
    import torch

    from trainer_image.data.coco_panoptic import PanopticSplit
    from trainer_image.engine.config import TrainConfig
    from trainer_image.engine.loop import Trainer
    from trainer_image.weighting.fixed import FixedWeights

    device = torch.device(args.device)
    categories = PanopticSplit.from_dir(data_root, "train").categories
    rows = []
    for mode in (m for m in MODES if m.name in args.modes):
        torch.manual_seed(0)
        model, config = build_for_gpu(name, categories)
        batches = _batches(model, data_root, args.batch_size, device)
        weights = FixedWeights({loss: 1.0 for loss in model.loss_names})
        train_config = TrainConfig(amp=mode.amp, compile=mode.compile, log_every=0)
        total = args.warmup + args.steps
        trainer = Trainer(model, train_config, total_iterations=total, device=device)
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        trainer.train_interval(batches, weights, args.warmup)
        _sync(device)
        warmup_s = time.perf_counter() - started
        result = trainer.train_interval(batches, weights, args.steps)
        _sync(device)
        rows.append(
            {
                "model": name,
                "config": config,
                "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                "mode": mode.name,
                "images_per_s": round(result.images_per_second, 2),
                "warmup_s": round(warmup_s, 1),
                "peak_memory_GiB": _peak_memory_gib(device),
                "diverged": result.diverged,
            }
        )
        peak = rows[-1]["peak_memory_GiB"]
        print(
            f"{name:18} {mode.name:14} {rows[-1]['images_per_s']:9.1f} img/s  "
            f"warm-up {warmup_s:6.1f} s  peak {'-' if peak is None else f'{peak:.2f} GiB'}",
            flush=True,
        )
        del trainer, model, batches
        if device.type == "cuda":
            torch.cuda.empty_cache()
        torch._dynamo.reset()  # the next mode compiles (or not) from scratch
    return rows


def e2e_commands(
    url: str, run_id: str, data: Path, store: str, args: argparse.Namespace
) -> dict[str, list[str]]:
    """The exploration's worker and the transfer, as a pod would run them."""
    common = [
        "--data", str(data), "--store", store, "--device", args.device,
        "--batch-size", str(args.batch_size), "--model-config", json.dumps(GPU_CONFIG),
    ]  # fmt: skip
    return {
        "worker": [
            "worker", "--controller", url, "--run", run_id, "--worker-id", "gpu-check",
            "--iterations", str(args.e2e_iterations), *common,
        ],
        "transfer": [
            "transfer", "--controller", url, "--policy-run", run_id, "--epochs", "1",
            "--iterations-per-epoch", str(args.e2e_iterations), "--transfer-id", "gpu-check",
            *common,
        ],
    }  # fmt: skip


def end_to_end(args: argparse.Namespace, data_root: Path, work: Path) -> dict[str, Any]:
    """serve + worker (round 0 and one round of 2) + transfer, with the CLIs' CUDA defaults."""
    from controller_service.contract.client import ControllerClient
    from controller_service.contract.keys import transfer_key
    from controller_service.contract.store import open_store
    from controller_service.net import free_port

    store_uri = (work / "store").as_uri()
    (work / "store").mkdir()
    port = free_port()
    adaseg = [sys.executable, "-m", "controller_service"]
    log = (work / "controller.log").open("w")
    server = subprocess.Popen(
        [*adaseg, "serve", "--store", store_uri, "--port", str(port)], stdout=log, stderr=log
    )
    figures: dict[str, Any] = {}
    try:
        client = ControllerClient(f"http://127.0.0.1:{port}")
        client.wait_ready()
        run_id = client.create_run(["semantic", "center", "offset"], population=2, rounds=1).id
        commands = e2e_commands(client.base_url, run_id, data_root, store_uri, args)
        for phase, argv in commands.items():
            started = time.perf_counter()
            phase_log = work / f"{phase}.log"
            with phase_log.open("w") as out:
                done = subprocess.run([*adaseg, *argv], stdout=out, stderr=out, timeout=600)
            if done.returncode != 0:
                tail = "\n".join(phase_log.read_text().splitlines()[-30:])
                raise RuntimeError(f"adaseg {phase} exited {done.returncode}:\n{tail}")
            figures[f"{phase}_wall_s"] = round(time.perf_counter() - started, 1)
            # a compile fallback, say, shows here rather than in a slower figure only
            warnings = [line for line in phase_log.read_text().splitlines() if " WARNING " in line]
            figures[f"{phase}_warnings"] = warnings[:5]
        run = client.get_run(run_id)
        rates = [
            c.metrics["images_per_second"]
            for t in range(run.completed_rounds)
            for c in client.round(run_id, t, metrics=True).candidates
            if c.outcome == "trained" and (c.metrics or {}).get("images_per_second")
        ]
        figures["exploration_status"] = run.status
        figures["exploration_images_per_s"] = rates
        metrics = open_store(store_uri).get_json(transfer_key("gpu-check", "metrics.json"))
        figures["transfer_images_per_s"] = metrics.get("images_per_second")
        figures["transfer_pq"] = metrics.get("pq")
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.device.startswith("cuda"):
        require_cuda(args.device)
        props = torch.cuda.get_device_properties(torch.device(args.device))
        device_name = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    else:
        device_name = "CPU (a smoke test of this script: its figures mean nothing)"

    from trainer_image.data.synth import synthesize
    from trainer_image.models import MODELS

    names = args.models or sorted(MODELS)
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        print(f"unknown model(s) {unknown}; registered: {sorted(MODELS)}", file=sys.stderr)
        return 1
    print(
        f"{device_name}, torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}; {args.size}x{args.size}, batch {args.batch_size}, "
        f"{args.warmup} warm-up + {args.steps} timed steps per mode"
    )
    started = time.perf_counter()
    report: dict[str, Any] = {"device": device_name, "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="adaseg-bench-gpu-") as tmp:
        data_root = Path(tmp) / "data"
        synthesize(data_root, 4 * args.batch_size, args.size, seed=0, val_images=4, progress=False)
        rows = [row for name in names for row in throughput(name, args, data_root)]
        report["throughput"] = rows
        print("\nspeed-up over eager fp32, same run:")
        for name in names:
            ups = speedups([r for r in rows if r["model"] == name])
            print(f"  {name}: " + ", ".join(f"{mode} {up:.2f}x" for mode, up in ups.items()))
        if not args.no_e2e:
            print("\nend to end: serve, worker (round 0 + 1 round of 2), transfer (1 epoch)")
            report["e2e"] = end_to_end(args, data_root, Path(tmp))
            for key, value in report["e2e"].items():
                print(f"  {key}: {value}")
    report["wall_s"] = round(time.perf_counter() - started, 1)
    print(f"\ntotal {report['wall_s']} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
