"""bench/bench_gpu.py's CPU side: no GPU here, so its logic runs on the CPU.

The script is the check to run the day a GPU is lent, and GPU time is short: a
crash on a renamed API would waste it. So the whole script runs here on the CPU
at toy sizes (figures meaningless), and without CUDA it must refuse clearly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from tests.test_dockerfiles import parse_adaseg_args
from trainer_image.models import MODELS

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_says_so_and_measures_nothing(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr and "Nothing was measured" in done.stderr
    assert done.stdout == "" and not out.exists()


def test_arguments(bench: ModuleType) -> None:
    args = bench.parse_args([])
    assert (args.device, args.size, args.batch_size) == ("cuda", 512, 8)
    assert args.modes == ["eager fp32", "AMP bf16", "AMP + compile"]
    assert not args.no_e2e
    for bad in (["--steps", "0"], ["--device", "tpu"], ["--modes", "AMP bf16"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


def test_speedups_are_ratios_to_eager_fp32(bench: ModuleType) -> None:
    rows = [
        {"mode": "AMP bf16", "images_per_s": 30.0},
        {"mode": "eager fp32", "images_per_s": 12.0},
        {"mode": "AMP + compile", "images_per_s": 54.0},
    ]
    assert bench.speedups(rows) == {"AMP bf16": 2.5, "eager fp32": 1.0, "AMP + compile": 4.5}


def test_every_registered_model_builds_for_the_gpu(bench: ModuleType) -> None:
    categories = [
        {"id": 1, "name": "thing", "isthing": True},
        {"id": 2, "name": "stuff", "isthing": False},
    ]
    for name in MODELS:
        model, config = bench.build_for_gpu(name, categories)
        assert model.model_name == name
        if name == "panoptic_deeplab":
            assert config == {"preset": "gpu"} and model.config["preset"] == "gpu"


def test_end_to_end_commands_are_real_adaseg_command_lines(bench: ModuleType) -> None:
    args = bench.parse_args(["--e2e-iterations", "7"])
    commands = bench.e2e_commands("http://127.0.0.1:8080", "run1", Path("/d"), "file:///s", args)
    worker = parse_adaseg_args(commands["worker"])
    assert (worker.iterations, worker.device, worker.model_config) == (7, "cuda", {"preset": "gpu"})
    transfer = parse_adaseg_args(commands["transfer"])
    assert (transfer.epochs, transfer.iterations_per_epoch, transfer.policy_run) == (1, 7, "run1")
    assert transfer.model_config == {"preset": "gpu"}


@pytest.mark.slow
def test_the_whole_script_runs_on_the_cpu(tmp_path: Path) -> None:
    """Every step a GPU run takes, at toy sizes: all models, two modes, serve/worker/transfer."""
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--size", "64", "--batch-size", "2"]
        + ["--steps", "1", "--warmup", "1", "--e2e-iterations", "1", "--json", str(out)]
        + ["--modes", "eager fp32", "AMP bf16"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["throughput"]
    assert {(r["model"], r["mode"]) for r in rows} == {
        (name, mode) for name in MODELS for mode in ("eager fp32", "AMP bf16")
    }
    assert all(r["images_per_s"] > 0 and not r["diverged"] for r in rows)
    assert "speed-up over eager fp32" in done.stdout
    e2e = report["e2e"]
    assert e2e["exploration_status"] == "finished"
    assert len(e2e["exploration_images_per_s"]) == 3  # round 0 + 2 members
    assert e2e["transfer_images_per_s"] and e2e["transfer_pq"] is not None
