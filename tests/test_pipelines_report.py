"""What the pipeline tasks do in their containers (pipelines.steps) and how runs
are summarised for the Kubeflow UI (pipelines.report), without KFP."""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from controller_service.contract.schemas import RunRecord
from pipelines import report, steps

PY = "/usr/bin/python3"  # any string: the commands are only built here


# -- commands ------------------------------------------------------------------------------------


def test_member_slots_leave_member_zero_to_the_reporter() -> None:
    assert steps.member_slots("r1", 3) == [
        {"run_id": "r1", "slot": "m01"},
        {"run_id": "r1", "slot": "m02"},
    ]
    assert steps.member_slots("r1", 1) == []
    with pytest.raises(ValueError, match="population must be at least 1, got 0"):
        steps.member_slots("r1", 0)


def test_worker_command_passes_only_the_options_that_are_set() -> None:
    common = dict(
        controller_url="http://c:8080",
        run_id="r1",
        data_dir="/data",
        store_uri="s3://b/p",
        worker="w",
        device="cuda",
        python=PY,
    )
    base = [PY, "-m", "controller_service", "worker", "--controller", "http://c:8080"]
    base += ["--run", "r1", "--data", "/data", "--store", "s3://b/p", "--device", "cuda"]
    base += ["--worker-id", "w"]
    assert steps.worker_command(**common) == base
    assert steps.worker_command(**common, iterations=5, batch_size=8) == [
        *base,
        *("--iterations", "5", "--batch-size", "8"),
    ]


def test_transfer_command_uses_torchrun_for_several_gpus() -> None:
    common = dict(
        controller_url="http://c:8080",
        policy_run="r1",
        data_dir="/data",
        store_uri="file:///s",
        epochs=3,
        mode="ensemble",
        transfer_id="t1",
        device="cpu",
        python=PY,
    )
    tail = ["-m", "controller_service", "transfer", "--controller", "http://c:8080"]
    tail += ["--policy-run", "r1", "--data", "/data", "--epochs", "3", "--mode", "ensemble"]
    tail += ["--store", "file:///s", "--transfer-id", "t1", "--device", "cpu", "--seed", "0"]
    tail += ["--first-epoch", "equal"]
    assert steps.transfer_command(**common) == [PY, *tail]
    policy_start = steps.transfer_command(**common, first_epoch="policy")
    assert policy_start == [PY, *tail[:-1], "policy"]
    torchrun = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4"]
    assert steps.transfer_command(**common, gpus=4, iterations_per_epoch=2) == [
        *torchrun,
        *tail,
        *("--iterations-per-epoch", "2"),
    ]
    with pytest.raises(ValueError, match="gpus must be at least 1, got 0"):
        steps.transfer_command(**common, gpus=0)
    with pytest.raises(ValueError, match="epochs must be at least 1"):
        steps.transfer_command(**{**common, "epochs": 0})


def test_s3_environment_and_transfer_id() -> None:
    assert steps.s3_environment("", True) == {}
    assert steps.s3_environment("minio:9000", False) == {
        "ADASEG_S3_ENDPOINT": "minio:9000",
        "ADASEG_S3_SECURE": "false",
    }
    assert steps.default_transfer_id("r1", "final", "123") == "r1-final-kfp123"


def test_run_command_passes_env_and_fails_on_a_nonzero_status(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    code = f"import os; open({str(out)!r}, 'w').write(os.environ['ADASEG_X'])"
    steps.run_command([sys.executable, "-c", code], env={"ADASEG_X": "42"})
    assert out.read_text() == "42"
    with pytest.raises(steps.StepFailed, match="exited with status 3"):
        steps.run_command([sys.executable, "-c", "raise SystemExit(3)"])


def test_run_command_forwards_sigterm_to_the_training_process(tmp_path: Path) -> None:
    """A pod eviction's SIGTERM must reach the worker, which then stops cleanly."""
    ready, stopped = tmp_path / "ready", tmp_path / "stopped"
    child = textwrap.dedent(
        f"""
        import pathlib, signal, sys, time
        def stop(*_):
            pathlib.Path({str(stopped)!r}).write_text("sigterm")
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        pathlib.Path({str(ready)!r}).touch()
        time.sleep(60)
        """
    )
    parent = (
        f"from pipelines import steps; steps.run_command([{sys.executable!r}, '-c', {child!r}])"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent])
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "child never started"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0  # the child exited 0, so run_command returned
    finally:
        if proc.poll() is None:
            proc.kill()
    assert stopped.read_text() == "sigterm"


