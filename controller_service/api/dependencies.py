"""What the routers share, as FastAPI dependencies: the repository, the metrics, the
long-poll waiters and the settings, all created once by ``create_app``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPBearer

from controller_service.api.health import Liveness
from controller_service.api.metrics import ServiceMetrics
from controller_service.api.settings import Settings
from controller_service.api.waiters import RoundWaiters
from controller_service.contract.store import ObjectStore
from controller_service.runs import RunRepository


@dataclass
class Service:
    settings: Settings
    store: ObjectStore
    repository: RunRepository
    metrics: ServiceMetrics
    waiters: RoundWaiters
    liveness: Liveness


def service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(service)]
RunId = Annotated[str, Path(max_length=64, description="the run's id")]
AssignmentId = Annotated[
    str, Path(max_length=64, description="the assignment's id, e.g. r001-m03-a1")
]


# Documentation only: puts the bearer scheme into /openapi.json when the service has a
# token. It never refuses anything (auto_error=False): BearerAuth checks, before the body.
bearer_scheme = HTTPBearer(auto_error=False, description="ADASEG_TOKEN, when the service has one")
