"""The held-out protocol's guard: test cells run only with settings frozen, and committed,
before them (issue 12; README, "Protocol").

Settings are chosen on the dev seeds alone. ``run.py --freeze ROW...`` then records, per
row, a hash of everything its cells are run with apart from the seed (the *settings*) in
``frozen/<scale>.json``; that file is committed; and ``run.py --phase test`` runs a row's
test cells only when the file is committed unchanged and the row's settings still hash to
what was frozen. So the git history shows the freeze before any test result, and a setting
changed after the freeze (on any evidence, test numbers included) cannot reach the test
table without a new freeze, which is refused once a row has test results.

Pure: the git facts are gathered by ``run.py`` and passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.effectiveness.plan import (
    HARNESS_VERSION,
    TEST,
    Scale,
    cell_key,
    phase_seeds,
    plan,
    spec_hash,
)

FROZEN_FORMAT = "adaseg-effectiveness-frozen/v1"


def row_settings(scale: Scale, row: str) -> dict[str, Any]:
    """What a row's cells (and the cells they need) are run with, whatever the seed: the
    scale's identity and, per cell, its kind, its key without the seed, its parameters
    and its dependencies. Equal for every seed, dev or test (the phase only picks the
    split a cell is scored on)."""
    seed = (scale.test_seeds or scale.dev_seeds or (0,))[0]
    suffix = f"-s{seed}"
    cells = [
        {
            "key": cell.key.removesuffix(suffix),
            "kind": cell.kind,
            "params": dict(cell.params),
            "deps": [dep.removesuffix(suffix) for dep in cell.deps],
        }
        for cell in plan(scale, [row], [seed])
    ]
    return {"harness": HARNESS_VERSION, "scale": scale.identity(), "cells": cells}


def settings_hash(scale: Scale, row: str) -> str:
    return spec_hash(row_settings(scale, row))


def frozen_document(
    scale: Scale,
    rows: Sequence[str],
    frozen_at: str,
    note: str = "",
    previous: Mapping[str, Any] | None = None,
) -> dict:
    """The content of ``frozen/<scale>.json`` for ``rows``, added to the rows of
    ``previous`` (the file as it was): rows are frozen as each one's dev evidence is in, so
    rows without a choice to make can start their test cells early. Each row keeps the
    time it was frozen at."""
    kept = {}
    if previous and previous.get("format") == FROZEN_FORMAT and previous.get("scale") == scale.name:
        kept = dict(previous.get("rows") or {})
    times = dict((previous or {}).get("row_frozen_at") or {}) if kept else {}
    for row in dict.fromkeys(rows):
        kept[row] = settings_hash(scale, row)
        times[row] = frozen_at
    return {
        "format": FROZEN_FORMAT,
        "scale": scale.name,
        "frozen_at": frozen_at,
        "note": note,
        "rows": kept,
        "row_frozen_at": {row: times.get(row, "") for row in kept},
    }


def own_test_keys(scale: Scale, rows: Iterable[str]) -> dict[str, list[str]]:
    """Per row, the keys of its own test cells (to see which rows already ran on test)."""
    return {row: [cell_key(scale, row, seed) for seed in phase_seeds(scale, TEST)] for row in rows}


def freeze_problems(scale: Scale, rows: Sequence[str], existing_keys: Iterable[str]) -> list[str]:
    """Why ``rows`` cannot be frozen now: not a held-out scale, or a row that already has
    test results (a new freeze would let test numbers choose its settings)."""
    if not scale.held_out:
        return [f"scale {scale.name!r} has no test seeds: nothing to freeze"]
    existing = set(existing_keys)
    problems = []
    for row, keys in own_test_keys(scale, rows).items():
        done = [key for key in keys if key in existing]
        if done:
            problems.append(
                f"row {row!r} already has test results ({', '.join(done)}): its settings "
                "were frozen before them and cannot be chosen again"
            )
    return problems


@dataclass(frozen=True)
class FrozenFile:
    """What ``run.py`` found out about ``frozen/<scale>.json`` from git."""

    document: Mapping[str, Any] | None  # its content in the working tree (None: missing)
    commit: str | None  # the last commit that changed it (None: never committed)
    clean: bool  # the working tree's file is the committed one (no change, not untracked)


def problems_before_test(scale: Scale, rows: Sequence[str], frozen: FrozenFile) -> list[str]:
    """Why the test cells of ``rows`` may not run; empty when they may."""
    if not scale.held_out:
        return [f"scale {scale.name!r} has no test phase"]
    if frozen.document is None:
        return [
            f"no frozen settings for scale {scale.name!r}: choose them on the dev seeds, run "
            f"--freeze ROW..., commit frozen/{scale.name}.json, then run --phase test"
        ]
    document = frozen.document
    if document.get("format") != FROZEN_FORMAT or document.get("scale") != scale.name:
        return [f"frozen/{scale.name}.json is not a frozen-settings file of scale {scale.name!r}"]
    if frozen.commit is None or not frozen.clean:
        return [
            f"frozen/{scale.name}.json has changes that are not committed: commit it first, so "
            "the history shows the settings before the test results"
        ]
    problems = []
    frozen_rows: Mapping[str, str] = document.get("rows") or {}
    for row in rows:
        if row not in frozen_rows:
            problems.append(f"row {row!r} was not frozen (frozen: {', '.join(frozen_rows)})")
        elif frozen_rows[row] != settings_hash(scale, row):
            problems.append(
                f"row {row!r}: its settings changed since they were frozen in {frozen.commit[:10]} "
                f"(frozen {frozen_rows[row]}, now {settings_hash(scale, row)})"
            )
    return problems


def phase_seed_problems(scale: Scale, phase: str, seeds: Sequence[int]) -> list[str]:
    """Seeds that do not belong to ``phase``: a dev run never touches a test seed (its
    cells would be scored on proxy-val and the seed would no longer be unused), a test run
    never a dev seed."""
    allowed = phase_seeds(scale, phase)
    wrong = [seed for seed in seeds if seed not in allowed]
    if not wrong:
        return []
    return [f"seeds {wrong} are not {phase} seeds of scale {scale.name!r} ({list(allowed)})"]
