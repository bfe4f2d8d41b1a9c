"""No failure may stall a run: failed members, attempt caps, extreme numbers, clipped draws.

Pure transitions on a fake clock (the ``Run`` harness of test_runs.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from controller_service.runs import MemberReport, RunConflict, RunSpec, transitions
from controller_service.runs.persist import encode_base
from controller_service.search.base import make_strategy
from tests.test_runs import INIT_URI, NAMES, Run, result_of, snapshot_of

FAILED = MemberReport(failed=True, reason="checkpoint r000-m00.pt is truncated")


def test_a_failed_member_is_issued_again_and_given_up_after_max_attempts():
    run = Run(population=2, rounds=2, max_attempts=2)
    run.finish_round()
    bad = run.take("a")
    good = run.take("b")
    change = run.report(bad["id"], FAILED, now=1.0)
    assert change.answer["state"] == "accepted" and not change.answer["round_completed"]
    member = run.state.open.members[0]
    assert (member.status, member.failures, member.last_failure) == ("pending", 1, FAILED.reason)
    # the same failed report again is a duplicate, not a second failure
    assert run.report(bad["id"], FAILED, now=1.5).answer["state"] == "duplicate"
    assert run.state.open.members[0].failures == 1
    with pytest.raises(RunConflict):
        run.report(bad["id"], MemberReport(failed=True, reason="another"), now=1.5)

    again = run.take("c", now=2.0)
    assert (again["member"], again["attempt"]) == (0, 2)
    run.report(good["id"], result_of(good), now=2.0)
    change = run.report(again["id"], FAILED, now=3.0)  # the second failure: given up
    assert change.completed_round == 1
    record = run.records[1]
    failed = record["candidates"][0]
    assert (failed["outcome"], failed["reward"], failed["failures"]) == ("failed", -1.0, 2)
    assert failed["reason"] == FAILED.reason and failed["pq"] is None
    assert record["best_member"] == 1  # a failed member is never best
    assert run.state.open.round == 2


def test_expired_leases_count_as_failed_attempts_and_never_stall_the_round():
    run = Run(population=2, rounds=1, lease_seconds=10.0, max_attempts=3)
    run.finish_round()
    good = run.take("a", now=0.0)
    run.report(good["id"], result_of(good), now=1.0)
    stuck = run.take("b", now=1.0)  # its worker dies
    for attempt in (2, 3):  # re-issued after each expiry, to a worker that dies too
        again = run.take(f"x{attempt}", now=1.0 + 11.0 * (attempt - 1))
        assert (again["member"], again["attempt"]) == (stuck["member"], attempt)
    # the third expiry gives the member up: the round completes, the run finishes
    change = run.lease("y", now=1.0 + 11.0 * 3)
    assert change.answer == {"state": "finished"} and change.completed_round == 1
    failed = run.records[1]["candidates"][1]
    assert failed["outcome"] == "failed" and "lease expired" in failed["reason"]
    assert failed["attempts"] == 3 and failed["failures"] == 3


def test_a_pseudo_epoch_that_fails_for_good_fails_the_run():
    run = Run(max_attempts=2)
    for attempt in (1, 2):
        zero = run.take(f"w{attempt}")
        run.report(zero["id"], FAILED, now=float(attempt))
    assert run.state.status == "failed"
    assert "round 0 (the pseudo epoch) failed" in run.state.failure
    assert FAILED.reason in run.state.failure


def test_a_round_whose_members_all_fail_fails_the_run_with_their_reasons():
    run = Run(population=2, rounds=3, max_attempts=1)
    run.finish_round()
    for j in range(2):
        a = run.take(f"w{j}")
        change = run.report(a["id"], FAILED, now=1.0)
    assert change.answer["run_status"] == "failed"
    assert run.state.status == "failed" and "every member of round 1 failed" in run.state.failure
    assert run.records[1]["best_member"] is None


def test_extreme_but_valid_numbers_never_wedge_the_run():
    """The issue's reproduction: sigma 1e308 is refused at creation; the largest sigma
    allowed, with the largest and smallest losses allowed, still gives a round of valid
    weights or a failed run with the reason, never a state JSON cannot hold."""
    with pytest.raises(transitions.RunInputError):
        RunSpec(loss_names=NAMES, sigma=1e308, sigma_mode="absolute")
    run = Run(population=3, rounds=2, sigma=1000.0, sigma_mode="absolute")
    zero = run.take()
    extreme = {"semantic": 1e-30, "center": 1e30, "offset": 1.0}
    report = MemberReport(losses=extreme, pq=5.0, checkpoint_uri=zero["checkpoint_uri"])
    change = run.report(zero["id"], report, now=1.0)
    assert change.answer["state"] == "accepted"
    encode_base(run.state, 2)  # strict JSON: no NaN or infinity got in
    if run.state.status == "running":
        for candidate in run.state.open.plan.candidates:
            assert all(math.isfinite(w) and w > 0 for w in candidate)
        run.finish_round(now=2.0)
        encode_base(run.state, 3)
    else:
        assert "search strategy" in run.state.failure


def test_a_strategy_that_cannot_go_on_fails_the_run_and_the_report_is_accepted():
    class Broken:
        name, has_policy, options = "broken", False, frozenset()

        def initial_state(self):
            return {}

        def open_round(self, state, start):
            raise transitions.StrategyError("the mean weights are not finite")

        def close_round(self, state, plan, start, outcomes):
            raise AssertionError("never called")

    spec = RunSpec(loss_names=NAMES, population=2, rounds=2, seed=1)
    pbt = make_strategy("pbt", spec.strategy_settings())
    state = transitions.create_state(
        "run1", spec, now=0.0, init_checkpoint_uri=INIT_URI, strategy=pbt
    )
    ctx = transitions.Context(now=0.0, uri_of=lambda k: f"file:///store/{k}", strategy=Broken())
    change = transitions.lease_many(state, ["w"], ctx)
    zero = change.answer["w"]["assignment"]
    change = transitions.report(change.state, zero["id"], result_of(zero), ctx)
    assert change.answer["state"] == "accepted" and change.answer["run_status"] == "failed"
    assert "cannot open round 1: the mean weights are not finite" in change.state.failure


def test_a_clipped_member_is_trained_but_not_scored_as_a_sample_of_the_policy():
    """Issue 12's pathology: a member whose every draw was invalid trains a clipped copy,
    which Eq. 6 must not score as if the policy had drawn it."""
    # sigma 1000 around weights near 1: each component is <= 0 half the time, so a valid
    # draw of 12 weights comes once in 4096 and most members give up after 100 draws
    names = (*NAMES, *(f"aux{i}" for i in range(9)))
    run = Run(population=2, rounds=1, sigma=1000.0, sigma_mode="absolute", loss_names=names)
    run.finish_round()
    plan = run.state.open.plan
    clipped = plan.public["clipped_members"]
    assert clipped and len(clipped) < 2, clipped  # this seed: one clipped, one drawn
    change = run.finish_round(now=1.0)
    record = run.records[1]
    for j in clipped:
        assert record["candidates"][j]["clipped"] and record["candidates"][j]["reward"] is None
    assert record["invalid_draws"] == plan.public["invalid_draws"] >= 100 * len(clipped)

    # the update saw the scored members and the invalid draws only
    from controller_service.search.policy import Policy
    from controller_service.search.rewards import rewards
    from tests.test_runs import policy_config

    replay = Policy(policy_config(run.spec), 11)
    draw = replay.sample(replay.mean_weights(list(plan.private["input_losses"])), 2)
    pqs = [c["pq"] for c in record["candidates"]]
    member_rewards = rewards(pqs, run.records[0]["candidates"][0]["pq"], 1, 1, "local")
    scored = [j for j in range(2) if j not in clipped]
    replay.update(
        plan.private["input_losses"],
        [draw.candidates[j] for j in scored] + draw.invalid,
        [member_rewards[j] for j in scored] + [-1.0] * len(draw.invalid),
    )
    assert snapshot_of(change, 1) == replay.snapshot()


def test_loss_sum_scale_trains_scaled_draws_and_scores_the_draws_themselves():
    """weight_scale "loss-sum": members train each draw scaled so that sum lambda_i l_i =
    sum l_i on the policy's input; Eq. 6 scores the unscaled draws (the policy's samples),
    and the shown mean is scaled the same way."""
    from controller_service.search.policy import Policy, scale_to_loss_sum
    from controller_service.search.rewards import rewards
    from tests.test_runs import policy_config

    run = Run(population=3, rounds=1, weight_scale="loss-sum")
    run.finish_round()
    plan = run.state.open.plan
    losses = list(plan.private["input_losses"])
    replay = Policy(policy_config(run.spec), 11)
    mean = replay.mean_weights(losses)
    draw = replay.sample(mean, 3)
    assert plan.private["drawn"] == draw.candidates
    for raw, handed in zip(draw.candidates, plan.candidates, strict=True):
        np.testing.assert_allclose(handed, scale_to_loss_sum(raw, losses), rtol=1e-12)
        assert float(np.dot(handed, losses)) == pytest.approx(sum(losses))
    np.testing.assert_allclose(plan.mean_weights, scale_to_loss_sum(mean, losses), rtol=1e-12)

    change = run.finish_round(now=1.0)
    pqs = [c["pq"] for c in run.records[1]["candidates"]]
    member_rewards = rewards(pqs, run.records[0]["candidates"][0]["pq"], 1, 1, "local")
    replay.update(
        losses, draw.candidates + draw.invalid, member_rewards + [-1.0] * len(draw.invalid)
    )
    assert snapshot_of(change, 1) == replay.snapshot()
