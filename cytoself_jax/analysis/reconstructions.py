"""The reconstruction panel of eval: input crops beside their reconstructions, channel by channel."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from cytoself_jax.analysis.common import fail
from cytoself_jax.figures import save_figure


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
