"""Figure helpers shared by every picture of the package (training curves, eval pictures): a fixed categorical
palette and saving PNG (and SVG). Figures are built with matplotlib.figure.Figure (no pyplot, so no global backend
state or GUI); saving PNG goes through the Agg canvas.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import matplotlib
from matplotlib.figure import Figure

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
