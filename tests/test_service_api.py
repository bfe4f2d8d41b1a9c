"""The REST API of the real service process: refusals, auth, probes, metrics, OpenAPI.

Every bad input is sent as raw bytes (so NaN/Infinity tokens, malformed JSON and
wrong types reach the server as a careless client would send them) and must
get a clear 4xx naming what is wrong, with the run's state file byte-identical
and no new object in the store.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller_service.api.settings import DEFAULT_LEASE_HOLD_SECONDS
from controller_service.contract.client import ControllerClient, Unauthorized
from controller_service.contract.keys import run_state_key
from controller_service.contract.store import FileStore
from tests.fixtures.controller import ControllerProcess, start_controller

NAMES = ["semantic", "center", "offset"]
LOSSES = {"semantic": 1.5, "center": 0.2, "offset": 3.0}
WRONG_NAME = {"semantic": 1.5, "centre": 0.2, "offset": 3.0}
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def service(shared_controller: ControllerProcess) -> ControllerProcess:
    return shared_controller


@pytest.fixture(scope="module")
def store(service: ControllerProcess) -> FileStore:
    return store_of(service)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerProcess]:
    """A controller with ``ADASEG_TOKEN`` set, shared by the auth tests of this module."""
    root = tmp_path_factory.mktemp("secured-controller")
    (root / "store").mkdir()
    controller = start_controller((root / "store").as_uri(), token=TOKEN, log_dir=root)
    yield controller
    controller.stop()


def store_of(controller: ControllerProcess) -> FileStore:
    return FileStore(Path(controller.store_uri.removeprefix("file://")))


@pytest.fixture(scope="module")
def open_run(service: ControllerProcess) -> dict[str, Any]:
    """A run past its pseudo epoch, with member 0 of round 1 leased: ``{run, assignment}``."""
    client = ControllerClient(service.url)
    run = client.create_run(NAMES, population=2, rounds=2, seed=3, name="api")
    zero = client.lease(run.id, "w0").assignment
    client.report(run.id, zero.id, LOSSES, 30.0, zero.checkpoint_uri)
    assignment = client.lease(run.id, "w1").assignment
    return {"run": run.id, "assignment": assignment.id, "checkpoint": assignment.checkpoint_uri}


CHECKPOINT = "__checkpoint_uri__"  # replaced by the open run's own checkpoint URI


def post(service: ControllerProcess, path: str, body: Any, **kw: Any) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    if "checkpoint" in kw:
        content = content.replace(CHECKPOINT, kw.pop("checkpoint"))
    headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
    return httpx.post(service.url + path, content=content, headers=headers, timeout=10, **kw)


def detail_text(response: httpx.Response) -> str:
    return json.dumps(response.json()["detail"])


def snapshot_store(store: FileStore) -> dict[str, bytes]:
    return {key: store.get(key) for key in store.list()}


def metric_samples(service: ControllerProcess) -> dict[str, float]:
    """``GET /metrics`` as ``{'name{labels}': value}``."""
    response = httpx.get(service.url + "/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


REJECTED_REPORTS = 'adaseg_reports_total{outcome="rejected"}'


def good_report(**changes: Any) -> dict[str, Any]:
    return {"losses": dict(LOSSES), "pq": 41.0, "checkpoint_uri": CHECKPOINT, **changes}


def raw_report(loss_token: str) -> str:
    """A report whose ``center`` loss is a bare JSON token such as NaN or -Infinity."""
    return (
        '{"losses": {"semantic": 1.0, "center": ' + loss_token + ', "offset": 1.0}, '
        '"pq": 40.0, "checkpoint_uri": "' + CHECKPOINT + '"}'
    )


BAD_REPORTS = [
    pytest.param(good_report(losses={"semantic": 1, "center": 1}), 422, "missing", id="too-few"),
    pytest.param(good_report(losses={**LOSSES, "box": 1.0}), 422, "box", id="unknown-loss"),
    pytest.param(good_report(losses=WRONG_NAME), 422, "centre", id="wrong-name"),
    pytest.param(raw_report("NaN"), 422, "center", id="nan-loss"),
    pytest.param(raw_report("Infinity"), 422, "center", id="inf-loss"),
    pytest.param(raw_report("-Infinity"), 422, "center", id="minus-inf-loss"),
    pytest.param(raw_report("0"), 422, "center", id="zero-loss"),
    pytest.param(raw_report("-0.5"), 422, "center", id="negative-loss"),
    pytest.param(raw_report('"1.0"'), 422, "center", id="string-loss"),
    pytest.param(good_report(pq=100.01), 422, "pq", id="pq-above-100"),
    pytest.param(good_report(pq=-1), 422, "pq", id="pq-negative"),
    pytest.param(raw_report("1.0").replace("40.0", "NaN"), 422, "pq", id="pq-nan"),
    pytest.param(good_report(pq="high"), 422, "pq", id="pq-string"),
    pytest.param(good_report(losses=[1, 2, 3]), 422, "losses", id="losses-list"),
    pytest.param(good_report(checkpoint_uri=5), 422, "checkpoint_uri", id="uri-number"),
    pytest.param(good_report(lossses={}), 422, "lossses", id="unknown-field"),
    pytest.param(good_report(metrics={"x": math.inf}), 422, "metrics", id="metrics-inf"),
    pytest.param(good_report(checkpoint_uri="file:///etc/passwd"), 422, "checkpoint_uri",
                 id="uri-outside-the-store"),
    pytest.param(good_report(checkpoint_uri="s3://other-bucket/x.pt"), 422, "checkpoint_uri",
                 id="uri-other-bucket"),
    pytest.param(good_report(losses_hold=1), 422, "losses_hold", id="unknown-field-2"),
    pytest.param({"failed": True}, 422, "reason", id="failed-without-reason"),
    pytest.param({"failed": True, "diverged": True, "reason": "x"}, 422, "failed",
                 id="failed-and-diverged"),
    pytest.param({"diverged": "yes", "reason": "x"}, 422, "diverged", id="diverged-string"),
    pytest.param({"diverged": True}, 422, "reason", id="diverged-without-reason"),
    pytest.param('{"losses": {"semantic": 1.0,', 422, "json", id="malformed-json"),
    pytest.param("", 422, "body", id="empty-body"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "named"), BAD_REPORTS)
def test_bad_reports_are_refused_and_change_nothing(service, store, open_run, body, status, named):
    before = snapshot_store(store)
    path = f"/v1/runs/{open_run['run']}/assignments/{open_run['assignment']}/report"
    response = post(service, path, body, checkpoint=open_run["checkpoint"])
    assert response.status_code == status, response.text
    assert named in detail_text(response).lower()
    assert snapshot_store(store) == before


def test_unknown_run_assignment_and_oversized_bodies_are_refused(service, store, open_run):
    run, assignment = open_run["run"], open_run["assignment"]
    before = snapshot_store(store)
    state_before = store.get(run_state_key(run))

    cases = [
        (f"/v1/runs/nope/assignments/{assignment}/report", good_report(), 404),
        (f"/v1/runs/{run}/assignments/r001-m01-a7/report", good_report(), 404),
        (f"/v1/runs/{run}/assignments/garbage/heartbeat", {}, 404),
        ("/v1/runs/nope/leases", {"worker": "w"}, 404),
        (f"/v1/runs/{run}/leases", {"worker": 7}, 422),
        (f"/v1/runs/{run}/leases", {}, 422),
    ]
    for path, body, status in cases:
        response = post(service, path, body, checkpoint=open_run["checkpoint"])
        assert response.status_code == status, (path, response.text)
        assert response.json()["detail"]
    for path in ("/v1/runs/nope", "/v1/runs/..%2F..%2Fetc", "/v1/runs/nope/policy"):
        response = httpx.get(service.url + path)
        assert response.status_code == 404 and response.json()["detail"], path

    report_path = f"/v1/runs/{run}/assignments/{assignment}/report"
    rejected_before = metric_samples(service)[REJECTED_REPORTS]
    huge = good_report(metrics={"blob": "x" * (2 << 20)})
    response = post(service, report_path, huge)  # Content-Length over ADASEG_MAX_BODY_BYTES
    assert response.status_code == 413 and "larger than" in response.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the streamed size is limited too
        yield b'{"losses": {}, "metrics": {"blob": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}}'

    response = httpx.post(service.url + report_path, content=chunks(), timeout=10)
    assert response.status_code == 413
    assert metric_samples(service)[REJECTED_REPORTS] == rejected_before + 2  # both 413s count
    assert store.get(run_state_key(run)) == state_before
    assert snapshot_store(store) == before


BAD_RUNS = [
    pytest.param({"loss_names": NAMES, "population": 1}, "population", id="population-1"),
    pytest.param({"loss_names": NAMES, "rounds": 0}, "rounds", id="rounds-0"),
    pytest.param({"loss_names": NAMES, "sigma": 0}, "sigma", id="sigma-0"),
    pytest.param({"loss_names": NAMES, "sigma": -0.2}, "sigma", id="sigma-negative"),
    pytest.param({"loss_names": NAMES, "sigma_mode": "wild"}, "sigma_mode", id="sigma-mode"),
    pytest.param({"loss_names": ["a", "a"]}, "duplicate", id="duplicate-names"),
    pytest.param({"loss_names": []}, "loss_names", id="no-losses"),
    pytest.param({"loss_names": ["a", ""]}, "loss_names", id="empty-name"),
    pytest.param({"loss_names": NAMES, "lease_seconds": 0}, "lease_seconds", id="lease-0"),
    pytest.param({"loss_names": NAMES, "lease_seconds": 0.001}, "lease_seconds", id="lease-1ms"),
    pytest.param({"loss_names": NAMES, "policy_lr": 1e300}, "policy_lr", id="policy-lr-huge"),
    pytest.param({"loss_names": NAMES, "sigma": 1e308, "sigma_mode": "absolute"}, "sigma",
                 id="sigma-huge"),
    pytest.param({"loss_names": NAMES, "strategy": "pbt", "policy_lr": 0.1}, "policy_lr",
                 id="option-of-another-strategy"),
    pytest.param({"loss_names": NAMES, "strategy": "grid"}, "strategy", id="unknown-strategy"),
    pytest.param({"loss_names": NAMES, "max_attempts": 0}, "max_attempts", id="attempts-0"),
    pytest.param({"loss_names": NAMES, "population": "8"}, "population", id="population-string"),
    pytest.param({"loss_names": NAMES, "population": 2.5}, "population", id="population-float"),
    pytest.param({"loss_names": NAMES, "reward_terms": "imp"}, "reward_terms", id="reward-terms"),
    pytest.param({"loss_names": NAMES, "populaton": 8}, "populaton", id="typo-field"),
    pytest.param({"population": 8}, "loss_names", id="no-loss-names"),
    pytest.param('{"loss_names": ["a",', "json", id="malformed-json"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "named"), BAD_RUNS)
def test_bad_run_creations_are_refused_and_create_nothing(service, store, body, named):
    before = snapshot_store(store)
    response = post(service, "/v1/runs", body)
    assert response.status_code == 422, response.text
    assert named in detail_text(response).lower()
    assert snapshot_store(store) == before


def test_weights_refusals(service, store, open_run):
    run = open_run["run"]
    before = snapshot_store(store)
    path = f"/v1/runs/{run}/weights"
    response = post(service, path, {"losses": LOSSES, "epoch": 1, "epochs": 4})
    assert response.status_code == 409 and "snapshot" in response.json()["detail"]
    bad = [
        ('{"losses": {"semantic": NaN, "center": 1, "offset": 1}, "epoch": 1, "epochs": 4}',
         "semantic"),
        ({"losses": {"semantic": 1.0}, "epoch": 1, "epochs": 4}, "missing"),
        ({"losses": LOSSES, "epoch": "one", "epochs": 4}, "epoch"),
        ({"losses": LOSSES, "epoch": 1}, "epochs"),
    ]  # fmt: skip
    for body, named in bad:
        response = post(service, path, body)
        assert response.status_code == 422, response.text
        assert named in detail_text(response)
    assert snapshot_store(store) == before


def test_probes_metrics_and_openapi(service, open_run):
    assert httpx.get(service.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(service.url + "/readyz").json() == {"status": "ready"}
    run = ControllerClient(service.url).get_run(open_run["run"])
    path = f"/v1/runs/{run.id}/assignments/{open_run['assignment']}/report"
    assert (
        post(service, path, good_report(pq=-5), checkpoint=open_run["checkpoint"]).status_code
        == 422
    )

    samples = metric_samples(service)
    assert samples['adaseg_runs{status="running"}'] >= 1
    assert samples[f'adaseg_run_best_pq{{run="{run.id}"}}'] == run.best.pq
    assert samples[f'adaseg_run_rounds_completed{{run="{run.id}"}}'] == run.completed_rounds
    assert samples["adaseg_leases_issued_total"] >= 2
    assert samples['adaseg_reports_total{outcome="accepted"}'] >= 1
    assert samples[REJECTED_REPORTS] >= 1
    assert "adaseg_leases_expired_total" in samples
    assert "adaseg_rounds_completed_total" in samples

    paths = httpx.get(service.url + "/openapi.json").json()["paths"]
    for expected in [
        "/v1/runs",
        "/v1/runs/{run_id}",
        "/v1/runs/{run_id}/leases",
        "/v1/runs/{run_id}/assignments/{assignment_id}/heartbeat",
        "/v1/runs/{run_id}/assignments/{assignment_id}/report",
        "/v1/runs/{run_id}/policy",
        "/v1/runs/{run_id}/weights",
        "/v1/runs/{run_id}/rounds",
        "/v1/runs/{run_id}/rounds/current",
        "/v1/runs/{run_id}/rounds/{round_}",
        "/healthz",
        "/readyz",
    ]:
        assert expected in paths, expected
    assert httpx.get(service.url + "/docs").status_code == 200
    # without a token, no operation claims to need one; the bounds are in the schema
    openapi = httpx.get(service.url + "/openapi.json").json()
    assert all("security" not in op for item in paths.values() for op in item.values())
    create = openapi["components"]["schemas"]["CreateRunRequest"]["properties"]
    assert create["population"]["minimum"] == 2 and create["lease_seconds"]["minimum"] == 1.0
    assert create["sigma"]["maximum"] == 1000.0 and create["policy_lr"]["exclusiveMinimum"] == 0


def test_token_auth_guards_v1_only(controller_factory):
    secured = controller_factory(token=TOKEN)  # its own store: no run exists
    url = secured.url
    assert httpx.get(url + "/v1/runs").status_code == 401
    wrong = httpx.get(url + "/v1/runs", headers={"Authorization": "Bearer s3cret-tokeN"})
    assert wrong.status_code == 401 and wrong.json()["detail"]
    assert wrong.headers["www-authenticate"] == "Bearer"
    basic = httpx.get(url + "/v1/runs", headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401
    response = post(secured, "/v1/runs", {"loss_names": NAMES}, headers={})
    assert response.status_code == 401  # refused before the body is even looked at
    ok = httpx.get(url + "/v1/runs", headers=AUTH)
    assert ok.status_code == 200 and ok.json() == []
    for open_path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert httpx.get(url + open_path).status_code == 200, open_path
    openapi = httpx.get(url + "/openapi.json").json()
    schemes = openapi["components"]["securitySchemes"]
    assert [scheme["scheme"] for scheme in schemes.values()] == ["bearer"]
    assert openapi["paths"]["/v1/runs"]["post"]["security"] == [{name: []} for name in schemes]

    with pytest.raises(Unauthorized, match="bearer token"):
        ControllerClient(url, token="nope").list_runs()
    assert ControllerClient(url, token=TOKEN).list_runs() == []


def test_auth_is_checked_before_the_body_is_parsed_or_measured(secured):
    malformed = '{"loss_names": ["a",'
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = post(secured, "/v1/runs", malformed, headers=headers)
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"
    response = post(secured, "/v1/runs", malformed, headers=AUTH)
    assert response.status_code == 422 and "json" in detail_text(response).lower()

    # 401 before 413 too: without the token, nothing about the body is judged
    huge = {"loss_names": NAMES, "name": "x" * (2 << 20)}
    assert post(secured, "/v1/runs", huge).status_code == 401
    assert post(secured, "/v1/runs", huge, headers=AUTH).status_code == 413


def test_refused_tokens_leave_the_run_and_the_store_byte_identical(secured):
    client = ControllerClient(secured.url, token=TOKEN)
    run = client.create_run(NAMES, population=2, rounds=1, seed=5, name="auth").id
    zero = client.lease(run, "w0").assignment.model_dump()
    store = store_of(secured)
    state_before, before = store.get(run_state_key(run)), snapshot_store(store)

    # each of these changes the store when it gets through (a new run, a fresh deadline
    # for w0's lease, the pseudo epoch completed) or reads the run (weights)
    requests = [
        ("/v1/runs", {"loss_names": NAMES}),
        (f"/v1/runs/{run}/leases", {"worker": "w0"}),
        (f"/v1/runs/{run}/assignments/{zero['id']}/heartbeat", {}),
        (
            f"/v1/runs/{run}/assignments/{zero['id']}/report",
            good_report(checkpoint_uri=zero["checkpoint_uri"]),
        ),
        (f"/v1/runs/{run}/weights", {"losses": LOSSES, "epoch": 1, "epochs": 4}),
    ]
    refused = [{}, {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Basic {TOKEN}"}]
    for headers in refused:
        for path, body in requests:
            response = post(secured, path, body, headers=headers)
            assert response.status_code == 401, (path, headers, response.text)
            assert store.get(run_state_key(run)) == state_before, (path, headers)
    assert snapshot_store(store) == before
    members = client.get_run(run).current.members
    assert members == {"pending": 0, "leased": 1, "done": 0, "failed": 0}

    # with the token the same heartbeat does change the store: the comparison has teeth
    time.sleep(0.01)  # a later clock, so the new deadline differs
    assert client.heartbeat(run, zero["id"]).state == "leased"
    assert snapshot_store(store) != before


def test_a_lease_held_without_work_answers_wait_after_the_configured_hold(controller_factory):
    hold = 0.3
    controller = controller_factory(env={"ADASEG_LEASE_HOLD_SECONDS": str(hold)})
    client = ControllerClient(controller.url)
    run = client.create_run(NAMES, population=2, rounds=1, seed=9).id
    client.lease(run, "first")  # the pseudo epoch's only member is out

    began = time.monotonic()
    response = post(controller, f"/v1/runs/{run}/leases", {"worker": "second"})
    elapsed = time.monotonic() - began
    answer = response.json()
    assert response.status_code == 200, response.text
    assert answer["state"] == "wait" and answer["retry_after"] > 0 and "assignment" not in answer
    assert float(response.headers["server-timing"].split("dur=")[1]) > 0.0  # it was held ...
    assert hold <= elapsed < DEFAULT_LEASE_HOLD_SECONDS  # ... for the setting, not the default


def test_a_lease_without_work_is_held_until_the_round_completes(service):
    client = ControllerClient(service.url, timeout=30)
    run = client.create_run(NAMES, population=2, rounds=1, seed=9).id
    zero = client.lease(run, "first").assignment  # the pseudo epoch's only member
    held: dict[str, Any] = {}

    def wait_for_work() -> None:
        response = post(service, f"/v1/runs/{run}/leases", {"worker": "second"})
        held["answer"], held["timing"] = response.json(), response.headers["server-timing"]

    waiter = threading.Thread(target=wait_for_work)
    waiter.start()
    time.sleep(0.3)  # the second worker is now held: round 0 has no free member
    assert waiter.is_alive()
    client.report(run, zero.id, LOSSES, 25.0, zero.checkpoint_uri)
    waiter.join(timeout=10)
    assert held["answer"]["state"] == "assigned"
    assert held["answer"]["assignment"]["round"] == 1
    assert float(held["timing"].split("dur=")[1]) > 0.0  # it waited for the round
