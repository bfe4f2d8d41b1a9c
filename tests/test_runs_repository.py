"""The store-backed repository: durable before answering, transactional, bounded, migrating.

Real stores (a directory; moto's S3 server for the writer lease), no mocks of our code.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from controller_service.contract.keys import (
    WRITER_LOCK_KEY,
    policy_snapshot_key,
    round_record_key,
    run_log_prefix,
    run_state_key,
)
from controller_service.contract.store import FileStore, StoreError, open_store
from controller_service.runs import MemberReport, RunInputError, RunNotFound, RunRepository, RunSpec
from controller_service.runs import repository as repository_module
from controller_service.runs.ownership import StoreBusy, writer_lock
from tests.test_runs import GOOD_LOSSES, NAMES, result_of

DATA = Path(__file__).parent / "data"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_repository_writes_before_answering_and_a_new_one_continues(tmp_path):
    store = FileStore(tmp_path)
    clock = Clock()
    repo = RunRepository(store, clock=clock, new_id=lambda: "run1")
    run = repo.create(RunSpec(loss_names=NAMES, population=2, rounds=2, lease_seconds=10))
    assert run["config"]["seed"] is not None  # random but recorded

    zero = repo.lease("run1", "w")["assignment"]
    # what the answer said is in the store: a new repository sees the lease
    assert RunRepository(store, clock=clock).open_round("run1")["leases"][0]["worker"] == "w"
    repo.report("run1", zero["id"], result_of(zero))
    first = repo.lease("run1", "w")["assignment"]

    before = {key: store.get(key) for key in store.list("runs/")}
    with pytest.raises(RunInputError):
        repo.report("run1", first["id"], MemberReport(losses=GOOD_LOSSES, pq=math.nan))
    with pytest.raises(RunNotFound):
        repo.lease("../run1", "w")
    assert {key: store.get(key) for key in store.list("runs/")} == before

    # a second repository on the same store (a restarted service) takes over
    clock.now += 1
    restarted = RunRepository(store, clock=clock)
    assert [r["id"] for r in restarted.list()] == ["run1"]
    assert restarted.report("run1", first["id"], result_of(first))["state"] == "accepted"
    while (answer := restarted.lease("run1", "w"))["state"] == "assigned":
        restarted.report("run1", answer["assignment"]["id"], result_of(answer["assignment"]))
    assert answer == {"state": "finished"}
    assert store.exists(policy_snapshot_key("run1", 1)) and store.exists(
        policy_snapshot_key("run1", 2)
    )
    assert store.get_json(run_state_key("run1"))["status"] == "finished"
    document = restarted.policy("run1")
    assert [s["round"] for s in document["snapshots"]] == [1, 2]
    stored = store.get_json(policy_snapshot_key("run1", 2))
    assert document["snapshots"][1]["layers"] == stored["layers"]
    assert [r["round"] for r in restarted.rounds("run1")] == [0, 1, 2]
    assert restarted.get("run1", history=True)["history"] == restarted.rounds("run1")


def test_writes_cost_what_they_change_not_what_the_run_has_done(tmp_path):
    """A lease or a report appends one small log object; only a round completion rewrites
    the base, and the base does not grow with the rounds behind it."""
    store = FileStore(tmp_path)
    repo = RunRepository(store, new_id=lambda: "run1")
    repo.create(RunSpec(loss_names=NAMES, population=4, rounds=6, seed=3))
    base_sizes = []
    while (answer := repo.lease("run1", "w"))["state"] == "assigned":
        assignment = answer["assignment"]
        logs_before = set(store.list(run_log_prefix("run1")))
        repo.report("run1", assignment["id"], result_of(assignment))
        base = store.get_json(run_state_key("run1"))
        if base["completed_rounds"] > len(base_sizes):  # this report completed a round
            base_sizes.append(len(store.get(run_state_key("run1"))))
        else:
            new = set(store.list(run_log_prefix("run1"))) - logs_before
            assert len(new) == 1 and len(store.get(new.pop())) < 1024
    assert len(base_sizes) == 7
    # every base after round 1 holds one open round and the policy: the same size, +-5 %
    assert max(base_sizes[1:6]) < 1.05 * min(base_sizes[1:6])
    time.sleep(0.2)  # old log objects are deleted in the background
    assert len(store.list(run_log_prefix("run1"))) <= 1


def test_concurrent_workers_finish_a_run_and_the_store_has_every_change(tmp_path):
    store = FileStore(tmp_path)
    repo = RunRepository(store, new_id=lambda: "run1")
    repo.create(RunSpec(loss_names=NAMES, population=6, rounds=2, seed=5))
    answers: list[dict[str, Any]] = []

    def work(name: str) -> None:
        while (answer := repo.lease("run1", name))["state"] != "finished":
            if answer["state"] == "wait":
                time.sleep(0.01)
                continue
            assignment = answer["assignment"]
            answers.append(repo.report("run1", assignment["id"], result_of(assignment)))

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(answers) == 1 + 6 * 2 and all(a["state"] == "accepted" for a in answers)
    assert store.get_json(run_state_key("run1"))["status"] == "finished"
    assert RunRepository(store).get("run1", history=True) == repo.get("run1", history=True)


def test_a_failed_state_write_answers_503_and_changes_nothing(tmp_path):
    store = FileStore(tmp_path)
    repo = RunRepository(store, new_id=lambda: "run1")
    repo.create(RunSpec(loss_names=NAMES, population=2, rounds=1, seed=5))
    log_dir = tmp_path / "runs" / "run1" / "log"
    log_dir.parent.mkdir(parents=True, exist_ok=True)
    log_dir.write_text("not a directory")  # every log write now fails
    with pytest.raises(StoreError):
        repo.lease("run1", "w")
    log_dir.unlink()
    # the issuance that could not be written never happened: the same id is issued again
    assert repo.lease("run1", "w")["assignment"]["id"] == "r000-m00-a1"
    assert RunRepository(store).open_round("run1")["leases"][0]["attempts"] == 1


def test_an_exception_in_a_transition_leaves_the_run_as_it_was_and_answering(tmp_path, monkeypatch):
    """The wedge of issue 10: an exception while a change is being made must release the run
    and leave its state as it was, so the next request is served."""
    store = FileStore(tmp_path)
    repo = RunRepository(store, new_id=lambda: "run1")
    repo.create(RunSpec(loss_names=NAMES, population=2, rounds=1, seed=5))
    zero = repo.lease("run1", "w")["assignment"]
    before = {key: store.get(key) for key in store.list("runs/")}
    real = repository_module.persist.encode_base

    def broken(state, base):
        raise ValueError("Out of range float values are not JSON compliant")

    monkeypatch.setattr(repository_module.persist, "encode_base", broken)
    with pytest.raises(ValueError):
        repo.report("run1", zero["id"], result_of(zero))  # completes round 0: a new base
    assert {key: store.get(key) for key in store.list("runs/")} == {
        **before,
        **{k: store.get(k) for k in store.list("runs/") if k not in before},
    }
    assert repo.get("run1")["current"]["members"]["leased"] == 1  # answered, unchanged
    monkeypatch.setattr(repository_module.persist, "encode_base", real)
    assert repo.report("run1", zero["id"], result_of(zero))["state"] == "accepted"


def test_a_busy_run_answers_503_instead_of_waiting_forever(tmp_path, monkeypatch):
    monkeypatch.setattr(repository_module, "LOCK_TIMEOUT", 0.2)
    store = FileStore(tmp_path)
    repo = RunRepository(store, new_id=lambda: "run1")
    repo.create(RunSpec(loss_names=NAMES, population=2, rounds=1, seed=5))
    slot = repo._slot("run1")
    held, release = threading.Event(), threading.Event()

    def hold() -> None:  # another request that never lets go of the run
        with slot.cond:
            slot.busy_since = time.monotonic() - 1000
            held.set()
            release.wait(10)
            slot.busy_since = None

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    try:
        with pytest.raises(repository_module.RunBusy):
            repo.lease("run1", "w")
        assert repo.stuck(threshold=10.0) == ["run run1: lock held for 1000 s"]
    finally:
        release.set()
        holder.join()
    assert repo.lease("run1", "w")["state"] == "assigned"


def test_lease_many_serves_held_workers_in_one_transaction(tmp_path):
    store = FileStore(tmp_path)
    repo = RunRepository(store, new_id=lambda: "run1")
    repo.create(RunSpec(loss_names=NAMES, population=3, rounds=1, seed=5))
    zero = repo.lease("run1", "a")["assignment"]
    repo.report("run1", zero["id"], result_of(zero))
    mine = repo.lease("run1", "b")["assignment"]
    logs = set(store.list(run_log_prefix("run1")))
    answers = repo.lease_many("run1", ["b", "c", "d", "e"])
    assert answers["b"]["assignment"]["id"] == mine["id"]  # b keeps what it holds
    assert [answers[w]["assignment"]["member"] for w in ("c", "d")] == [1, 2]
    assert answers["e"]["state"] == "wait"
    assert len(set(store.list(run_log_prefix("run1"))) - logs) == 1  # one write for all
    leases = RunRepository(store).open_round("run1")["leases"]
    assert [m["worker"] for m in leases] == ["b", "c", "d"]  # written before answering


def test_a_store_of_the_first_format_is_migrated_on_load(tmp_path):
    """A store written by the v1 state (one state.json with the whole history) reads the
    same after the redesign and continues: records, policy, weights, open leases."""
    shutil.copytree(DATA / "store-v1", tmp_path / "store")
    expected = json.loads((DATA / "store-v1-expected.json").read_text())
    store = FileStore(tmp_path / "store")
    repo = RunRepository(store, clock=lambda: 1_700_000_100.0)
    for run_id, old in expected["records"].items():
        new = repo.get(run_id, history=True)
        for key in ("status", "round", "rounds", "population", "loss_names", "best", "name"):
            assert new[key] == old[key], key
        assert new["initial_losses"] == old["initial_losses"]
        for round_old, round_new in zip(old["history"], new["history"], strict=True):
            trained = [c for c in round_old["candidates"] if c.get("valid", True)]
            assert round_new["invalid_draws"] == len(round_old["candidates"]) - len(trained)
            for c_old, c_new in zip(trained, round_new["candidates"], strict=True):
                for key in ("member", "weights", "pq", "losses", "reward", "assignment_id"):
                    assert c_new[key] == c_old[key], key
        assert repo.policy(run_id) == expected["policy"][run_id]
    weights = repo.weights("v1finished", {"semantic": 2.0, "center": 0.02, "offset": 3.0}, 1, 4)
    assert weights == expected["weights"]
    assert store.get_json(run_state_key("v1running"))["format"] == "adaseg-run-state/v2"
    assert store.exists(round_record_key("v1running", 1))
    assert repo.round("v1running", 1, metrics=True)["candidates"][0]["metrics"] == {"note": "v1"}

    # the open round continues: member 0 reported, 1 and 2 leased by w1 and w2
    leases = repo.open_round("v1running")["leases"]
    assert [m["status"] for m in leases] == ["done", "leased", "leased"]
    for j in (1, 2):
        assignment = repo.lease("v1running", f"w{j}")["assignment"]
        assert assignment["member"] == j
        assert repo.report("v1running", assignment["id"], result_of(assignment))["state"] == (
            "accepted"
        )
    assert repo.get("v1running")["round"] == 3


def test_one_controller_per_file_store(tmp_path):
    store = FileStore(tmp_path)
    first = writer_lock(store)
    first.acquire(wait=0)
    second = writer_lock(FileStore(tmp_path))
    with pytest.raises(StoreBusy, match=r"in use by controller pid \d+ on host"):
        second.acquire(wait=0.2)
    first.release()
    second.acquire(wait=0)  # free again
    second.check()
    second.release()


def test_one_controller_per_s3_store_with_conditional_writes(s3_store_uri):
    store = open_store(s3_store_uri)
    first = writer_lock(store, ttl=1.5)
    first.acquire(wait=0)
    first.check()
    second = writer_lock(open_store(s3_store_uri), ttl=1.5)
    with pytest.raises(StoreBusy, match="renews its writer lease"):
        renewals = threading.Thread(
            target=lambda: [first.renew() or time.sleep(0.3) for _ in range(8)]
        )
        renewals.start()
        try:
            second.acquire(wait=2.0)  # the holder is alive: it renews
        finally:
            renewals.join()
    # the holder stops renewing (a crash): after its ttl, the second takes over
    started = time.monotonic()
    second.acquire(wait=5.0)
    assert 1.4 < time.monotonic() - started < 5.0
    second.check()
    with pytest.raises(StoreBusy, match="taken by another controller"):
        first.renew()
    with pytest.raises(StoreBusy):
        first.check()
    second.release()
    assert not store.exists(WRITER_LOCK_KEY)


def test_a_controller_that_lost_its_store_stops_writing(tmp_path):
    store = FileStore(tmp_path)
    lock = writer_lock(store)
    lock.acquire(wait=0)
    repo = RunRepository(store, new_id=lambda: "run1", writer=lock)
    repo.create(RunSpec(loss_names=NAMES, population=2, rounds=1, seed=5))
    lock.release()
    with pytest.raises(StoreBusy):
        repo.lease("run1", "w")
