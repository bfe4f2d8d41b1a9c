"""Eq. 7 and Table 2's modes on hand-made snapshots."""

from __future__ import annotations

import math

import numpy as np
import pytest

from controller_service.search.ensemble import transfer_weights
from controller_service.search.policy import Policy, PolicyConfig

IDENTITY = [[1.0, 0.0], [0.0, 1.0]]


def linear_snapshot(matrix: list[list[float]], bias: list[float]) -> dict:
    """pi(l) = matrix @ l + bias for positive l: two identity ReLU layers, then the map."""
    return {
        "layers": [
            {"weight": IDENTITY, "bias": [0.0, 0.0]},
            {"weight": IDENTITY, "bias": [0.0, 0.0]},
            {"weight": matrix, "bias": bias},
        ],
        "activation": "relu",
    }


# With l = (2, 4), Eq. 1 gives:  pi^1: lambda = (1, 1)
#                                pi^2: pi = (2 l1, l2 + 1) -> lambda = (2, 1.25)
#                                pi^3: pi = (l2, l1)       -> lambda = (2, 0.5)
SNAPSHOTS = {
    1: linear_snapshot(IDENTITY, [0.0, 0.0]),
    2: linear_snapshot([[2.0, 0.0], [0.0, 1.0]], [0.0, 1.0]),
    3: linear_snapshot([[0.0, 1.0], [1.0, 0.0]], [0.0, 0.0]),
}
LOSSES = [2.0, 4.0]


def test_ensemble_centred_on_a_round() -> None:
    # e = 4 of E = 6 with T = 3: e T / E = 2 -> coefficients (0.9, 1, 0.9) / 2.8
    weights, clipped = transfer_weights(SNAPSHOTS, LOSSES, 4, 6)
    expected = [(0.9 * 1 + 2 + 0.9 * 2) / 2.8, (0.9 * 1 + 1.25 + 0.9 * 0.5) / 2.8]
    assert weights == pytest.approx(expected, abs=1e-14)
    assert clipped == []


def test_ensemble_between_rounds() -> None:
    # e = 1 of E = 2: e T / E = 1.5; gamma = 0.81 -> 0.81^0.5 = 0.9, 0.81^1.5 = 0.729
    weights, _ = transfer_weights(SNAPSHOTS, LOSSES, 1, 2, gamma=0.81)
    z = 0.9 + 0.9 + 0.729
    expected = [(0.9 * 1 + 0.9 * 2 + 0.729 * 2) / z, (0.9 * 1 + 0.9 * 1.25 + 0.729 * 0.5) / z]
    assert weights == pytest.approx(expected, abs=1e-14)


def test_ensemble_alignment_follows_the_schedule() -> None:
    # The same e and T weigh snapshots differently when E changes: e T / E = 3 at
    # the last epoch -> (0.81, 0.9, 1)/2.71, so the last snapshot dominates.
    weights, _ = transfer_weights(SNAPSHOTS, LOSSES, 10, 10)
    expected = [(0.81 * 1 + 0.9 * 2 + 2) / 2.71, (0.81 * 1 + 0.9 * 1.25 + 0.5) / 2.71]
    assert weights == pytest.approx(expected, abs=1e-14)
    # e = 0 (losses of a pseudo epoch): e T / E = 0 -> (0.9, 0.81, 0.729)/2.439
    weights, _ = transfer_weights(SNAPSHOTS, LOSSES, 0, 10)
    expected = [(0.9 + 0.81 * 2 + 0.729 * 2) / 2.439, (0.9 + 0.81 * 1.25 + 0.729 * 0.5) / 2.439]
    assert weights == pytest.approx(expected, abs=1e-14)


def test_gamma_one_is_a_plain_average() -> None:
    weights, _ = transfer_weights(SNAPSHOTS, LOSSES, 3, 7, gamma=1.0)
    assert weights == pytest.approx([5 / 3, 2.75 / 3], abs=1e-14)


def test_final_uses_the_last_snapshot_only() -> None:
    for epoch in (1, 5):
        assert transfer_weights(SNAPSHOTS, LOSSES, epoch, 5, "final") == ([2.0, 0.5], [])
    assert transfer_weights(SNAPSHOTS, [1.0, 3.0], 1, 5, "final")[0] == pytest.approx([3.0, 1 / 3])


def test_static_pred_is_constant_from_the_initial_losses() -> None:
    # pi^3 applied to l^1 = (1, 3): (3/1, 1/3), whatever the epoch's losses are
    for losses, epoch in ((LOSSES, 1), ([7.0, 0.5], 4), (None, 2)):
        weights, _ = transfer_weights(
            SNAPSHOTS, losses, epoch, 4, "static-pred", initial_losses=[1.0, 3.0]
        )
        assert weights == pytest.approx([3.0, 1 / 3])


def test_static_final_returns_the_given_weights() -> None:
    final = [0.7, 1.3]
    assert transfer_weights(SNAPSHOTS, LOSSES, 2, 4, "static-final", final_weights=final) == (
        final,
        [],
    )
    # it needs no snapshots at all
    assert transfer_weights({}, None, 2, 4, "static-final", final_weights=final) == (final, [])
    assert transfer_weights({}, None, 1, 4, "static-final", final_weights=[0.7, -0.2]) == (
        [0.7, 1e-3],
        [1],
    )


def test_non_positive_weights_are_clipped_to_the_floor() -> None:
    negative = {1: linear_snapshot(IDENTITY, [0.0, -10.0])}  # lambda = (1, -1.5)
    assert transfer_weights(negative, LOSSES, 1, 1) == ([1.0, 1e-3], [1])
    assert transfer_weights(negative, LOSSES, 1, 1, "final", floor=0.05) == ([1.0, 0.05], [1])
    zero = {1: linear_snapshot(IDENTITY, [-2.0, 0.0])}  # lambda = (0, 1)
    assert transfer_weights(zero, LOSSES, 1, 1) == ([1e-3, 1.0], [0])


