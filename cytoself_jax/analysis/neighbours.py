"""Protein profiles (mean embedding per protein) and "proteins like mine": each protein's nearest proteins."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from cytoself_jax.analysis.common import as_labels, as_matrix, check_choice, fail, group_means


def protein_profiles(embeddings, proteins) -> tuple[np.ndarray, np.ndarray]:
    """Mean embedding per protein: embeddings (N, ...) flattened per row, proteins (N,) -> (names (P,) sorted,
    profiles (P, d) float64)."""
    x = as_matrix(embeddings, "protein_profiles", "embeddings", flatten=True)
    return group_means(x, as_labels(proteins, len(x), "protein_profiles", "proteins"))


def protein_families(proteins, families) -> dict[str, str]:
    """Family of each protein from per-crop columns (N,): its most frequent non-empty family ('' if none)."""
    proteins = as_labels(proteins, np.size(proteins), "protein_families", "proteins")
    families = as_labels(families, len(proteins), "protein_families", "families")
    table = pd.DataFrame({"protein": proteins, "family": families})
    annotated = table[table["family"] != ""]
    modes = annotated.groupby("protein")["family"].agg(lambda f: f.value_counts().index[0])
    return {p: modes.get(p, "") for p in np.unique(proteins)}


def similarity_matrix(profiles, metric: str = "cosine") -> np.ndarray:
    """Pairwise similarity of profiles (P, d) -> (P, P) in [-1, 1]: cosine, or Pearson (cosine of each profile
    centred on its own mean over dimensions)."""
    where = "similarity_matrix"
    check_choice(metric, ("cosine", "pearson"), where, "metric")
    x = as_matrix(profiles, where, "profiles")
    if metric == "pearson":
        x = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise fail(where, "profiles", f"{metric} similarity needs non-constant rows; row "
                   f"{np.flatnonzero(norms[:, 0] == 0)[0]} has none")
    x = x / norms
    return np.clip(x @ x.T, -1.0, 1.0)


def nearest_proteins(profiles, names, n: int = 10, metric: str = "cosine",
                     families: Mapping[str, str] | None = None) -> pd.DataFrame:
    """For each protein, its n most similar other proteins. profiles (P, d) with names (P,).

    Returns a DataFrame with one row per (protein, rank): protein, rank (1 = most similar), neighbour,
    similarity, and with `families` (protein -> family) also family and neighbour_family ('' when unknown).
    Sorted by protein then rank; ties in similarity are broken by neighbour name. Write it with .to_csv().
    """
    where = "nearest_proteins"
    names = as_labels(names, len(np.asarray(profiles)), where, "names")
    if len(set(names)) != len(names):
        raise fail(where, "names", "expected one profile per protein, found repeated names")
    if not 1 <= n < len(names):
        raise fail(where, "n", f"expected 1 <= n < {len(names)} (number of proteins), got {n}")
    sims = similarity_matrix(profiles, metric)
    np.fill_diagonal(sims, -np.inf)
    by_name = np.argsort(names, kind="stable")
    # lexsort: primary key descending similarity, secondary neighbour name (columns pre-sorted by name).
    order = by_name[np.argsort(-sims[:, by_name], axis=1, kind="stable")[:, :n]]
    rows = np.repeat(np.arange(len(names)), n)
    table = pd.DataFrame({
        "protein": names[rows],
        "rank": np.tile(np.arange(1, n + 1), len(names)),
        "neighbour": names[order.ravel()],
        "similarity": sims[rows, order.ravel()],
    })
    if families is not None:
        table.insert(1, "family", [families.get(p, "") for p in table["protein"]])
        table["neighbour_family"] = [families.get(p, "") for p in table["neighbour"]]
    return table.sort_values(["protein", "rank"], kind="stable").reset_index(drop=True)
