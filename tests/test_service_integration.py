"""Whole runs through HTTP against the real service process, on file:// and s3://, and a crash.

A scripted fake trainer stands in for the GPU workers: its losses and PQ are
smooth functions of the leased weights, it creates ``init.pt`` in round 0 and
saves a checkpoint object where the assignment says, as the trainer contract
requires. After the run, the policy is replayed from the seed and the recorded
reports with the maths modules, so every candidate and every stored snapshot
is checked against an independent computation.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import numpy as np
import pytest

from controller_service.contract.client import Conflict, ControllerClient
from controller_service.contract.keys import init_checkpoint_key, policy_snapshot_key
from controller_service.contract.store import ObjectStore, open_store
from controller_service.runs import PAPER_SETTINGS, RunSpec
from controller_service.runs.spec import WEIGHT_FLOOR
from controller_service.search.policy import Policy, clip_weights, scale_to_loss_sum
from controller_service.search.rewards import rewards
from tests.test_runs import policy_config

NAMES = ["semantic", "center", "offset"]


def fake_training(weights: dict[str, float]) -> tuple[dict[str, float], float]:
    """Losses fall with their weight; PQ peaks where semantic ~ 2 * offset."""
    losses = {name: 2.0 / (1.0 + w) for name, w in weights.items()}
    pq = 50.0 + 20.0 * math.tanh(0.5 * (weights["semantic"] - 2.0 * weights["offset"]))
    return losses, pq


def train_and_report(
    client: ControllerClient, store: ObjectStore, run_id: str, assignment: Any
) -> str:
    """Train (fake) and report; returns the report's state (accepted or duplicate)."""
    assignment = assignment if isinstance(assignment, dict) else assignment.model_dump()
    init_key = store.key_of(assignment["init_checkpoint_uri"])
    if assignment["round"] == 0 and not store.exists(init_key):
        store.put(init_key, b"fresh model")  # the trainer contract: round 0 saves init.pt
    assert store.exists(init_key), f"round {assignment['round']} starts from a missing checkpoint"
    losses, pq = fake_training(assignment["weights"])
    store.put(store.key_of(assignment["checkpoint_uri"]), f"{assignment['id']}".encode())
    return client.report(run_id, assignment["id"], losses, pq, assignment["checkpoint_uri"]).state


def worker_loop(url: str, store_uri: str, run_id: str, name: str, errors: list) -> None:
    try:
        client, store = ControllerClient(url), open_store(store_uri)
        while True:
            answer = client.lease(run_id, name)
            if answer.state == "finished":
                return
            if answer.state == "wait":  # a fake trainer may poll faster than it is told
                time.sleep(min(answer.retry_after, 0.2))
                continue
            train_and_report(client, store, run_id, answer.assignment)
    except Exception as exc:  # surfaced by the test thread
        errors.append(exc)


