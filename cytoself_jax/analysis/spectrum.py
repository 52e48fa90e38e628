"""Feature spectra (paper, Methods "Feature spectrum" and Supp. Fig. 9): per-image histograms of the local code
indices, their per-protein means, the Pearson correlation between codes, a hierarchical clustering that orders
the codes and cuts them into ~11 feature clusters, and the pictures of both."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.cluster.hierarchy as sch
from matplotlib.figure import Figure
from scipy.spatial.distance import pdist

from cytoself_jax.analysis.common import as_labels, as_matrix, check_choice, fail, group_means
from cytoself_jax.figures import save_figure


def protein_spectra(histograms, proteins) -> tuple[np.ndarray, np.ndarray]:
    """Mean code histogram per protein: histograms (N, K), proteins (N,) -> (names (P,) sorted, spectra (P, K)
    float64 in counts per image). Per-image histograms of the local code indices come from
    cytoself_jax.models.quantizer.code_histogram (625 counts per image for the paper model)."""
    hist = as_matrix(histograms, "protein_spectra", "histograms")
    return group_means(hist, as_labels(proteins, len(hist), "protein_spectra", "proteins"))


def code_correlation(spectra) -> tuple[np.ndarray, np.ndarray]:
    """Pearson correlation between the code columns of spectra (P, K) -> (corr (K, K) float64, used (K,) bool).

    A code whose column is constant over proteins (typically never used) has no defined correlation: its row
    and column are 0, its diagonal too, and used[k] is False (the PyTorch reference also maps these NaNs to 0).
    """
    s = as_matrix(spectra, "code_correlation", "spectra", min_rows=2)
    centred = s - s.mean(axis=0)
    norms = np.linalg.norm(centred, axis=0)
    used = norms > 1e-12 * max(1.0, float(np.abs(s).max()))
    z = np.where(used, centred / np.where(used, norms, 1.0), 0.0)
    corr = np.clip(z.T @ z, -1.0, 1.0)
    corr[np.diag_indices_from(corr)] = used.astype(np.float64)
    return corr, used


@dataclass(frozen=True)
class CodeClusters:
    """Result of cluster_codes. order: (K,) code indices, clustered used codes first (in dendrogram leaf
    order), then unused codes by index. labels: (K,) feature cluster per code, 1..n numbered left to right
    along `order`, 0 for unused codes. linkage: scipy linkage matrix of the used codes (in the index space of
    np.flatnonzero(used))."""

    order: np.ndarray
    labels: np.ndarray
    linkage: np.ndarray
    used: np.ndarray

    @property
    def num_clusters(self) -> int:
        return int(self.labels.max())

    def boundaries(self) -> np.ndarray:
        """Positions along `order` where a new cluster starts (0 first), for the used codes."""
        ordered = self.labels[self.order[: int(self.used.sum())]]
        return np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])


def cluster_codes(corr, used, n_clusters: int = 11, method: str = "average") -> CodeClusters:
    """Hierarchical clustering of the used codes of corr (K, K), cut at the top of the tree into n_clusters.

    Following the figures of the paper (made with seaborn.clustermap defaults in the reference code), each code is
    described by its row of correlations with all used codes and codes are compared by the Euclidean distance
    between these rows: two codes are close when they correlate alike with everything else, which is steadier
    than their single pairwise r. Average linkage (UPGMA) is the default because it is that reference's choice
    and, unlike Ward, does not push towards equal-sized clusters, so a small distinct feature group (e.g. the
    nucleolar cluster v of Fig. 4) can stay on its own. Any scipy linkage method may be passed.
    """
    where = "cluster_codes"
    c = np.asarray(corr, dtype=np.float64)
    used = np.asarray(used, dtype=bool)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or used.shape != (c.shape[0],):
        raise fail(where, "corr", f"expected a square (K, K) matrix and used (K,), got {c.shape} and {used.shape}")
    check_choice(method, ("average", "complete", "single", "weighted", "ward", "centroid", "median"), where, "method")
    kept = np.flatnonzero(used)
    if len(kept) < 2:
        raise fail(where, "used", f"expected at least 2 used codes to cluster, found {len(kept)}")
    if not 1 <= n_clusters <= len(kept):
        raise fail(where, "n_clusters", f"expected 1 <= n_clusters <= {len(kept)} (used codes), got {n_clusters}")
    link = sch.linkage(pdist(c[np.ix_(kept, kept)]), method=method)
    leaves = sch.leaves_list(link)
    raw = sch.fcluster(link, n_clusters, criterion="maxclust")
    # Renumber clusters 1..n by first appearance along the leaves, so cluster i is the i-th band from the left.
    first_seen = {}
    for cluster in raw[leaves]:
        first_seen.setdefault(cluster, len(first_seen) + 1)
    labels = np.zeros(len(used), dtype=np.int32)
    labels[kept] = [first_seen[r] for r in raw]
    order = np.concatenate([kept[leaves], np.flatnonzero(~used)])
    return CodeClusters(order=order, labels=labels, linkage=link, used=used)


def roman(number: int) -> str:
    """1 -> 'i', 11 -> 'xi': the paper's names of the feature clusters."""
    out = ""
    for value, digits in ((1000, "m"), (900, "cm"), (500, "d"), (400, "cd"), (100, "c"), (90, "xc"), (50, "l"),
                          (40, "xl"), (10, "x"), (9, "ix"), (5, "v"), (4, "iv"), (1, "i")):
        count, number = divmod(number, value)
        out += digits * count
    return out


