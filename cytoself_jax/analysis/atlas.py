"""The protein localization atlas: UMAP of the (flattened global) embeddings and its scatter pictures."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from tqdm.auto import tqdm

from cytoself_jax.analysis.colours import UNANNOTATED, category_colours, family_colours, family_label, rgb
from cytoself_jax.analysis.common import as_labels, as_matrix, fail
from cytoself_jax.figures import GREY, categorical_palette, save_figure

UMAP_PLACE_CHUNK = 20_000  # crops placed on a fitted UMAP per transform call


def fit_umap(embeddings, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
             metric: str = "euclidean") -> tuple[Any, np.ndarray]:
    """2-D UMAP of embeddings (N, ...) flattened per row; umap-learn defaults (the paper's). Returns the fitted
    umap.UMAP (for place_on_umap) and its (N, 2) float32 coordinates. A fixed seed makes it reproducible
    (umap-learn then runs single-threaded), except on rows with exact duplicates (umap-learn issue #1277: the same
    seed then gives another map in another process)."""
    x = as_matrix(embeddings, "compute_umap", "embeddings", flatten=True, min_rows=3)
    if not 2 <= n_neighbors < len(x):
        raise fail("compute_umap", "n_neighbors", f"expected 2 <= n_neighbors < {len(x)} (points), got {n_neighbors}")
    import umap  # slow import (numba); only paid when a UMAP is computed

    from cytoself_jax.compile_cache import enable_umap_compilation_cache

    enable_umap_compilation_cache()  # the first UMAP on a machine compiles umap's numba functions, later ones load them

    reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, metric=metric, random_state=seed,
                        n_jobs=1)  # a seed forces one thread anyway; saying so avoids umap's warning
    return reducer, reducer.fit_transform(x).astype(np.float32)


def fit_umap_of_seed(embeddings: np.ndarray, seed: int, kwargs: dict[str, Any]) -> tuple[None, np.ndarray]:
    """(None, fit_umap's coordinates) for worker processes (context.umaps): the fitted model stays there."""
    return None, fit_umap(embeddings, seed=seed, **kwargs)[1]


def compute_umap(embeddings, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
                 metric: str = "euclidean") -> np.ndarray:
    """(N, 2) float32: fit_umap's coordinates."""
    return fit_umap(embeddings, seed, n_neighbors, min_dist, metric)[1]


def place_on_umap(reducer, embeddings, chunk: int = UMAP_PLACE_CHUNK, progress: bool = False) -> np.ndarray:
    """(N, 2) float32 positions of new embeddings (N, ...) on a fitted UMAP (umap-learn's transform: each point is
    placed among its nearest fitted points, which stay where they are), in chunks of `chunk` rows for the progress
    bar and a bounded memory (placed points never move each other: only their random negative samples depend on
    the chunking)."""
    x = as_matrix(embeddings, "place_on_umap", "embeddings", flatten=True, min_rows=0)
    out = np.empty((len(x), 2), np.float32)
    for start in tqdm(range(0, len(x), chunk), desc="placing crops on the UMAP", unit="chunk", disable=not progress):
        out[start:start + chunk] = reducer.transform(x[start:start + chunk])
    return out


def _marker_size(n: int) -> float:
    # About constant ink whatever the number of points: big dots for a few hundred, specks for 100k.
    return float(np.clip(20000.0 / max(n, 1), 0.8, 12.0))


def _check_coords(coords, where: str) -> np.ndarray:
    xy = as_matrix(coords, where, "coords")
    if xy.shape[1] != 2:
        raise fail(where, "coords", f"expected 2-D coordinates (N, 2), got shape {xy.shape}")
    return xy


def _scatter_legend(ax, entries: list[tuple[str, tuple]], title: str) -> None:
    handles = [Line2D([], [], ls="", marker="o", markersize=6, color=colour, label=label) for label, colour in entries]
    ax.legend(handles=handles, title=title, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
              fontsize=7, title_fontsize=8, ncol=1 + len(handles) // 24, handletextpad=0.3, borderaxespad=0)


def _finish_axes(ax, title: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("UMAP 1", fontsize=8)
    ax.set_ylabel("UMAP 2", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _draw_families(ax, xy: np.ndarray, families: np.ndarray, palette: dict[str, str], alpha: float, title: str,
                   legend: bool = True, legend_title: str = "family (crops)") -> None:
    """One atlas scatter on ax: unannotated underneath, the largest groups first so small ones stay on top; the
    legend in legend order (colours.legend_order) with the page's and the h5ad files' colours."""
    names, counts = np.unique(families, return_counts=True)
    count = dict(zip(names, counts))
    size = _marker_size(len(xy))
    for name in sorted(names, key=lambda n: (n != UNANNOTATED, -count[n])):
        sel = families == name
        ax.scatter(xy[sel, 0], xy[sel, 1], s=size, color=palette[name], alpha=0.4 if name == UNANNOTATED else alpha,
                   linewidths=0, rasterized=True)
    if legend:
        entries = [(f"{n} ({count[n]})", rgb(palette[n])) for n in palette if n in count]
        _scatter_legend(ax, entries, legend_title)
    _finish_axes(ax, title)


def plot_atlas(coords, families, path: str | Path, title: str = "Localization atlas (UMAP)", by: str = "family",
               alpha: float = 0.5, svg: bool = True) -> list[Path]:
    """Scatter of UMAP coords (N, 2), one point per crop, coloured by localization family (N,) with the colours
    of atlas.html and the h5ad files (colours.py; unannotated crops grey, underneath), or with by='protein' by
    any other label. Legend: label (number of crops). Returns the files written."""
    xy = _check_coords(coords, "plot_atlas")
    families = as_labels(families, len(xy), "plot_atlas", "families")
    if by == "family":
        families = np.array([family_label(f) for f in families], dtype=object)
        palette = family_colours(families)
    else:
        palette = category_colours(sorted(set(families)), repeat_ok=True)
    fig = Figure(figsize=(8.5, 6.5), layout="constrained")
    _draw_families(fig.subplots(), xy, families, palette, alpha, f"{title}\n{len(xy)} crops",
                   legend_title=f"{by} (crops)")
    return save_figure(fig, path, svg=svg)


def plot_atlas_panels(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | Path,
                      alpha: float = 0.5, svg: bool = True) -> list[Path]:
    """Several atlases side by side with one shared family palette (e.g. the ablation variants).

    panels: (title, coords (N, 2), families (N,)) each. The legend is drawn once, beside the last panel."""
    if not panels:
        raise fail("plot_atlas_panels", "panels", "expected at least one (title, coords, families) panel")
    checked = []
    for title, coords, families in panels:
        xy = _check_coords(coords, "plot_atlas_panels")
        labels = as_labels(families, len(xy), "plot_atlas_panels", "families")
        checked.append((title, xy, np.array([family_label(f) for f in labels], dtype=object)))
    palette = family_colours(np.concatenate([f for _, _, f in checked]))
    fig = Figure(figsize=(3.6 * len(checked) + 1.8, 4.0), layout="constrained")
    axes = fig.subplots(1, len(checked), squeeze=False)[0]
    for i, (ax, (title, xy, families)) in enumerate(zip(axes, checked)):
        _draw_families(ax, xy, families, palette, alpha, title, legend=i == len(checked) - 1)
    return save_figure(fig, path, svg=svg)


def plot_family_proteins(coords, families, proteins, family: str, path: str | Path, max_proteins: int = 20,
                         zoom: bool = True, alpha: float = 0.7, svg: bool = True) -> list[Path]:
    """The atlas with one family's crops coloured by protein (its `max_proteins` largest, the most distinct
    colours to the largest; the rest of the family in dark grey) over all other crops in light grey. With zoom,
    the view is the family's extent (0.5-99.5th percentiles, padded). Returns the files written."""
    where = "plot_family_proteins"
    xy = _check_coords(coords, where)
    families = as_labels(families, len(xy), where, "families")
    proteins = as_labels(proteins, len(xy), where, "proteins")
    in_family = families == family
    if not np.any(in_family):
        raise fail(where, "family", f"no crop has family {family!r}; families are {sorted(set(families))}")
    names, counts = np.unique(proteins[in_family], return_counts=True)
    shown = [str(n) for n in names[np.argsort(-counts, kind="stable")][:max_proteins]]
    palette = categorical_palette(shown, sort=False)
    lo, hi = np.percentile(xy[in_family], [0.5, 99.5], axis=0)
    pad = 0.15 * np.maximum(hi - lo, 1e-6)
    view = np.all((xy >= lo - pad) & (xy <= hi + pad), axis=1) if zoom else np.ones(len(xy), bool)
    size = _marker_size(int(view.sum()))
    fig = Figure(figsize=(8.5, 6.5), layout="constrained")
    ax = fig.subplots()
    ax.scatter(xy[~in_family, 0], xy[~in_family, 1], s=size, color=GREY, alpha=0.3, linewidths=0, rasterized=True)
    rest = in_family & ~np.isin(proteins, shown)
    ax.scatter(xy[rest, 0], xy[rest, 1], s=size * 1.5, color="0.45", alpha=alpha, linewidths=0, rasterized=True)
    for name in shown:
        sel = in_family & (proteins == name)
        ax.scatter(xy[sel, 0], xy[sel, 1], s=size * 1.5, color=palette[name], alpha=alpha, linewidths=0,
                   rasterized=True)
    legend = [(f"{n} ({np.sum(in_family & (proteins == n))})", palette[n]) for n in shown]
    if np.any(rest):
        legend.append((f"{len(names) - len(shown)} more proteins ({np.sum(rest)})", (0.45, 0.45, 0.45, 1.0)))
    legend.append((f"other families ({np.sum(~in_family)})", GREY))
    _scatter_legend(ax, legend, f"{family}: protein (crops)")
    _finish_axes(ax, f"{family}: {len(names)} proteins, {np.sum(in_family)} crops" + (" (zoomed)" if zoom else ""))
    if zoom:
        # equal aspect by changing the data limits would undo the zoom: change the box instead
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    return save_figure(fig, path, svg=svg)
