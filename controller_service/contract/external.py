"""What an external training loop needs to take its loss weights from a finished search.

Three small pieces around :class:`~controller_service.contract.client.ControllerClient`:

* :class:`EpochLosses` accumulates each loss's mean over an epoch (Eq. 7 is asked with
  the mean losses of the epoch that just ended);
* :class:`TransferWeights` holds the current weights (all 1 in epoch 1, the paper's
  pseudo epoch; or, with ``first_epoch="policy"``, the policy's weights for the search's
  own initial losses), weights a loss dict, and asks the controller for the next epoch's;
* :func:`scale_head_lrs` applies the paper's head rule to an optimizer's parameter
  groups: the parameters of loss i's head train at lr/λ_i, so the weights act on the
  shared backbone only (Implementation Details). Our own trainer always does this;
  a loop that only multiplies its losses by λ (as the README's detectron2 and MMEngine
  snippets do) also rescales every head's step, which is not what the policy was
  trained for.

No torch import: losses may be tensors (anything with ``item()``) or floats, and any
optimizer with torch-style ``param_groups`` works.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import Any, TypeVar

from controller_service.contract.client import ControllerClient
from controller_service.search.options import DEFAULT_GAMMA, DEFAULT_TRANSFER_MODE

T = TypeVar("T")
# A transfer's epoch 1: weights 1 (the paper's pseudo epoch, which measures l^1), or Eq. 7
# for epoch 0 on the search's l^1 (the run's initial_losses): for a transfer on the task
# that was searched, where the two l^1 agree (docs/design.md).
FIRST_EPOCHS = ("equal", "policy")
DEFAULT_FIRST_EPOCH = "equal"  # the paper's, and right for a transfer to other data


def check_first_epoch(first_epoch: str) -> None:
    """Refuse an unknown epoch-1 rule (every launcher of a transfer takes one)."""
    if first_epoch not in FIRST_EPOCHS:
        raise ValueError(f"first_epoch must be one of {FIRST_EPOCHS}, got {first_epoch!r}")


HEAD_KEY = "adaseg_loss"  # a parameter group holding loss i's head carries {HEAD_KEY: name}


def _float(value: Any) -> float:
    return float(value.item() if hasattr(value, "item") else value)


class EpochLosses:
    """Running means of each named loss over an epoch."""

    def __init__(self, loss_names: Sequence[str]) -> None:
        self.loss_names = tuple(loss_names)
        self.reset()

    def reset(self) -> None:
        self._sums = dict.fromkeys(self.loss_names, 0.0)
        self.count = 0

    def add(self, losses: Mapping[str, Any]) -> None:
        """One iteration's losses (unweighted), by name; every name of the run is needed."""
        for name in self.loss_names:
            self._sums[name] += _float(losses[name])
        self.count += 1

    def means(self) -> dict[str, float]:
        if not self.count:
            raise ValueError("no iteration was added this epoch")
        return {name: total / self.count for name, total in self._sums.items()}


class TransferWeights:
    """Loss weights of a transfer run from the policy of ``run_id`` (Eq. 7 by default).

    Epoch 1 trains with every weight 1 (the pseudo epoch), or with ``first_epoch``
    "policy" at the policy's weights for the search's l^1; :meth:`end_epoch` after epoch
    e asks for the weights of epoch e+1 with the mean losses of epoch e.
    """

    def __init__(
        self,
        client: ControllerClient,
        run_id: str,
        loss_names: Sequence[str],
        epochs: int,
        mode: str = DEFAULT_TRANSFER_MODE,
        gamma: float = DEFAULT_GAMMA,
        first_epoch: str = DEFAULT_FIRST_EPOCH,
    ) -> None:
        check_first_epoch(first_epoch)
        self.client, self.run_id, self.epochs = client, run_id, epochs
        self.mode, self.gamma = mode, gamma
        self.weights = dict.fromkeys(loss_names, 1.0)
        if first_epoch == "policy":
            search_losses = client.get_run(run_id).initial_losses
            answer = client.weights(
                run_id, search_losses, epoch=0, epochs=epochs, mode=mode, gamma=gamma
            )
            self.weights = dict(answer.weights)
        self.losses = EpochLosses(loss_names)

    def weighted(self, losses: Mapping[str, T]) -> T:
        """Σ λ_i l_i over the run's losses (also records the losses for the epoch's means)."""
        self.losses.add(losses)
        total: Any = 0
        for name, weight in self.weights.items():
            total = total + weight * losses[name]
        return total

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """After epoch ``epoch`` (1-based): the weights of the next epoch (unchanged after
        the last one)."""
        means = self.losses.means()
        self.losses.reset()
        if epoch < self.epochs:
            answer = self.client.weights(
                self.run_id, means, epoch=epoch, epochs=self.epochs, mode=self.mode,
                gamma=self.gamma,
            )  # fmt: skip
            self.weights = dict(answer.weights)
        return dict(self.weights)


def scale_head_lrs(
    param_groups: Iterable[MutableMapping[str, Any]],
    weights: Mapping[str, float],
    base_lr: float,
    key: str = HEAD_KEY,
) -> None:
    """Set lr = base_lr/λ_i on the groups tagged ``{key: loss name}`` and base_lr on the
    others (the shared parameters). Call it whenever the weights change (and after an LR
    scheduler step, on the scheduled base lr)."""
    for group in param_groups:
        name = group.get(key)
        group["lr"] = base_lr / weights[name] if name is not None else base_lr
