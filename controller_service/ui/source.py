"""The :class:`~controller_service.ui.model.RunSource` over the service's ``RunRepository``.

The one module of the dashboard that knows the repository. It reads the same
views the REST API answers with (run records without history, the stored round
records, the open round's leases) and maps a member's ``outcome`` onto the
pages' vocabulary: a member that diverged or failed has no PQ and is marked as
such, with its reason ("failed: ..." for a member the trainers could not train).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from controller_service.runs import RunConflict, RunRepository
from controller_service.ui.model import OpenRound, RoundRecord, RunInfo, RunSummary


def _candidate(candidate: Mapping[str, Any]) -> dict[str, Any]:
    outcome = candidate.get("outcome", "trained")
    reason = candidate.get("reason")
    if outcome == "failed":
        reason = f"failed: {reason}"
    return {**candidate, "valid": True, "diverged": outcome != "trained", "reason": reason}


def _round(record: Mapping[str, Any]) -> RoundRecord:
    return {**record, "candidates": [_candidate(c) for c in record["candidates"]]}  # type: ignore[typeddict-item]


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
                "strategy": record["strategy"],
                "round": record["round"],
                "rounds": record["rounds"],
                "best_pq": record["best"]["pq"] if record["best"] else None,
                "created_at": record["created_at"],
                "updated_at": record["updated_at"],
            }
            for record in self.repository.list()
        ]

    def run(self, run_id: str) -> RunInfo:
        return self.repository.get(run_id)  # type: ignore[return-value]

    def rounds(self, run_id: str) -> Sequence[RoundRecord]:
        return [_round(record) for record in self.repository.rounds(run_id)]

    def open_round(self, run_id: str) -> OpenRound | None:
        try:
            current = self.repository.open_round(run_id)
        except RunConflict:  # the run has ended
            return None
        return {
            "round": current["round"],
            "opened_at": current["opened_at"],
            "init_checkpoint_uri": current["init_checkpoint_uri"],
            "mean_weights": current["mean_weights"],
            "members": [
                {
                    "member": m["member"],
                    "status": "failed" if m["outcome"] == "failed" else m["status"],
                    "worker": m["worker"],
                    "deadline": m["deadline"],
                    "attempts": m["attempts"],
                }
                for m in current["leases"]
            ],
        }

    def policy(self, run_id: str) -> Mapping[str, Any] | None:
        try:
            return self.repository.policy(run_id)
        except RunConflict:  # a strategy without a policy (PBT)
            return None
