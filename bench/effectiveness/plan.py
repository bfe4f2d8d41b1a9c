"""What the effectiveness benchmark runs: scales, table rows, and the cells they expand to.

Pure: no I/O, no torch. A *row* is a line of the paper's tables (equal weights,
GradNorm, Ada-Segment's ensemble transfer, ...). A *cell* is one unit of work
with its own cached result file: a row for one seed, or a helper the rows need
(one point of the grid search, the pseudo epoch). Every cell has a key that names
its result file and a hash of everything that determines its result, so a cached
result is reused only when it was produced by the same configuration.

Two protocols. A scale without dev and test seeds (``small``, ``smoke``) keeps issue 7's:
static rows train on all of ``train``, every row is scored on ``val``. A scale with them
(``medium``) follows the held-out protocol of issue 12 (README, "Protocol"): every row
trains on the seed's proxy-train split; dev seeds are scored on proxy-val, the only
numbers settings may be chosen on; test seeds are scored on ``val``, once, with settings
frozen before (``protocol.py``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from trainer_image import DEFAULT_MODEL
from trainer_image.models.panoptic_deeplab import PanopticDeepLab

# Bump when the way a cell is run changes, so old cached results are not mixed in.
# 2: the exploration has T = E rounds after the pseudo epoch (it had E - 1, and round 1
# started at the second epoch of the schedule), so Ada-Segment-A trains E epochs too.
HARNESS_VERSION = 2

# Panoptic-DeepLab's hand-tuned weights, in the model's loss order (the grids are built on
# them: the only scales with grids train that model).
PUBLISHED = dict(PanopticDeepLab.published_weights)
GRID_REFERENCE = "semantic"  # its weight stays 1: scaling all weights is scaling the lr

# Phases of the held-out protocol, and the split every row of a scale is finally scored on.
DEV, TEST = "dev", "test"
PHASES = (DEV, TEST)
HELD_OUT_SPLIT = "val"

# Head learning-rate rules (``adaseg train --no-head-lr-scaling``): loss i's head at lr/λ_i
# (the paper's Implementation Details, the trainer's default for fixed weights) or at lr.
SCALED_HEADS, PLAIN_HEADS = "lr/λ", "lr"
# Strategies whose weights move every step: the trainer trains their heads at lr only
# (trainer_image/engine/optim.py says why), whatever the scale's rule.
LEARNABLE_STRATEGIES = ("uncertainty", "gradnorm")


@dataclass(frozen=True)
class Scale:
    """Sizes shared by every row, so rows differ only in where their loss weights come from.

    ``epochs`` is E, the training length of every static or transfer run; the
    exploration's trajectory has the same length: ``rounds`` = E rounds of one
    epoch each (the paper: one epoch between checkpoints), after the pseudo
    epoch, which the paper runs before the schedule and which is only a probe.
    """

    name: str
    images: int
    val_images: int
    size: int
    epochs: int
    population: int
    batch_size: int
    data_seed: int = 0
    proxy_val: float | int = 0.1  # the workers' proxy split: a fraction or an image count
    grid_factors: tuple[float, ...] = (0.1, 1.0, 10.0)
    pbt_sigma: float = 0.5  # std of the log-normal perturbation of Baseline-P
    workers: int = 2  # processes of an exploration; not part of a result's identity
    seeds: tuple[int, ...] = (0, 1, 2)
    # -- added for issue 12; at None they leave a result's identity as it was ----------------
    lr: float | None = None  # SGD lr of every training; None: the trainer's default, 0.02
    head_lr: str | None = None  # SCALED_HEADS or PLAIN_HEADS for rows that fix no rule
    # The held-out protocol: settings are chosen on the dev seeds (scored on proxy-val),
    # the table is the test seeds' (scored on val). Empty: issue 7's protocol.
    dev_seeds: tuple[int, ...] = ()
    test_seeds: tuple[int, ...] = ()
    rows: tuple[str, ...] | None = None  # the rows run by default; None: LEGACY_ROWS
    model: str | None = None  # the model every row trains; None: DEFAULT_MODEL (issue 14)

    @property
    def held_out(self) -> bool:
        return bool(self.dev_seeds or self.test_seeds)

    @property
    def rounds(self) -> int:
        return self.epochs

    @property
    def search_epochs(self) -> int:
        """Epochs trained by one exploration (or PBT): pseudo epoch + m members × T rounds."""
        return 1 + self.population * self.rounds

    def identity(self) -> dict[str, Any]:
        """The fields that change results (not the name, the parallelism or the seeds: a
        cell's seed and phase are in its own spec). Fields added later are left out while
        unset, so the results of older scales stay current."""
        values = asdict(self)
        for name in ("name", "workers", "seeds", "dev_seeds", "test_seeds", "rows"):
            values.pop(name)
        for name in ("lr", "head_lr", "model"):
            if values[name] is None:
                values.pop(name)
        values["grid_factors"] = list(self.grid_factors)
        return values


def scale_model(scale: Scale) -> str:
    """The model a scale's rows train."""
    return scale.model or DEFAULT_MODEL


# Issue 12: a scale where the models learn, with the paper's population (m = 8, T = E rounds
# of one epoch, E >= 12). Equal weights, seed 0, on val (notes.md): 5,120 images × 24 epochs at
# lr 0.1 give PQ 35.95 (2,560 × 32: 33.88; 5,120 × 16: 33.05); the proxy-val stays 10 %
# (512 images): its sampling noise is about half the weights' effect between members.
MEDIUM_NAME = "medium"
MEDIUM_ROWS = (
    # no controller (the pseudo epoch of "untrained" and "grid-neutral" is a controller run)
    "equal",
    "published",
    "grid-neutral",
    "grid",
    "uncertainty",
    "gradnorm",
    "untrained",
    "published-plain",
    "untrained-plain",
    "pbt",
    # the controller's explorations and transfer runs
    "ada-a",
    "ensemble",
    "static-final",
    "static-pred",
    "final",
    "ada-a-local-plr5e-3-rel0.5",
    "ensemble-local-plr5e-3-rel0.5",
    # options beyond the paper (HELD_OUT_VARIANTS), decided on dev seeds
    "ada-a-local-plr5e-3-rel0.5-sum",
    "ensemble-local-plr5e-3-rel0.5-sum",
    "ada-a-local-plr5e-3-log0.5",
    "ensemble-local-plr5e-3-log0.5",
    "ada-a-rank-plr5e-3-log0.5",
    "ensemble-rank-plr5e-3-log0.5",
    "ensemble-from-l1-local-plr5e-3-rel0.5",
    "ensemble-from-l1-local-plr5e-3-rel0.5-sum",
)
MEDIUM = Scale(
    name=MEDIUM_NAME,
    images=5120,
    val_images=1000,
    size=64,
    epochs=24,
    population=8,
    batch_size=16,
    proxy_val=0.1,
    lr=0.1,
    head_lr=SCALED_HEADS,
    seeds=(0, 1, 2),
    dev_seeds=(0, 1, 2),
    test_seeds=(3, 4, 5, 6, 7),
    rows=MEDIUM_ROWS,
)

# Issue 14: the mask transformer's table (ten losses at its tiny preset). 1,280 images
# (its equal-weight run there reaches PQ 30.65 on val, bench/README.md) because it trains
# at about a third of the default model's speed; the same schedule and population as
# medium. No grid: three points per loss would be 3^9 trainings.
MEDIUM_MASK_ROWS = (
    "equal",
    "published",
    "uncertainty",
    "gradnorm",
    "untrained",
    "pbt",
    # the settings frozen for medium's test table (analysis.md), chosen on its dev seed
    "ada-a-local-plr5e-3-rel0.5-sum",
    "ensemble-from-l1-local-plr5e-3-rel0.5-sum",
    "published-ratios",  # added after dev seeds 0-1 (and test seed 3) saw `published` collapse
)
MEDIUM_MASK = replace(
    MEDIUM,
    name="medium-mask",
    images=1280,
    val_images=400,
    rows=MEDIUM_MASK_ROWS,
    model="mask_transformer",
)

SCALES: dict[str, Scale] = {
    # the harness end to end in a few minutes; numbers meaningless
    "smoke": Scale(
        name="smoke",
        images=48,
        val_images=16,
        size=48,
        epochs=2,
        population=2,
        batch_size=8,
        grid_factors=(0.1, 10.0),
        seeds=(0,),
    ),
    # issue 7's benchmark, sized for about 2-3 h of a 2-core CPU (small/README.md); the
    # quick scale: its models barely learn (equal weights: PQ 7.8)
    "small": Scale(
        name="small",
        images=1280,
        val_images=400,
        size=64,
        epochs=6,
        population=4,
        batch_size=16,
    ),
    MEDIUM_NAME: MEDIUM,
    MEDIUM_MASK.name: MEDIUM_MASK,
}
# the held-out protocol end to end in minutes (one dev and one test seed); meaningless
SCALES["smoke-heldout"] = replace(
    SCALES["smoke"],
    name="smoke-heldout",
    head_lr=SCALED_HEADS,
    dev_seeds=(0,),
    test_seeds=(1,),
    rows=("equal", "grid-neutral", "uncertainty", "untrained"),
)
# the mask scale's plumbing end to end in a minute (ten losses through every kind of cell)
SCALES["smoke-mask"] = replace(
    SCALES["smoke-heldout"], name="smoke-mask", model="mask_transformer", rows=MEDIUM_MASK_ROWS
)

# Controller run options of each exploration variant (POST /v1/runs fields), as changes
# to the paper's settings (controller_service.runs.PAPER_SETTINGS, which every run is
# created with first): "default" is the paper's algorithm.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},  # the paper's algorithm
    "local": {"reward_terms": "local"},  # reward ablation: r_local only
    "relative": {"sigma_mode": "relative"},  # sigma proportional to the mean weight
    # Fixes tried because the paper's settings lose to equal weights here (not in the
    # default rows; see the README's reading), each adding one change to the previous:
    # Adam at 5e-2 moves the policy's small weights (~1/16) by ~80% per step, so one update
    # rescales the mean λ by ~×4 (median) and flips signs; 5e-3 makes it ~×1.2.
    "plr5e-3": {"policy_lr": 5e-3},
    # r_imp is not centred: when a whole round is worse (or better) than the last best,
    # every reward gets the same large sign and REINFORCE loses its baseline.
    "local-plr5e-3": {"reward_terms": "local", "policy_lr": 5e-3},
    # an absolute sigma of 0.2 never explores a weight of ~100 (the center loss)
    "local-plr5e-3-rel0.5": {
        "reward_terms": "local",
        "policy_lr": 5e-3,
        "sigma_mode": "relative",
        "sigma": 0.5,
    },
}
DEFAULT_VARIANTS = tuple(VARIANTS)  # issue 7's (the small scale's table)
# Issue 12's options beyond the paper, each one change to the service's defaults, to be
# decided on dev seeds (held-out scales only): multiplicative exploration log λ̂ ~ N(log λ,
# σ²) (no invalid draws, scale-free), then also centred-rank rewards (a baseline that cannot
# collapse; robust to one outlier member); and weights scaled to Σ λ_i l_i = Σ l_i (the
# medium seed-0 exploration shrank every weight together, ×0.12–0.15 by round 24: a greedy cut of
# the shared layers' learning rate, which this option takes out of the search).
HELD_OUT_VARIANTS: dict[str, dict[str, Any]] = {
    "local-plr5e-3-rel0.5-sum": {
        "reward_terms": "local",
        "policy_lr": 5e-3,
        "sigma_mode": "relative",
        "sigma": 0.5,
        "weight_scale": "loss-sum",
    },
    "local-plr5e-3-log0.5": {
        "reward_terms": "local",
        "policy_lr": 5e-3,
        "sigma_mode": "log",
        "sigma": 0.5,
    },
    "rank-plr5e-3-log0.5": {
        "reward_terms": "rank",
        "policy_lr": 5e-3,
        "sigma_mode": "log",
        "sigma": 0.5,
    },
}
VARIANTS.update(HELD_OUT_VARIANTS)
# Variants whose runs have no policy to transfer (a controller search strategy without one,
# e.g. {"strategy": "random"}): an exploration row, no transfer row. (PBT has a row of its own.)
POLICY_FREE_VARIANTS: frozenset[str] = frozenset()
# The variant whose settings were the service's run defaults for issue 7's table (its pair of
# rows stands in Table 1 beside the paper's settings), and the one whose settings are the
# defaults now (runs.RunSpec), chosen on the medium scale's dev seed (analysis.md).
SERVICE_VARIANT = "local-plr5e-3-rel0.5"
DEFAULTS_VARIANT = "local-plr5e-3-rel0.5-sum"

