"""The weight controller: policy MLP, Eq. 1, Eq. 2 with redraw, Eq. 6 (REINFORCE + Adam).

Pure mathematics, no I/O: the run state machine feeds it loss vectors, drawn
candidates and rewards, and persists what ``state_dict`` returns. Everything is
float64 and every random number comes from one numpy ``PCG64`` generator, so a
run is bit-identical for a seed and survives a JSON round trip of its state
(the controller may be killed between any two calls).

The maths as implemented, with our deviations, is written up in docs/design.md:

- pi(l; theta): Linear(n,h) -> ReLU -> Linear(h,h) -> ReLU -> Linear(h,n);
  weights ~ Normal(1/n_in, 0.1/n_in), biases 0, so at init pi(l) ~ mean(l) and
  the weighted losses lambda_i * l_i start equal.
- Eq. 1: lambda = pi(l) / l. pi may output non-positive values; the mean is
  returned as is and Eq. 2's validity check handles it.
- Eq. 2: lambda_hat ~ Normal(lambda, std^2 I) with std = sigma ("absolute", the
  paper) or std_i = sigma * max(|lambda_i|, floor) ("relative", ours; the floor
  keeps the std positive where pi's output is non-positive). A draw is valid when
  every component is finite and > 0; the others are redrawn.
- "log" (ours, beyond the paper): multiplicative exploration,
  log lambda_hat ~ Normal(log max(lambda, floor), sigma^2 I). Every draw is valid
  and the spread is the same fraction of every weight, whatever its order of
  magnitude. A component whose mean falls below ``floor`` explores around the
  floor and gets no gradient there (the clamp): a documented dead zone.
- Eq. 6: one Adam step on -(1/K) sum_k r_k log p(lambda_hat_k; theta) over the K
  drawn candidates the round scores, with p the density the candidates were drawn
  from (for "log": the Normal density of log lambda_hat; the Jacobian term does not
  depend on theta). In relative mode the std depends on theta too, and the gradient
  includes that path: it is the exact score function of the sampling distribution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from controller_service.search.options import SIGMA_MODES

SNAPSHOT_ACTIVATION = "relu"
STATE_FORMAT = "adaseg-policy-state/v1"
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass(frozen=True)
class PolicyConfig:
    """Hyper-parameters of one run's controller (defaults: the paper's; a run's own come
    from ``runs.RunSpec``, whose defaults differ in sigma, sigma_mode and lr)."""

    n_losses: int
    hidden: int = 16
    sigma: float = 0.2
    sigma_mode: str = "absolute"  # "relative": std = sigma * lambda; "log": multiplicative
    lr: float = 5e-2
    weight_decay: float = 5e-4  # L2 exactly as torch.optim.Adam(weight_decay=...)
    steps: int = 1  # policy_steps: the Eq. 6 step repeated
    max_draws: int = 100  # per member, then clip to floor
    floor: float = 1e-3

    def __post_init__(self) -> None:
        _require_int("n_losses", self.n_losses, minimum=1)
        _require_int("hidden", self.hidden, minimum=1)
        _require_int("steps", self.steps, minimum=1)
        _require_int("max_draws", self.max_draws, minimum=1)
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"sigma must be finite and > 0, got {self.sigma!r}")
        if self.sigma_mode not in SIGMA_MODES:
            raise ValueError(f"sigma_mode must be one of {SIGMA_MODES}, got {self.sigma_mode!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be finite and > 0, got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be finite and >= 0, got {self.weight_decay!r}")
        if not (math.isfinite(self.floor) and self.floor > 0):
            raise ValueError(f"floor must be finite and > 0, got {self.floor!r}")


@dataclass
class Draw:
    """The outcome of Eq. 2 for one round."""

    candidates: list[list[float]]  # m valid candidates, member order
    invalid: list[list[float]]  # rejected draws (any component <= 0): reward -1 in the update
    clipped_members: list[int]  # members whose draw was clipped to `floor` after max_draws
    invalid_members: list[int] = field(default_factory=list)  # member of each invalid draw


def _require_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def validate_losses(
    losses: Sequence[float], n: int, names: Sequence[str] | None = None, what: str = "losses"
) -> np.ndarray:
    """Check a loss vector for Eq. 1 (length n, finite, > 0) and return it as float64.

    The error names the offending loss (by ``names`` when given, else by index),
    so the service can answer 422 with it.
    """
    values = validate_vector(losses, n, what, names)
    for i, value in enumerate(values):
        if value <= 0:
            raise ValueError(f"{_label(what, i, names)} = {value!r} must be > 0")
    return values


def validate_vector(
    values: Sequence[float], n: int, what: str, names: Sequence[str] | None = None
) -> np.ndarray:
    """Check a vector has n finite numbers and return it as float64; errors name the index."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be a sequence of {n} numbers: {exc}") from None
    if array.shape != (n,):
        raise ValueError(f"{what} must have {n} values, got shape {array.shape}")
    for i, value in enumerate(array):
        if not math.isfinite(value):
            raise ValueError(f"{_label(what, i, names)} = {value!r} is not finite")
    return array


