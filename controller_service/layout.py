"""Object keys of the storage layout pinned in DESIGN.md, in one place.

Every process (controller, worker, transfer trainer, pipeline, demo) builds
keys through these functions, so the layout can change only here.
"""

from __future__ import annotations


def run_prefix(run_id: str) -> str:
    return f"runs/{run_id}/"


def run_state_key(run_id: str) -> str:
    return f"runs/{run_id}/state.json"


def policy_snapshot_key(run_id: str, round_: int) -> str:
    return f"runs/{run_id}/policy/round-{round_:03d}.json"


def init_checkpoint_key(run_id: str) -> str:
    """The common initial model of the run, saved by round 0 before it trains."""
    return f"runs/{run_id}/checkpoints/init.pt"


def member_checkpoint_key(run_id: str, round_: int, member: int) -> str:
    return f"runs/{run_id}/checkpoints/r{round_:03d}-m{member:02d}.pt"


def transfer_prefix(transfer_id: str) -> str:
    return f"transfers/{transfer_id}/"


def transfer_key(transfer_id: str, name: str) -> str:
    """An object of a transfer run, e.g. ``final.pt`` or ``metrics.json``."""
    return f"transfers/{transfer_id}/{name}"
