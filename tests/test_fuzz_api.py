"""Hostile input, generated: schemathesis against the live service, with and without a token.

Every operation of ``/openapi.json`` gets requests generated from its schema, valid and
invalid (wrong types, out-of-range numbers, missing fields, odd path segments), half of
them aimed at a real run and a real assignment so they reach the state machine. Every
request must be answered within a few seconds, and never with a 5xx: a refusal is a 4xx
that changes nothing, and no input may wedge the service.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from controller_service.contract.client import ControllerClient
from tests.fixtures.controller import ControllerProcess

NAMES = ["semantic", "center", "offset"]
EXAMPLES_PER_OPERATION = 15  # x 2 modes x 13 operations: ~300 requests per controller
ANSWER_WITHIN = 5.0  # seconds


def real_targets(controller: ControllerProcess, token: str | None) -> dict[str, str]:
    """A run past its pseudo epoch with a leased member, for generated requests to hit."""
    client = ControllerClient(controller.url, token=token)
    run = client.create_run(NAMES, population=2, rounds=2, seed=1, lease_seconds=60)
    zero = client.lease(run.id, "fuzz-0").assignment
    client.report(run.id, zero.id, dict.fromkeys(NAMES, 1.0), 10.0, zero.checkpoint_uri)
    leased = client.lease(run.id, "fuzz-1").assignment
    return {"run_id": run.id, "assignment_id": leased.id}


def fuzz(controller: ControllerProcess, token: str | None) -> Counter:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    openapi = httpx.get(controller.url + "/openapi.json", timeout=5).json()
    schema = schemathesis.openapi.from_dict(openapi)
    targets = real_targets(controller, token)
    statuses: Counter = Counter()
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = st.tuples(operation.as_strategy(generation_mode=mode), st.booleans())

            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(strategy)
            def probe(drawn: tuple[Any, bool]) -> None:
                case, aim = drawn
                if aim and case.path_parameters:
                    for name, value in targets.items():
                        if name in case.path_parameters:
                            case.path_parameters[name] = value
                began = time.monotonic()
                try:
                    response = case.call(
                        base_url=controller.url, headers=headers, timeout=ANSWER_WITHIN
                    )
                except Exception as exc:  # noqa: BLE001 - no answer in time is the failure
                    failures.append(f"{case.method} {case.formatted_path}: {exc!r}")
                    return
                statuses[response.status_code] += 1
                if response.status_code >= 500 or time.monotonic() - began > ANSWER_WITHIN:
                    failures.append(
                        f"{case.method} {case.formatted_path} -> {response.status_code}: "
                        f"{response.text[:300]}"
                    )

            try:
                probe()
            except Unsatisfiable:  # nothing invalid can be made (e.g. GET /healthz has no input)
                assert mode is GenerationMode.NEGATIVE, operation.label
    assert not failures, "\n".join(failures[:20])
    return statuses


@pytest.mark.parametrize("token", [None, "fuzz-token"])
def test_generated_requests_get_no_5xx_and_an_answer_in_time(controller_factory, token):
    controller = controller_factory(token=token, env={"ADASEG_LEASE_HOLD_SECONDS": "1"})
    statuses = fuzz(controller, token)
    print(f"token {token is not None}: {sum(statuses.values())} requests, {dict(statuses)}")
    assert sum(statuses.values()) >= 200, statuses
    assert statuses[200] + statuses[201] > 0 and statuses[422] > 0, statuses  # it reached both
    assert httpx.get(controller.url + "/healthz", timeout=5).status_code == 200
