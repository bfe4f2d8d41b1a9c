"""`adaseg demo --quick` end to end: real processes, real training, numbers from the store."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from controller_service.store import open_store

ROW = re.compile(
    r"^(baseline|Ada-Segment-A|Ada-Segment \(transfer)[^\d]*?\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)"
)


def _demo(out: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "controller_service", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _table(stdout: str) -> dict[str, tuple[float, float, float]]:
    rows = {}
    for line in stdout.splitlines():
        match = ROW.match(line)
        if match:
            rows[match.group(1)] = tuple(float(x) for x in match.groups()[1:])
    return rows


@pytest.mark.slow
def test_quick_demo_prints_numbers_that_are_in_the_store(tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    stdout = _demo(out)
    table = _table(stdout)
    assert set(table) == {"baseline", "Ada-Segment-A", "Ada-Segment (transfer"}, stdout

    tag = re.search(r"adaseg demo (demo-[0-9a-f]+)", stdout).group(1)
    run_id = re.search(r"created run ([0-9a-f]+)", stdout).group(1)
    store = open_store((out / "store").as_uri())
    sources = {
        "baseline": f"transfers/{tag}-equal/metrics.json",
        "Ada-Segment-A": f"runs/{run_id}/eval/val-metrics.json",
        "Ada-Segment (transfer": f"transfers/{tag}-ensemble/metrics.json",
    }
    for row, key in sources.items():
        metrics = store.get_json(key)
        printed = table[row]
        assert printed == pytest.approx(
            (metrics["pq"], metrics["pq_th"], metrics["pq_st"]), abs=0.006
        ), row

    # The checkpoints behind those numbers exist and the run really went through its rounds.
    state = json.loads(store.get(f"runs/{run_id}/state.json"))
    assert state["status"] == "finished"
    assert store.exists(f"transfers/{tag}-equal/final.pt")
    assert store.exists(f"transfers/{tag}-ensemble/final.pt")
    assert store.exists(f"runs/{run_id}/checkpoints/init.pt")
    assert len(store.list(f"runs/{run_id}/policy/")) == 2  # --quick: 2 rounds
    assert store.get_json(sources["Ada-Segment-A"])["checkpoint_uri"].startswith(store.uri)
    for name in ("weights_per_round", "pq_per_round", "predictions"):
        png = out / "plots" / tag / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Running it again resumes from the store: nothing is trained twice, same table.
    again = _demo(out)
    assert again.count("already done") == 3 and "exploration already finished" in again
    assert _table(again) == table
