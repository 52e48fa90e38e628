"""Training curves of a run: its metrics.jsonl as a per-epoch table and a picture (curves.png), drawn by training at
the end of a run and by eval beside its scores."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cytoself_jax.figures import save_figure
from cytoself_jax.jsonio import JsonFileError, read_json_lines


class CurvesError(ValueError):
    """A metrics file that cannot be drawn; one line naming it."""


def _fail(where: str, field: str, what: str) -> CurvesError:
    return CurvesError(f"{where}: {field}: {what}")


_TERM_ORDER = ("loss", "reconstruction", "local_prediction", "vq_local", "vq_global",
               "classification_local", "classification_global")
_NOT_TERMS = {"kind", "epoch", "step", "finite", "images_per_s", "best_epoch", "learning_rate"}


def read_metrics(metrics: str | Path | Iterable[Mapping]) -> list[dict]:
    """Records of a metrics.jsonl (path) or an iterable of dicts, each with 'kind', 'epoch' and 'step'."""
    if isinstance(metrics, (str, Path)):
        path = Path(metrics)
        if not path.is_file():
            raise _fail("read_metrics", str(path), "expected a metrics.jsonl file, found none")
        try:
            records = read_json_lines(path)  # a partial last line (a run stopped mid-append) is dropped
        except JsonFileError as err:
            raise _fail("read_metrics", str(path), str(err).removeprefix(f"{path}: ")) from None
    else:
        records = [dict(r) for r in metrics]
    for r in records:
        if not {"kind", "epoch"} <= set(r):
            raise _fail("read_metrics", "record", f"expected keys 'kind' and 'epoch', got {sorted(r)}")
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
        raise _fail("training_curves_table", "metrics", "expected 'step' or 'epoch' records, found none")
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
