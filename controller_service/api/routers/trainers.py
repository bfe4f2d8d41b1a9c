"""What trainers call: lease an assignment, keep it alive, report it."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from controller_service.api.dependencies import AssignmentId, RunId, ServiceDep
from controller_service.contract import schemas
from controller_service.runs import MemberReport

router = APIRouter(prefix="/runs/{run_id}", tags=["trainers"])


@router.post("/leases", response_model=schemas.LeaseResponse, response_model_exclude_none=True)
async def lease(body: schemas.LeaseRequest, run_id: RunId, svc: ServiceDep) -> JSONResponse:
    """Long poll: while every member is leased or done, the request is held (no thread
    is) until the round completes or ``retry_after`` passes, up to the hold time; then
    it answers ``wait``. The time held is in the ``Server-Timing`` header."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    hold = svc.settings.lease_hold_seconds

    async def attempt() -> dict[str, Any]:
        return await run_in_threadpool(svc.repository.lease, run_id, body.worker)

    answer = await attempt()  # 404 for unknown runs before anything is registered
    first_answer, held = loop.time(), answer["state"] == "wait"
    while answer["state"] == "wait":
        remaining = hold - (loop.time() - began)
        if remaining <= 0:
            break
        future = svc.waiters.register(run_id, body.worker)
        try:
            answer = await attempt()
            if answer["state"] == "wait":
                served = await svc.waiters.wait(future, min(answer["retry_after"], remaining))
                # None: retry_after passed (a lease may have expired): look again
                answer = served if served is not None else await attempt()
        finally:
            svc.waiters.unregister(run_id, body.worker, future)
    held_ms = (loop.time() - first_answer) * 1000.0 if held else 0.0
    headers = {"Server-Timing": f"hold;dur={held_ms:.1f}"}
    return JSONResponse(answer, headers=headers)  # the schema documents it: no re-validation


@router.post("/assignments/{assignment_id}/heartbeat", response_model=schemas.HeartbeatResponse)
def heartbeat(run_id: RunId, assignment_id: AssignmentId, svc: ServiceDep) -> JSONResponse:
    return JSONResponse(svc.repository.heartbeat(run_id, assignment_id))


@router.post("/assignments/{assignment_id}/report", response_model=schemas.ReportResponse)
def report(
    svc: ServiceDep,
    body: schemas.ReportRequest,
    run_id: RunId,
    assignment_id: AssignmentId,
) -> JSONResponse:
    answer = svc.repository.report(run_id, assignment_id, MemberReport(**body.model_dump()))
    return JSONResponse(answer)