TRAIN, GRID_POINT, GRID, PBT, EXPLORE, TRANSFER, UNTRAINED, PSEUDO = (
    "train",
    "grid-point",
    "grid",
    "pbt",
    "explore",
    "transfer",
    "untrained",  # static λ of the policy before any update, from the exploration's l¹
    "pseudo",  # held-out scales: round 0 of a controller run alone (l¹ and π⁰(l¹)/l¹)
)
# the kinds whose cells talk to the controller (a run of a search strategy or its policy)
CONTROLLER_KINDS = frozenset({PBT, EXPLORE, TRANSFER, PSEUDO})
# where a grid is centred: the hand-tuned weights (prior knowledge no new model has) or the
# equal-loss normalisation λ_i = l¹_ref / l¹_i of the pseudo epoch (none)
PUBLISHED_CENTRE, NEUTRAL_CENTRE = "published", "neutral"


@dataclass(frozen=True)
class Row:
    """A line of the table; ``kind`` says how its cells run."""

    name: str
    label: str
    kind: str
    section: str
    paper: str = ""  # the paper's name for the row
    strategy: str | None = None  # kind train: the `adaseg train --strategy`
    mode: str | None = None  # kind transfer: the `adaseg transfer --mode`
    variant: str = "default"  # kinds explore/transfer/untrained: the exploration variant
    head_lr: str | None = None  # the head lr rule, when the row fixes one (else the scale's)
    centre: str = PUBLISHED_CENTRE  # kind grid: where the grid is centred
    first_epoch: str = "equal"  # kind transfer: `adaseg transfer --first-epoch`


