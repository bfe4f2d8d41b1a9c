"""The run state machine without HTTP: transitions, leases on a fake clock, reports, failures.

The expected candidates, rewards and snapshots are recomputed independently
from the maths modules (policy, rewards), replaying what the controller must
have done, so these tests check the wiring: which losses feed the policy, which
checkpoint each round starts from, what is drawn once, what a refusal leaves.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import pytest

from controller_service.contract import schemas
from controller_service.contract.keys import init_checkpoint_key
from controller_service.runs import (
    PAPER_SETTINGS,
    MemberReport,
    RunConflict,
    RunInputError,
    RunNotFound,
    RunRepository,
    RunSpec,
    transitions,
    views,
)
from controller_service.runs.transitions import RETRY_AFTER_MAX, Change, Context
from controller_service.search.base import make_strategy
from controller_service.search.ensemble import transfer_weights
from controller_service.search.policy import Policy, PolicyConfig, scale_to_loss_sum
from controller_service.search.rewards import rewards

NAMES = ("semantic", "center", "offset")
STORE_URI = "file:///store"
INIT_URI = f"{STORE_URI}/{init_checkpoint_key('run1')}"


def uri_of(key: str) -> str:
    return f"{STORE_URI}/{key}"


def trained(weights: dict[str, float]) -> tuple[dict[str, float], float]:
    """A fake trainer: losses and PQ are smooth functions of the weights."""
    losses = {name: 1.0 / (1.0 + 0.3 * w) for name, w in weights.items()}
    pq = 40.0 + 10.0 * math.tanh(weights["semantic"] - weights["offset"])
    return losses, pq


def result_of(assignment: dict[str, Any]) -> MemberReport:
    losses, pq = trained(assignment["weights"])
    return MemberReport(losses=losses, pq=pq, checkpoint_uri=assignment["checkpoint_uri"])


def policy_config(spec: RunSpec) -> PolicyConfig:
    return PolicyConfig(
        n_losses=len(spec.loss_names),
        hidden=spec.hidden,
        sigma=spec.sigma,
        sigma_mode=spec.sigma_mode,
        lr=spec.policy_lr,
        weight_decay=spec.policy_weight_decay,
        steps=spec.policy_steps,
    )


class Run:
    """One run's state driven through the pure transitions, as the repository would."""

    def __init__(self, population: int = 3, rounds: int = 2, lease_seconds: float = 10.0, **kw):
        kw.setdefault("loss_names", NAMES)
        self.spec = RunSpec(
            population=population,
            rounds=rounds,
            seed=11,
            lease_seconds=lease_seconds,
            **kw,
        )
        self.strategy = make_strategy(self.spec.strategy, self.spec.strategy_settings())
        self.state = transitions.create_state(
            "run1", self.spec, now=0.0, init_checkpoint_uri=INIT_URI, strategy=self.strategy
        )
        self.records: dict[int, dict[str, Any]] = {}
        self.writes: dict[str, Any] = {}

    def ctx(self, now: float) -> Context:
        def accepted(round_: int, member: int):
            c = self.records[round_]["candidates"][member]
            names = self.spec.loss_names
            checked = transitions.CheckedReport(
                c["outcome"],
                tuple(c["losses"][n] for n in names) if c["losses"] else None,
                c["pq"],
                c["checkpoint_uri"],
                c["reason"],
            )
            return c["assignment_id"], checked

        return Context(now=now, uri_of=uri_of, strategy=self.strategy, accepted=accepted)

    def apply(self, change: Change) -> Change:
        self.state = change.state
        self.writes.update(change.writes("run1"))
        if change.record is not None:
            self.records[change.completed_round] = change.record
        return change

    def lease(self, worker: str = "w", now: float = 0.0) -> Change:
        change = transitions.lease_many(self.state, [worker], self.ctx(now))
        change.answer = change.answer[worker]
        return self.apply(change)

    def take(self, worker: str = "w", now: float = 0.0) -> dict[str, Any]:
        answer = self.lease(worker, now).answer
        assert answer["state"] == "assigned", answer
        return answer["assignment"]

    def report(self, aid: str, rep: MemberReport, now: float = 0.0) -> Change:
        return self.apply(transitions.report(self.state, aid, rep, self.ctx(now)))

    def heartbeat(self, aid: str, now: float = 0.0) -> Change:
        return self.apply(transitions.heartbeat(self.state, aid, self.ctx(now)))

    def finish_round(self, now: float = 0.0) -> Change:
        """Lease and report every remaining member of the open round."""
        round_ = self.state.open.round
        change = None
        while self.state.open is not None and self.state.open.round == round_:
            assignment = self.take(f"w{round_}", now)
            change = self.report(assignment["id"], result_of(assignment), now)
        return change

    def record(self) -> dict[str, Any]:
        return views.run_record(self.state, [self.records[t] for t in sorted(self.records)])


