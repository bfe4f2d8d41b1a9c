"""How noisy is a member's proxy-val PQ, next to the effect of its loss weights? (issue 12)

    .venv/bin/python bench/effectiveness/noise.py --scale medium --seed 0

From one checkpoint of an equal-weights training (after epoch t of the scale's schedule,
for each ``--at`` t), one more epoch is trained, as an exploration's member trains it
(lr/λ heads, the schedule's epoch t), in two ways:

* **order**: the same weights λ_ref, ``--orders`` different data orders: what a member's
  PQ owes to luck with the data (the exploration gives every member of a round the same
  order, but its reward still ranks members by PQ differences of this size or not);
* **weights**: one data order, ``--draws`` weight vectors drawn as the service's defaults
  draw them, λ_ref × (1 + 0.5 ε): the signal REINFORCE has to find;
* **weights-order1**: the same draws under a second data order (``--repeat``): whether a
  draw's PQ relative to the others survives a change of data order, i.e. how much of the
  spread between members is the weights' and how much their interplay with the data.

λ_ref is the equal-loss normalisation of the checkpoint's last epoch (l_semantic / l_i),
about where the untrained policy starts. Every model is scored on a pool of ``--pool``
train images held out of its training (carved like the workers' proxy-val), whole and in
disjoint subsets of each ``--subsets`` size: PQ is not a mean over images, so a subset's
PQ is recomputed from its own matches. Nothing here touches ``val``.

Writes ``work/<scale>/noise-s<seed>.json`` (resumable: each trained model's PQs are kept)
and prints the summary the README quotes.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.effectiveness.plan import SCALES, Scale  # noqa: E402

RELATIVE_SIGMA = 0.5  # the service's default exploration: sigma_mode relative, sigma 0.5


def draw_weights(reference: Mapping[str, float], rng: Any, sigma: float) -> dict[str, float]:
    """λ_ref × (1 + sigma ε) per loss, redrawn until every weight is positive (the
    controller's relative draw)."""
    while True:
        eps = rng.normal(0.0, 1.0, size=len(reference))
        weights = {
            n: float(w * (1.0 + sigma * e))
            for (n, w), e in zip(reference.items(), eps, strict=True)
        }
        if all(w > 0 for w in weights.values()):
            return weights


def subset_spread(per_subset: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Per subset size: the mean over models of the std of PQ across its disjoint subsets."""
    return {size: statistics.fmean(values) for size, values in per_subset.items() if values}


def _weight_effect_std(a: Sequence[float], b: Sequence[float]) -> float:
    """Std of the weights' own effect on PQ from the same draws under two data orders:
    PQ = effect_j + noise, so var(mean over the two orders) = var(effect) + var(noise)/2,
    and var(a - b) = 2 var(noise); hence var(effect) = var((a+b)/2) - var(a-b)/4 (0 when
    the noise explains all of it)."""
    means = [(x + y) / 2 for x, y in zip(a, b, strict=True)]
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    return max(0.0, statistics.variance(means) - statistics.variance(diffs) / 4) ** 0.5


def summarise(models: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Std and range of the whole-pool PQ within each group (order, weights) per checkpoint,
    and the subset spread."""
    out: dict[str, Any] = {}
    for at in sorted({m["at"] for m in models}):
        entry: dict[str, Any] = {}
        for group in ("order", "weights", "weights-order1"):
            pqs = [m["pq"] for m in models if m["at"] == at and m["group"] == group]
            if len(pqs) > 1:
                entry[group] = {
                    "n": len(pqs),
                    "mean": statistics.fmean(pqs),
                    "std": statistics.stdev(pqs),
                    "range": max(pqs) - min(pqs),
                }
        spreads: dict[str, list[float]] = {}
        for m in models:
            if m["at"] != at:
                continue
            for size, pqs in m["subsets"].items():
                if len(pqs) > 1:
                    spreads.setdefault(size, []).append(statistics.stdev(pqs))
        entry["subset_std"] = subset_spread(spreads)
        first = {m["index"]: m["pq"] for m in models if m["at"] == at and m["group"] == "weights"}
        second = {
            m["index"]: m["pq"] for m in models if m["at"] == at and m["group"] == "weights-order1"
        }
        both = sorted(set(first) & set(second))
        if len(both) > 2:
            entry["draws_across_orders"] = {
                "n": len(both),
                "pearson": statistics.correlation(
                    [first[j] for j in both], [second[j] for j in both]
                ),
                # the draws' own effect, what two orders agree on: var(mean of the two) minus
                # the interplay's share, from the paired differences (var of d / 4)
                "std_weight_effect": _weight_effect_std(
                    [first[j] for j in both], [second[j] for j in both]
                ),
            }
        out[str(at)] = entry
    return out


def _predict_and_score(model: Any, pool: Any, cache: Any, sizes: Sequence[int]) -> dict:
    """Whole-pool PQ and the PQ of each disjoint subset of each size (pool order)."""
    import torch

    from trainer_image.data.loader import normalize_image
    from trainer_image.eval.evaluate import summarize
    from trainer_image.eval.pq import PQEvaluator

    records = pool.records
    predictions = []
    with torch.no_grad():
        for start in range(0, len(records), 32):
            batch = records[start : start + 32]
            images = torch.stack([normalize_image(pool.load_image(r)) for r in batch])
            predictions.extend(model.predict(images))

    def pq_of(indices: Sequence[int]) -> float:
        evaluator = PQEvaluator(pool.categories)
        for i in indices:
            gt_ids, gt_segments = cache.get(i)
            p = predictions[i]
            evaluator.add(p.ids, p.segments, gt_ids, gt_segments, image_id=records[i].image_id)
        return summarize(evaluator.result())["pq"]

    everything = list(range(len(records)))
    subsets = {
        str(size): [
            pq_of(everything[k : k + size]) for k in range(0, len(records) - size + 1, size)
        ]
        for size in sizes
        if size < len(records)
    }
    return {"pq": pq_of(everything), "subsets": subsets}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="medium")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--at", type=int, nargs="+", default=[1, 12], help="checkpoint epochs")
    parser.add_argument("--orders", type=int, default=6)
    parser.add_argument("--draws", type=int, default=6)
    parser.add_argument("--pool", type=int, default=1024, help="held-out train images")
    parser.add_argument("--subsets", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--repeat", action="store_true", help="the draws under a 2nd order too")
    parser.add_argument("--tag", default="", help="names the output: noise-s<seed><-tag>.json")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    scale: Scale = SCALES[args.scale]
    from bench.effectiveness.run import paths_for

    paths = paths_for(scale)
    if not (paths.data / "annotations" / "panoptic_train.json").exists():
        print(f"no data in {paths.data}: run the benchmark once (it synthesizes the data)")
        return 2
    out = paths.work / f"noise-s{args.seed}{'-' + args.tag if args.tag else ''}.json"
    state = json.loads(out.read_text()) if out.exists() else {"config": vars(args), "models": []}
    same = ("scale", "seed", "orders", "draws", "pool", "subsets")  # what a kept model depends on
    if any(state["config"][k] != vars(args)[k] for k in same):
        print(f"{out} was made with other arguments {state['config']}; delete it to start over")
        return 2
    run(scale, paths.data, args, state, out)
    print(json.dumps(summarise(state["models"]), indent=1))
    return 0


def run(scale: Scale, data: Path, args: argparse.Namespace, state: dict, out: Path) -> None:
    import numpy as np
    import torch

    from trainer_image.data.split import proxy_split
    from trainer_image.engine.batches import interval_batches
    from trainer_image.engine.config import TrainConfig
    from trainer_image.engine.loop import Trainer
    from trainer_image.eval.evaluate import GroundTruthCache
    from trainer_image.jobs.session import DataOptions, derive_seed, fresh_model, open_split
    from trainer_image.jobs.session import train_loader as make_train_loader
    from trainer_image.weighting.fixed import FixedWeights

    torch.set_num_threads(args.threads)
    split = open_split(data, "train")
    train, pool = proxy_split(split, args.pool, args.seed)
    cache = GroundTruthCache(pool)
    options = DataOptions(root=data, batch_size=scale.batch_size)
    model = fresh_model("panoptic_deeplab", split.categories, None, derive_seed(args.seed, "init"))
    config = TrainConfig(lr=0.02 if scale.lr is None else scale.lr, log_every=10_000)

    def loader(seed: int) -> Any:
        return make_train_loader(train, model, options, seed)

    per_epoch = len(loader(0))
    trainer = Trainer(model, config, scale.epochs * per_epoch, torch.device("cpu"))
    ones = {name: 1.0 for name in model.loss_names}
    done = {(m["at"], m["group"], m["index"]) for m in state["models"]}
    epoch = 0
    last_losses: dict[str, float] = {}
    for at in sorted(args.at):
        todo = (args.orders + args.draws * (2 if args.repeat else 1)) > sum(
            1 for key in done if key[0] == at
        )
        if not todo:
            continue
        while epoch < at:  # the equal-weights trajectory up to the checkpoint
            batches = interval_batches(
                loader(derive_seed(args.seed, "data", epoch)), epoch, per_epoch
            )
            last_losses = trainer.train_interval(batches, FixedWeights(ones), per_epoch).losses
            epoch += 1
        snapshot = (copy.deepcopy(model.state_dict()), copy.deepcopy(trainer.state_dict()))
        reference = {n: last_losses["semantic"] / last_losses[n] for n in model.loss_names}
        rng = np.random.default_rng([args.seed, at])
        draws = [draw_weights(reference, rng, RELATIVE_SIGMA) for _ in range(args.draws)]
        jobs = [
            ("order", k, reference, derive_seed(args.seed, "noise", at, k))
            for k in range(args.orders)
        ]
        jobs += [
            ("weights", j, w, derive_seed(args.seed, "noise", at, 0)) for j, w in enumerate(draws)
        ]
        if args.repeat:
            second = derive_seed(args.seed, "noise", at, 1)
            jobs += [("weights-order1", j, w, second) for j, w in enumerate(draws)]
        for group, index, weights, data_seed in jobs:
            if (at, group, index) in done:
                continue
            model.load_state_dict(snapshot[0])
            trainer.load_state_dict(snapshot[1])
            trainer.iteration = at * per_epoch
            torch.manual_seed(derive_seed(args.seed, "train", at, group, index))
            started = time.monotonic()
            batches = interval_batches(loader(data_seed), at, per_epoch)
            result = trainer.train_interval(batches, FixedWeights(weights), per_epoch)
            scores = _predict_and_score(model, pool, cache, args.subsets)
            state["models"].append(
                {
                    "at": at,
                    "group": group,
                    "index": index,
                    "weights": weights,
                    "losses": result.losses,
                    "seconds": round(time.monotonic() - started, 1),
                    **scores,
                }
            )
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(state, indent=1))
            os.replace(tmp, out)
            print(f"after epoch {at}, {group} {index}: PQ {scores['pq']:.2f}", flush=True)
        model.load_state_dict(snapshot[0])
        trainer.load_state_dict(snapshot[1])
        trainer.iteration = at * per_epoch


if __name__ == "__main__":
    raise SystemExit(main())
