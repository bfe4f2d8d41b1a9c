"""Policy network, Eq. 1, Eq. 2 with redraw, Eq. 6 and persistence, against hand numbers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from controller_service.search.policy import (
    Policy,
    PolicyConfig,
    evaluate_snapshot,
    scale_to_loss_sum,
)

ADAM_EPS = 1e-8  # torch.optim.Adam's default, part of its first-step formula


def hand_policy(layers: list[tuple[list, list]], **config_kwargs) -> Policy:
    """A Policy whose parameters are the given (weight, bias) pairs, via the public state API."""
    n = len(layers[0][0][0])
    config = PolicyConfig(n_losses=n, hidden=len(layers[0][0]), **config_kwargs)
    state = Policy(config, seed=0).state_dict()
    state["layers"] = [{"weight": w, "bias": b} for w, b in layers]
    return Policy.from_state_dict(config, state)


# pi(l) for l = (1, 3): h1 = relu((4, -2)) = (4, 0); h2 = relu((4 - 1, 0)) = (3, 0);
# out = (3 + 0, 1.5 + 0 - 1) = (3, 0.5)  ->  lambda = (3/1, 0.5/3).
RELU_NET = [
    ([[1.0, 1.0], [1.0, -1.0]], [0.0, 0.0]),
    ([[1.0, 0.0], [0.0, 1.0]], [-1.0, 0.0]),
    ([[1.0, 2.0], [0.5, 1.0]], [0.0, -1.0]),
]

# Every unit active for the losses used below, so every parameter has a gradient.
POSITIVE_NET = [
    ([[0.6, 0.3], [0.2, 0.7]], [0.1, 0.0]),
    ([[0.5, 0.4], [0.3, 0.6]], [0.0, 0.2]),
    ([[0.8, 0.1], [0.2, 0.9]], [0.05, 0.0]),
]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_losses": 0}, "n_losses"),
        ({"n_losses": 2.5}, "n_losses"),
        ({"hidden": 0}, "hidden"),
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": math.nan}, "sigma"),
        ({"sigma_mode": "scaled"}, "sigma_mode"),
        ({"lr": 0.0}, "lr"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"steps": 0}, "steps"),
        ({"max_draws": 0}, "max_draws"),
        ({"floor": 0.0}, "floor"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field} must"):
        PolicyConfig(**{"n_losses": 2, **kwargs})


def test_init_statistics_follow_the_paper() -> None:
    config = PolicyConfig(n_losses=4, hidden=64)
    layers = Policy(config, seed=3).snapshot()["layers"]
    for layer, n_in in zip(layers, (4, 64, 64), strict=True):
        weight = np.array(layer["weight"])
        # mean within 4 standard errors of 1/n_in, std within 15 % of 0.1/n_in
        assert abs(weight.mean() - 1 / n_in) < 4 * (0.1 / n_in) / math.sqrt(weight.size)
        assert weight.std() == pytest.approx(0.1 / n_in, rel=0.15)
        assert layer["bias"] == [0.0] * len(layer["bias"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_at_init_weighted_losses_start_equal(seed: int) -> None:
    losses = [0.5, 2.0, 8.0]
    weights = Policy(PolicyConfig(n_losses=3), seed=seed).mean_weights(losses)
    mean_loss = sum(losses) / 3
    for weight, loss in zip(weights, losses, strict=True):
        # Eq. 1 at init: lambda_i ~ mean(l) / l_i, i.e. pi(l) ~ mean(l) in every output
        assert weight * loss == pytest.approx(mean_loss, rel=0.1)


def test_eq1_hand_network_with_relu() -> None:
    policy = hand_policy(RELU_NET)
    assert policy.mean_weights([1.0, 3.0]) == pytest.approx([3.0, 0.5 / 3], abs=1e-15)
    assert evaluate_snapshot(policy.snapshot(), [1.0, 3.0]).tolist() == pytest.approx([3.0, 0.5])


def test_eq1_mean_may_be_non_positive() -> None:
    layers = [*RELU_NET[:2], (RELU_NET[2][0], [0.0, -2.0])]  # out = (3, -0.5)
    assert hand_policy(layers).mean_weights([1.0, 3.0]) == pytest.approx([3.0, -0.5 / 3])


@pytest.mark.parametrize(
    ("losses", "message"),
    [
        ([0.0, 1.0], r"losses\[0\] = 0\.0 must be > 0"),
        ([1.0, -2.0], r"losses\[1\] = -2\.0 must be > 0"),
        ([math.nan, 1.0], r"losses\[0\] = nan is not finite"),
        ([1.0, math.inf], r"losses\[1\] = inf is not finite"),
        ([1.0], r"losses must have 2 values"),
        ([1.0, 2.0, 3.0], r"losses must have 2 values"),
        (["a", 1.0], r"losses must be a sequence of 2 numbers"),
    ],
)
def test_eq1_rejects_bad_losses(losses: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hand_policy(RELU_NET).mean_weights(losses)


def test_eq1_error_names_the_loss() -> None:
    with pytest.raises(ValueError, match=r"losses\['center'\] = -1\.0"):
        hand_policy(RELU_NET).mean_weights([1.0, -1.0], names=["semantic", "center"])


def test_evaluate_snapshot_matches_the_policy_and_checks_its_input() -> None:
    policy = Policy(PolicyConfig(n_losses=3), seed=5)
    losses = [0.3, 1.7, 0.02]
    expected = np.array(policy.mean_weights(losses)) * np.array(losses)
    snapshot = json.loads(json.dumps(policy.snapshot()))
    np.testing.assert_allclose(evaluate_snapshot(snapshot, losses), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="activation"):
        evaluate_snapshot({**snapshot, "activation": "tanh"}, losses)
    with pytest.raises(ValueError, match="losses must have 3 values"):
        evaluate_snapshot(snapshot, [1.0, 2.0])
    broken = {"layers": [snapshot["layers"][0], snapshot["layers"][0]], "activation": "relu"}
    with pytest.raises(ValueError, match="layer 1 takes 3 inputs, layer 0 gives 16"):
        evaluate_snapshot(broken, losses)


@pytest.mark.parametrize(
    ("mode", "expected_std"), [("absolute", [0.2, 0.2]), ("relative", [0.4, 0.2])]
)
def test_eq2_std_absolute_vs_relative(mode: str, expected_std: list[float]) -> None:
    policy = Policy(PolicyConfig(n_losses=2, sigma_mode=mode), seed=11)
    mean = [2.0, 1.0]  # 5 std above 0 in both modes: redraws are negligible
    draw = policy.sample(mean, 4000)
    candidates = np.array(draw.candidates)
    assert candidates.shape == (4000, 2)
    np.testing.assert_allclose(candidates.mean(axis=0), mean, atol=4 * 0.4 / math.sqrt(4000))
    np.testing.assert_allclose(candidates.std(axis=0), expected_std, rtol=0.05)


def test_eq2_relative_std_floors_a_non_positive_mean() -> None:
    # std_i = sigma * max(|mean_i|, floor): a mean of -0.5 gets std 0.1, and every
    # candidate is still valid because the member redraws until it is.
    policy = Policy(PolicyConfig(n_losses=2, sigma_mode="relative", sigma=0.5), seed=2)
    draw = policy.sample([1.0, -0.5], 50)
    assert draw.invalid
    assert all(value <= 0 for value in np.array(draw.invalid)[:, 1])  # 5 std below 0
    assert np.all(np.array(draw.candidates) > 0)


def _policy_rng_copy(policy: Policy) -> np.random.Generator:
    """A generator in the policy's random state, rebuilt from its public state_dict."""
    saved = policy.state_dict()["rng"]
    bit_generator = np.random.PCG64()
    bit_generator.state = {
        "bit_generator": saved["bit_generator"],
        "state": {"state": int(saved["state"]), "inc": int(saved["inc"])},
        "has_uint32": saved["has_uint32"],
        "uinteger": saved["uinteger"],
    }
    return np.random.Generator(bit_generator)