def snapshot_of(change: Change, round_: int) -> dict[str, Any] | None:
    return change.snapshot if change.completed_round == round_ else None


def test_run_goes_from_pseudo_epoch_through_every_round_to_finished():
    run = Run(population=3, rounds=2, weight_scale="free")  # the candidates as drawn
    replay = Policy(policy_config(run.spec), 11)

    # round 0: one assignment, member 0, all weights 1, from init.pt, at epoch 0 of T
    zero = run.take("w0")
    assert (zero["id"], zero["round"], zero["member"]) == ("r000-m00-a1", 0, 0)
    assert zero["weights"] == {name: 1.0 for name in NAMES}
    assert zero["init_checkpoint_uri"] == INIT_URI
    assert zero["checkpoint_uri"] == uri_of("runs/run1/checkpoints/r000-m00.pt")
    assert (zero["epoch"], zero["epochs"]) == (0, 2)
    assert run.lease("other").answer["state"] == "wait"
    initial_losses, v0 = trained(zero["weights"])
    change = run.report(zero["id"], result_of(zero), now=1.0)
    assert change.answer["round_completed"] and snapshot_of(change, 0) is None
    assert run.state.initial_losses == tuple(initial_losses[n] for n in NAMES)
    assert run.state.best.pq == v0 and run.state.best.round == 0

    # round 1: candidates drawn once from pi(l^1)/l^1, every member starts from init.pt
    mean = replay.mean_weights([initial_losses[n] for n in NAMES])
    draw = replay.sample(mean, 3)
    assignments = [run.take(f"w{j}", now=2.0) for j in range(3)]
    assert [a["member"] for a in assignments] == [0, 1, 2]
    for a, candidate in zip(assignments, draw.candidates, strict=True):
        assert a["weights"] == dict(zip(NAMES, candidate, strict=True))
        assert a["init_checkpoint_uri"] == INIT_URI
        assert (a["epoch"], a["epochs"]) == (0, 2)  # the schedule starts after round 0
    results = [trained(a["weights"]) for a in assignments]
    for a in assignments[:2]:
        assert not run.report(a["id"], result_of(a), now=3.0).answer["round_completed"]
    change = run.report(assignments[2]["id"], result_of(assignments[2]), now=3.0)
    assert change.answer["round_completed"] and change.completed_round == 1 and change.rebase

    # rewards (Eq. 3-5) against v_best_0, Eq. 6 over valid + invalid draws, snapshot pi^1
    pqs = [pq for _, pq in results]
    expected_rewards = rewards(pqs, v0, 1, 2, run.spec.reward_terms)
    replay.update(
        [initial_losses[n] for n in NAMES],
        draw.candidates + draw.invalid,
        expected_rewards + [-1.0] * len(draw.invalid),
    )
    assert snapshot_of(change, 1) == replay.snapshot()
    record = run.records[1]
    assert [c["reward"] for c in record["candidates"]] == expected_rewards
    best = max(range(3), key=lambda j: (pqs[j], -j))
    assert record["best_member"] == best
    assert run.state.best.checkpoint_uri == assignments[best]["checkpoint_uri"]

    # round 2 starts every member from round 1's best checkpoint; the policy input is its losses
    best_losses = results[best][0]
    draw2 = replay.sample(replay.mean_weights([best_losses[n] for n in NAMES]), 3)
    round2 = run.take("w0", now=4.0)
    assert round2["init_checkpoint_uri"] == assignments[best]["checkpoint_uri"]
    assert (round2["epoch"], round2["epochs"]) == (1, 2)  # the broadcast continues the schedule
    assert round2["weights"] == dict(zip(NAMES, draw2.candidates[0], strict=True))
    assert run.state.open.input_losses == tuple(best_losses[n] for n in NAMES)
    run.report(round2["id"], result_of(round2), now=4.0)
    change = run.finish_round(now=5.0)
    assert change.completed_round == 2 and snapshot_of(change, 2) is not None

    assert run.state.status == "finished" and run.state.open is None
    assert run.lease("w0", now=6.0).answer == {"state": "finished"}
    record = run.record()
    assert (record["round"], record["rounds"], record["population"]) == (2, 2, 3)
    assert (record["completed_rounds"], record["members_done"]) == (3, 7)
    assert [h["round"] for h in record["history"]] == [0, 1, 2]
    assert views.snapshot_rounds(run.state, has_policy=True) == [1, 2]
    schemas.RunRecord.model_validate(record)


