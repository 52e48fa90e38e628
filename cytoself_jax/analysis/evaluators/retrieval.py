"""Retrieval mean average precision (cosine): same protein and same localization family, at crop level."""
from __future__ import annotations

import numpy as np

from cytoself_jax.analysis import scores as scoring
from cytoself_jax.analysis.context import EvalContext, Evaluation, has_classes, interval_of, subsample
from cytoself_jax.analysis.records import Score


def chance_map(labels: np.ndarray) -> float:
    """Expected mAP of a random ranking: per label the fraction of positives among the others, averaged over labels."""
    _, counts = np.unique(labels, return_counts=True)
    keep = counts >= 2
    return float(np.mean((counts[keep] - 1) / (len(labels) - 1)))


def _shared_label(labels: np.ndarray) -> bool:
    return bool(len(labels)) and np.unique(labels, return_counts=True)[1].max() >= 2


def _per_label_mean(ap: np.ndarray, labels: np.ndarray) -> float:
    valid = ~np.isnan(ap)
    if not valid.any():
        return float("nan")
    inverse = np.unique(labels[valid], return_inverse=True)[1]
    return float(np.mean(np.bincount(inverse, weights=ap[valid]) / np.bincount(inverse)))


def evaluate(ctx: EvalContext) -> Evaluation:
    o = ctx.options
    result = Evaluation()
    sample = subsample(len(ctx.rows), o.map_max_crops, o.seed)
    if len(sample) < len(ctx.rows):
        result.notes.append(f"mAP: computed on a seeded subsample of {len(sample)} of {len(ctx.rows)} crops "
                            f"(seed {o.seed})")
    x, proteins, families, fovs = ctx.vectors[sample], ctx.proteins[sample], ctx.families[sample], ctx.fovs[sample]
    details = {"crops": int(len(sample)), "subsampled": bool(len(sample) < len(ctx.rows)), "seed": o.seed,
               "metric": "cosine"}
    annotated = ctx.annotated(families)
    targets = {"protein": (np.ones(len(sample), bool), "same protein"),
               "family": (annotated, "same localization family")}
    for target, (keep, what) in targets.items():
        labels = (proteins if target == "protein" else families)[keep]
        usable = _shared_label(labels) and (target == "protein" or has_classes(labels))
        if not usable:
            details[target], details[f"chance_{target}"] = None, None
            result.scores.append(Score(f"map.{target}", f"mAP {what}", None, "retrieval, cosine"))
            result.notes.append(f"mAP {what}: needs 2 {'annotated families' if target == 'family' else 'crops of one protein'} "
                                "with 2 crops or more")
            continue
        ap = scoring.average_precision(x[keep], labels, progress=o.progress)
        value = _per_label_mean(ap, labels)
        low, high, fields = interval_of(ctx, lambda p: _per_label_mean(ap[p], labels[p]), fovs[keep])
        chance = chance_map(labels)
        details[target], details[f"chance_{target}"] = value, chance
        result.scores.append(Score(f"map.{target}", f"mAP {what}", value,
                                   "retrieval among the split's crops, cosine, global embedding", low, high,
                                   interval="95% CI, bootstrap of the queries' fields of view", chance=chance,
                                   n=int(keep.sum()), groups=fields))
    result.details["map"] = details
    return result
