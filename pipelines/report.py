"""What a finished search or transfer run looks like in the Kubeflow UI.

Pure functions of a run record (``GET /v1/runs/{run}?history=true``, typed by
:class:`~controller_service.contract.schemas.RunRecord`) or of a transfer's
``metrics.json``: scalar metrics for ``dsl.Metrics``, a Markdown page for
``dsl.Markdown`` and a self-contained HTML page (tables plus PNG figures
inlined as data URIs, since the UI shows one file and fetches nothing else).
Loss names, run names and URIs are user input: they are escaped in both.
No I/O here; :mod:`pipelines.steps` fetches the records and writes the files.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from controller_service.contract.schemas import RoundRecord, RunRecord

# Loss weights span orders of magnitude (Panoptic-DeepLab's published ones are
# 1, 200 and 0.01), so they are printed with significant digits, not decimals.
WEIGHT_FORMAT = "{:.4g}"
PQ_FORMAT = "{:.2f}"
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")


def md(text: object) -> str:
    """Text for a Markdown page: HTML-escaped (the viewer renders HTML) and every Markdown
    punctuation character backslash-escaped, so a loss named ``a|b`` cannot split a table
    cell and a name like ``[x](javascript:...)`` is no link."""
    flat = " ".join(str(text).split())
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(flat, quote=False))


def code(text: object) -> str:
    """A Markdown code span that ``text`` cannot break out of, whatever backticks it holds."""
    flat = " ".join(str(text).split())
    fence = "`" * (max((len(run) for run in re.findall("`+", flat)), default=0) + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") else ""  # CommonMark strips it
    return f"{fence}{pad}{flat}{pad}{fence}"


def _weight(value: Any) -> str:
    return "–" if value is None else WEIGHT_FORMAT.format(float(value))


def _pq(value: Any) -> str:
    return "–" if value is None else PQ_FORMAT.format(float(value))


def _number(value: float) -> str:
    return f"{value:.4g}"


def _weights_of(weights: Mapping[str, float] | None, names: Sequence[str]) -> list[Any]:
    """Weights ``{name: value}`` (the API's loss vectors) in the order of ``names``."""
    return [None if weights is None else weights.get(name) for name in names]


def trained_pqs(record: RoundRecord) -> list[float]:
    """PQs of the members of a round that were trained (not diverged or failed)."""
    return [c.pq for c in record.candidates if c.outcome == "trained" and c.pq is not None]


def round_rows(run: RunRecord) -> list[dict[str, Any]]:
    """One row per round: mean weights, best and mean PQ, and how many members were
    trained, how many draws were invalid (a weight <= 0, redrawn, never trained),
    and how many members diverged or failed."""
    names = list(run.loss_names)
    rows = []
    for item in run.history or []:
        pqs = trained_pqs(item)
        outcomes = [c.outcome for c in item.candidates]
        rows.append(
            {
                "round": item.round,
                "mean_weights": dict(
                    zip(names, _weights_of(item.mean_weights, names), strict=True)
                ),
                "best_pq": max(pqs) if pqs else None,
                "mean_pq": sum(pqs) / len(pqs) if pqs else None,
                "best_member": item.best_member,
                "trained": len(pqs),
                "invalid": item.invalid_draws,
                "diverged": outcomes.count("diverged"),
                "failed": outcomes.count("failed"),
            }
        )
    return rows


def search_metrics(run: RunRecord) -> dict[str, float]:
    """Scalars for ``dsl.Metrics``: the best PQ, where it was found, and its weights.

    Raises ``ValueError`` when the run has no best member yet, because a KFP
    metric of a run that is still going would be mistaken for its result.
    """
    best = run.best
    if best is None:
        raise ValueError(f"run {run.id!r} has no best member yet (status {run.status!r})")
    metrics = {
        "best_pq": best.pq,
        "best_round": float(best.round),
        "best_member": float(best.member),
        "rounds": float(run.rounds),
        "population": float(run.population),
    }
    names = list(run.loss_names)
    for name, value in zip(names, _weights_of(best.weights, names), strict=True):
        if value is not None:
            metrics[f"best_weight_{name}"] = float(value)
    return metrics


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _round_table(run: RunRecord) -> tuple[list[str], list[list[str]]]:
    """The per-round table with plain-text cells (escaped by whoever renders it)."""
    names = list(run.loss_names)
    header = ["round", *(f"mean λ {n}" for n in names), "best PQ", "mean PQ", "best member"]
    header += ["trained", "invalid draws", "diverged", "failed"]
    rows = []
    for row in round_rows(run):
        best_member = "–" if row["best_member"] is None else str(row["best_member"])
        rows.append(
            [
                str(row["round"]),
                *(_weight(row["mean_weights"][n]) for n in names),
                _pq(row["best_pq"]),
                _pq(row["mean_pq"]),
                best_member,
                str(row["trained"]),
                str(row["invalid"]),
                str(row["diverged"]),
                str(row["failed"]),
            ]
        )
    return header, rows


def search_markdown(run: RunRecord) -> str:
    """The run at a glance: best result, its weights, and weights and PQ per round."""
    names = list(run.loss_names)
    best = run.best
    lines = [
        f"# Ada-Segment search {code(run.id)}",
        "",
        f"Status **{md(run.status)}**, strategy {md(run.strategy)}, population "
        f"{run.population}, rounds {run.rounds}, losses {', '.join(md(n) for n in names)}.",
        "",
    ]
    if best is not None:
        lines += [
            f"Best PQ **{_pq(best.pq)}** (round {best.round}, member {best.member}: "
            "the model the run ends with), "
            f"checkpoint {code(best.checkpoint_uri)}.",
            "",
            "## Weights of the best member",
            "",
            _markdown_table(
                [md(n) for n in names], [[_weight(w) for w in _weights_of(best.weights, names)]]
            ),
            "",
        ]
    header, rows = _round_table(run)
    lines += [
        "## Per round",
        "",
        "Round 0 is the pseudo epoch with every weight 1; PQ on the proxy validation split.",
        "",
        _markdown_table([md(h) for h in header], rows),
        "",
    ]
    return "\n".join(lines)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = (
    "body{font-family:sans-serif;margin:1.5em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}"
    "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
    "th{background:#f3f3f3}img{max-width:100%}"
)


def search_html(run: RunRecord, figures: Mapping[str, bytes] | None = None) -> str:
    """A self-contained HTML page: the Markdown's content plus PNG ``figures``
    (title → PNG bytes) inlined, e.g. the weights and PQ plots of
    :mod:`pipelines.plots`."""
    names = list(run.loss_names)
    best = run.best
    title = f"Ada-Segment search {run.id}"
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Status <b>{html.escape(run.status)}</b>, strategy {html.escape(run.strategy)}, "
        f"population {run.population}, rounds {run.rounds}, "
        f"losses {html.escape(', '.join(names))}.</p>",
    ]
    if best is not None:
        parts += [
            f"<p>Best PQ <b>{_pq(best.pq)}</b> (round {best.round}, member "
            f"{best.member}), checkpoint <code>{html.escape(best.checkpoint_uri)}</code>.</p>",
            "<h2>Weights of the best member</h2>",
            _html_table(names, [[_weight(w) for w in _weights_of(best.weights, names)]]),
        ]
    for caption, png in (figures or {}).items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' "
            f"src='data:image/png;base64,{data}'>"
        )
    header, rows = _round_table(run)
    parts += ["<h2>Per round</h2>", _html_table(header, rows), "</body></html>"]
    return "\n".join(parts)