# -- reports -------------------------------------------------------------------------------------


def candidate(member: int, weights: dict[str, float], pq: float | None, **extra: Any) -> dict:
    return {"member": member, "weights": weights, "outcome": "trained", "pq": pq, **extra}


def round_record(round_: int, mean: dict | None, candidates: list, best: int | None, **kw) -> dict:
    return {
        "round": round_,
        "opened_at": 0.0,
        "completed_at": 1.0,
        "init_checkpoint_uri": "s3://b/runs/r/checkpoints/init.pt",
        "input_losses": None,
        "mean_weights": mean,
        "candidates": candidates,
        "best_member": best,
        **kw,
    }


RUN_JSON: dict[str, Any] = {
    "id": "run<1>",
    "name": None,
    "status": "finished",
    "failure": None,
    "round": 2,
    "rounds": 2,
    "population": 3,
    "loss_names": ["semantic", "center"],
    "config": {},
    "created_at": 0.0,
    "updated_at": 0.0,
    "init_checkpoint_uri": "s3://b/runs/r/checkpoints/init.pt",
    "initial_losses": None,
    "current": None,
    "best": {
        "round": 2,
        "member": 1,
        "pq": 31.25,
        "weights": {"semantic": 1.5, "center": 180.0},
        "losses": {"semantic": 0.5, "center": 0.01},
        "checkpoint_uri": "s3://b/runs/r/checkpoints/r002-m01.pt",
    },
    "history": [
        round_record(0, None, [candidate(0, {"semantic": 1.0, "center": 1.0}, 10.0)], 0),
        round_record(
            1,
            {"semantic": 1.2, "center": 150.0},
            [
                candidate(0, {"semantic": 1.1, "center": 140.0}, 20.0),
                candidate(1, {"semantic": 0.1, "center": 150.0}, None, outcome="failed"),
                candidate(2, {"semantic": 1.3, "center": 160.0}, 26.0),
            ],
            2,
            invalid_draws=4,
        ),
        round_record(
            2,
            {"semantic": 1.4, "center": 175.0},
            [
                candidate(0, {"semantic": 1.2, "center": 170.0}, None, outcome="diverged"),
                candidate(1, {"semantic": 1.5, "center": 180.0}, 31.25),
                candidate(2, {"semantic": 1.6, "center": 190.0}, 28.75),
            ],
            1,
        ),
    ],
}
RUN = RunRecord.model_validate(RUN_JSON)


def test_search_metrics_are_the_best_member() -> None:
    assert report.search_metrics(RUN) == {
        "best_pq": 31.25,
        "best_round": 2.0,
        "best_member": 1.0,
        "rounds": 2.0,
        "population": 3.0,
        "best_weight_semantic": 1.5,
        "best_weight_center": 180.0,
    }
    running = RUN.model_copy(update={"best": None, "status": "running"})
    with pytest.raises(ValueError, match="has no best member yet .status 'running'"):
        report.search_metrics(running)


def test_round_rows_count_trained_invalid_diverged_and_failed_members() -> None:
    rows = report.round_rows(RUN)
    counts = [(r["trained"], r["invalid"], r["diverged"], r["failed"]) for r in rows]
    assert counts == [(1, 0, 0, 0), (2, 4, 0, 1), (2, 0, 1, 0)]
    assert [(r["round"], r["best_pq"], r["mean_pq"]) for r in rows] == [
        (0, 10.0, 10.0),
        (1, 26.0, 23.0),  # (20 + 26) / 2; the failed member has no PQ
        (2, 31.25, 30.0),  # (31.25 + 28.75) / 2; the diverged member has no PQ
    ]
    assert rows[1]["mean_weights"] == {"semantic": 1.2, "center": 150.0}