def test_lease_expiry_reissue_and_wait_with_a_fake_clock():
    run = Run(population=2, lease_seconds=10.0)
    run.finish_round()  # round 0
    first = run.take("a", now=100.0)
    second = run.take("b", now=101.0)
    assert (first["member"], second["member"]) == (0, 1)
    assert first["deadline"] == 110.0

    assert run.lease("c", now=105.0).answer == {"state": "wait", "retry_after": RETRY_AFTER_MAX}
    assert run.lease("c", now=109.5).answer["retry_after"] == 0.5
    assert run.lease("c", now=109.99).answer["retry_after"] == 0.05

    change = run.lease("c", now=110.0)  # a's deadline has passed
    assert change.issued == [True]
    again = change.answer["assignment"]
    assert (again["id"], again["member"], again["attempt"]) == ("r001-m00-a2", 0, 2)
    assert again["weights"] == first["weights"]  # drawn once, never redrawn
    assert run.state.open.members[0].failures == 1  # the expired attempt counts as failed

    with pytest.raises(RunConflict, match=r"issued again \(r001-m00-a2\)"):
        run.report(first["id"], result_of(first), now=111.0)
    with pytest.raises(RunConflict):
        run.heartbeat(first["id"], now=111.0)
    assert run.report(again["id"], result_of(again), now=111.0).answer["state"] == "accepted"
    with pytest.raises(RunConflict, match="already completed by assignment r001-m00-a2"):
        run.report(first["id"], result_of(first), now=112.0)


def test_heartbeat_extends_the_lease_and_late_reports_count_until_reissued():
    run = Run(population=2, lease_seconds=10.0)
    run.finish_round()
    first = run.take("a", now=0.0)
    second = run.take("b", now=0.0)
    change = run.heartbeat(first["id"], now=8.0)
    assert change.members == {0}
    assert change.answer == {"assignment_id": first["id"], "state": "leased", "deadline": 18.0}
    assert run.lease("c", now=9.0).answer["retry_after"] == 1.0

    # member 1's lease expired at 10 and nobody took it: its late report still counts
    assert run.report(second["id"], result_of(second), now=15.0).answer["state"] == "accepted"
    change = run.heartbeat(second["id"], now=15.0)
    assert not change.changed and change.answer["state"] == "reported"
    # member 0 is past its first deadline but was extended: nothing to lease
    assert run.lease("c", now=15.0).answer["state"] == "wait"


def test_same_worker_leasing_again_gets_its_assignment_back():
    run = Run(population=3)
    run.finish_round()
    first = run.take("a", now=0.0)
    change = run.lease("a", now=5.0)
    assert change.changed and change.issued == []
    assert change.answer["assignment"]["id"] == first["id"]
    assert change.answer["assignment"]["deadline"] == 5.0 + 10.0
    assert run.take("b", now=5.0)["member"] == 1


def test_pending_members_are_issued_before_expired_ones():
    run = Run(population=3, lease_seconds=10.0)
    run.finish_round()
    first = run.take("a", now=0.0)
    # member 0's lease expired, members 1 and 2 were never issued: they go first
    assert run.take("b", now=20.0)["member"] == 1
    assert run.take("c", now=20.0)["member"] == 2
    again = run.take("d", now=20.0)
    assert (again["member"], again["id"]) == (0, "r001-m00-a2") and first["member"] == 0


