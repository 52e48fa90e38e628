"""Retrieval mean average precision (cosine) as image-based profiling computes it (copairs' conventions).

- same protein, positives from other fields of view only (pos_sameby=protein, pos_diffby=fov): a crop cannot
  score by recognizing its own field. The evaluated split holds about one field per protein, so each evaluated
  crop is ranked among the evaluated crops and the train crops (the reference), whose other fields give the
  positives; only the evaluated crops are queries. Per protein, copairs' permutation p-value and BH q-value
  (retrieval.csv);
- same localization family at crop level, positives from other proteins only (pos_diffby=protein);
- same family at protein level: each protein's mean profile against the other proteins' profiles.
mAP is averaged within each label, then over labels; chance is the exact expected mAP of a random ranking.
"""
from __future__ import annotations

import numpy as np

from cytoself_jax.analysis import scores as scoring
from cytoself_jax.analysis.context import EvalContext, Evaluation, has_classes, subsample
from cytoself_jax.analysis.records import Score
from cytoself_jax.analysis.uncertainty import bootstrap_mean_ci

NULL_SIZE = 1000  # random rankings per query in copairs' permutation test: p-values resolve 0.001
SIGNIFICANCE = 0.05  # FDR level at which a protein counts as retrieved above chance


def _map_score(key: str, label: str, ap: np.ndarray, labels: np.ndarray, groups: np.ndarray, chance: np.ndarray,
               ctx: EvalContext, basis: str, unit: str = "fields of view") -> Score:
    """Macro mAP of per-query APs (NaN: no positive) with its interval over `groups` and its chance level."""
    valid = np.isfinite(ap)
    interval = bootstrap_mean_ci(ap[valid], groups[valid], by=labels[valid], n_boot=ctx.options.bootstrap,
                                 seed=ctx.options.seed)
    return Score.from_interval(key, label, interval, unit=unit, basis=basis,
                               chance=scoring.macro_mean(chance[valid], labels[valid]), n=int(valid.sum()))


def _undefined(result: Evaluation, key: str, label: str, why: str) -> None:
    result.scores.append(Score(key, label, None, "retrieval, cosine"))
    result.notes.append(f"{label}: {why}")


def _protein_pool(ctx: EvalContext, sample: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(vectors, proteins, fovs, is_query) of the evaluated sample plus, on a held-out split, train crops of its
    proteins (at most map_max_crops in all) as the other fields' positives."""
    x, proteins, fovs = ctx.vectors[sample], ctx.proteins[sample].astype(str), ctx.fovs[sample]
    reference = ctx.reference()
    room = ctx.options.map_max_crops - len(sample)
    if reference is None or room <= 0:
        return x, proteins, fovs, np.ones(len(sample), bool)
    rows, outputs = reference
    table = ctx.store.table
    mine = np.flatnonzero(np.isin(table["protein"].to_numpy()[rows].astype(str), proteins))
    mine = mine[subsample(len(mine), room, ctx.options.seed)]
    ref_x = outputs.global_vectors[mine].reshape(len(mine), -1)
    return (np.concatenate([x, ref_x]),
            np.concatenate([proteins, table["protein"].to_numpy()[rows[mine]].astype(str)]),
            np.concatenate([fovs, table["fov"].astype(str).to_numpy()[rows[mine]]]),
            np.arange(len(sample) + len(mine)) < len(sample))


def _same_protein(ctx: EvalContext, sample: np.ndarray, result: Evaluation, details: dict) -> None:
    key, label = "map.protein", "mAP same protein (other fields)"
    x, proteins, fovs, query = _protein_pool(ctx, sample)
    n_pos, _ = scoring.retrieval_counts(proteins, exclude_same=fovs)
    if not (query & (n_pos > 0)).any():
        details["protein"] = details["chance_protein"] = None
        _undefined(result, key, label, "needs a protein with crops in 2 fields of view")
        return
    ap = scoring.average_precision(x, proteins, progress=ctx.options.progress, exclude_same=fovs)
    ap[~query] = np.nan  # reference crops are positives and negatives, never queries
    chance = scoring.chance_average_precision(proteins, exclude_same=fovs)
    pool = "the evaluated crops" if query.all() else f"the evaluated crops and {int((~query).sum())} train crops"
    score = _map_score(key, label, ap[query], proteins[query], fovs[query], chance[query], ctx,
                       f"each evaluated crop ranks {pool}; positives: its protein's crops in other fields; cosine, "
                       "global embedding")
    result.scores.append(score)
    table = scoring.map_significance(ap, proteins, exclude_same=fovs, null_size=NULL_SIZE, seed=ctx.options.seed)
    table.rename(columns={"label": "protein"}).to_csv(ctx.out / "retrieval.csv", index=False, float_format="%.4g")
    significant = float(np.mean(table["q_value"] < SIGNIFICANCE))
    result.scores.append(Score("map.protein_significant", "proteins retrieved above chance",
                               significant, f"fraction of proteins whose same-protein mAP beats random rankings "
                               f"(copairs permutation test, BH q < {SIGNIFICANCE}; retrieval.csv)",
                               n=len(table)))
    details.update(protein=score.value, chance_protein=score.chance, protein_significant=significant,
                   pool=int(len(x)), queries=int(score.n))


def _same_family(ctx: EvalContext, sample: np.ndarray, result: Evaluation, details: dict) -> None:
    key, label = "map.family", "mAP same family (other proteins)"
    families, proteins = ctx.families[sample].astype(str), ctx.proteins[sample].astype(str)
    keep = ctx.annotated(families)
    n_pos, _ = scoring.retrieval_counts(families[keep], exclude_same=proteins[keep])
    if not has_classes(families[keep]) or not (n_pos > 0).any():
        details["family"] = details["chance_family"] = details["family_protein"] = None
        _undefined(result, key, label, "needs 2 annotated families, one with 2 proteins")
        _undefined(result, "map.family_protein", "mAP same family (protein profiles)", "as above")
        return
    x, fams, prots, fovs = ctx.vectors[sample][keep], families[keep], proteins[keep], ctx.fovs[sample][keep]
    ap = scoring.average_precision(x, fams, progress=ctx.options.progress, exclude_same=prots)
    score = _map_score(key, label, ap, fams, fovs, scoring.chance_average_precision(fams, exclude_same=prots), ctx,
                       "each annotated crop ranks the others; positives: crops of other proteins of its family; "
                       "cosine, global embedding")
    result.scores.append(score)
    profiles = scoring.profile_average_precision(ctx.vectors[sample], proteins, families)
    profile = _map_score("map.family_protein", "mAP same family (protein profiles)",
                         profiles["average_precision"].to_numpy(), profiles["family"].to_numpy(),
                         profiles["protein"].to_numpy(), profiles["chance"].to_numpy(), ctx,
                         "each protein's mean embedding ranks the other proteins'; positives: its family's",
                         unit="proteins")
    result.scores.append(profile)
    details.update(family=score.value, chance_family=score.chance, family_protein=profile.value)


def evaluate(ctx: EvalContext) -> Evaluation:
    o = ctx.options
    result = Evaluation()
    sample = subsample(len(ctx.rows), o.map_max_crops, o.seed)
    if len(sample) < len(ctx.rows):
        result.notes.append(f"mAP: computed on a seeded subsample of {len(sample)} of {len(ctx.rows)} crops "
                            f"(seed {o.seed})")
    details = {"crops": int(len(sample)), "subsampled": bool(len(sample) < len(ctx.rows)), "seed": o.seed,
               "metric": "cosine"}
    _same_protein(ctx, sample, result, details)
    _same_family(ctx, sample, result, details)
    result.details["map"] = details
    return result