def test_search_markdown_has_the_best_and_a_row_per_round() -> None:
    text = report.search_markdown(RUN)
    assert "Best PQ **31.25** (round 2, member 1: the model the run ends with)" in text
    assert "`s3://b/runs/r/checkpoints/r002-m01.pt`" in text
    assert "| round | mean λ semantic | mean λ center | best PQ | mean PQ |" in text
    assert "| 0 | – | – | 10.00 | 10.00 | 0 | 1 | 0 | 0 | 0 |" in text
    assert "| 1 | 1.2 | 150 | 26.00 | 23.00 | 2 | 2 | 4 | 0 | 1 |" in text
    assert "| 2 | 1.4 | 175 | 31.25 | 30.00 | 1 | 2 | 0 | 1 | 0 |" in text


def test_markdown_escapes_loss_names_run_ids_and_uris() -> None:
    """Loss names, run ids and URIs are user input: a ``|`` must not split a table cell, a
    backtick must not close a code span, and HTML or a link must stay text."""
    hostile = RUN_JSON | {
        "id": "r`1",
        "loss_names": ["a|b", "<img src=x onerror=alert(1)>"],
        "best": RUN_JSON["best"]
        | {
            "weights": {"a|b": 1.0, "<img src=x onerror=alert(1)>": 2.0},
            "losses": {"a|b": 1.0, "<img src=x onerror=alert(1)>": 2.0},
            "checkpoint_uri": "s3://b/`x` [y](javascript:z)",
        },
        "history": [],
    }
    text = report.search_markdown(RunRecord.model_validate(hostile))
    assert "<img" not in text and "&lt;img src=x onerror=alert\\(1\\)&gt;" in text
    assert "a\\|b" in text and "| a\\|b |" in text  # one header cell, not two
    assert "``r`1``" in text and "``s3://b/`x` [y](javascript:z)``" in text
    assert report.md("[x](javascript:y)") == "\\[x\\]\\(javascript:y\\)"


def test_search_html_inlines_figures_and_escapes_text() -> None:
    png = b"\x89PNG fake"
    page = report.search_html(RUN, {"PQ <per> round": png})
    assert "run&lt;1&gt;" in page and "run<1>" not in page
    assert "<h2>PQ &lt;per&gt; round</h2>" in page
    assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in page
    assert page.count("<tr>") == 1 + 1 + 1 + 3  # weights header+row, rounds header + 3 rounds


def test_transfer_metrics_keep_the_finite_quality_and_cost_fields() -> None:
    metrics = {
        "pq": 40.5,
        "sq": 80.0,
        "rq": 50.0,
        "pq_th": None,  # no things in the split
        "pq_st": float("nan"),
        "epochs": 3,
        "world_size": True,  # not a number, even if Python says so
        "seed": 7,  # not a result
        "mode": "ensemble",
        "weights": [{"semantic": 1.0}],
    }
    assert report.transfer_metrics(metrics) == {"pq": 40.5, "sq": 80.0, "rq": 50.0, "epochs": 3.0}
    with pytest.raises(ValueError, match="transfer metrics have no PQ .pq=None, diverged='nan"):
        report.transfer_metrics({"pq": None, "diverged": "nan loss"})


def test_transfer_markdown_lists_the_weights_of_every_epoch() -> None:
    metrics = {
        "pq": 40.5,
        "mode": "ensemble",
        "policy_run": "r1",
        "weights": [{"semantic": 1.0, "center": 1.0}, {"semantic": 1.25, "center": 210.0}],
    }
    text = report.transfer_markdown("t1", "file:///s/transfers/t1/final.pt", metrics)
    assert "Policy run `r1`, mode `ensemble`, checkpoint `file:///s/transfers/t1/final.pt`" in text
    assert "| pq |\n|---:|\n| 40.5 |" in text
    assert "| epoch | semantic | center |" in text
    assert "| 2 | 1.25 | 210 |" in text