def test_duplicate_report_is_accepted_once_and_a_different_second_report_is_409():
    run = Run(population=2)
    run.finish_round()
    first = run.take("a")
    assert run.report(first["id"], result_of(first), now=1.0).answer["state"] == "accepted"
    before = run.state
    change = run.report(first["id"], result_of(first), now=2.0)
    assert change.answer["state"] == "duplicate" and not change.changed
    assert run.state is before
    other = MemberReport(
        losses=trained(first["weights"])[0], pq=1.0, checkpoint_uri=first["checkpoint_uri"]
    )
    with pytest.raises(RunConflict, match="different results"):
        run.report(first["id"], other, now=2.0)

    # still a duplicate after its round completed (from the stored round record), and
    # still a conflict when it says something else
    run.finish_round()
    before = run.state
    assert run.report(first["id"], result_of(first), now=3.0).answer["state"] == "duplicate"
    with pytest.raises(RunConflict, match="different results"):
        run.report(first["id"], other, now=3.0)
    assert run.state is before


@pytest.mark.parametrize(
    "aid",
    [
        "bogus",
        "r001-m00-a1x",
        "r1-m0-a1",
        "r001-m00-a0",
        "r001-m00-a2",
        "r001-m07-a1",
        "r009-m00-a1",
        "r-01-m00-a1",
    ],
)
def test_unknown_assignments_are_404_and_change_nothing(aid):
    run = Run(population=2)
    run.finish_round()
    first = run.take("a")
    before = run.state
    with pytest.raises(RunNotFound):
        run.report(aid, result_of(first), now=1.0)
    with pytest.raises(RunNotFound):
        run.heartbeat(aid, now=1.0)
    assert run.state is before


GOOD_LOSSES = {"semantic": 1.0, "center": 2.0, "offset": 3.0}
GOOD_URI = uri_of("runs/run1/checkpoints/r001-m00.pt")


def report_with(**changes: Any) -> MemberReport:
    """A valid report of a trained member, with ``changes``; ``losses_`` changes one loss."""
    losses = {**GOOD_LOSSES, **changes.pop("losses_", {})}
    values = {"losses": losses, "pq": 5.0, "checkpoint_uri": GOOD_URI, **changes}
    return MemberReport(**values)


@pytest.mark.parametrize(
    ("report", "loc"),
    [
        (report_with(losses={"semantic": 1.0, "center": 2.0}), "losses"),
        (report_with(losses_={"extra": 1.0}), "losses"),
        (report_with(losses_={"center": math.nan}), "losses.center"),
        (report_with(losses_={"center": math.inf}), "losses.center"),
        (report_with(losses_={"offset": -math.inf}), "losses.offset"),
        (report_with(losses_={"offset": 0.0}), "losses.offset"),
        (report_with(losses_={"offset": -1.0}), "losses.offset"),
        (report_with(losses_={"offset": 1e-300}), "losses.offset"),
        (report_with(losses_={"offset": 1e300}), "losses.offset"),
        (report_with(losses_={"offset": True}), "losses.offset"),
        (report_with(losses_={"offset": "1"}), "losses.offset"),
        (report_with(pq=-0.1), "pq"),
        (report_with(pq=100.5), "pq"),
        (report_with(pq=math.nan), "pq"),
        (report_with(pq=None), "pq"),
        (report_with(losses=None), "losses"),
        (report_with(checkpoint_uri=""), "checkpoint_uri"),
        (report_with(checkpoint_uri="file:///etc/passwd"), "checkpoint_uri"),
        (report_with(checkpoint_uri=f"{STORE_URI}/runs/run1/../other/x.pt"), "checkpoint_uri"),
        (report_with(checkpoint_uri=f"{STORE_URI}/runs/run2/checkpoints/x.pt"), "checkpoint_uri"),
        (report_with(checkpoint_uri="s3://other-bucket/runs/run1/x.pt"), "checkpoint_uri"),
        (report_with(metrics={"a": [math.nan]}), "metrics.a.0"),
        (report_with(metrics={"a": "x" * 70_000}), "metrics"),
        (MemberReport(diverged=True, reason=""), "reason"),
        (MemberReport(diverged=True, reason="nan", pq=3.0), "pq"),
        (MemberReport(failed=True, reason=None), "reason"),
        (MemberReport(failed=True, reason="x", checkpoint_uri=GOOD_URI), "checkpoint_uri"),
        (MemberReport(failed=True, diverged=True, reason="x"), "failed"),
    ],
)
def test_bad_reports_are_refused_by_name_and_change_nothing(report, loc):
    run = Run(population=2)
    run.finish_round()
    first = run.take("a")
    before = run.state
    with pytest.raises(RunInputError) as caught:
        run.report(first["id"], report, now=1.0)
    assert ".".join(map(str, caught.value.loc)) == loc
    assert run.state is before