def explore_row_name(variant: str) -> str:
    return "ada-a" if variant == "default" else f"ada-a-{variant}"


def _options_label(variant: str) -> str:
    options = ", ".join(f"{k}={v}" for k, v in VARIANTS[variant].items())
    if variant == DEFAULTS_VARIANT:
        return f"the service's defaults ({options})"
    if variant == SERVICE_VARIANT:
        return f"the service's former defaults ({options})"
    return options


def _variant_rows(variant: str) -> list[Row]:
    """Ada-Segment-A and the ensemble transfer of one exploration variant (no transfer row
    for a variant without a policy)."""
    options = _options_label(variant)
    section = "Table 1" if variant in (SERVICE_VARIANT, DEFAULTS_VARIANT) else "Ablations"
    rows = [
        Row(
            explore_row_name(variant),
            f"Ada-Segment-A, {options}",
            EXPLORE,
            section,
            variant=variant,
        )
    ]
    if variant not in POLICY_FREE_VARIANTS:
        rows.append(
            Row(
                f"ensemble-{variant}",
                f"Ada-Segment (Comb-dy), {options}",
                TRANSFER,
                section,
                mode="ensemble",
                variant=variant,
            )
        )
    return rows


def all_rows() -> list[Row]:
    """Every row in table order: Table 1 (the paper's settings, then the service's
    defaults), Table 2, then one ablation pair per other variant."""
    rows = [
        Row("equal", "Equal weights", TRAIN, "Table 1", "Baseline", strategy="equal"),
        Row(
            "published",
            "Hand-tuned published weights (the model's own)",
            TRAIN,
            "Table 1",
            "hand-tuned",
            strategy="published",
        ),
        Row("grid", "Coarse grid search", GRID, "Table 1", "Baseline-G"),
        Row(
            "uncertainty",
            "Uncertainty weighting",
            TRAIN,
            "Table 1",
            "Kendall et al.",
            strategy="uncertainty",
        ),
        Row("gradnorm", "GradNorm", TRAIN, "Table 1", "GradNorm", strategy="gradnorm"),
        Row("pbt", "PBT, the service's `pbt` strategy", PBT, "Table 1", "Baseline-P"),
        Row(
            "ada-a",
            "Ada-Segment-A, the paper's settings: best model of the exploration",
            EXPLORE,
            "Table 1",
            "Ada-Segment-A",
        ),
        *_variant_rows(SERVICE_VARIANT),
        Row(
            "static-final",
            "Static λ of the best final member",
            TRANSFER,
            "Table 2",
            "Final",
            mode="static-final",
        ),
        Row(
            "static-pred",
            "Static λ = π^T(l¹)/l¹",
            TRANSFER,
            "Table 2",
            "Pred",
            mode="static-pred",
        ),
        Row("final", "Dynamic, final policy π^T", TRANSFER, "Table 2", "Single-dy", mode="final"),
        Row(
            "ensemble",
            "Dynamic, policy ensemble (Eq. 7): Ada-Segment, the paper's settings",
            TRANSFER,
            "Table 2",
            "Comb-dy",
            mode="ensemble",
        ),
    ]
    # Not in the paper: the controller's starting point held fixed. pi^0(l)/l makes every
    # weighted loss about mean(l), a scale normalisation in itself; this row tells what the
    # REINFORCE updates add to it.
    rows.append(
        Row(
            "untrained",
            "Static λ of the untrained policy, π⁰(l¹)/l¹ (no learning)",
            UNTRAINED,
            "Ablations",
        )
    )
    for variant in DEFAULT_VARIANTS:
        if variant not in ("default", SERVICE_VARIANT):
            rows.extend(_variant_rows(variant))
    return rows


