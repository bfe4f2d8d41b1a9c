"""The :class:`~controller_service.ui.model.RunSource` over today's ``RunRepository``.

The one module of the dashboard that knows the repository: when the repository
changes, only this adapter is rewritten. Records are passed through as the
REST API returns them (no copies of the history). The open round's leases are
not in the run record (it has only counts), so :meth:`open_round` reads the
repository's in-memory state, read-only, under the run's lock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from controller_service.runs import RunRepository
from controller_service.ui.model import (
    DEFAULT_STRATEGY,
    OpenRound,
    RoundRecord,
    RunInfo,
    RunSummary,
)


def _strategy(record: Mapping[str, Any]) -> str:
    return record.get("strategy") or DEFAULT_STRATEGY


def _info(record: Mapping[str, Any]) -> RunInfo:
    info = {key: value for key, value in record.items() if key != "history"}
    info["strategy"] = _strategy(record)
    return info  # type: ignore[return-value]


class RepositoryRunSource:
    """Reads runs from a :class:`RunRepository` (the service's own, in the same process)."""

    def __init__(self, repository: RunRepository) -> None:
        self.repository = repository

    def list_runs(self) -> Sequence[RunSummary]:
        return [
            {
                "id": record["id"],
                "name": record["name"],
                "status": record["status"],
                "strategy": _strategy(record),
                "round": record["round"],
                "rounds": record["rounds"],
                "best_pq": record["best"]["pq"] if record["best"] else None,
                "created_at": record["created_at"],
                "updated_at": record["updated_at"],
            }
            for record in self.repository.list()
        ]

    def run(self, run_id: str) -> RunInfo:
        return _info(self.repository.get(run_id))

    def rounds(self, run_id: str) -> Sequence[RoundRecord]:
        return self.repository.get(run_id)["history"]

    def open_round(self, run_id: str) -> OpenRound | None:
        repository = self.repository
        slot = repository._slot(run_id)  # RunNotFound is a LookupError
        with slot.cond:
            state = repository._load(run_id, slot)
            current = state["current"]
            if current is None:
                return None
            return {
                "round": current["round"],
                "opened_at": current["opened_at"],
                "init_checkpoint_uri": current["draw"]["init_checkpoint_uri"],
                "mean_weights": dict(current["draw"]["mean_weights"]),
                "members": [
                    {
                        "member": m["member"],
                        "status": m["status"],
                        "worker": m["worker"],
                        "deadline": m["deadline"],
                        "attempts": m["attempts"],
                    }
                    for m in current["members"]
                ],
            }

    def policy(self, run_id: str) -> Mapping[str, Any] | None:
        return self.repository.policy(run_id)  # every run today has a policy network
