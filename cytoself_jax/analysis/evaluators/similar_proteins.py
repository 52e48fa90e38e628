"""Proteins like mine: each protein's nearest proteins by the cosine similarity of their mean global embeddings
(neighbours.csv), and how often the nearest one shares its localization family."""
from __future__ import annotations

import numpy as np

from cytoself_jax.analysis import neighbours
from cytoself_jax.analysis.context import EvalContext, Evaluation, interval_of_mean
from cytoself_jax.analysis.records import Score
from cytoself_jax.analysis.scores import NON_CLASSES


def evaluate(ctx: EvalContext) -> Evaluation:
    proteins, families = ctx.proteins, ctx.families
    names = np.unique(proteins)
    if len(names) < 2:
        return Evaluation(details={"neighbours": None},
                          notes=["neighbours.csv: needs at least 2 proteins; skipped"])
    family_of = neighbours.protein_families(proteins, families)
    p_names, profiles = neighbours.protein_profiles(ctx.outputs.global_vectors, proteins)
    near = neighbours.nearest_proteins(profiles, p_names, n=min(ctx.options.neighbours, len(p_names) - 1),
                                       metric="cosine", families=family_of)
    near.to_csv(ctx.out / "neighbours.csv", index=False, float_format="%.4f")
    first = near[(near["rank"] == 1) & ~near["family"].isin(NON_CLASSES)]
    # A protein whose family has no other protein here cannot have a same-family neighbour: not scored.
    fam_sizes = first["family"].map(first["family"].value_counts())
    scored = first[fam_sizes >= 2]
    details = {"basis": "mean global embedding per protein, cosine similarity",
               "annotated_proteins": int(len(first)), "scored_proteins": int(len(scored)),
               "top1_same_family": None}
    result = Evaluation(details={"neighbours": details})
    if len(scored) == 0:
        result.notes.append("nearest protein same family: no annotated protein has another protein of its family "
                            "in this split, so it is not scored")
        result.scores.append(Score("neighbours.top1_same_family", "nearest protein same family", None,
                                   "no protein with a same-family partner"))
        return result
    hits = (scored["family"] == scored["neighbour_family"]).to_numpy(np.float64)
    low, high, groups = interval_of_mean(ctx, hits, groups=scored["protein"].astype(str).to_numpy())
    # Chance: the fraction of the other proteins that share the family, averaged over proteins.
    sizes = scored["family"].map(first["family"].value_counts()).to_numpy(np.float64)
    chance = float(np.mean((sizes - 1) / max(len(first) - 1, 1)))
    details["top1_same_family"] = float(hits.mean())
    result.scores.append(Score("neighbours.top1_same_family", "nearest protein same family", float(hits.mean()),
                               f"fraction of the {len(scored)} annotated proteins with a same-family partner "
                               "(neighbours.csv)", low, high, interval="95% CI, bootstrap over proteins",
                               chance=chance, n=len(scored)))
    return result