# Issue 7's rows: the small scale's table (rows added since are not in it)
LEGACY_ROWS = tuple(row.name for row in all_rows())


def held_out_rows() -> list[Row]:
    """Rows added for the held-out protocol (issue 12)."""
    return [
        Row(
            "grid-neutral",
            "Coarse grid search around the equal-loss normalisation 1/l¹ (no prior knowledge)",
            GRID,
            "Table 1",
            "Baseline-G, neutral",
            centre=NEUTRAL_CENTRE,
        ),
        # the same rule as uncertainty weighting and GradNorm, whose heads train at lr
        Row(
            "published-plain",
            "Hand-tuned published weights, heads at lr",
            TRAIN,
            "Ablations",
            strategy="published",
            head_lr=PLAIN_HEADS,
        ),
        Row(
            "untrained-plain",
            "Static λ of the untrained policy, π⁰(l¹)/l¹, heads at lr",
            UNTRAINED,
            "Ablations",
            head_lr=PLAIN_HEADS,
        ),
        # issue 14: Mask2Former's weights were tuned for AdamW; under SGD their sum (3.7 times
        # equal weights') scales the shared layers' steps, and they collapse on dev seeds
        Row(
            "published-ratios",
            "Hand-tuned published ratios at mean 1 (their scale removed)",
            TRAIN,
            "Ablations",
            strategy="published-ratios",
        ),
        *_option_rows(),
    ]