def test_eq2_log_mode_draws_multiplicatively_and_never_invalid() -> None:
    # log lambda_hat = log max(lambda, floor) + sigma z: with sigma 0.5 a z of 1 multiplies
    # the weight by e^0.5 whatever its scale; a non-positive mean explores around the floor
    config = PolicyConfig(n_losses=3, sigma_mode="log", sigma=0.5, floor=1e-3)
    policy = Policy(config, seed=5)
    mean = [200.0, 0.01, -0.5]
    rng = _policy_rng_copy(policy)
    z = rng.standard_normal((4, 3))
    draw = policy.sample(mean, 4)
    assert not draw.invalid and not draw.clipped_members
    expected = np.exp(np.log([200.0, 0.01, 1e-3]) + 0.5 * z)
    np.testing.assert_allclose(draw.candidates, expected, rtol=1e-15)


def test_eq6_closed_form_bias_gradient_in_log_mode() -> None:
    # n = 1, identity layers: pi(l) = l + b3, lambda = (l + b3)/l = 1.25 at l = 2, b3 = 0.5.
    # log N(log x; log lambda, s^2): d/d b3 = (log x - log lambda) / (s^2 lambda) * (1/l),
    # so the objective's gradient is -(1/K) sum r_k (log x_k - log 1.25) / (0.04 * 1.25 * 2)
    layers = [([[1.0]], [0.0]), ([[1.0]], [0.0]), ([[1.0]], [0.5])]
    policy = hand_policy(layers, lr=0.01, weight_decay=0.0, sigma=0.2, sigma_mode="log")
    loss, drawn, rewards = 2.0, [1.5, 1.35], [1.0, 1.0]
    gradient = -(math.log(1.5 / 1.25) + math.log(1.35 / 1.25)) / (0.04 * 1.25 * 2) / 2
    assert gradient == pytest.approx(-1.29641, abs=1e-5)
    policy.update([loss], [[x] for x in drawn], rewards)
    new_bias = policy.snapshot()["layers"][2]["bias"][0]
    assert new_bias == pytest.approx(0.5 - 0.01 * gradient / (abs(gradient) + ADAM_EPS), abs=1e-15)


