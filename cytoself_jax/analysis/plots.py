"""Shared picture helpers (palette, saving) and the run pictures: reconstruction panel and training curves.

Figures are built with matplotlib.figure.Figure (no pyplot, so no global backend state or GUI); saving PNG
goes through the Agg canvas. Dense artists (scatter, images) are rasterized so the SVG copies stay small.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cytoself_jax.analysis.common import fail
from cytoself_jax.jsonio import JsonFileError, read_json_lines

GREY = (0.78, 0.78, 0.78, 1.0)
# Distinct colours first (tab10, then the light tab20 partners, then tab20b/c): a fixed order, so a family keeps
# its colour between runs as long as the set of families is the same.
_PALETTE = (
    [matplotlib.colormaps["tab10"](i) for i in range(10)]
    + [matplotlib.colormaps["tab20"](2 * i + 1) for i in range(10)]
    + [matplotlib.colormaps["tab20b"](i) for i in range(20)]
    + [matplotlib.colormaps["tab20c"](i) for i in range(20)]
)


def categorical_palette(names: Iterable[str], grey: Sequence[str] = (), sort: bool = True) -> dict[str, tuple]:
    """Fixed colour per name: names in `grey` are light grey, the others take palette colours in sorted order
    (or in the given order with sort=False, e.g. largest first; cycling after 60)."""
    names = list(dict.fromkeys(names))
    coloured = [n for n in (sorted(names) if sort else names) if n not in set(grey)]
    palette = {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(coloured)}
    palette.update({name: GREY for name in grey})
    return palette


def save_figure(fig: Figure, path: str | Path, svg: bool = True, dpi: int = 200) -> list[Path]:
    """Write fig to path (.png added if missing) and, with svg=True, a .svg beside it. Returns the files."""
    png = Path(path).with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=dpi, bbox_inches="tight")
    written = [png]
    if svg:
        fig.savefig(png.with_suffix(".svg"), dpi=dpi, bbox_inches="tight")
        written.append(png.with_suffix(".svg"))
    return written


def plot_reconstructions(
    inputs, reconstructions, path: str | Path, channels: Sequence[str] = ("protein",),
    row_titles: Sequence[str] | None = None, max_rows: int = 8, svg: bool = True,
) -> list[Path]:
    """Rows = examples, columns = input and reconstruction of each channel, one colour scale per channel.

    inputs, reconstructions: (B, H, W, C) as fed to / returned by the model (normalized). Channel `distance` is
    shown with a diverging map symmetric around 0, others in grey. Each channel's limits come from its inputs,
    so a reconstruction that over- or undershoots saturates instead of being silently rescaled.
    """
    x, y = np.asarray(inputs, np.float32), np.asarray(reconstructions, np.float32)
    if x.ndim != 4 or x.shape != y.shape:
        raise fail("plot_reconstructions", "reconstructions",
                   f"expected inputs and reconstructions of the same shape (B, H, W, C), got {x.shape} and {y.shape}")
    if len(channels) != x.shape[-1]:
        raise fail("plot_reconstructions", "channels", f"expected {x.shape[-1]} names, got {list(channels)}")
    rows = min(len(x), max_rows)
    fig = Figure(figsize=(1.6 * 2 * len(channels), 1.6 * rows + 0.9), layout="constrained")
    axes = fig.subplots(rows, 2 * len(channels), squeeze=False)
    for c, name in enumerate(channels):
        if name == "distance":
            bound = float(np.abs(x[:rows, ..., c]).max()) or 1.0
            cmap, lims = "RdBu_r", (-bound, bound)
        else:
            lo, hi = float(x[:rows, ..., c].min()), float(x[:rows, ..., c].max())
            cmap, lims = "gray", (lo, hi if hi > lo else lo + 1.0)
        for r in range(rows):
            for j, (image, kind) in enumerate(((x, "input"), (y, "reconstruction"))):
                ax = axes[r, 2 * c + j]
                shown = ax.imshow(image[r, ..., c], cmap=cmap, vmin=lims[0], vmax=lims[1], interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"{name}\n{kind}", fontsize=8)
        fig.colorbar(shown, ax=axes[:, 2 * c: 2 * c + 2], orientation="horizontal", shrink=0.8, aspect=25)
    if row_titles is not None:
        for r in range(rows):
            axes[r, 0].set_ylabel(str(row_titles[r]), fontsize=7)
    return save_figure(fig, path, svg=svg)


# Order of the panels of the training curves; names not listed follow alphabetically.
_TERM_ORDER = ("loss", "reconstruction", "local_prediction", "vq_local", "vq_global",
               "classification_local", "classification_global")
_NOT_TERMS = {"kind", "epoch", "step", "finite", "images_per_s", "best_epoch", "learning_rate"}


def read_metrics(metrics: str | Path | Iterable[Mapping]) -> list[dict]:
    """Records of a metrics.jsonl (path) or an iterable of dicts, each with 'kind', 'epoch' and 'step'."""
    if isinstance(metrics, (str, Path)):
        path = Path(metrics)
        if not path.is_file():
            raise fail("read_metrics", str(path), "expected a metrics.jsonl file, found none")
        try:
            records = read_json_lines(path)  # a partial last line (a run stopped mid-append) is dropped
        except JsonFileError as err:
            raise fail("read_metrics", str(path), str(err).removeprefix(f"{path}: ")) from None
    else:
        records = [dict(r) for r in metrics]
    for r in records:
        if not {"kind", "epoch"} <= set(r):
            raise fail("read_metrics", "record", f"expected keys 'kind' and 'epoch', got {sorted(r)}")
    return records


def training_curves_table(metrics: str | Path | Iterable[Mapping]) -> pd.DataFrame:
    """One row per epoch: train_<term> (mean of the logged step records of that epoch), val_<term>,
    learning_rate and best_epoch (1-based, as the training loop logs it). Index: epoch (0-based)."""
    records = read_metrics(metrics)
    steps = pd.DataFrame([r for r in records if r["kind"] == "step"])
    epochs = pd.DataFrame([r for r in records if r["kind"] == "epoch"])
    parts = []
    if len(steps):
        terms = [c for c in steps.columns if c not in _NOT_TERMS]
        parts.append(steps.groupby("epoch")[terms].mean().add_prefix("train_"))
    if len(epochs):
        keep = [c for c in epochs.columns if c.startswith("val_") or c in ("learning_rate", "best_epoch")]
        parts.append(epochs.drop_duplicates("epoch", keep="last").set_index("epoch")[keep])
    if not parts:
        raise fail("training_curves_table", "metrics", "expected 'step' or 'epoch' records, found none")
    return pd.concat(parts, axis=1).sort_index()


def plot_training_curves(metrics: str | Path | Iterable[Mapping], path: str | Path, svg: bool = True
                         ) -> tuple[pd.DataFrame, list[Path]]:
    """One panel per loss term / metric (train vs val per epoch), plus the learning rate; the best validation
    epoch is marked. Returns (the per-epoch table, the files written)."""
    table = training_curves_table(metrics)
    names = {c.split("_", 1)[1] for c in table.columns if c.startswith(("train_", "val_"))}
    names = [n for n in _TERM_ORDER if n in names] + sorted(names - set(_TERM_ORDER))
    panels = names + (["learning_rate"] if "learning_rate" in table else [])
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(3.2 * cols, 2.5 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    epoch = table.index.to_numpy() + 1  # epochs shown 1-based, as the training log prints them
    best = table["best_epoch"].dropna().iloc[-1] if "best_epoch" in table and table["best_epoch"].notna().any() else None
    for ax, name in zip(axes, panels):
        series = {"learning_rate": table[name]} if name == "learning_rate" else {
            split: table[f"{split}_{name}"] for split in ("train", "val") if f"{split}_{name}" in table}
        for label, values in series.items():
            ax.plot(epoch, values.to_numpy(dtype=float), marker="o", markersize=2.5, lw=1.2, label=label,
                    color={"train": "tab:blue", "val": "tab:orange"}.get(label, "tab:green"),
                    drawstyle="steps-mid" if label == "learning_rate" else "default")
        values = np.concatenate([v.to_numpy(dtype=float) for v in series.values()])
        values = values[np.isfinite(values)]
        if len(values) and values.min() > 0 and (name == "learning_rate" or values.max() / values.min() > 20):
            ax.set_yscale("log")
        if best is not None:
            ax.axvline(best, color="0.5", ls=":", lw=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(which="both", labelsize=7)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7, frameon=False)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if best is not None:
        fig.suptitle(f"best validation epoch: {int(best)} (dotted line)", fontsize=9)
    return table, save_figure(fig, path, svg=svg)
