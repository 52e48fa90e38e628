"""reconstructions.png: example crops of distinct proteins (families taken in turn) beside their reconstructions."""
from __future__ import annotations

import numpy as np

from cytoself_jax.analysis.context import EvalContext, Evaluation, largest
from cytoself_jax.analysis.reconstructions import plot_reconstructions
from cytoself_jax.data.pipeline import StoreSource

EXAMPLES = 8


def example_rows(proteins: np.ndarray, families: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Positions of up to `count` example crops of distinct proteins, families taken in turn (largest first)."""
    rng = np.random.default_rng(seed)
    groups = [rng.permutation(sorted(set(proteins[families == f]))) for f in largest(families, exclude=())]
    picks: list[int] = []
    for turn in range(max((len(g) for g in groups), default=0)):
        for g in groups:
            if turn < len(g) and len(picks) < count:
                picks.append(int(np.flatnonzero(proteins == g[turn])[0]))
    return np.asarray(picks, dtype=np.int64)


def evaluate(ctx: EvalContext) -> Evaluation:
    source = StoreSource(ctx.store, ctx.rows, ctx.channels, ctx.fit)
    images = np.stack([source[int(i)]["image"] for i in ctx.examples])
    proteins, families = ctx.proteins, ctx.families
    plot_reconstructions(images, ctx.outputs.reconstructions, ctx.out / "reconstructions.png", channels=ctx.channels,
                         row_titles=[f"{proteins[i]}\n{families[i]}" for i in ctx.examples], svg=False)
    return Evaluation()
