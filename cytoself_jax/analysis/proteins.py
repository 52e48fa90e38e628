"""The protein-level atlas: one point per protein (its mean embedding), as the paper's OpenCell map is read.

scanpy does the work: a cosine neighbour graph of the protein profiles, its UMAP, Leiden communities of the
graph, and a dendrogram of the proteins (hierarchical clustering of the profiles' correlations). Everything
lands in proteins.h5ad beside the per-crop embeddings.h5ad, with two pictures: proteins_atlas.png (UMAP by family
with names, and by community) and proteins_dendrogram.png.

proteins.h5ad, as scanpy reads it: `obsm['X_cytoself']` the profiles (`X` the same array, stored once);
`obsm['X_pca']` their PCA (min(50, proteins - 1) components), so scanpy's defaults work on a few dozen proteins;
recommended: `sc.pp.neighbors(adata, use_rep='X_cytoself', metric='cosine')` (what `uns['neighbors']` holds).
obs: protein (scanpy's dendrogram groups by it), family (legend order, 'unannotated' where none), crops, leiden;
`uns`: family_colors and leiden_colors (the colours of every atlas picture and page), provenance, umap params,
dendrogram_protein.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cytoself_jax.compile_cache import enable_umap_compilation_cache
from cytoself_jax.analysis.colours import UNANNOTATED, category_colours
from cytoself_jax.analysis.h5ad import family_obs, link_embedding
from cytoself_jax.analysis.neighbours import protein_families, protein_profiles
from cytoself_jax.analysis.scores import NON_CLASSES
from cytoself_jax.figures import save_figure

MIN_PROTEINS = 4  # fewer proteins give no meaningful neighbour graph, UMAP or communities
MAX_NAMES = 150  # name labels on the atlas: all proteins up to this many, else the most imaged ones


def protein_atlas(out: Path, embeddings: np.ndarray, table: pd.DataFrame, n_neighbors: int = 15,
                  resolution: float = 1.0, seed: int = 0, svg: bool = False, provenance: dict | None = None):
    """The protein atlas evaluator. embeddings (N, ...) of N crops with table columns protein, family;
    provenance: uns['provenance'] (atlas_provenance).

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
    # The families' categories and colours from every crop's family, so they match atlas.png and atlas.html.
    family = family_obs(np.array([family_of[n] for n in names], dtype=object),
                        every=table["family"].to_numpy())
    x = profiles.astype(np.float32)
    adata = anndata.AnnData(
        X=x, obsm={"X_cytoself": x},
        obs=pd.DataFrame({"protein": pd.Categorical(names), "family": family[0],
                          "crops": [int(counts[n]) for n in names]}, index=pd.Index(names, name="protein_name")),
    )
    k = int(min(n_neighbors, len(names) - 1))
    enable_umap_compilation_cache()  # scanpy's neighbours and UMAP run umap-learn's numba functions
    sc.pp.neighbors(adata, n_neighbors=k, use_rep="X_cytoself", metric="cosine", random_state=seed)
    sc.tl.umap(adata, random_state=seed)
    sc.tl.leiden(adata, resolution=resolution, random_state=seed, flavor="igraph", n_iterations=2, directed=False,
                 key_added="leiden")
    sc.tl.dendrogram(adata, groupby="protein", use_rep="X_cytoself")
    # An exact SVD (a few thousand proteins at most): ARPACK fails outright on profiles without variance (a model
    # at initialisation), where the exact one returns zero components.
    sc.tl.pca(adata, n_comps=int(min(50, adata.n_obs - 1, adata.n_vars - 1)), svd_solver="full", random_state=seed)
    communities = sorted(adata.obs["leiden"].cat.categories, key=int)
    adata.obs["leiden"] = adata.obs["leiden"].cat.reorder_categories(communities)
    adata.uns.update({
        "profile": "mean global embedding of the protein's crops",
        "family_colors": family[1], "leiden_colors": list(category_colours(communities, repeat_ok=True).values()),
        "provenance": dict(provenance or {}),
        "recommended_neighbors": "sc.pp.neighbors(adata, use_rep='X_cytoself', metric='cosine')",
        "var_description": "one dimension of the mean global embedding each (as embeddings.h5ad's var)",
    })
    adata.uns["umap"]["params"].update({"random_state": seed, "use_rep": "X_cytoself", "metric": "cosine",
                                        "n_neighbors": k})
    del adata.obsm["X_cytoself"]  # written once, as a link to X
    adata.write_h5ad(Path(out) / "proteins.h5ad")
    link_embedding(Path(out) / "proteins.h5ad")
    adata.obsm["X_cytoself"] = x

    annotated = ~adata.obs["family"].isin([*NON_CLASSES, UNANNOTATED]).to_numpy()
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
        palette = _colours(adata, column)
        for value in adata.obs[column].cat.categories:  # legend order; unannotated drawn grey
            sel = values == value
            if not sel.any():
                continue
            label = value if column == "family" else f"community {value}"
            ax.scatter(xy[sel, 0], xy[sel, 1], s=28, color=palette[value], label=f"{label} ({sel.sum()})",
                       edgecolors="white", linewidths=0.4, zorder=1 if value == UNANNOTATED else 2)
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


def _colours(adata, column: str) -> dict[str, str]:
    """category -> colour of obs[column] from uns['<column>_colors'] (scanpy's convention)."""
    return dict(zip(adata.obs[column].cat.categories, adata.uns[f"{column}_colors"]))


def plot_dendrogram(adata, path: Path) -> list[Path]:
    """The proteins' dendrogram (uns['dendrogram_protein']), leaves named and coloured by family."""
    from scipy.cluster.hierarchy import dendrogram

    linkage = adata.uns["dendrogram_protein"]["linkage"]
    families = adata.obs["family"].astype(str).to_numpy()
    palette = _colours(adata, "family")
    height = float(np.clip(0.14 * adata.n_obs, 3.0, 80.0))
    fig = Figure(figsize=(7, height))
    ax = fig.subplots()
    dendrogram(linkage, orientation="left", labels=list(adata.obs_names), ax=ax, color_threshold=0,
                      above_threshold_color="0.4", leaf_font_size=6 if adata.n_obs > 60 else 8)
    family_of = dict(zip(adata.obs_names, families))
    for label in ax.get_ymajorticklabels():
        family = family_of[label.get_text()]
        label.set_color("0.5" if family == UNANNOTATED else palette[family])
    ax.set_xlabel("1 - Pearson correlation of mean embeddings (complete linkage)", fontsize=8)
    ax.set_title(f"Dendrogram of {adata.n_obs} proteins (labels coloured by family)", fontsize=10)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return save_figure(fig, path, svg=False, dpi=120)
