"""What transfer runs and external trainers call: the policy, and loss weights (Eq. 7)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from controller_service.api.dependencies import RunId, ServiceDep
from controller_service.contract import schemas

router = APIRouter(prefix="/runs/{run_id}", tags=["transfer"])


@router.get("/policy", response_model=schemas.PolicyDocument)
def policy(run_id: RunId, svc: ServiceDep) -> dict[str, Any]:
    """Every policy snapshot as plain lists, for any language (409 without a policy)."""
    return svc.repository.policy(run_id)


@router.post("/weights", response_model=schemas.WeightsResponse)
def weights(body: schemas.WeightsRequest, run_id: RunId, svc: ServiceDep) -> dict[str, Any]:
    return svc.repository.weights(
        run_id, body.losses, body.epoch, body.epochs, body.mode, body.gamma
    )