def _option_rows() -> list[Row]:
    """Each option's pair of rows, then the ensemble on equal terms with the untrained row
    (epoch 1 at the policy's weights for the search's l¹ instead of weights 1; issue 12,
    "rows not on equal terms") after the pair of its variant, or last for a variant whose
    pair is issue 7's."""
    rows: list[Row] = []
    for variant in HELD_OUT_VARIANTS:
        rows += _variant_rows(variant)
        if variant in FROM_L1_VARIANTS:
            rows.append(_from_l1_row(variant))
    rows += [_from_l1_row(v) for v in FROM_L1_VARIANTS if v not in HELD_OUT_VARIANTS]
    return rows


FROM_L1_VARIANTS = (SERVICE_VARIANT, DEFAULTS_VARIANT)


def from_l1_row_name(variant: str) -> str:
    return f"ensemble-from-l1-{variant}"


def _from_l1_row(variant: str) -> Row:
    return Row(
        from_l1_row_name(variant),
        f"Ada-Segment (Comb-dy), epoch 1 at π(l¹)/l¹ of the search, {_options_label(variant)}",
        TRANSFER,
        "Table 1" if variant == DEFAULTS_VARIANT else "Ablations",
        mode="ensemble",
        variant=variant,
        first_epoch="policy",
    )


def _table_order(rows: list[Row]) -> list[Row]:
    """Issue 7's rows in their order, each new row after the issue 7 row it varies."""
    after = {
        "grid-neutral": "published",
        "published-plain": "untrained",
        "untrained-plain": "untrained",
        "published-ratios": "untrained",
    }
    ordered = list(rows)
    for row in reversed(held_out_rows()):
        anchor = after.get(row.name, f"ensemble-{SERVICE_VARIANT}")  # the options' rows
        index = next(i for i, r in enumerate(ordered) if r.name == anchor)
        ordered.insert(index + 1, row)
    return ordered


