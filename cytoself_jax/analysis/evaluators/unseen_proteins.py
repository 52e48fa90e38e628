"""Proteins the model never saw (config.data.heldout_proteins): how well their localization family is recovered
from the proteins it knows, as a user annotating an uncharacterised protein would. The known side is the train
split's crops (of the trained proteins); the unseen side every crop of the held-out proteins.

- family by kNN label transfer, crop level: each unseen crop takes the family voted by its k nearest known crops;
- family by nearest known protein, protein level: each unseen protein's mean embedding takes the family of the
  most similar known protein's (cosine);
- a linear probe of family trained on known crops, tested on unseen ones;
- unseen_proteins.csv: per unseen protein its family, crops, fields, the predicted families and its nearest
  known proteins.
Chance: always guessing the known side's most common family. Intervals: bootstrap over the unseen crops' fields
of view (crop level) or over unseen proteins (protein level).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cytoself_jax.analysis import neighbours, probe
from cytoself_jax.analysis import scores as scoring
from cytoself_jax.analysis.context import EvalContext, Evaluation, interval_of_mean
from cytoself_jax.analysis.records import Score

NEAREST_LISTED = 5  # nearest known proteins listed per unseen protein


def evaluate(ctx: EvalContext) -> Evaluation:
    if not ctx.heldout:
        return Evaluation(details={"unseen_proteins": None})
    reference, unseen = ctx.reference(), ctx.unseen()
    if reference is None or unseen is None:
        return Evaluation(details={"unseen_proteins": None},
                          notes=["unseen proteins: scored on a held-out split (--split val or test) only"])
    table = ctx.store.table
    known_rows, known = reference
    new_rows, new = unseen
    k_vectors = known.global_vectors.reshape(len(known), -1)
    u_vectors = new.global_vectors.reshape(len(new), -1)
    k_fam = table["family"].to_numpy()[known_rows].astype(str)
    u_fam = table["family"].to_numpy()[new_rows].astype(str)
    u_prot = table["protein"].to_numpy()[new_rows].astype(str)
    u_fov = table["fov"].astype(str).to_numpy()[new_rows]
    k_prot = table["protein"].to_numpy()[known_rows].astype(str)
    result = Evaluation()
    k_ann, u_ann = ctx.annotated(k_fam), ctx.annotated(u_fam)
    transferable = u_ann & np.isin(u_fam, k_fam[k_ann])
    details = {"proteins": sorted(set(u_prot)), "crops": int(len(new_rows)), "known_crops": int(len(known_rows)),
               "crops_scored": int(transferable.sum())}
    if (u_ann & ~transferable).any():
        missing = sorted(set(u_fam[u_ann & ~transferable]))
        result.notes.append(f"unseen proteins: families {missing} have no known protein, so their crops cannot be "
                            "transferred and are not scored")
    if not transferable.any() or len(set(k_fam[k_ann])) < 2:
        result.notes.append("unseen proteins: needs annotated unseen proteins of families that known proteins have")
        result.details["unseen_proteins"] = details
        return result
    families, counts = np.unique(k_fam[k_ann], return_counts=True)
    majority = families[np.argmax(counts)]

    # Crop level: kNN vote of the known crops' families.
    k = min(ctx.options.knn_k, int(k_ann.sum()))
    ranks = scoring.knn_ranks(k_vectors[k_ann], k_fam[k_ann], u_vectors[transferable], u_fam[transferable], k=k,
                              progress=ctx.options.progress)
    hits = (ranks < 1).astype(np.float64)
    low, high, fields = interval_of_mean(ctx, hits, groups=u_fov[transferable])
    chance_crop = float(np.mean(u_fam[transferable] == majority))
    result.scores.append(Score("unseen.family_knn_crop", "unseen proteins: family by kNN (crops)", float(hits.mean()),
                               f"each crop of a held-out protein takes the family voted by its {k} nearest known "
                               "crops", low, high, chance=chance_crop, n=len(hits), groups=fields))

    # Protein level: the nearest known protein's family.
    names, profiles = neighbours.protein_profiles(np.concatenate([k_vectors, u_vectors]),
                                                  np.concatenate([k_prot, u_prot]))
    family_of = neighbours.protein_families(np.concatenate([k_prot, u_prot]), np.concatenate([k_fam, u_fam]))
    near = neighbours.nearest_proteins(profiles, names, n=len(names) - 1, metric="cosine", families=family_of)
    unseen_names = set(u_prot)
    near = near[near["protein"].isin(unseen_names) & ~near["neighbour"].isin(unseen_names)].copy()
    near["rank"] = near.groupby("protein").cumcount() + 1
    first = near[near["rank"] == 1].set_index("protein")
    scored = [p for p in sorted(unseen_names) if family_of[p] in set(families)]
    p_hits = np.array([first.loc[p, "neighbour_family"] == family_of[p] for p in scored], np.float64)
    p_low, p_high, _ = interval_of_mean(ctx, p_hits, groups=np.asarray(scored))
    result.scores.append(Score("unseen.family_nearest_protein", "unseen proteins: family of nearest known protein",
                               float(p_hits.mean()), "each held-out protein's mean embedding takes the family of the "
                               "most similar known protein (cosine)", p_low, p_high,
                               interval="95% CI, bootstrap over unseen proteins",
                               chance=float(np.mean([family_of[p] == majority for p in scored])), n=len(scored)))

    # A linear probe trained on known crops only.
    probe_scores = probe.probe_scores(probe.embedding_pipeline(), k_vectors[k_ann], k_fam[k_ann],
                                      u_vectors[transferable], u_fam[transferable])
    result.scores.append(Score("unseen.family_probe_macro_f1", "unseen proteins: family probe (macro-F1)",
                               probe_scores["macro_f1"], "logistic regression trained on known crops' global "
                               "embeddings, tested on the held-out proteins' crops", n=probe_scores["test"]))
    details["probe"] = probe_scores

    # Per unseen protein: its predictions and nearest known proteins.
    votes = pd.Series(np.where(ranks < 1, u_fam[transferable], "")).groupby(u_prot[transferable]).agg(
        lambda v: float(np.mean(v != "")))
    rows = []
    for p in sorted(unseen_names):
        listed = near[(near["protein"] == p) & (near["rank"] <= NEAREST_LISTED)]
        rows.append({"protein": p, "family": family_of[p], "crops": int(np.sum(u_prot == p)),
                     "fields": int(len(set(u_fov[u_prot == p]))),
                     "family_of_nearest_known": first.loc[p, "neighbour_family"],
                     "crops_with_right_knn_family": votes.get(p, np.nan),
                     **{f"nearest_{r}": f"{n} ({f or 'no family'}, {s:.3f})" for r, n, f, s in
                        zip(listed["rank"], listed["neighbour"], listed["neighbour_family"], listed["similarity"])}})
    pd.DataFrame(rows).to_csv(ctx.out / "unseen_proteins.csv", index=False, float_format="%.4f")
    result.details["unseen_proteins"] = details
    return result
