"""Runs: create, list, read, and read their rounds."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from controller_service.api.dependencies import RunId, ServiceDep
from controller_service.contract import schemas
from controller_service.runs import RunSpec

router = APIRouter(prefix="/runs", tags=["runs"])


@router.post("", status_code=201, response_model=schemas.RunRecord)
def create_run(body: schemas.CreateRunRequest, svc: ServiceDep) -> dict[str, Any]:
    given = body.model_dump(include=body.model_fields_set | {"loss_names"})
    return svc.repository.create(RunSpec.from_request(given))


@router.get("", response_model=list[schemas.RunRecord])
def list_runs(svc: ServiceDep) -> list[dict[str, Any]]:
    """Every run, without its rounds (``GET /v1/runs/{run}/rounds`` has them)."""
    return svc.repository.list()


@router.get("/{run_id}", response_model=schemas.RunRecord)
def get_run(
    svc: ServiceDep,
    run_id: RunId,
    history: Annotated[bool, Query(description="include every completed round (large)")] = False,
) -> dict[str, Any]:
    return svc.repository.get(run_id, history=history)


@router.get("/{run_id}/rounds", response_model=list[schemas.RoundRecord])
def list_rounds(
    svc: ServiceDep,
    run_id: RunId,
    start: Annotated[int, Query(ge=0, description="first round")] = 0,
    stop: Annotated[int | None, Query(ge=0, description="one past the last round")] = None,
) -> list[dict[str, Any]]:
    """The completed rounds ``start..stop-1`` (round 0 is the pseudo epoch)."""
    return svc.repository.rounds(run_id, start, stop)


@router.get("/{run_id}/rounds/current", response_model=schemas.OpenRound)
def open_round(run_id: RunId, svc: ServiceDep) -> dict[str, Any]:
    """The open round: every member's status, worker, deadline and attempts (409 if none)."""
    return svc.repository.open_round(run_id)


@router.get("/{run_id}/rounds/{round_}", response_model=schemas.RoundRecord)
def get_round(
    svc: ServiceDep,
    run_id: RunId,
    round_: Annotated[int, Path(ge=0, le=10_000)],
    metrics: Annotated[bool, Query(description="include each report's free-form metrics")] = False,
) -> dict[str, Any]:
    return svc.repository.round(run_id, round_, metrics=metrics)