ROWS: dict[str, Row] = {row.name: row for row in _table_order(all_rows())}


def default_row_names(scale: Scale | None = None) -> list[str]:
    """The rows a scale runs when none are named: its own list, else issue 7's."""
    if scale is not None and scale.rows is not None:
        return list(scale.rows)
    return [name for name in LEGACY_ROWS if ROWS[name].variant in DEFAULT_VARIANTS]


def has_grids(scale: Scale) -> bool:
    """Whether a scale runs grid searches (none with ten losses: 3^9 trainings)."""
    return any(ROWS[name].kind == GRID for name in default_row_names(scale))


@dataclass(frozen=True)
class ModelFacts:
    """What the reports say about a scale's model: its loss names (in its order) and its
    published weights, read from the model class (the one place they are stated)."""

    name: str
    loss_names: tuple[str, ...]
    published: Mapping[str, float]


def model_facts(scale: Scale) -> ModelFacts:
    from trainer_image.models.registry import model_class, model_loss_names

    name = scale_model(scale)
    names = tuple(model_loss_names(name))  # what its runs are created with (cells.py)
    return ModelFacts(name, names, dict(model_class(name).published_weights))


@dataclass(frozen=True)
class Cell:
    """One cached unit of work."""

    key: str
    kind: str
    seed: int
    row: str | None  # the table row it is, None for helper cells (grid points)
    params: Mapping[str, Any] = field(default_factory=dict)
    deps: tuple[str, ...] = ()
    slots: int = 1  # processes it keeps busy
    planned_epochs: int = 0  # epochs it trains itself (for the ETA)


def cell_key(scale: Scale, name: str, seed: int) -> str:
    return f"{scale.name}-{name}-s{seed}"


# -- the held-out protocol's phases and splits ---------------------------------------------------


def phase_of(scale: Scale, seed: int) -> str | None:
    """DEV or TEST for a held-out scale's seed (any other seed is an error); None when the
    scale keeps issue 7's protocol."""
    if not scale.held_out:
        return None
    if seed in scale.dev_seeds:
        return DEV
    if seed in scale.test_seeds:
        return TEST
    raise ValueError(
        f"seed {seed} is neither a dev seed {list(scale.dev_seeds)} nor a test seed "
        f"{list(scale.test_seeds)} of scale {scale.name!r}"
    )


def phase_seeds(scale: Scale, phase: str) -> tuple[int, ...]:
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    return scale.dev_seeds if phase == DEV else scale.test_seeds


def proxy_split_names(seed: int) -> tuple[str, str]:
    """The seed's proxy split of ``train``, as the harness names it in the dataset."""
    return f"proxy-train-s{seed}", f"proxy-val-s{seed}"


def train_split(scale: Scale, seed: int) -> str:
    """Where the static and transfer rows train: proxy-train, the images the exploration's
    members train on (held-out scales), or all of ``train`` (issue 7)."""
    return proxy_split_names(seed)[0] if scale.held_out else "train"


def eval_split(scale: Scale, seed: int) -> str:
    """Where every row of ``seed`` is scored: proxy-val on dev seeds, ``val`` otherwise."""
    return proxy_split_names(seed)[1] if phase_of(scale, seed) == DEV else HELD_OUT_SPLIT


def head_lr_rule(scale: Scale, row: Row) -> str | None:
    """The row's head lr rule: learnable strategies can only train heads at lr; otherwise
    the row's own rule or the scale's (None: the trainer's defaults, issue 7)."""
    if row.strategy in LEARNABLE_STRATEGIES:
        return PLAIN_HEADS
    return row.head_lr or scale.head_lr


# -- grids ----------------------------------------------------------------------------------------


def grid_weights(scale: Scale) -> list[dict[str, float]]:
    """The published-centred grid: the reference loss at 1, every other loss at
    published × each factor."""
    return [
        {GRID_REFERENCE: 1.0, **{n: float(f"{PUBLISHED[n] * f:.6g}") for n, f in factors.items()}}
        for factors in grid_factor_points(scale)
    ]


