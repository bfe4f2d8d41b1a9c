"""What a trainer reports for its assignment, checked against the run before anything changes.

A report is one of three: a trained member (losses, PQ, the checkpoint it saved),
a diverged member (its loss went non-finite: a property of its weights, never
retried) or a failed attempt (the trainer could not train it: retried up to the
run's ``max_attempts``). Every rule here is a 422 naming the field; a refused
report changes nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

from controller_service.contract import limits as L
from controller_service.contract.store import check_key
from controller_service.runs.errors import RunInputError


@dataclass(frozen=True)
class MemberReport:
    """The body of a report, as the API or a direct caller gives it."""

    losses: Mapping[str, float] | None = None
    pq: float | None = None
    checkpoint_uri: str | None = None
    metrics: Mapping[str, Any] | None = None
    diverged: bool = False
    failed: bool = False
    reason: str | None = None


@dataclass(frozen=True)
class CheckedReport:
    """A report the run can take: ``outcome`` and the values it carries, in loss order."""

    outcome: str  # trained | diverged | failed
    losses: tuple[float, ...] | None = None
    pq: float | None = None
    checkpoint_uri: str | None = None
    reason: str | None = None
    metrics: dict[str, Any] | None = None

    def same_as(self, other: CheckedReport) -> bool:
        """Whether a repeated report says the same (metrics aside: they are decoration)."""
        return (self.outcome, self.losses, self.pq, self.checkpoint_uri, self.reason) == (
            other.outcome,
            other.losses,
            other.pq,
            other.checkpoint_uri,
            other.reason,
        )


def validate_losses(
    loss_names: Sequence[str], losses: object, field_name: str = "losses"
) -> dict[str, float]:
    """The run's loss vector from ``{name: value}``: exactly the run's names, each a finite
    number in [MIN_LOSS, MAX_LOSS]. Errors name the offending loss. (NaN and infinities
    arrive here when a client sends the non-standard ``NaN``/``Infinity`` JSON tokens.)"""
    if not isinstance(losses, Mapping):
        raise RunInputError(
            (field_name,), f"must be an object {{name: value}} over {list(loss_names)}"
        )
    missing = [name for name in loss_names if name not in losses]
    unknown = [name for name in losses if name not in loss_names]
    if missing or unknown:
        raise RunInputError(
            (field_name,),
            f"expected exactly the run's losses {list(loss_names)}; "
            f"missing {missing}, unknown {[str(name) for name in unknown]}",
        )
    out = {}
    for name in loss_names:
        value = losses[name]
        if not isinstance(value, Real) or isinstance(value, bool):
            raise RunInputError((field_name, name), f"must be a number, got {value!r}")
        if not math.isfinite(value) or not L.MIN_LOSS <= value <= L.MAX_LOSS:
            raise RunInputError(
                (field_name, name),
                f"is {value!r}; a loss must be finite and in [{L.MIN_LOSS:g}, {L.MAX_LOSS:g}]",
            )
        out[name] = float(value)
    return out


def check_checkpoint_uri(uri: object, run_prefix_uri: str) -> str:
    """``uri`` if it names an object under the run's own prefix in the controller's store.

    The URI of the best member becomes every worker's next starting point, so one outside
    the run (another bucket, ``file:///etc/passwd``, ``../`` out of the store) would stall
    the run with every worker refusing it.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise RunInputError(("checkpoint_uri",), "required: the URI of the saved checkpoint")
    if len(uri) > L.MAX_URI_LENGTH or not uri.startswith(run_prefix_uri):
        raise RunInputError(
            ("checkpoint_uri",),
            f"must name an object under this run's prefix {run_prefix_uri} in the "
            f"controller's store, got {uri[:200]!r}",
        )
    try:
        check_key(uri[len(run_prefix_uri) :])
    except ValueError as exc:
        raise RunInputError(("checkpoint_uri",), f"is not an object key: {exc}") from None
    return uri


def _check_json_finite(value: object, loc: tuple[str | int, ...]) -> None:
    """Refuse NaN/inf anywhere in free-form JSON: stored objects must stay strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        raise RunInputError(loc, f"is {value!r}; numbers must be finite")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_json_finite(item, (*loc, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json_finite(item, (*loc, i))


def _check_metrics(metrics: object) -> dict[str, Any] | None:
    if metrics is None:
        return None
    if not isinstance(metrics, Mapping):
        raise RunInputError(("metrics",), "must be an object")
    _check_json_finite(metrics, ("metrics",))
    size = len(json.dumps(metrics, separators=(",", ":"), allow_nan=False))
    if size > L.MAX_METRICS_BYTES:
        raise RunInputError(
            ("metrics",), f"is {size} bytes of JSON; at most {L.MAX_METRICS_BYTES} are kept"
        )
    return dict(metrics)


def check_report(
    loss_names: Sequence[str], rep: MemberReport, run_prefix_uri: str
) -> CheckedReport:
    """Everything about a report that does not depend on the run's state."""
    if rep.diverged and rep.failed:
        raise RunInputError(("failed",), "a report is diverged or failed, not both")
    if rep.diverged or rep.failed:
        kind = "diverged" if rep.diverged else "failed"
        if not isinstance(rep.reason, str) or not rep.reason.strip():
            raise RunInputError(("reason",), f"a {kind} report must say why (non-empty string)")
        for name in ("losses", "pq", "checkpoint_uri"):
            if getattr(rep, name) is not None:
                raise RunInputError((name,), f"a {kind} report carries no {name}")
        return CheckedReport(
            outcome=kind,
            reason=rep.reason[: L.MAX_REASON_LENGTH],
            metrics=_check_metrics(rep.metrics),
        )
    if rep.losses is None:
        raise RunInputError(("losses",), "required unless the report says diverged or failed")
    losses = validate_losses(loss_names, rep.losses)
    if rep.pq is None:
        raise RunInputError(("pq",), "required unless the report says diverged or failed")
    if (
        not isinstance(rep.pq, Real)
        or isinstance(rep.pq, bool)
        or not math.isfinite(rep.pq)
        or not L.PQ_MIN <= rep.pq <= L.PQ_MAX
    ):
        raise RunInputError(
            ("pq",), f"must be a number in [{L.PQ_MIN:g}, {L.PQ_MAX:g}], got {rep.pq!r}"
        )
    return CheckedReport(
        outcome="trained",
        losses=tuple(losses.values()),
        pq=float(rep.pq),
        checkpoint_uri=check_checkpoint_uri(rep.checkpoint_uri, run_prefix_uri),
        metrics=_check_metrics(rep.metrics),
    )
