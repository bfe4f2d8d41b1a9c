"""``adaseg transfer``'s weights: a finished run's policy, asked of the controller each epoch.

Transfer schedule (decided): in the dynamic modes (``ensemble``, ``final``)
epoch 1 is the pseudo epoch with every weight 1; its mean losses are l^1, and
before epoch e+1 the controller is asked with l^e, ``epoch=e``, ``epochs=E``
(Eq. 7). The static modes (``static-pred``, ``static-final``) ask once and keep
the weights for all E epochs. Under torchrun only rank 0 asks
(``rank0_only``); the epoch loop broadcasts its answer.

``first_epoch`` (beyond the paper): ``equal`` is the schedule above. ``policy``
trains epoch 1 at the mode's weights for the *search's* l^1 (``epoch=0``), as the
search's own members did from round 1 and as the untrained-policy baseline does:
a transfer to the task it was searched on then spends no epoch at weights 1. On
another task the search's l^1 need not be the transfer's, so ``equal`` stays the
default.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller_service.contract.external import DEFAULT_FIRST_EPOCH, check_first_epoch
from controller_service.contract.schemas import RunRecord
from controller_service.search.options import (
    DEFAULT_GAMMA,
    STATIC_TRANSFER_MODES,
    TRANSFER_MODES,
)
from trainer_image.weighting.base import WeightingStrategy
from trainer_image.weighting.fixed import FixedWeights

log = logging.getLogger("adaseg.transfer")


@dataclass
class ControllerWeights:
    """Weights from a finished run's policy (Eq. 7 or a static mode of the paper's Table 2)."""

    client: Any
    policy_run: str
    mode: str
    epochs: int
    loss_names: list[str]
    gamma: float = DEFAULT_GAMMA
    rank0_only: bool = True
    kept: WeightingStrategy | None = None  # a new FixedWeights every epoch
    first_epoch: str = DEFAULT_FIRST_EPOCH
    search_losses: Mapping[str, float] | None = None  # the search's l^1 (first_epoch "policy")
    clipped: list[list[str]] = field(default_factory=list)
    _static: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if self.mode not in TRANSFER_MODES:
            raise ValueError(f"mode must be one of {TRANSFER_MODES}, got {self.mode!r}")
        check_first_epoch(self.first_epoch)
        if self.first_epoch == "policy" and self.client is not None and not self.search_losses:
            raise ValueError("first_epoch 'policy' needs the search's initial losses (l^1)")

    def strategy(self, epoch: int, previous_losses: Mapping[str, float] | None) -> FixedWeights:
        if self.mode in STATIC_TRANSFER_MODES:
            if self._static is None:
                self._static = self._ask(None, 1)
            return FixedWeights(self._static)
        if epoch == 1 and self.first_epoch == "policy":
            return FixedWeights(self._ask(self.search_losses, 0))
        if epoch == 1:  # the pseudo epoch: its losses are l^1
            self.clipped.append([])
            return FixedWeights.equal(self.loss_names)
        return FixedWeights(self._ask(previous_losses, epoch - 1))

    def _ask(self, losses: Mapping[str, float] | None, epoch: int) -> dict[str, float]:
        answer = self.client.weights(
            self.policy_run, losses, epoch=epoch, epochs=self.epochs, mode=self.mode,
            gamma=self.gamma,
        )  # fmt: skip
        self.clipped.append(list(answer.clipped))
        if answer.clipped:
            log.warning("controller clipped weights %s to the floor", answer.clipped)
        return {name: float(value) for name, value in answer.weights.items()}


def check_policy_run(run: RunRecord, loss_names: list[str]) -> None:
    """A transfer needs a finished run (every snapshot stored) of the model's losses."""
    if run.status != "finished":
        raise ValueError(
            f"run {run.id} is {run.status}, not finished: its policy snapshots are incomplete"
        )
    if list(run.loss_names) != list(loss_names):
        raise ValueError(f"run {run.id} has losses {run.loss_names}, the model {loss_names}")