def grid_factor_points(scale: Scale) -> list[dict[str, float]]:
    """Every combination of one factor per non-reference loss, in grid order."""
    others = [name for name in PUBLISHED if name != GRID_REFERENCE]
    points: list[dict[str, float]] = [{}]
    for name in others:
        points = [{**point, name: factor} for point in points for factor in scale.grid_factors]
    return points


def neutral_centre(initial_losses: Mapping[str, float]) -> dict[str, float]:
    """The equal-loss normalisation of the pseudo epoch's losses l¹: λ_i = l¹_ref / l¹_i, so
    every weighted loss starts at l¹_ref and the reference loss keeps weight 1. It knows
    nothing of the published weights."""
    reference = float(initial_losses[GRID_REFERENCE])
    for name, value in initial_losses.items():
        if not float(value) > 0:
            raise ValueError(f"pseudo-epoch loss {name} = {value}: cannot normalise by it")
    return {name: reference / float(value) for name, value in initial_losses.items()}


def neutral_grid_point(
    initial_losses: Mapping[str, float], factors: Mapping[str, float]
) -> dict[str, float]:
    """One point of the neutral grid: the centre, each non-reference loss × its factor."""
    centre = neutral_centre(initial_losses)
    return {
        name: float(f"{weight * factors.get(name, 1.0):.6g}") for name, weight in centre.items()
    }


def grid_point_name(weights: Mapping[str, float]) -> str:
    """``grid-center200-offset0.01``: the non-reference weights, readable and unique."""
    parts = [f"{name}{weights[name]:g}" for name in PUBLISHED if name != GRID_REFERENCE]
    return "grid-" + "-".join(parts)


def neutral_point_name(factors: Mapping[str, float]) -> str:
    """``gridn-center0.1x-offset10x``: the factors on the neutral centre."""
    parts = [f"{name}{factors[name]:g}x" for name in PUBLISHED if name != GRID_REFERENCE]
    return "gridn-" + "-".join(parts)


def pseudo_cell_name(variant: str) -> str:
    return "pseudo" if variant == "default" else f"pseudo-{variant}"


# -- the plan ---------------------------------------------------------------------------------


def plan(scale: Scale, row_names: Iterable[str], seeds: Sequence[int]) -> list[Cell]:
    """The cells of ``row_names`` × ``seeds`` and everything they depend on, in run order.

    Per seed: explorations and PBT first (two processes each, and the transfer
    rows wait for them), then the one-process cells. Seed by seed, so a partial
    benchmark has complete rows for the first seeds.
    """
    wanted = list(dict.fromkeys(row_names))
    unknown = [name for name in wanted if name not in ROWS]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; known: {list(ROWS)}")
    if not seeds:
        raise ValueError("at least one seed is needed")
    for seed in seeds:
        phase_of(scale, seed)  # a held-out scale's seed must belong to a phase
    # a transfer row (and, issue 7, the untrained-policy row) needs its exploration
    for name in list(wanted):
        row = ROWS[name]
        needs_explore = row.kind == TRANSFER or (row.kind == UNTRAINED and not scale.held_out)
        if needs_explore and explore_row_name(row.variant) not in wanted:
            wanted.append(explore_row_name(row.variant))
    ordered = [row for row in ROWS.values() if row.name in wanted]
    cells: list[Cell] = []
    for seed in dict.fromkeys(seeds):
        seen: set[str] = set()
        first = [r for r in ordered if r.kind in (EXPLORE, PBT)]
        rest = [r for r in ordered if r.kind not in (EXPLORE, PBT)]
        for row in first + rest:
            for cell in _row_cells(scale, row, seed):
                if cell.key not in seen:  # a pseudo epoch is shared by several rows
                    seen.add(cell.key)
                    cells.append(cell)
    return cells


def _protocol_params(scale: Scale, row: Row) -> dict[str, Any]:
    """What the held-out protocol adds to a cell's parameters (nothing for issue 7's)."""
    return {"head_lr": head_lr_rule(scale, row)} if scale.held_out else {}


def _pseudo_cell(scale: Scale, variant: str, seed: int) -> Cell:
    """Round 0 of a controller run of ``variant``: the pseudo epoch's l¹ and the untrained
    policy's π⁰(l¹)/l¹ (the run's round-1 mean), for one epoch of training."""
    params = {"variant": variant, "run_options": dict(VARIANTS[variant])}
    return Cell(
        cell_key(scale, pseudo_cell_name(variant), seed), PSEUDO, seed, None, params, (), 1, 1
    )