def test_scale_to_loss_sum_hand_numbers() -> None:
    # lambda = (2, 100, 0.5), l = (1, 0.02, 4): sum lambda*l = 2 + 2 + 2 = 6, sum l = 5.02,
    # so every weight is multiplied by 5.02 / 6; the ratios stay
    scaled = scale_to_loss_sum([2.0, 100.0, 0.5], [1.0, 0.02, 4.0])
    np.testing.assert_allclose(scaled, np.array([2.0, 100.0, 0.5]) * 5.02 / 6, rtol=1e-15)
    assert float(np.dot(scaled, [1.0, 0.02, 4.0])) == pytest.approx(5.02)
    with pytest.raises(ValueError, match="weighted loss sum is 0.0"):
        scale_to_loss_sum([0.0, 0.0], [1.0, 2.0])


def test_eq2_invalid_draws_are_redrawn_and_kept() -> None:
    policy = Policy(PolicyConfig(n_losses=2), seed=4)
    draw = policy.sample([1.0, -0.1], 20)  # P(valid) = P(z > 0.5) ~ 0.31 per draw
    assert len(draw.candidates) == 20 and not draw.clipped_members
    assert np.all(np.array(draw.candidates) > 0)
    assert len(draw.invalid) > 20  # ~ 44 expected
    assert all(min(candidate) <= 0 for candidate in draw.invalid)
    assert draw.invalid_members == sorted(draw.invalid_members)
    assert set(draw.invalid_members) <= set(range(20))
    assert len(draw.invalid_members) == len(draw.invalid)


def test_eq2_clips_to_floor_after_max_draws() -> None:
    policy = Policy(PolicyConfig(n_losses=2, max_draws=3, floor=0.01), seed=4)
    draw = policy.sample([1.0, -5.0], 2)  # the second component is never > 0
    assert draw.clipped_members == [0, 1]
    assert draw.invalid_members == [0, 0, 0, 1, 1, 1]
    for member, last_invalid in ((0, draw.invalid[2]), (1, draw.invalid[5])):
        assert draw.candidates[member] == [last_invalid[0], 0.01]


