"""Protein complexes: do a complex's subunits cluster tightly among all proteins (the paper's Fig. 3b)?

Input: a CSV of (protein, complex) rows. For each complex with at least 2 subunits among the evaluated proteins
(m of them), on the proteins' mean embeddings (cosine similarity):

    neighbour_fraction = mean over subunits of the fraction of its m-1 nearest proteins that are subunits
    mean_similarity    = mean cosine similarity of the subunit pairs

each against a label-permutation null: the same statistic of `permutations` random sets of m proteins (the
complex's labels given to random proteins), p = (1 + #null >= observed) / (1 + permutations), and
Benjamini-Hochberg q-values over the complexes. complexes.csv holds the table, complexes.png the picture.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cytoself_jax.analysis.common import AnalysisInputError
from cytoself_jax.analysis.neighbours import similarity_matrix
from cytoself_jax.figures import GREY, categorical_palette, save_figure


def read_complexes(path: str | Path) -> pd.DataFrame:
    """The (protein, complex) table of a CSV file, one row per subunit; a clear one-line error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise AnalysisInputError(f"{path}: complexes file not found (expected a CSV with columns protein, complex)")
    try:
        table = pd.read_csv(path, dtype=str)
    except (ValueError, UnicodeDecodeError) as e:
        raise AnalysisInputError(f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from None
    missing = [c for c in ("protein", "complex") if c not in table.columns]
    if missing:
        raise AnalysisInputError(f"{path}: columns: expected protein and complex, missing {missing} "
                                 f"(found {list(table.columns)})")
    table = table[["protein", "complex"]].dropna().apply(lambda c: c.str.strip())
    table = table[(table["protein"] != "") & (table["complex"] != "")].drop_duplicates()
    if table.empty:
        raise AnalysisInputError(f"{path}: no (protein, complex) row with both values")
    return table.reset_index(drop=True)


def _statistics(sim: np.ndarray, rank: np.ndarray, sets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both statistics of each row of sets (S, m) of protein indices: (neighbour_fraction (S,), mean_similarity (S,))."""
    m = sets.shape[1]
    off = ~np.eye(m, dtype=bool)
    pair_rank = rank[sets[:, :, None], sets[:, None, :]][:, off].reshape(len(sets), m, m - 1)
    pair_sim = sim[sets[:, :, None], sets[:, None, :]][:, off]
    return (pair_rank < m - 1).mean(axis=(1, 2)), pair_sim.mean(axis=1)


def complex_tightness(profiles: np.ndarray, names, complexes: pd.DataFrame, permutations: int = 1000,
                      seed: int = 0) -> pd.DataFrame:
    """Per complex of `complexes` (protein, complex): tightness of its subunits among the proteins `names` (P,)
    with mean embeddings profiles (P, d), against a label-permutation null (see the module docstring).

    Returns one row per complex: complex, subunits, present, missing (subunits not among names),
    neighbour_fraction, null_fraction (mean of the null), p_value, mean_similarity, null_similarity,
    p_value_similarity, q_value (BH on p_value); statistics NaN where fewer than 2 subunits are present.
    """
    from scipy.stats import false_discovery_control

    names = list(names)
    index = {n: i for i, n in enumerate(names)}
    sim = similarity_matrix(profiles, "cosine")
    order = np.argsort(-np.where(np.eye(len(names), dtype=bool), -np.inf, sim), axis=1, kind="stable")
    rank = np.empty_like(order)
    rank[np.arange(len(names))[:, None], order] = np.arange(len(names))[None]  # rank[i, j]: j's place for i
    rng = np.random.default_rng(seed)
    rows = []
    for name, group in complexes.groupby("complex", sort=True):
        present = [p for p in group["protein"] if p in index]
        row = {"complex": name, "subunits": len(group), "present": len(present),
               "missing": " ".join(p for p in group["protein"] if p not in index)}
        if len(present) >= 2:
            members = np.array([[index[p] for p in present]])
            frac, mean_sim = _statistics(sim, rank, members)
            null_sets = np.argsort(rng.random((permutations, len(names))), axis=1)[:, :len(present)]
            null_frac, null_sim = _statistics(sim, rank, null_sets)
            row.update(neighbour_fraction=float(frac[0]), null_fraction=float(null_frac.mean()),
                       p_value=float((1 + np.sum(null_frac >= frac[0])) / (1 + permutations)),
                       mean_similarity=float(mean_sim[0]), null_similarity=float(null_sim.mean()),
                       p_value_similarity=float((1 + np.sum(null_sim >= mean_sim[0])) / (1 + permutations)))
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in ("neighbour_fraction", "null_fraction", "p_value", "mean_similarity", "null_similarity",
                   "p_value_similarity"):
        if column not in table:
            table[column] = np.nan
    scored = table["p_value"].notna()
    table["q_value"] = np.nan
    if scored.any():
        table.loc[scored, "q_value"] = false_discovery_control(table.loc[scored, "p_value"].to_numpy())
    return table


def evaluate_complexes(out: Path, proteins_adata, complexes_file: str | Path, permutations: int = 1000,
                       seed: int = 0, svg: bool = False) -> dict:
    """The complexes evaluator: the protein atlas' profiles (proteins_adata.X) and UMAP against the CSV
    complexes_file; writes out/complexes.csv and out/complexes.png. Returns a summary dict."""
    complexes = read_complexes(complexes_file)
    names = list(proteins_adata.obs_names)
    if not complexes["protein"].isin(names).any():
        raise AnalysisInputError(f"{complexes_file}: protein: none of its {complexes['protein'].nunique()} "
                                 f"proteins is among the evaluated ones (e.g. {names[:3]})")
    table = complex_tightness(np.asarray(proteins_adata.X), names, complexes, permutations, seed)
    table.to_csv(Path(out) / "complexes.csv", index=False, float_format="%.4g")
    plot_complexes(proteins_adata.obsm["X_umap"], names, complexes, table, Path(out) / "complexes.png", svg=svg)
    scored = table.dropna(subset=["p_value"])
    return {"file": str(complexes_file), "complexes": int(len(table)), "scored": int(len(scored)),
            "significant_q05": int(np.sum(scored["q_value"] < 0.05)), "permutations": permutations,
            "median_neighbour_fraction": float(scored["neighbour_fraction"].median()) if len(scored) else None,
            "median_null_fraction": float(scored["null_fraction"].median()) if len(scored) else None}


def plot_complexes(xy: np.ndarray, names, complexes: pd.DataFrame, table: pd.DataFrame, path: Path,
                   svg: bool = False) -> list[Path]:
    """Fig. 3b-style picture: the protein UMAP in grey with each scored complex's subunits in its colour and
    named, beside each complex's neighbour fraction against its permutation null (p-values written)."""
    scored = table.dropna(subset=["p_value"]).sort_values("neighbour_fraction", ascending=False)
    palette = categorical_palette(list(scored["complex"]), sort=False)
    index = {n: i for i, n in enumerate(names)}
    fig = Figure(figsize=(13, max(5.5, 0.3 * len(scored) + 1.5)))
    ax_map, ax_bar = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.4, 1]})
    ax_map.scatter(xy[:, 0], xy[:, 1], s=10, color=GREY, linewidths=0)
    for name in scored["complex"]:
        rows = [index[p] for p in complexes.loc[complexes["complex"] == name, "protein"] if p in index]
        ax_map.scatter(xy[rows, 0], xy[rows, 1], s=30, color=palette[name], edgecolors="black", linewidths=0.4)
        ax_map.annotate(name, xy[rows].mean(axis=0), fontsize=7, color=palette[name], fontweight="bold",
                        xytext=(4, 4), textcoords="offset points")
    ax_map.set_title("Complex subunits on the protein atlas (UMAP of mean embeddings)", fontsize=10)
    ax_map.set_xticks([]), ax_map.set_yticks([])
    y = np.arange(len(scored))[::-1]
    ax_bar.barh(y, scored["neighbour_fraction"], height=0.6, color=[palette[n] for n in scored["complex"]])
    ax_bar.scatter(scored["null_fraction"], y, marker="|", s=120, color="black", label="permutation null (mean)")
    for yy, (_, r) in zip(y, scored.iterrows()):
        ax_bar.annotate(f"p={r['p_value']:.2g}, {int(r['present'])}/{int(r['subunits'])}",
                        (min(r["neighbour_fraction"], 0.98), yy), fontsize=6, va="center", xytext=(3, 0),
                        textcoords="offset points")
    ax_bar.set_yticks(y, scored["complex"], fontsize=7)
    ax_bar.set_xlim(0, 1.25)
    ax_bar.set_xlabel("fraction of a subunit's nearest proteins that are subunits", fontsize=8)
    ax_bar.legend(fontsize=7, loc="lower right", frameon=False)
    for ax in (ax_map, ax_bar):
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    fig.tight_layout()
    return save_figure(fig, path, svg=svg)
