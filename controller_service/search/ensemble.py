"""Eq. 7 and the paper's Table 2 modes: loss weights for a transfer run.

A transfer run trains a fresh model for E epochs and asks, after epoch e with
loss vector l^e, for the weights of the next epoch. ``ensemble`` (the paper's
"Comb-dy") averages every policy snapshot pi^1..pi^T of the search, weighting
pi^t by gamma^|e*T/E - t| so that early epochs lean on early snapshots and late
epochs on late ones (e*T/E aligns the transfer schedule with the T rounds):

    lambda^{e+1} = (1/Z) sum_t gamma^|e*T/E - t| pi^t(l^e) / l^e,
    Z = sum_t gamma^|e*T/E - t|.

The other modes are Table 2's ablations: ``final`` (pi^T only, "Single-dy"),
``static-pred`` (pi^T applied to the search's initial losses l^1, constant,
"Pred") and ``static-final`` (the best member's lambda of round T, constant,
"Final"). A non-positive weight is clipped to ``floor`` and its index returned.

``epoch`` may be 0..E: 0 stands for losses measured before the first epoch
(a pseudo epoch with all weights 1, as in the search's round 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from controller_service.search.options import (
    DEFAULT_GAMMA,
    DEFAULT_TRANSFER_MODE,
    TRANSFER_MODES,
    WEIGHT_SCALES,
)
from controller_service.search.policy import (
    clip_nonpositive,
    clip_weights,
    evaluate_snapshot,
    parse_layers,
    scale_to_loss_sum,
    validate_losses,
    validate_vector,
)

_MODES_USING_SNAPSHOTS = ("ensemble", "final", "static-pred")


def ensemble_coefficients(epoch: int, epochs: int, rounds: int, gamma: float) -> np.ndarray:
    """gamma^|e*T/E - t| / Z for t = 1..T: the share of each snapshot at epoch e."""
    alignment = epoch * rounds / epochs
    powers = gamma ** np.abs(alignment - np.arange(1, rounds + 1, dtype=np.float64))
    return powers / powers.sum()


def _check_snapshots(snapshots: Mapping[int, dict[str, Any]]) -> int:
    """Check rounds 1..T are all present and map n losses to n; return n."""
    if not isinstance(snapshots, Mapping) or not snapshots:
        raise ValueError("snapshots must map rounds 1..T to policy snapshots; got none")
    rounds = sorted(snapshots)
    if any(isinstance(t, bool) or not isinstance(t, int) for t in rounds) or rounds != list(
        range(1, len(rounds) + 1)
    ):
        raise ValueError(f"snapshots must be keyed by rounds 1..T without gaps, got {rounds}")
    widths = set()
    for t in rounds:
        if not isinstance(snapshots[t], dict):
            raise ValueError(f"snapshot of round {t} must be a dict with 'layers'")
        layers = parse_layers(snapshots[t].get("layers"), f"snapshot of round {t}")
        n_in, n_out = layers[0][0].shape[1], layers[-1][0].shape[0]
        if n_in != n_out:
            raise ValueError(f"snapshot of round {t} maps {n_in} losses to {n_out} outputs")
        widths.add(n_in)
    if len(widths) != 1:
        raise ValueError(f"snapshots disagree on the number of losses: {sorted(widths)}")
    return widths.pop()


def _length(values: object, what: str) -> int:
    try:
        return len(values)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{what} must be a sequence of numbers, got {values!r}") from None


def _eq1(snapshot: dict[str, Any], losses: np.ndarray) -> np.ndarray:
    return evaluate_snapshot(snapshot, losses) / losses


def transfer_weights(
    snapshots: Mapping[int, dict[str, Any]],
    losses: Sequence[float] | None,
    epoch: int,
    epochs: int,
    mode: str = DEFAULT_TRANSFER_MODE,
    gamma: float = DEFAULT_GAMMA,
    initial_losses: Sequence[float] | None = None,
    final_weights: Sequence[float] | None = None,
    floor: float = 1e-3,
    names: Sequence[str] | None = None,
    weight_scale: str = "free",
) -> tuple[list[float], list[int]]:
    """Weights for the epoch after ``epoch`` of ``epochs``, and the indices clipped to floor.

    ``snapshots`` maps round t (1..T) to pi^t; ``losses`` is l^e; ``names`` (the
    loss names, optional) only makes error messages name the offending loss. With
    ``weight_scale`` "loss-sum" (the run's option) the policy's weights are scaled as the
    run's candidates were, on the losses they were computed from (l^e, or l^1 for
    static-pred); static-final's weights were trained with as they are.
    """
    if mode not in TRANSFER_MODES:
        raise ValueError(f"mode must be one of {TRANSFER_MODES}, got {mode!r}")
    if weight_scale not in WEIGHT_SCALES:
        raise ValueError(f"weight_scale must be one of {WEIGHT_SCALES}, got {weight_scale!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= epochs:
        raise ValueError(f"epoch must be an integer in 0..{epochs}, got {epoch!r}")
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and 0 < gamma <= 1):
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
    if not (isinstance(floor, (int, float)) and math.isfinite(floor) and floor > 0):
        raise ValueError(f"floor must be finite and > 0, got {floor!r}")

    n = _check_snapshots(snapshots) if mode in _MODES_USING_SNAPSHOTS or snapshots else None
    if mode == "static-final":
        if final_weights is None:
            raise ValueError("mode 'static-final' needs the best member's weights of round T")
        size = n if n is not None else _length(final_weights, "final_weights")
        final = validate_vector(final_weights, size, "final_weights", names)
        n = size
    loss_vector = None
    if losses is not None:  # checked in every mode, so bad input is refused consistently
        size = n if n is not None else _length(losses, "losses")
        loss_vector = validate_losses(losses, size, names)
    elif mode in ("ensemble", "final"):
        raise ValueError(f"mode {mode!r} needs the losses of the epoch")

    if mode == "ensemble":
        rounds = len(snapshots)
        coefficients = ensemble_coefficients(epoch, epochs, rounds, float(gamma))
        per_round = np.stack([_eq1(snapshots[t], loss_vector) for t in range(1, rounds + 1)])
        weights = coefficients @ per_round
    elif mode == "final":
        weights = _eq1(snapshots[len(snapshots)], loss_vector)
    elif mode == "static-pred":
        if initial_losses is None:
            raise ValueError("mode 'static-pred' needs the search's initial losses (l^1)")
        initial = validate_losses(initial_losses, n, names, what="initial_losses")
        weights = _eq1(snapshots[len(snapshots)], initial)
    else:
        weights = final

    clipped_weights, clipped = clip_nonpositive(weights, floor)
    if weight_scale == "loss-sum" and mode != "static-final":
        basis = initial if mode == "static-pred" else loss_vector
        clipped_weights = clip_weights(scale_to_loss_sum(clipped_weights, basis), floor)
    return clipped_weights.tolist(), clipped
