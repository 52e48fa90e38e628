"""The paper's clustering score of localization families: on UMAPs of the global embedding (mean +- sd over UMAP
seeds) and on the raw embedding."""
from __future__ import annotations

import numpy as np

from cytoself_jax.analysis import scores as scoring
from cytoself_jax.analysis.common import AnalysisInputError
from cytoself_jax.analysis.context import EvalContext, Evaluation, has_classes, interval_of, largest
from cytoself_jax.analysis.records import Score

RAW_BOOTSTRAP = 200  # resamples of the raw score's interval: each one takes medians in the full embedding width


def evaluate(ctx: EvalContext) -> Evaluation:
    o, families = ctx.options, ctx.families
    result = Evaluation()
    if not has_classes(families):
        result.details["clustering_score"] = None
        result.notes.append("clustering score: needs at least 2 annotated localization families among the crops")
        return result
    kwargs = ctx.umap_kwargs()
    if kwargs["n_neighbors"] != o.umap_neighbors:
        result.notes.append(f"UMAP: n_neighbors lowered to {kwargs['n_neighbors']} (only {len(ctx.rows)} crops)")
    fit = ctx.umap_rows()  # every crop, or the seeded subsample the UMAPs are fit on
    families, fovs, vectors = families[fit], ctx.fovs[fit], ctx.vectors[fit]
    seeds = list(range(o.seed, o.seed + o.umap_seeds))  # the first is the atlas map's seed
    values = np.array([scoring.clustering_score(xy, families) for xy in ctx.umaps(seeds)])
    sd = float(values.std(ddof=1)) if len(values) > 1 else None
    keep = ctx.annotated(families)
    xy = ctx.umap(ctx.atlas_seed)

    def on_map(positions: np.ndarray) -> float:
        return scoring.clustering_score(xy[positions], families[positions])

    low, high, fields = interval_of(ctx, on_map, fovs)
    subset = f", {len(fit)} of {len(ctx.rows)} crops" if len(fit) < len(ctx.rows) else ""
    result.scores.append(Score(
        "clustering.umap", "clustering score (UMAP)", float(values.mean()),
        f"localization families on {len(seeds)} UMAP{'s' if len(seeds) > 1 else ''} of the global embedding "
        f"({len(largest(families))} families{subset}; +- sd over UMAP seeds)", low, high,
        interval=f"95% CI on the seed-{ctx.atlas_seed} map, bootstrap over fields of view", sd=sd,
        chance=None, n=int(keep.sum()), groups=fields, digits=2))
    raw, raw_ci = None, (None, None, None)
    try:
        raw = scoring.clustering_score(vectors, families)
        raw_ci = interval_of(ctx, lambda p: scoring.clustering_score(vectors[p], families[p]), fovs,
                             n_boot=RAW_BOOTSTRAP)
    except AnalysisInputError as e:  # a collapsed codebook: identical vectors, class radii 0
        result.notes.append(f"clustering score (raw): undefined here ({e})")
    result.scores.append(Score("clustering.raw", "clustering score (raw)", raw,
                               f"same score on the raw global embedding{subset}", raw_ci[0], raw_ci[1],
                               interval=f"95% CI, {min(o.bootstrap, RAW_BOOTSTRAP)} bootstrap resamples of fields of "
                               "view", n=int(keep.sum()), groups=raw_ci[2]))
    result.details["clustering_score"] = {
        "umap": {"mean": float(values.mean()), "sd": sd or 0.0, "scores": [float(v) for v in values],
                 "seeds": seeds, "atlas_seed": ctx.atlas_seed, "fit_crops": int(len(fit)), **kwargs},
        "raw": raw, "families": largest(families), "excluded": [c for c in scoring.NON_CLASSES if c],
    }
    return result
