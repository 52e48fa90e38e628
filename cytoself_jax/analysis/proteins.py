"""The protein-level atlas: one point per protein (its mean embedding), as the paper's OpenCell map is read.

scanpy does the work: a cosine neighbour graph of the protein profiles, its UMAP, Leiden communities of the
graph, and a dendrogram of the proteins (hierarchical clustering of the profiles' correlations). Everything
lands in proteins.h5ad (obs: family, crops, leiden; obsm['X_umap']; uns['dendrogram_protein']) beside the
per-crop embeddings.h5ad, with two pictures: proteins_atlas.png (UMAP by family with names, and by community)
and proteins_dendrogram.png.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cytoself_jax.analysis.neighbours import protein_families, protein_profiles
from cytoself_jax.figures import GREY, categorical_palette, save_figure
from cytoself_jax.analysis.scores import NON_CLASSES

MIN_PROTEINS = 4  # fewer proteins give no meaningful neighbour graph, UMAP or communities
MAX_NAMES = 150  # name labels on the atlas: all proteins up to this many, else the most imaged ones


def protein_atlas(out: Path, embeddings: np.ndarray, table: pd.DataFrame, n_neighbors: int = 15,
                  resolution: float = 1.0, seed: int = 0, svg: bool = False):
    """The protein atlas evaluator. embeddings (N, ...) of N crops with table columns protein, family.

    Writes out/proteins.h5ad, out/proteins_atlas.png and out/proteins_dendrogram.png. Returns (metrics dict, the
    AnnData of proteins), or (None, None) with fewer than MIN_PROTEINS proteins.
    """
    import anndata
    import scanpy as sc
    from sklearn.metrics import adjusted_rand_score

    proteins = table["protein"].to_numpy()
    names, profiles = protein_profiles(embeddings, proteins)
    if len(names) < MIN_PROTEINS:
        return None, None
    family_of = protein_families(proteins, table["family"].to_numpy())
    counts = pd.Series(proteins).value_counts()
    adata = anndata.AnnData(
        X=profiles.astype(np.float32),
        obs=pd.DataFrame({"protein": pd.Categorical(names), "family": pd.Categorical([family_of[n] for n in names]),
                          "crops": [int(counts[n]) for n in names]}, index=pd.Index(names, name="protein_name")),
    )
    k = int(min(n_neighbors, len(names) - 1))
    sc.pp.neighbors(adata, n_neighbors=k, use_rep="X", metric="cosine", random_state=seed)
    sc.tl.umap(adata, random_state=seed)
    sc.tl.leiden(adata, resolution=resolution, random_state=seed, flavor="igraph", n_iterations=2, directed=False,
                 key_added="leiden")
    sc.tl.dendrogram(adata, groupby="protein", use_rep="X")
    adata.uns["profile"] = "mean global embedding of the protein's crops"
    adata.write_h5ad(Path(out) / "proteins.h5ad")

    annotated = ~adata.obs["family"].isin(NON_CLASSES).to_numpy()
    metrics = {
        "proteins": int(len(names)), "communities": int(adata.obs["leiden"].nunique()), "n_neighbors": k,
        "resolution": resolution,
        # How well the unsupervised communities recover the annotated families (1 = the same partition).
        "adjusted_rand_family": (float(adjusted_rand_score(adata.obs["family"][annotated], adata.obs["leiden"][
            annotated])) if annotated.sum() >= 2 else None),
    }
    plot_protein_atlas(adata, Path(out) / "proteins_atlas.png", svg=svg)
    plot_dendrogram(adata, Path(out) / "proteins_dendrogram.png")
    return metrics, adata


def _named(adata) -> np.ndarray:
    """Mask of the proteins whose names are written on the atlas."""
    if adata.n_obs <= MAX_NAMES:
        return np.ones(adata.n_obs, bool)
    top = np.argsort(-adata.obs["crops"].to_numpy(), kind="stable")[:MAX_NAMES]
    return np.isin(np.arange(adata.n_obs), top)


def plot_protein_atlas(adata, path: Path, svg: bool = False) -> list[Path]:
    """Two panels of the protein UMAP: by family (with protein names) and by Leiden community."""
    xy = adata.obsm["X_umap"]
    fig = Figure(figsize=(14, 6.5))
    for ax, column in zip(fig.subplots(1, 2), ("family", "leiden")):
        values = adata.obs[column].astype(str).to_numpy()
        palette = categorical_palette(values, grey=NON_CLASSES if column == "family" else ())
        for value in sorted(set(values), key=lambda v: (v not in NON_CLASSES, v)):
            sel = values == value
            label = (value or "unannotated") if column == "family" else f"community {value}"
            ax.scatter(xy[sel, 0], xy[sel, 1], s=28, color=palette[value], label=f"{label} ({sel.sum()})",
                       edgecolors="white", linewidths=0.4)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False, markerscale=0.8,
                  ncol=1 + len(set(values)) // 25)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_xlabel("UMAP 1", fontsize=8), ax.set_ylabel("UMAP 2", fontsize=8)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    ax_family, ax_leiden = fig.axes[:2]
    named = _named(adata)
    for (x, y), name in zip(xy[named], adata.obs_names[named]):
        ax_family.annotate(name, (x, y), fontsize=5 if adata.n_obs > 60 else 7, xytext=(2, 2),
                           textcoords="offset points", color="0.2")
    shown = "" if named.all() else f", names of the {named.sum()} most imaged"
    ax_family.set_title(f"{adata.n_obs} proteins (mean embedding), by family{shown}", fontsize=10)
    ax_leiden.set_title(f"Leiden communities of the protein neighbour graph ({adata.obs['leiden'].nunique()})",
                        fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, svg=svg)


def plot_dendrogram(adata, path: Path) -> list[Path]:
    """The proteins' dendrogram (uns['dendrogram_protein']), leaves named and coloured by family."""
    from scipy.cluster.hierarchy import dendrogram

    linkage = adata.uns["dendrogram_protein"]["linkage"]
    families = adata.obs["family"].astype(str).to_numpy()
    palette = categorical_palette(families, grey=NON_CLASSES)
    height = float(np.clip(0.14 * adata.n_obs, 3.0, 80.0))
    fig = Figure(figsize=(7, height))
    ax = fig.subplots()
    dendrogram(linkage, orientation="left", labels=list(adata.obs_names), ax=ax, color_threshold=0,
                      above_threshold_color="0.4", leaf_font_size=6 if adata.n_obs > 60 else 8)
    family_of = dict(zip(adata.obs_names, families))
    for label in ax.get_ymajorticklabels():
        colour = palette[family_of[label.get_text()]]
        label.set_color("0.5" if colour == GREY else colour)
    ax.set_xlabel("1 - Pearson correlation of mean embeddings (complete linkage)", fontsize=8)
    ax.set_title(f"Dendrogram of {adata.n_obs} proteins (labels coloured by family)", fontsize=10)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return save_figure(fig, path, svg=False, dpi=120)
