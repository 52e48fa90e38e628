"""Proteins the model never saw (config.data.heldout_proteins): where do they go among the proteins it knows?

The question a biologist brings to the embedding (annotating proteins of unknown localization: the "unannotated
data" of the paper's Introduction): transfer the localization family of known ("seen") proteins to held-out
("unseen") ones by nearest neighbours, at crop level (a vote of the k nearest seen crops) and at protein
level (a vote of the k nearest seen protein profiles, the per-protein mean embedding), and list each unseen
protein's nearest known proteins. Scores are Score records with bootstrap intervals (analysis/uncertainty.py):
over the unseen crops' fields of view at crop level, over unseen proteins at protein level.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cytoself_jax.analysis.common import as_labels, as_matrix, fail
from cytoself_jax.analysis.neighbours import protein_families, protein_profiles, similarity_matrix
from cytoself_jax.analysis.scores import NON_CLASSES, knn_neighbour_labels, knn_ranks, knn_votes, macro_mean
from cytoself_jax.analysis.records import Score
from cytoself_jax.analysis.uncertainty import bootstrap_mean_ci


def _hit_scores(hits: np.ndarray, truth: np.ndarray, groups: np.ndarray | None, n_classes: int, n_boot: int,
                seed: int, on: str, unit: str) -> dict[str, Score]:
    """top1_accuracy and balanced_accuracy (mean top-1 hit per true family) with intervals over groups; chance:
    a uniform guess among the n_classes seen families."""
    out = {}
    for name, by in (("top1_accuracy", None), ("balanced_accuracy", truth)):
        if groups is not None and len(np.unique(groups)) >= 2:
            interval = bootstrap_mean_ci(hits, groups, by=by, n_boot=n_boot, seed=seed)
            out[name] = Score.from_interval(name, name, interval, unit=unit, basis=on, chance=1.0 / n_classes,
                                            n=len(hits))
        else:
            value = macro_mean(hits, by) if by is not None else float(np.mean(hits))
            out[name] = Score(name, name, value, basis=on, chance=1.0 / n_classes, n=len(hits))
    return out


def _annotated(family: np.ndarray) -> np.ndarray:
    return ~np.isin(family, NON_CLASSES)


def crop_family_transfer(seen_x, seen_family, unseen_x, unseen_family, unseen_groups=None, k: int = 10,
                         metric: str = "euclidean", n_boot: int = 1000, seed: int = 0) -> dict[str, Score]:
    """Family of each unseen crop by a vote of its k nearest seen crops (seen_x (N, ...), seen_family (N,);
    unseen_x (M, ...), unseen_family (M,)); unannotated crops (NON_CLASSES) are left out on both sides. A crop of a
    family no seen crop has, or whose family ties with another in the vote, is a miss. Returns {'top1_accuracy',
    'balanced_accuracy'} -> Score with intervals over unseen_groups (M,) (fields of view)."""
    where = "crop_family_transfer"
    seen_x = as_matrix(seen_x, where, "seen_x", flatten=True)
    unseen_x = as_matrix(unseen_x, where, "unseen_x", flatten=True)
    seen_family = as_labels(seen_family, len(seen_x), where, "seen_family")
    unseen_family = as_labels(unseen_family, len(unseen_x), where, "unseen_family")
    keep_seen, keep_unseen = _annotated(seen_family), _annotated(unseen_family)
    if len(np.unique(seen_family[keep_seen])) < 2 or not keep_unseen.any():
        raise fail(where, "seen_family", "expected annotated crops of at least 2 seen families and of 1 unseen crop")
    ranks = knn_ranks(seen_x[keep_seen], seen_family[keep_seen], unseen_x[keep_unseen], unseen_family[keep_unseen],
                      k=min(k, int(keep_seen.sum())), metric=metric, progress=False, where=where)
    groups = None if unseen_groups is None else as_labels(unseen_groups, len(unseen_x), where,
                                                          "unseen_groups")[keep_unseen]
    return _hit_scores((ranks < 1).astype(np.float64), unseen_family[keep_unseen], groups,
                       len(np.unique(seen_family[keep_seen])), n_boot, seed,
                       on=f"crops of unseen proteins, vote of {k} nearest seen crops", unit="fields of view")


def protein_family_transfer(seen_x, seen_proteins, seen_family, unseen_x, unseen_proteins, unseen_family,
                            k: int = 3, metric: str = "cosine", n_boot: int = 1000, seed: int = 0
                            ) -> tuple[pd.DataFrame, dict[str, Score]]:
    """Family of each unseen protein by a vote of the k nearest seen protein profiles (mean embedding per protein,
    neighbours.protein_profiles; a protein's family is its crops' most frequent one). Per-crop inputs: seen_x
    (N, ...), seen_proteins, seen_family (N,); unseen likewise (M,). Returns (table: one row per annotated unseen
    protein: protein, family, predicted (the top family; tied ones joined by '|'), hit (top family alone and
    right), votes ('family:count' best first); scores {'top1_accuracy', 'balanced_accuracy'} -> Score with
    intervals over unseen proteins)."""
    where = "protein_family_transfer"
    seen_names, seen_profiles = protein_profiles(seen_x, seen_proteins)
    unseen_names, unseen_profiles = protein_profiles(unseen_x, unseen_proteins)
    seen_of, unseen_of = protein_families(seen_proteins, seen_family), protein_families(unseen_proteins, unseen_family)
    seen_fam = np.array([seen_of[p] for p in seen_names], dtype=str)
    unseen_fam = np.array([unseen_of[p] for p in unseen_names], dtype=str)
    keep_seen, keep_unseen = _annotated(seen_fam), _annotated(unseen_fam)
    if len(np.unique(seen_fam[keep_seen])) < 2 or not keep_unseen.any():
        raise fail(where, "seen_family", "expected annotated seen proteins of at least 2 families and 1 annotated "
                   "unseen protein")
    k = min(k, int(keep_seen.sum()))
    classes, ids = knn_neighbour_labels(seen_profiles[keep_seen], seen_fam[keep_seen], unseen_profiles[keep_unseen],
                                        k=k, metric=metric, progress=False, where=where)
    votes = knn_votes(ids, len(classes))
    truth = unseen_fam[keep_unseen]
    top = votes.max(axis=1, keepdims=True)
    predicted = ["|".join(classes[row == t[0]]) for row, t in zip(votes, top)]
    hits = np.array([p == f for p, f in zip(predicted, truth)], dtype=np.float64)  # a tie is never a hit
    described = [", ".join(f"{classes[c]}:{int(row[c])}" for c in np.argsort(-row, kind="stable") if row[c] > 0)
                 for row in votes]
    table = pd.DataFrame({"protein": unseen_names[keep_unseen], "family": truth, "predicted": predicted,
                          "hit": hits.astype(bool), "votes": described})
    scores = _hit_scores(hits, truth, unseen_names[keep_unseen], len(classes), n_boot, seed,
                         on=f"unseen proteins' mean profiles, vote of {k} nearest seen profiles ({metric})",
                         unit="proteins")
    return table, scores


def nearest_known_proteins(seen_x, seen_proteins, unseen_x, unseen_proteins, n: int = 5, metric: str = "cosine",
                           families: dict[str, str] | None = None) -> pd.DataFrame:
    """For each unseen protein, its n most similar seen proteins by profile similarity (neighbours.similarity_
    matrix: cosine or pearson of the mean embeddings). Per-crop inputs as protein_family_transfer. Returns one row
    per (protein, rank): protein, rank (1 = most similar), neighbour, similarity, and with `families` (protein ->
    family) family and neighbour_family; sorted by protein then rank, ties broken by neighbour name."""
    where = "nearest_known_proteins"
    seen_names, seen_profiles = protein_profiles(seen_x, seen_proteins)
    unseen_names, unseen_profiles = protein_profiles(unseen_x, unseen_proteins)
    if set(seen_names) & set(unseen_names):
        raise fail(where, "unseen_proteins", f"expected proteins the model did not see, found seen ones: "
                   f"{sorted(set(seen_names) & set(unseen_names))[:5]}")
    if not 1 <= n <= len(seen_names):
        raise fail(where, "n", f"expected 1 <= n <= {len(seen_names)} (seen proteins), got {n}")
    # One similarity matrix of both sets; its unseen x seen block (seen names are sorted: ties go by name)
    sims = similarity_matrix(np.concatenate([unseen_profiles, seen_profiles]), metric)[:len(unseen_names),
                                                                                      len(unseen_names):]
    order = np.argsort(-sims, axis=1, kind="stable")[:, :n]
    rows = np.repeat(np.arange(len(unseen_names)), n)
    table = pd.DataFrame({"protein": unseen_names[rows], "rank": np.tile(np.arange(1, n + 1), len(unseen_names)),
                          "neighbour": seen_names[order.ravel()], "similarity": sims[rows, order.ravel()]})
    if families is not None:
        table.insert(1, "family", [families.get(p, "") for p in table["protein"]])
        table["neighbour_family"] = [families.get(p, "") for p in table["neighbour"]]
    return table