def test_agrees_with_the_policy_that_made_the_snapshot() -> None:
    policy = Policy(PolicyConfig(n_losses=3), seed=9)
    losses = [0.4, 1.1, 2.3]
    weights, _ = transfer_weights({1: policy.snapshot()}, losses, 1, 1, "final")
    np.testing.assert_allclose(weights, policy.mean_weights(losses), rtol=1e-12)
    ensemble, _ = transfer_weights({1: policy.snapshot(), 2: policy.snapshot()}, losses, 1, 3)
    np.testing.assert_allclose(ensemble, weights, rtol=1e-12)


@pytest.mark.parametrize(
    ("snapshots", "losses", "epoch", "epochs", "kwargs", "message"),
    [
        (SNAPSHOTS, LOSSES, 1, 2, {"mode": "mean"}, "mode must be one of"),
        (SNAPSHOTS, LOSSES, -1, 2, {}, r"epoch must be an integer in 0\.\.2"),
        (SNAPSHOTS, LOSSES, 3, 2, {}, r"epoch must be an integer in 0\.\.2"),
        (SNAPSHOTS, LOSSES, 1, 0, {}, "epochs must be an integer >= 1"),
        (SNAPSHOTS, LOSSES, 1, 2, {"gamma": 0.0}, r"gamma must be in \(0, 1\]"),
        (SNAPSHOTS, LOSSES, 1, 2, {"gamma": 1.5}, r"gamma must be in \(0, 1\]"),
        (SNAPSHOTS, LOSSES, 1, 2, {"gamma": math.nan}, r"gamma must be in \(0, 1\]"),
        (SNAPSHOTS, LOSSES, 1, 2, {"floor": 0.0}, "floor must be finite and > 0"),
        (SNAPSHOTS, None, 1, 2, {}, "mode 'ensemble' needs the losses"),
        (SNAPSHOTS, None, 1, 2, {"mode": "final"}, "mode 'final' needs the losses"),
        (SNAPSHOTS, [2.0, 0.0], 1, 2, {}, r"losses\[1\] = 0\.0 must be > 0"),
        (SNAPSHOTS, [2.0, math.nan], 1, 2, {}, r"losses\[1\] = nan is not finite"),
        (SNAPSHOTS, [2.0], 1, 2, {}, "losses must have 2 values"),
        (
            SNAPSHOTS,
            [2.0, -1.0],
            1,
            2,
            {"names": ["semantic", "center"]},
            r"losses\['center'\] = -1\.0",
        ),
        ({}, LOSSES, 1, 2, {}, "snapshots must map rounds 1..T"),
        ({1: SNAPSHOTS[1], 3: SNAPSHOTS[3]}, LOSSES, 1, 2, {}, r"without gaps, got \[1, 3\]"),
        (SNAPSHOTS, LOSSES, 1, 2, {"mode": "static-pred"}, "needs the search's initial losses"),
        (SNAPSHOTS, LOSSES, 1, 2, {"mode": "static-final"}, "needs the best member's weights"),
        (
            SNAPSHOTS,
            LOSSES,
            1,
            2,
            {"mode": "static-pred", "initial_losses": [1.0, -1.0]},
            r"initial_losses\[1\] = -1\.0 must be > 0",
        ),
        (
            SNAPSHOTS,
            LOSSES,
            1,
            2,
            {"mode": "static-final", "final_weights": [1.0]},
            "final_weights must have 2 values",
        ),
        (
            {1: SNAPSHOTS[1], 2: {"layers": [{"weight": [[1.0, 1.0, 1.0]], "bias": [0.0]}]}},
            LOSSES,
            1,
            2,
            {},
            "snapshot of round 2 maps 3 losses to 1 outputs",
        ),
    ],
)
def test_rejects_bad_input(snapshots, losses, epoch, epochs, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        transfer_weights(snapshots, losses, epoch, epochs, **kwargs)


def test_loss_sum_scale_applies_to_the_policy_modes_on_their_losses() -> None:
    # pi^2 alone: at l = (2, 4) lambda = (2, 1.25), sum lambda*l = 9 against sum l = 6, so
    # x 2/3 -> (4/3, 5/6); static-pred at l^1 = (1, 3): lambda = (2, 4/3), 6 against 4,
    # x 2/3 -> (4/3, 8/9); static-final's weights were trained as they are: unchanged
    two = {1: SNAPSHOTS[1], 2: SNAPSHOTS[2]}
    scaled = {"weight_scale": "loss-sum"}
    assert transfer_weights(two, LOSSES, 1, 5, "final")[0] == pytest.approx([2.0, 1.25])
    assert transfer_weights(two, LOSSES, 1, 5, "final", **scaled)[0] == pytest.approx(
        [4 / 3, 5 / 6]
    )
    pred = transfer_weights(
        two, None, 1, 5, "static-pred", initial_losses=[1.0, 3.0], weight_scale="loss-sum"
    )
    assert pred[0] == pytest.approx([4 / 3, 8 / 9])
    final = transfer_weights(
        two, None, 1, 5, "static-final", final_weights=[3.0, 0.1], weight_scale="loss-sum"
    )
    assert final == ([3.0, 0.1], [])
    with pytest.raises(ValueError, match="weight_scale must be one of"):
        transfer_weights(two, LOSSES, 1, 5, "final", weight_scale="sum")
