"""Object keys of the storage layout (docs/design.md, "Storage"), in one place.

Every process (controller, worker, transfer trainer, pipeline, demo, benchmark)
builds keys through these functions, so the layout can change only here.

```
controller.lock                                   the writer lease of the controller
runs/{run}/state.json                             the run's base state (rewritten once per round)
runs/{run}/log/{base:06d}-{seq:06d}.json          changes since that base (group commits)
runs/{run}/rounds/r{t:03d}.json                   a completed round, written once
runs/{run}/reports/r{t:03d}-m{j:02d}.json         a report's free-form metrics, written once
runs/{run}/policy/round-{t:03d}.json              policy snapshot pi^t
runs/{run}/checkpoints/init.pt                    the common initial model
runs/{run}/checkpoints/r{t:03d}-m{j:02d}.pt       member j's model after round t
runs/{run}/eval/{split}-metrics.json             PQ of the run's best model on a split
transfers/{job}/...                               transfer and baseline runs
```
"""

from __future__ import annotations

WRITER_LOCK_KEY = "controller.lock"


def run_prefix(run_id: str) -> str:
    return f"runs/{run_id}/"


def run_state_key(run_id: str) -> str:
    return f"runs/{run_id}/state.json"


def run_log_prefix(run_id: str, base: int | None = None) -> str:
    """The log of the run (``base`` None), or of one base state of it."""
    return f"runs/{run_id}/log/" if base is None else f"runs/{run_id}/log/{base:06d}-"


def run_log_key(run_id: str, base: int, seq: int) -> str:
    return f"runs/{run_id}/log/{base:06d}-{seq:06d}.json"


def round_record_key(run_id: str, round_: int) -> str:
    return f"runs/{run_id}/rounds/r{round_:03d}.json"


def report_metrics_key(run_id: str, round_: int, member: int) -> str:
    return f"runs/{run_id}/reports/r{round_:03d}-m{member:02d}.json"


def policy_snapshot_key(run_id: str, round_: int) -> str:
    return f"runs/{run_id}/policy/round-{round_:03d}.json"


def init_checkpoint_key(run_id: str) -> str:
    """The common initial model of the run, saved by round 0 before it trains."""
    return f"runs/{run_id}/checkpoints/init.pt"


def member_checkpoint_key(run_id: str, round_: int, member: int) -> str:
    return f"runs/{run_id}/checkpoints/r{round_:03d}-m{member:02d}.pt"


def run_eval_key(run_id: str, split: str) -> str:
    """PQ of a run's best checkpoint on ``split`` (the demo's Ada-Segment-A row)."""
    return f"runs/{run_id}/eval/{split}-metrics.json"


def transfer_prefix(transfer_id: str) -> str:
    return f"transfers/{transfer_id}/"


def transfer_key(transfer_id: str, name: str) -> str:
    """An object of a transfer run, e.g. ``final.pt`` or ``metrics.json``."""
    return f"transfers/{transfer_id}/{name}"