def _label(what: str, index: int, names: Sequence[str] | None) -> str:
    if names is not None and index < len(names):
        return f"{what}[{names[index]!r}]"
    return f"{what}[{index}]"


MAX_WEIGHT = 1e12  # larger weights are no weights: a draw beyond is clipped (see sample)


def is_valid_weight_vector(values: Sequence[float] | np.ndarray) -> bool:
    """Every component finite, > 0 and at most MAX_WEIGHT: a weight a trainer can use."""
    array = np.asarray(values, dtype=np.float64)
    return bool(np.all(np.isfinite(array)) and np.all(array > 0) and np.all(array <= MAX_WEIGHT))


def clip_weights(values: np.ndarray, floor: float) -> np.ndarray:
    """Move every component into [floor, MAX_WEIGHT] (NaN to floor): Eq. 2's give-up case."""
    out = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=floor, posinf=MAX_WEIGHT)
    return np.clip(out, floor, MAX_WEIGHT)


def scale_to_loss_sum(weights: Sequence[float], losses: Sequence[float]) -> np.ndarray:
    """``weights`` times ``sum(losses) / sum(weights * losses)``: the weighted loss sums to
    the unweighted one (``weight_scale`` "loss-sum").

    Under the lr/λ head rule the overall scale of the weights changes only the gradient
    that reaches the shared layers, i.e. their learning rate; a search that may move it
    greedily buys one interval's PQ with it (the medium benchmark's explorations shrank
    every weight together). Scaling each vector removes that direction; the ratios, which
    are what a loss weighting is for, are searched as before. Weights and losses must be
    positive (a trainer's weights and losses are).
    """
    weight_array = np.asarray(weights, dtype=np.float64)
    loss_array = np.asarray(losses, dtype=np.float64)
    weighted = float(np.dot(weight_array, loss_array))
    if not (math.isfinite(weighted) and weighted > 0):
        raise ValueError(f"cannot scale weights whose weighted loss sum is {weighted!r}")
    return weight_array * (float(loss_array.sum()) / weighted)


def clip_nonpositive(values: np.ndarray, floor: float) -> tuple[np.ndarray, list[int]]:
    """Replace components <= 0 by ``floor``; return the result and the indices replaced.

    One rule for Eq. 2's give-up case and Eq. 7's output: a loss weight is never
    non-positive when it reaches a trainer.
    """
    clipped = [int(i) for i in np.flatnonzero(values <= 0)]
    out = np.array(values, dtype=np.float64, copy=True)
    out[clipped] = floor
    return out, clipped


def _layer_shapes(config: PolicyConfig) -> list[tuple[int, int]]:
    """(out, in) of each Linear, as torch stores it."""
    n, h = config.n_losses, config.hidden
    return [(h, n), (h, h), (n, h)]