# The fields of a transfer's metrics.json worth a KFP metric: quality on the
# validation split (PQ in 0..100), then scale and cost.
TRANSFER_METRIC_KEYS = ("pq", "pq_th", "pq_st", "sq", "rq", "epochs", "world_size", "wall_seconds")


def transfer_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers among :data:`TRANSFER_METRIC_KEYS` of a transfer's
    ``metrics.json`` (PQ_th is absent, for one, when the split has no things).

    Raises ``ValueError`` without a numeric ``pq``: a transfer run that wrote
    no PQ did not finish (or diverged), and an empty metrics artifact would
    hide that.
    """
    pq = metrics.get("pq")
    if not isinstance(pq, int | float) or isinstance(pq, bool) or not math.isfinite(pq):
        raise ValueError(
            f"transfer metrics have no PQ (pq={pq!r}, diverged={metrics.get('diverged')!r})"
        )
    found = {}
    for key in TRANSFER_METRIC_KEYS:
        value = metrics.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            found[key] = float(value)
    return found


def transfer_markdown(transfer_id: str, checkpoint_uri: str, metrics: Mapping[str, Any]) -> str:
    """PQ and the loss weights of every epoch of a transfer run."""
    scalars = transfer_metrics(metrics)
    lines = [
        f"# Ada-Segment transfer {code(transfer_id)}",
        "",
        f"Policy run {code(metrics.get('policy_run'))}, mode {code(metrics.get('mode'))}, "
        f"checkpoint {code(checkpoint_uri)}.",
        "",
        _markdown_table(list(scalars), [[_number(v) for v in scalars.values()]]),
        "",
    ]
    per_epoch = metrics.get("weights")
    if isinstance(per_epoch, Sequence) and per_epoch and isinstance(per_epoch[0], Mapping):
        names = list(per_epoch[0])
        rows = [
            [str(epoch), *(_weight(w.get(n)) for n in names)]
            for epoch, w in enumerate(per_epoch, start=1)
        ]
        header = ["epoch", *(md(n) for n in names)]
        lines += ["## Loss weights per epoch", "", _markdown_table(header, rows), ""]
    return "\n".join(lines)