@pytest.mark.parametrize(
    ("changes", "loc"),
    [
        ({"population": 1}, "population"),
        ({"rounds": 0}, "rounds"),
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -0.2}, "sigma"),
        ({"sigma": math.nan}, "sigma"),
        ({"sigma": 1e308}, "sigma"),
        ({"sigma_mode": "sideways"}, "sigma_mode"),
        ({"policy_lr": 0.0}, "policy_lr"),
        ({"policy_lr": 1e300}, "policy_lr"),
        ({"loss_names": ("a", "b", "a")}, "loss_names"),
        ({"loss_names": ()}, "loss_names"),
        ({"loss_names": ("a", " ")}, "loss_names.1"),
        ({"lease_seconds": 0}, "lease_seconds"),
        ({"lease_seconds": 0.001}, "lease_seconds"),
        ({"reward_terms": "imp"}, "reward_terms"),
        ({"population": True}, "population"),
        ({"seed": -1}, "seed"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"strategy": "grid"}, "strategy"),
    ],
)
def test_bad_run_specs_are_refused_by_field(changes, loc):
    values = {"loss_names": NAMES, **changes}
    with pytest.raises(RunInputError) as caught:
        RunSpec(**values)
    assert ".".join(map(str, caught.value.loc)) == loc


def test_options_of_another_strategy_are_refused():
    with pytest.raises(RunInputError) as caught:
        RunSpec.from_request({"loss_names": NAMES, "strategy": "pbt", "policy_lr": 0.01})
    assert caught.value.loc == ("policy_lr",)
    assert RunSpec.from_request({"loss_names": NAMES, "strategy": "pbt", "sigma": 0.3}).sigma == 0.3


def test_diverged_member_gets_minus_one_and_never_wins():
    run = Run(population=3)
    run.finish_round()
    assignments = [run.take(f"w{j}") for j in range(3)]
    run.report(assignments[0]["id"], MemberReport(diverged=True, reason="nan loss"), now=1)
    for a in assignments[1:]:
        run.report(a["id"], result_of(a), now=1)
    record = run.records[1]
    member0 = record["candidates"][0]
    assert member0["outcome"] == "diverged" and member0["reward"] == -1.0 and member0["pq"] is None
    pqs = [None] + [trained(a["weights"])[1] for a in assignments[1:]]
    v0 = run.records[0]["candidates"][0]["pq"]
    expected = rewards(pqs, v0, 1, 2, run.spec.reward_terms)
    assert [c["reward"] for c in record["candidates"]] == expected
    assert record["best_member"] in (1, 2)
    assert run.state.best.round == 1


def test_all_diverged_round_keeps_the_best_and_restarts_from_the_same_checkpoint():
    run = Run(population=2, rounds=3)
    run.finish_round()
    best0 = run.state.best
    round1 = run.state.open
    change = None
    for j in range(2):
        a = run.take(f"w{j}")
        change = run.report(a["id"], MemberReport(diverged=True, reason="inf"), now=1)
    assert change.completed_round == 1 and snapshot_of(change, 1) is not None  # still learned
    assert run.records[1]["best_member"] is None
    assert run.state.best == best0
    opened = run.state.open
    assert (opened.input_losses, opened.init_checkpoint_uri) == (
        round1.input_losses,
        round1.init_checkpoint_uri,
    )
    assert opened.init_checkpoint_uri == INIT_URI
    assert opened.plan.candidates != round1.plan.candidates  # a fresh draw from the new policy


def test_diverged_pseudo_epoch_fails_the_run():
    run = Run()
    zero = run.take()
    run.report(zero["id"], MemberReport(diverged=True, reason="loss is nan"), now=1)
    assert run.state.status == "failed" and "loss is nan" in run.state.failure
    with pytest.raises(RunConflict, match="failed"):
        run.lease("w", now=2)
    repeat = run.report(zero["id"], MemberReport(diverged=True, reason="loss is nan"), now=3)
    assert repeat.answer["state"] == "duplicate"