def replay_policy(run: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Recompute every round from the seed and the recorded reports; check the draws on the way."""
    spec = RunSpec.from_config(run["loss_names"], run["config"])
    policy = Policy(policy_config(spec), run["config"]["seed"])
    history = run["history"]
    best_pq = history[0]["candidates"][0]["pq"]
    snapshots = {}
    for record in history[1:]:
        inputs = [record["input_losses"][n] for n in NAMES]
        draw = policy.sample(policy.mean_weights(inputs), run["population"])
        trained = record["candidates"]
        expected_weights = draw.candidates
        if spec.weight_scale == "loss-sum":  # members train the draws scaled to Σλl = Σl
            expected_weights = [
                list(clip_weights(scale_to_loss_sum(c, inputs), WEIGHT_FLOOR))
                for c in draw.candidates
            ]
        assert [[c["weights"][n] for n in NAMES] for c in trained] == expected_weights
        assert record["invalid_draws"] == len(draw.invalid)
        pqs = [c["pq"] if c["outcome"] == "trained" else None for c in trained]
        expected = rewards(pqs, best_pq, record["round"], run["rounds"], spec.reward_terms)
        assert [c["reward"] for c in trained] == expected
        policy.update(inputs, draw.candidates + draw.invalid, expected + [-1.0] * len(draw.invalid))
        snapshots[record["round"]] = policy.snapshot()
        if record["best_member"] is not None:
            best_pq = trained[record["best_member"]]["pq"]
    return snapshots


def check_finished_run(client: ControllerClient, store: ObjectStore, run_id: str) -> None:
    run = client.get_run(run_id, history=True).model_dump()
    assert run["status"] == "finished" and run["round"] == 3
    history = run["history"]
    assert [h["round"] for h in history] == [0, 1, 2, 3]
    assert run["initial_losses"] == history[0]["candidates"][0]["losses"]
    previous_best = {"checkpoint_uri": store.uri_of(init_checkpoint_key(run_id))}
    previous_best["losses"] = run["initial_losses"]
    for record in history[1:]:
        # every member of round t started from the broadcast of round t-1 (init.pt for t=1)
        assert record["init_checkpoint_uri"] == previous_best["checkpoint_uri"]
        assert record["input_losses"] == previous_best["losses"]
        trained = record["candidates"]
        assert len(trained) == 4 and all(
            store.exists(store.key_of(c["checkpoint_uri"])) for c in trained
        )
        best = trained[record["best_member"]]
        assert best["pq"] == max(c["pq"] for c in trained)
        previous_best = best
    assert run["best"]["checkpoint_uri"] == previous_best["checkpoint_uri"]

    final = client.weights(run_id, None, epoch=0, epochs=6, mode="static-final")
    assert final.weights == run["best"]["weights"]
    if run["strategy"] == "pbt":
        check_pbt_draws(run)
        return
    replayed = replay_policy(run)
    document = client.policy(run_id).model_dump()
    assert [s["round"] for s in document["snapshots"]] == [1, 2, 3]
    for snapshot in document["snapshots"]:
        stored = store.get_json(policy_snapshot_key(run_id, snapshot["round"]))
        assert stored == replayed[snapshot["round"]]
        assert snapshot["layers"] == stored["layers"]

    losses = {"semantic": 0.8, "center": 1.2, "offset": 0.5}
    ensemble = client.weights(run_id, losses, epoch=2, epochs=6)
    assert set(ensemble.weights) == set(NAMES) and all(w > 0 for w in ensemble.weights.values())


def check_pbt_draws(run: dict[str, Any]) -> None:
    """Baseline-P: round t's members are the broadcast member's weights (all 1 for round 1)
    times exp(N(0, sigma^2)) per loss, drawn from (seed, t)."""
    parent = dict.fromkeys(NAMES, 1.0)
    for record in run["history"][1:]:
        rng = np.random.default_rng([run["config"]["seed"], record["round"]])
        for c in record["candidates"]:
            factors = np.exp(rng.normal(0.0, run["config"]["sigma"], size=len(NAMES)))
            assert [c["weights"][n] for n in NAMES] == [
                parent[n] * f for n, f in zip(NAMES, factors, strict=True)
            ]
            assert c["reward"] is None
        assert record["mean_weights"] is None
        if record["best_member"] is not None:
            parent = record["candidates"][record["best_member"]]["weights"]


def drive_whole_run(url: str, store_uri: str, **options: Any) -> dict[str, Any]:
    client, store = ControllerClient(url), open_store(store_uri)
    run = client.create_run(NAMES, population=4, rounds=3, seed=2024, lease_seconds=30, **options)
    errors: list[Exception] = []
    workers = [
        threading.Thread(target=worker_loop, args=(url, store_uri, run.id, f"w{i}", errors))
        for i in range(3)
    ]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=120)
    assert not errors, errors
    check_finished_run(client, store, run.id)
    return client.get_run(run.id, history=True).model_dump()


def test_whole_run_over_http_on_a_file_store_with_the_papers_settings(shared_controller):
    run = drive_whole_run(shared_controller.url, shared_controller.store_uri, **PAPER_SETTINGS)
    assert {key: run["config"][key] for key in PAPER_SETTINGS} == dict(PAPER_SETTINGS)
    # sigma 0.2 on a mean weight near 0 draws invalid candidates: they are in the replay
    assert sum(record["invalid_draws"] for record in run["history"]) > 0


def test_whole_pbt_run_over_http(shared_controller):
    """PBT (Baseline-P) through the real service, leases and store like Ada-Segment."""
    run = drive_whole_run(
        shared_controller.url, shared_controller.store_uri, strategy="pbt", sigma=0.5
    )
    assert run["strategy"] == "pbt" and run["status"] == "finished"
    client = ControllerClient(shared_controller.url)
    with pytest.raises(Conflict, match="no policy"):
        client.policy(run["id"])


def test_whole_run_over_http_on_s3(controller_factory, s3_store_uri, s3_env):
    controller = controller_factory(s3_store_uri, env=s3_env)
    drive_whole_run(controller.url, s3_store_uri)


def run_sequentially(client: ControllerClient, store: ObjectStore, run_id: str) -> None:
    while (answer := client.lease(run_id, "solo")).state == "assigned":
        train_and_report(client, store, run_id, answer.assignment)
    assert answer.state == "finished"


@pytest.mark.parametrize("strategy", ["ada-segment", "pbt"])
def test_kill_mid_round_restart_and_finish_gives_identical_results(shared_controller, strategy):
    controller = shared_controller
    # a generous timeout: after the restart, the first round completion waits for the
    # service's import of torch, and a retried report would answer "duplicate"
    client = ControllerClient(controller.url, timeout=60)
    store = open_store(controller.store_uri)
    options = {"population": 4, "rounds": 3, "seed": 77, "strategy": strategy}
    reference = client.create_run(NAMES, **options).id
    crashed = client.create_run(NAMES, **options).id
    run_sequentially(client, store, reference)

    # the crashed run: round 0 and 1 complete, round 2 all leased and half reported
    for _ in range(5):
        train_and_report(client, store, crashed, client.lease(crashed, "solo").assignment)
    held = [client.lease(crashed, f"w{j}").assignment for j in range(4)]
    assert [a.round for a in held] == [2] * 4
    assert [train_and_report(client, store, crashed, a) for a in held[:2]] == ["accepted"] * 2

    controller.kill()
    controller.restart()
    client = ControllerClient(controller.url, timeout=60)

    # nothing lost: the leases survived; nothing duplicated: a repeated report is a duplicate
    assert train_and_report(client, store, crashed, held[0]) == "duplicate"
    for assignment in held[2:]:
        assert train_and_report(client, store, crashed, assignment) == "accepted"
    run_sequentially(client, store, crashed)

    if strategy == "ada-segment":
        for round_ in (1, 2, 3):
            key_ref = policy_snapshot_key(reference, round_)
            assert store.get(policy_snapshot_key(crashed, round_)) == store.get(key_ref)
    same = ("round", "weights", "pq", "losses", "reward", "outcome")
    for ref, got in zip(client.rounds(reference), client.rounds(crashed), strict=True):
        assert [c.model_dump(include=set(same)) for c in ref.candidates] == [
            c.model_dump(include=set(same)) for c in got.candidates
        ]
    check_finished_run(client, store, crashed)
    done = client.round(crashed, 2).candidates
    assert [c.assignment_id for c in done] == [a.id for a in held]