class Policy:
    """The policy network pi(l; theta), its sampler and its REINFORCE update."""

    def __init__(self, config: PolicyConfig, seed: int) -> None:
        """Fresh init from ``seed``: weights ~ Normal(1/n_in, 0.1/n_in), biases 0.

        The init is drawn by numpy, not torch, so it does not depend on torch's
        RNG or platform; the same generator then drives sampling.
        """
        _require_int("seed", seed, minimum=0)
        self.config = config
        self._rng = np.random.Generator(np.random.PCG64(seed))
        layers = []
        for n_out, n_in in _layer_shapes(config):
            weight = self._rng.normal(1.0 / n_in, 0.1 / n_in, size=(n_out, n_in))
            layers.append((weight, np.zeros(n_out)))
        self._set_parameters(layers)

    def _set_parameters(self, layers: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        self._params: list[torch.Tensor] = []
        for weight, bias in layers:
            for array in (weight, bias):
                tensor = torch.tensor(np.asarray(array, dtype=np.float64), dtype=torch.float64)
                self._params.append(tensor.requires_grad_(True))
        self._optimizer = torch.optim.Adam(
            self._params, lr=self.config.lr, weight_decay=self.config.weight_decay
        )

    # -- Eq. 1 ---------------------------------------------------------------

    def _forward(self, losses: torch.Tensor) -> torch.Tensor:
        x = losses
        n_layers = len(self._params) // 2
        for k in range(n_layers):
            x = x @ self._params[2 * k].T + self._params[2 * k + 1]
            if k < n_layers - 1:
                x = torch.relu(x)
        return x

    def mean_weights(
        self, losses: Sequence[float], names: Sequence[str] | None = None
    ) -> list[float]:
        """Eq. 1: lambda = pi(l) / l. Components may be <= 0; ``sample`` copes."""
        values = validate_losses(losses, self.config.n_losses, names)
        with torch.no_grad():
            loss_tensor = torch.from_numpy(values)
            return (self._forward(loss_tensor) / loss_tensor).tolist()

    # -- Eq. 2 ---------------------------------------------------------------

    def _std(self, mean: np.ndarray) -> np.ndarray:
        if self.config.sigma_mode in ("absolute", "log"):
            return np.full_like(mean, self.config.sigma)
        return self.config.sigma * np.maximum(np.abs(mean), self.config.floor)

    def _draw(self, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        noise = std * self._rng.standard_normal(mean.shape)
        if self.config.sigma_mode == "log":
            with np.errstate(over="ignore"):
                return np.exp(np.log(np.maximum(mean, self.config.floor)) + noise)
        return mean + noise

    def sample(self, mean: Sequence[float], m: int) -> Draw:
        """Eq. 2 for m members, in member order, redrawing invalid candidates.

        A draw with any component <= 0 or not finite cannot be trained; it is
        kept in ``invalid`` (reward -1 in Eq. 6) and the member draws again.
        After ``max_draws`` invalid draws the member gets the last one clipped
        into (floor, MAX_WEIGHT], so the round always has m candidates to
        train. Advances the policy's RNG.

        A clipped candidate was never drawn from the policy (it is an invalid
        draw moved by hand), so it is no sample of pi: the search strategy
        trains it (it may still be the best model) but leaves it out of Eq. 6,
        where the member's ``max_draws`` invalid draws carry -1 each. ``mean``
        itself must be finite (a ValueError otherwise): a policy whose mean
        overflows has nothing to sample from.
        """
        _require_int("m", m, minimum=1)
        mean_array = validate_vector(mean, self.config.n_losses, "mean")
        std = self._std(mean_array)
        draw = Draw(candidates=[], invalid=[], clipped_members=[])
        for member in range(m):
            for _ in range(self.config.max_draws):
                candidate = self._draw(mean_array, std)
                if is_valid_weight_vector(candidate):
                    break
                draw.invalid.append(candidate.tolist())
                draw.invalid_members.append(member)
            else:
                candidate = clip_weights(candidate, self.config.floor)
                draw.clipped_members.append(member)
            draw.candidates.append(candidate.tolist())
        return draw

    # -- Eq. 6 ---------------------------------------------------------------

    def _objective(self, losses: torch.Tensor, drawn: torch.Tensor, rewards: torch.Tensor):
        """-(1/K) sum_k r_k log N(drawn_k; lambda(theta), std(theta)^2), full density."""
        mean = self._forward(losses) / losses
        if self.config.sigma_mode == "log":
            mean = torch.log(torch.clamp(mean, min=self.config.floor))
            drawn = torch.log(drawn)
        if self.config.sigma_mode in ("absolute", "log"):
            std = torch.full_like(mean, self.config.sigma)
        else:
            std = self.config.sigma * torch.clamp(mean.abs(), min=self.config.floor)
        z = (drawn - mean) / std
        log_density = (-0.5 * z**2 - torch.log(std) - _LOG_SQRT_2PI).sum(dim=1)
        return -(rewards * log_density).mean()

    def update(
        self,
        losses: Sequence[float],
        drawn: Sequence[Sequence[float]],
        rewards: Sequence[float],
    ) -> None:
        """Eq. 6: ``steps`` Adam steps of REINFORCE over all K drawn candidates.

        ``losses`` is the policy input the candidates were drawn for (the best
        member's loss vector of the previous round); ``drawn`` holds the scored
        candidates (trained and invalid; never a clipped one, see :meth:`sample`),
        ``rewards`` their rewards in the same order. Raises ValueError when the
        step leaves a parameter that is not finite (a learning rate too large
        for the rewards): the caller must not keep such a policy.
        """
        n = self.config.n_losses
        loss_tensor = torch.from_numpy(validate_losses(losses, n))
        if len(drawn) == 0:
            raise ValueError("drawn must hold at least one candidate")
        if len(rewards) != len(drawn):
            raise ValueError(f"got {len(rewards)} rewards for {len(drawn)} drawn candidates")
        drawn_tensor = torch.from_numpy(
            np.stack([validate_vector(d, n, f"drawn[{k}]") for k, d in enumerate(drawn)])
        )
        reward_tensor = torch.from_numpy(validate_vector(rewards, len(drawn), "rewards"))
        for _ in range(self.config.steps):
            self._optimizer.zero_grad()
            self._objective(loss_tensor, drawn_tensor, reward_tensor).backward()
            self._optimizer.step()
        if not all(bool(torch.isfinite(p).all()) for p in self._params):
            raise ValueError("the policy update left non-finite parameters")

    # -- persistence ---------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """pi^t as plain lists: what ``evaluate_snapshot`` and GET /policy read."""
        return {
            "layers": [
                {"weight": self._params[k].tolist(), "bias": self._params[k + 1].tolist()}
                for k in range(0, len(self._params), 2)
            ],
            "activation": SNAPSHOT_ACTIVATION,
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically, JSON-serialisable.

        Floats survive ``json.dumps``/``loads`` exactly (repr round-trips
        float64). The PCG64 state's 128-bit integers are stored as decimal
        strings so that any JSON reader keeps them intact.
        """
        adam = []
        for param in self._params:
            slot = self._optimizer.state.get(param)
            if not slot:
                break  # no step yet: Adam has no state at all
            adam.append(
                {
                    "step": int(float(slot["step"])),
                    "exp_avg": slot["exp_avg"].tolist(),
                    "exp_avg_sq": slot["exp_avg_sq"].tolist(),
                }
            )
        rng = self._rng.bit_generator.state
        return {
            "format": STATE_FORMAT,
            "layers": self.snapshot()["layers"],
            "adam": adam,
            "rng": {
                "bit_generator": rng["bit_generator"],
                "state": str(rng["state"]["state"]),
                "inc": str(rng["state"]["inc"]),
                "has_uint32": int(rng["has_uint32"]),
                "uinteger": int(rng["uinteger"]),
            },
        }

    @classmethod
    def from_state_dict(cls, config: PolicyConfig, state: dict[str, Any]) -> Policy:
        """Rebuild a policy saved by ``state_dict`` (shapes are checked against config)."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"policy state format must be {STATE_FORMAT!r}, got {state.get('format')!r}"
            )
        policy = cls.__new__(cls)
        policy.config = config
        layers = parse_layers(state.get("layers"), "policy state")
        expected = _layer_shapes(config)
        got = [w.shape for w, _ in layers]
        if got != expected:
            raise ValueError(f"policy state has layer shapes {got}, config needs {expected}")
        policy._set_parameters(layers)
        adam = state.get("adam", [])
        if adam:
            if len(adam) != len(policy._params):
                raise ValueError(
                    f"policy state has Adam state for {len(adam)} of {len(policy._params)} tensors"
                )
            optimizer_state = policy._optimizer.state_dict()
            optimizer_state["state"] = {
                i: {
                    "step": torch.tensor(float(slot["step"])),
                    "exp_avg": torch.tensor(slot["exp_avg"], dtype=torch.float64),
                    "exp_avg_sq": torch.tensor(slot["exp_avg_sq"], dtype=torch.float64),
                }
                for i, slot in enumerate(adam)
            }
            policy._optimizer.load_state_dict(optimizer_state)
        bit_generator = np.random.PCG64()
        try:
            rng = state["rng"]
            bit_generator.state = {
                "bit_generator": rng["bit_generator"],
                "state": {"state": int(rng["state"]), "inc": int(rng["inc"])},
                "has_uint32": int(rng["has_uint32"]),
                "uinteger": int(rng["uinteger"]),
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"policy state has no valid PCG64 'rng' state: {exc!r}") from None
        policy._rng = np.random.Generator(bit_generator)
        return policy


def parse_layers(layers: object, what: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Parse ``[{"weight": [[...]], "bias": [...]}, ...]`` and check that the layers chain."""
    if not isinstance(layers, list) or not layers:
        raise ValueError(f"{what}: 'layers' must be a non-empty list")
    parsed = []
    for k, layer in enumerate(layers):
        try:
            weight = np.asarray(layer["weight"], dtype=np.float64)
            bias = np.asarray(layer["bias"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"{what}: layer {k} needs numeric 'weight' and 'bias': {exc}"
            ) from None
        if weight.ndim != 2 or bias.shape != (weight.shape[0],):
            raise ValueError(
                f"{what}: layer {k} has weight shape {weight.shape} and bias shape {bias.shape}"
            )
        if not (np.all(np.isfinite(weight)) and np.all(np.isfinite(bias))):
            raise ValueError(f"{what}: layer {k} has non-finite parameters")
        if k > 0 and weight.shape[1] != parsed[-1][0].shape[0]:
            raise ValueError(
                f"{what}: layer {k} takes {weight.shape[1]} inputs, "
                f"layer {k - 1} gives {parsed[-1][0].shape[0]}"
            )
        parsed.append((weight, bias))
    return parsed


def evaluate_snapshot(snapshot: dict[str, Any], losses: Sequence[float]) -> np.ndarray:
    """pi(l) from a snapshot's plain lists, in numpy float64 (no torch needed).

    Mirrors ``Policy``'s forward pass so that transfer users (Eq. 7) and any
    external reader of GET /policy compute the same function.
    """
    if not isinstance(snapshot, dict):
        raise ValueError("snapshot must be a dict with 'layers' and 'activation'")
    activation = snapshot.get("activation")
    if activation != SNAPSHOT_ACTIVATION:
        raise ValueError(f"snapshot activation must be {SNAPSHOT_ACTIVATION!r}, got {activation!r}")
    layers = parse_layers(snapshot.get("layers"), "snapshot")
    n_in = layers[0][0].shape[1]
    x = validate_vector(losses, n_in, "losses")
    for k, (weight, bias) in enumerate(layers):
        x = weight @ x + bias
        if k < len(layers) - 1:
            x = np.maximum(x, 0.0)
    return x