def test_same_seed_same_draws_and_snapshots() -> None:
    config = PolicyConfig(n_losses=3)
    first, second = Policy(config, seed=21), Policy(config, seed=21)
    losses = [1.0, 0.2, 3.0]
    assert first.snapshot() == second.snapshot()
    for policy in (first, second):
        draw = policy.sample(policy.mean_weights(losses), 8)
        policy.update(losses, draw.candidates, [float(j) - 3.5 for j in range(8)])
    assert first.snapshot() == second.snapshot()
    assert first.sample([1.0, 1.0, 1.0], 8) == second.sample([1.0, 1.0, 1.0], 8)
    assert Policy(config, seed=22).snapshot() != first.snapshot()


def _advance(policy: Policy, losses: list[float]) -> tuple:
    """One controller round: draw, reward in member order, update; return what it produced."""
    draw = policy.sample(policy.mean_weights(losses), 6)
    drawn = draw.candidates + draw.invalid
    rewards = [0.5 * j - 1.0 for j in range(6)] + [-1.0] * len(draw.invalid)
    policy.update(losses, drawn, rewards)
    return draw, policy.snapshot()


@pytest.mark.parametrize("sigma_mode", ["absolute", "relative"])
@pytest.mark.parametrize("rounds_before", [0, 2])
def test_json_round_trip_continues_bit_identically(sigma_mode: str, rounds_before: int) -> None:
    config = PolicyConfig(n_losses=3, sigma_mode=sigma_mode, steps=2, sigma=0.5)
    losses = [0.9, 0.4, 2.5]
    original = Policy(config, seed=8)
    for _ in range(rounds_before):
        _advance(original, losses)
    restored = Policy.from_state_dict(config, json.loads(json.dumps(original.state_dict())))
    for _ in range(2):
        assert _advance(restored, losses) == _advance(original, losses)
    assert restored.state_dict() == original.state_dict()


def test_from_state_dict_checks_shapes_and_format() -> None:
    state = Policy(PolicyConfig(n_losses=3), seed=0).state_dict()
    with pytest.raises(ValueError, match="layer shapes"):
        Policy.from_state_dict(PolicyConfig(n_losses=4), state)
    with pytest.raises(ValueError, match="format"):
        Policy.from_state_dict(PolicyConfig(n_losses=3), {**state, "format": "other"})
    with pytest.raises(ValueError, match="rng"):
        Policy.from_state_dict(PolicyConfig(n_losses=3), {**state, "rng": {"state": "x"}})


def test_eq6_moves_the_mean_towards_rewarded_draws() -> None:
    policy = hand_policy(POSITIVE_NET, lr=1e-3, weight_decay=0.0)
    losses = [1.0, 2.0]
    before = np.array(policy.mean_weights(losses))
    above, below = before + [0.3, 0.0], before - [0.3, 0.0]
    policy.update(losses, [above.tolist(), below.tolist()], [1.0, -1.0])
    after = np.array(policy.mean_weights(losses))
    assert after[0] > before[0]
    policy.update(losses, [above.tolist(), below.tolist()], [-1.0, 1.0])
    policy.update(losses, [above.tolist(), below.tolist()], [-1.0, 1.0])
    assert np.array(policy.mean_weights(losses))[0] < after[0]


def _objective(layers, losses, drawn, rewards, sigma, sigma_mode, floor=1e-3) -> float:
    """Eq. 6's loss computed with numpy only, for finite differences."""
    snapshot = {
        "layers": [{"weight": w.tolist(), "bias": b.tolist()} for w, b in layers],
        "activation": "relu",
    }
    mean = evaluate_snapshot(snapshot, losses) / np.asarray(losses)
    if sigma_mode == "log":  # the Normal density of log(drawn) around log(mean)
        mean, drawn = np.log(np.maximum(mean, floor)), np.log(drawn)
    std = (
        np.full_like(mean, sigma)
        if sigma_mode in ("absolute", "log")
        else sigma * np.maximum(abs(mean), floor)
    )
    log_density = -0.5 * ((drawn - mean) / std) ** 2 - np.log(std) - 0.5 * math.log(2 * math.pi)
    return float(-(rewards * log_density.sum(axis=1)).mean())