def test_transfer_weights_need_a_snapshot_then_use_the_completed_rounds():
    run = Run(population=2, rounds=3)
    run.finish_round()
    with pytest.raises(RunConflict, match="no policy snapshot"):
        views.transfer_weights_for(run.state, {}, GOOD_LOSSES, 0, 10)
    snapshot = {1: snapshot_of(run.finish_round(), 1)}
    answer = views.transfer_weights_for(run.state, snapshot, GOOD_LOSSES, 2, 10, mode="final")
    policy = Policy.from_state_dict(policy_config(run.spec), run.state.strategy_state["policy"])
    losses = [GOOD_LOSSES[n] for n in NAMES]
    # the default weight_scale "loss-sum": pi(l)/l scaled so that sum lambda_i l_i = sum l_i
    expected = scale_to_loss_sum(policy.mean_weights(losses), losses)
    assert list(answer["weights"].values()) == pytest.approx(expected, rel=1e-12)
    weighted = sum(answer["weights"][n] * GOOD_LOSSES[n] for n in NAMES)
    assert weighted == pytest.approx(sum(losses), rel=1e-12)
    assert answer["snapshots"] == 1
    static = views.transfer_weights_for(run.state, snapshot, None, 0, 10, mode="static-final")
    assert tuple(static["weights"].values()) == run.state.best.weights
    with pytest.raises(RunInputError) as caught:
        views.transfer_weights_for(run.state, snapshot, GOOD_LOSSES, 11, 10)
    assert caught.value.loc == ("epoch",)
    with pytest.raises(RunInputError) as caught:
        views.transfer_weights_for(run.state, snapshot, None, 1, 10, mode="ensemble")
    assert caught.value.loc == ("losses",)


def test_a_run_stored_before_weight_scale_existed_keeps_the_free_scale():
    """A default that changes must not change a stored run: its config is read with the
    value it ran with (spec.STORED_BEFORE); a config that names the field keeps it."""
    stored = RunSpec(loss_names=NAMES).config()
    del stored["weight_scale"]
    assert RunSpec.from_config(NAMES, stored).weight_scale == "free"
    assert RunSpec(loss_names=NAMES).weight_scale == "loss-sum"
    assert RunSpec.from_config(NAMES, RunSpec(loss_names=NAMES).config()).weight_scale == (
        "loss-sum"
    )


def test_defaults_are_the_papers_but_five_and_every_layer_agrees():
    """The paper's settings stay selectable; a run's defaults differ in five Ada-Segment
    settings (RunSpec's docstring says why). The pure config keeps the paper's,
    PAPER_SETTINGS brings a run back to them, and the run spec and the HTTP schema agree
    on every default."""
    run_defaults = {
        "strategy": "ada-segment",
        "population": 8,
        "rounds": 12,
        "sigma": 0.5,
        "sigma_mode": "relative",
        "policy_lr": 5e-3,
        "policy_weight_decay": 5e-4,
        "policy_steps": 1,
        "hidden": 16,
        "reward_terms": "local",
        "weight_scale": "loss-sum",
        "lease_seconds": 600.0,
        "max_attempts": 3,
    }
    assert dict(PAPER_SETTINGS) == {
        "sigma": 0.2,
        "sigma_mode": "absolute",
        "policy_lr": 5e-2,
        "reward_terms": "local+imp",
        "weight_scale": "free",
    }
    paper = PolicyConfig(n_losses=len(NAMES))
    assert (paper.lr, paper.weight_decay, paper.sigma, paper.sigma_mode) == (
        5e-2,
        5e-4,
        0.2,
        "absolute",
    )
    assert (paper.hidden, paper.steps, paper.max_draws, paper.floor) == (16, 1, 100, 1e-3)
    assert policy_config(RunSpec(loss_names=NAMES, **PAPER_SETTINGS)) == paper
    spec = RunSpec(loss_names=NAMES)
    assert {key: spec.config()[key] for key in run_defaults} == run_defaults

    request = schemas.CreateRunRequest(loss_names=list(NAMES)).model_dump()
    assert {key: request[key] for key in run_defaults} == run_defaults
    documented = schemas.CreateRunRequest.model_json_schema()["properties"]
    assert {key: documented[key]["default"] for key in run_defaults} == run_defaults

    # Eq. 7's gamma 0.9 for POST /weights, in the schema and every layer below it
    assert schemas.WeightsRequest(epoch=0, epochs=1).gamma == 0.9
    assert schemas.WeightsRequest.model_json_schema()["properties"]["gamma"]["default"] == 0.9
    for function in (views.transfer_weights_for, RunRepository.weights, transfer_weights):
        assert inspect.signature(function).parameters["gamma"].default == 0.9, function