def _row_cells(scale: Scale, row: Row, seed: int) -> list[Cell]:
    key = cell_key(scale, row.name, seed)
    extra = _protocol_params(scale, row)
    if row.kind == TRAIN:
        params = {"strategy": row.strategy, **extra}
        return [Cell(key, TRAIN, seed, row.name, params, (), 1, scale.epochs)]
    if row.kind == GRID:
        return _grid_cells(scale, row, seed, key, extra)
    if row.kind == PBT:
        params = {"sigma": scale.pbt_sigma, **extra}
        return [Cell(key, PBT, seed, row.name, params, (), scale.workers, scale.search_epochs)]
    if row.kind == EXPLORE:
        params = {"variant": row.variant, "run_options": dict(VARIANTS[row.variant]), **extra}
        return [Cell(key, EXPLORE, seed, row.name, params, (), scale.workers, scale.search_epochs)]
    if row.kind == UNTRAINED:
        if scale.held_out:  # the pseudo epoch alone, not a whole exploration
            pseudo = _pseudo_cell(scale, row.variant, seed)
            untrained = Cell(key, UNTRAINED, seed, row.name, extra, (pseudo.key,), 1, scale.epochs)
            return [pseudo, untrained]
        explore = cell_key(scale, explore_row_name(row.variant), seed)
        return [Cell(key, UNTRAINED, seed, row.name, {}, (explore,), 1, scale.epochs)]
    if row.kind == TRANSFER:
        explore = cell_key(scale, explore_row_name(row.variant), seed)
        params = {
            "mode": row.mode,
            "variant": row.variant,
            "run_options": dict(VARIANTS[row.variant]),
            **extra,
        }
        if row.first_epoch != "equal":  # only then: the other rows' cached cells stay valid
            params["first_epoch"] = row.first_epoch
        return [Cell(key, TRANSFER, seed, row.name, params, (explore,), 1, scale.epochs)]
    raise ValueError(f"row {row.name!r} has an unknown kind {row.kind!r}")


def _grid_cells(scale: Scale, row: Row, seed: int, key: str, extra: dict[str, Any]) -> list[Cell]:
    """The grid's points (each trained on proxy-train and scored on proxy-val), then the
    grid row: issue 7 retrains the pick on all of train; a held-out scale scores the
    pick's own model, already trained on the images every row trains on."""
    cells: list[Cell] = []
    deps: tuple[str, ...] = ()
    if row.centre == NEUTRAL_CENTRE:
        pseudo = _pseudo_cell(scale, "default", seed)
        cells.append(pseudo)
        deps = (pseudo.key,)
        points = [
            Cell(
                cell_key(scale, neutral_point_name(factors), seed),
                GRID_POINT,
                seed,
                None,
                {"centre": NEUTRAL_CENTRE, "factors": factors, **extra},
                deps,
                1,
                scale.epochs,
            )
            for factors in grid_factor_points(scale)
        ]
    else:
        points = [
            Cell(
                cell_key(scale, grid_point_name(w), seed),
                GRID_POINT,
                seed,
                None,
                {"weights": w, **extra},
                (),
                1,
                scale.epochs,
            )
            for w in grid_weights(scale)
        ]
    own = 0 if scale.held_out else scale.epochs
    params = {"centre": row.centre, **extra} if scale.held_out else {}
    grid = Cell(key, GRID, seed, row.name, params, tuple(p.key for p in points), 1, own)
    return [*cells, *points, grid]


def cell_spec(scale: Scale, cell: Cell) -> dict[str, Any]:
    """Everything that determines the cell's result (what its hash is taken over); on a
    held-out scale also the phase and the splits it trains and is scored on."""
    spec = {
        "harness": HARNESS_VERSION,
        "kind": cell.kind,
        "seed": cell.seed,
        "params": dict(cell.params),
        "scale": scale.identity(),
    }
    if scale.held_out:
        spec["phase"] = phase_of(scale, cell.seed)
        spec["train_split"] = train_split(scale, cell.seed)
        spec["eval_split"] = eval_split(scale, cell.seed)
    return spec


def spec_hash(spec: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