@pytest.mark.parametrize("sigma_mode", ["absolute", "relative", "log"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_eq6_first_step_is_adams_formula_on_the_exact_gradient(
    sigma_mode: str, weight_decay: float
) -> None:
    lr = 0.01
    policy = hand_policy(POSITIVE_NET, lr=lr, weight_decay=weight_decay, sigma_mode=sigma_mode)
    losses = [0.8, 1.6]
    drawn = np.array([[1.2, 0.7], [0.5, 0.9], [0.9, 0.2]])
    rewards = np.array([1.5, -0.5, -1.0])
    layers = [(np.array(w), np.array(b)) for w, b in POSITIVE_NET]

    # central differences, independent of autograd; then Adam's first step:
    # m = (1-b1) g, v = (1-b2) g^2, bias-corrected -> theta - lr * g / (|g| + eps),
    # with g including the L2 term weight_decay * theta (torch.optim.Adam's weight_decay)
    expected = []
    for k, (weight, bias) in enumerate(layers):
        for tensor in (weight, bias):
            new = tensor.copy()
            for index in np.ndindex(tensor.shape):
                grads = []
                for h in (1e-6, -1e-6):
                    tensor[index] += h
                    grads.append(_objective(layers, losses, drawn, rewards, 0.2, sigma_mode))
                    tensor[index] -= h
                g = (grads[0] - grads[1]) / 2e-6 + weight_decay * tensor[index]
                assert abs(g) > 1e-3, f"layer {k} {index}: gradient too small to test the sign"
                new[index] = tensor[index] - lr * g / (abs(g) + ADAM_EPS)
            expected.append(new)

    policy.update(losses, drawn.tolist(), rewards.tolist())
    got = [
        np.array(layer[key]) for layer in policy.snapshot()["layers"] for key in ("weight", "bias")
    ]
    for got_tensor, expected_tensor in zip(got, expected, strict=True):
        np.testing.assert_allclose(got_tensor, expected_tensor, rtol=0, atol=1e-10)


def test_eq6_closed_form_bias_gradient_in_one_dimension() -> None:
    # n = 1, hidden = 1, identity layers: pi(l) = l + b3, lambda = (l + b3)/l.
    # d/d b3 of -(1/K) sum r_k log N(x_k; lambda, s^2) = -(1/K) sum r_k (x_k - lambda) / (s^2 l)
    layers = [([[1.0]], [0.0]), ([[1.0]], [0.0]), ([[1.0]], [0.5])]
    policy = hand_policy(layers, lr=0.01, weight_decay=0.0, sigma=0.2)
    loss, drawn, rewards = 2.0, [1.5, 1.35], [1.0, 1.0]  # lambda = 1.25
    # hand: -((0.25 + 0.10) / (0.04 * 2)) / 2 = -4.375 / 2
    gradient = -sum(r * (x - 1.25) / (0.04 * loss) for x, r in zip(drawn, rewards, strict=True)) / 2
    assert gradient == pytest.approx(-2.1875)
    policy.update([loss], [[x] for x in drawn], rewards)
    new_bias = policy.snapshot()["layers"][2]["bias"][0]
    assert new_bias == pytest.approx(0.5 - 0.01 * gradient / (abs(gradient) + ADAM_EPS), abs=1e-15)
    assert new_bias > 0.5  # both draws lie above the mean and are rewarded


@pytest.mark.parametrize(
    ("drawn", "rewards", "message"),
    [
        ([], [], "at least one candidate"),
        ([[1.0, 1.0]], [1.0, 2.0], "2 rewards for 1 drawn"),
        ([[1.0, 1.0]], [math.nan], r"rewards\[0\] = nan"),
        ([[1.0]], [1.0], r"drawn\[0\] must have 2 values"),
        ([[1.0, math.inf]], [1.0], r"drawn\[0\]\[1\] = inf"),
    ],
)
def test_eq6_rejects_bad_updates(drawn: list, rewards: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hand_policy(POSITIVE_NET).update([1.0, 1.0], drawn, rewards)


def test_sample_rejects_bad_input() -> None:
    policy = hand_policy(POSITIVE_NET)
    with pytest.raises(ValueError, match="m must be an integer >= 1"):
        policy.sample([1.0, 1.0], 0)
    with pytest.raises(ValueError, match=r"mean\[1\] = nan"):
        policy.sample([1.0, math.nan], 2)
