"""Open probes: liveness, readiness and Prometheus metrics (no token, no body)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from controller_service.api.dependencies import ServiceDep
from controller_service.contract import schemas

router = APIRouter(tags=["probes"])


@router.get("/healthz", response_model=schemas.Status, responses={503: {"model": schemas.Status}})
async def healthz(svc: ServiceDep) -> JSONResponse:
    """200 while the process makes progress; 503 (with why) when it cannot: restart it."""
    problems = await svc.liveness.problems()
    if problems:
        return JSONResponse({"status": "wedged", "detail": "; ".join(problems)}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get(
    "/readyz",
    response_model=schemas.Status,
    response_model_exclude_none=True,
    responses={503: {"model": schemas.ErrorResponse}},
)
def readyz(svc: ServiceDep) -> dict[str, str]:
    """200 when the store can be read and written (and has room) and this controller holds
    its writer lease; otherwise 503 with the reason."""
    svc.store.check()  # StoreError -> 503
    svc.liveness.writer.check()
    return {"status": "ready"}


@router.get("/metrics", response_class=Response)
def prometheus_metrics(svc: ServiceDep) -> Response:
    return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