def _band_colours(n: int) -> list[tuple]:
    # Two alternating pale tones: neighbouring clusters stay distinguishable for any number of clusters.
    return [(0.92, 0.94, 0.98, 1.0) if i % 2 == 0 else (0.98, 0.95, 0.90, 1.0) for i in range(n)]


def plot_code_correlation(corr, clusters: CodeClusters, path: str | Path, svg: bool = False) -> list[Path]:
    """Heatmap of the code-code Pearson correlation of the used codes in clustered order, cluster boundaries
    drawn as lines and clusters named i, ii, ... below. SVG off by default (a K x K image)."""
    n_used = int(clusters.used.sum())
    ordered = clusters.order[:n_used]
    c = np.asarray(corr)[np.ix_(ordered, ordered)]
    starts = clusters.boundaries()
    ends = np.r_[starts[1:], n_used]
    fig = Figure(figsize=(7.5, 7.0), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(c, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest", rasterized=True)
    for s in starts[1:]:
        ax.axhline(s - 0.5, color="k", lw=0.6)
        ax.axvline(s - 0.5, color="k", lw=0.6)
    ax.set_xticks((starts + ends - 1) / 2, [roman(i + 1) for i in range(len(starts))], fontsize=8)
    ax.set_yticks([])
    ax.tick_params(axis="x", length=0)
    ax.set_xlabel(f"codes in clustered order ({n_used} used of {len(clusters.used)}), feature clusters", fontsize=8)
    ax.set_title("Pearson correlation between code profiles over proteins", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.6, label="Pearson r")
    return save_figure(fig, path, svg=svg)


def plot_spectra(spectra, names: Sequence[str], clusters: CodeClusters, path: str | Path,
                 unit: str = "mean count per image", svg: bool = True) -> list[Path]:
    """Feature spectra of one or more proteins (or family means): spectra (M, K) or (K,) with M names, the
    horizontal axis in clustered code order (used codes only) over alternating bands named by feature cluster."""
    s = as_matrix(np.atleast_2d(spectra), "plot_spectra", "spectra")
    if s.shape[1] != len(clusters.used) or len(names) != len(s):
        raise fail("plot_spectra", "spectra", f"expected ({len(names)}, {len(clusters.used)}) for {len(names)} "
                   f"names and {len(clusters.used)} codes, got {s.shape}")
    n_used = int(clusters.used.sum())
    ordered = clusters.order[:n_used]
    starts = clusters.boundaries()
    ends = np.r_[starts[1:], n_used]
    fig = Figure(figsize=(10, 1.5 + 1.6 * len(s)), layout="constrained")
    axes = fig.subplots(len(s), 1, sharex=True, squeeze=False)[:, 0]
    for ax, row, name in zip(axes, s, names):
        for i, (lo, hi, colour) in enumerate(zip(starts, ends, _band_colours(len(starts)))):
            ax.axvspan(lo - 0.5, hi - 0.5, color=colour, lw=0, zorder=0)
        ax.fill_between(np.arange(n_used), row[ordered], step="mid", color="tab:blue", lw=0.6, zorder=2)
        ax.set_xlim(-0.5, n_used - 0.5)
        ax.set_ylim(0, max(float(row[ordered].max()), 1e-12) * 1.12)
        ax.set_ylabel(unit, fontsize=7)
        ax.tick_params(labelsize=7)
        ax.set_title(str(name), fontsize=9, loc="left")
        top = ax.secondary_xaxis("top")
        top.set_xticks((starts + ends - 1) / 2, [roman(i + 1) for i in range(len(starts))], fontsize=7)
        top.tick_params(length=0)
    axes[-1].set_xlabel("codes in clustered order", fontsize=8)
    return save_figure(fig, path, svg=svg)
