"""Eq. 3-5 with hand-computed numbers."""

from __future__ import annotations

import math

import pytest

from controller_service.search.rewards import rewards


def test_eq3_to_5_hand_numbers() -> None:
    # v = (0.1, 0.2, 0.3): mean 0.2, population std s = sqrt(0.02/3).
    # r_local = (-0.1, 0, 0.1)/s = (-sqrt(1.5), 0, sqrt(1.5)).
    # v - 0.15 = (-0.05, 0.05, 0.15), same std s: r_imp = (-0.5, 0.5, 1.5) sqrt(1.5).
    # Round 2 of 4 scales by 1/2.
    root = math.sqrt(1.5)
    expected = [0.5 * (-root - 0.5 * root), 0.5 * (0.5 * root), 0.5 * (root + 1.5 * root)]
    assert rewards([0.1, 0.2, 0.3], 0.15, 2, 4) == pytest.approx(expected, abs=1e-12)


def test_diverged_member_gets_minus_one_and_is_left_out() -> None:
    # trained v = (0.1, 0.3): mean 0.2, std 0.1 -> r_local = (-1, 1);
    # v - 0.1 = (0, 0.2), std 0.1 -> r_imp = (0, 2); round 1 of 2 -> (-0.5, 1.5).
    assert rewards([0.1, None, 0.3], 0.1, 1, 2) == pytest.approx([-0.5, -1.0, 1.5])
    assert rewards([None, None], 0.1, 1, 2) == [-1.0, -1.0]


def test_t_over_T_scaling() -> None:
    last_round = rewards([0.1, None, 0.3], 0.1, 5, 5)
    assert last_round == pytest.approx([-1.0, -1.0, 3.0])  # diverged stays -1, unscaled
    assert rewards([0.1, None, 0.3], 0.1, 1, 5) == pytest.approx([-0.2, -1.0, 0.6])


def test_local_ablation_drops_the_improvement_term() -> None:
    assert rewards([0.1, None, 0.3], 0.1, 1, 2, terms="local") == pytest.approx([-0.5, -1.0, 0.5])


def test_std_zero_guard() -> None:
    # equal PQs: both stds are 0, so both terms are 0 although every member improved
    assert rewards([0.3, 0.3, 0.3], 0.2, 3, 3) == [0.0, 0.0, 0.0]
    assert rewards([0.4], 0.2, 1, 1) == [0.0]  # a single trained member
    assert rewards([0.4, None], 0.2, 1, 1) == [0.0, -1.0]


def test_improvement_term_is_not_centred() -> None:
    # Eq. 4 divides by the std but does not subtract the mean: when every member
    # beats the previous best, every r_imp is positive. v = (0.5, 0.7), std 0.1.
    local, both = rewards([0.5, 0.7], 0.4, 1, 1, "local"), rewards([0.5, 0.7], 0.4, 1, 1)
    assert local == pytest.approx([-1.0, 1.0])
    assert [b - a for a, b in zip(local, both, strict=True)] == pytest.approx([1.0, 3.0])


def test_rank_reward_hand_numbers_and_an_outlier_changes_nothing() -> None:
    # trained v = (30, 10, 20, 20): ranks (3, 0, 1.5, 1.5) (the tie shares ranks 1 and 2),
    # centred (1.5, -1.5, 0, 0), population std sqrt(4.5 / 4); round 2 of 4 scales by 1/2:
    # (1.5 / sqrt(1.125)) / 2 = 1/sqrt(2). The diverged member keeps -1.
    half = 1 / math.sqrt(2)
    expected = [half, -half, 0.0, 0.0, -1.0]
    assert rewards([30, 10, 20, 20, None], 25.0, 2, 4, "rank") == pytest.approx(expected)
    # a far outlier (or another previous best) moves nothing: only the order counts
    assert rewards([1e6, 10, 20, 20, None], -5.0, 2, 4, "rank") == pytest.approx(expected)
    assert rewards([7.0, 7.0], 1.0, 1, 1, "rank") == [0.0, 0.0]  # all tied: no signal


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (([0.1], 0.0, 1, 2), {"terms": "imp"}, "terms must be one of"),
        (([0.1], 0.0, 0, 2), {}, "round_ must be an integer >= 1"),
        (([0.1], 0.0, 3, 2), {}, "round_ 3 is past the last round 2"),
        (([0.1], 0.0, 1, 0), {}, "rounds must be an integer >= 1"),
        (([0.1, math.nan], 0.0, 1, 2), {}, r"pqs\[1\] = nan"),
        (([0.1, "x"], 0.0, 1, 2), {}, r"pqs\[1\] = 'x'"),
        (([], 0.0, 1, 2), {}, "at least one member"),
        (([0.1], math.inf, 1, 2), {}, "best_prev must be a finite number"),
    ],
)
def test_rejects_bad_input(args: tuple, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rewards(*args, **kwargs)
