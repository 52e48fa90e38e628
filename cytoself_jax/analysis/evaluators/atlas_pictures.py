"""The atlas pictures: atlas.png (the split on the atlas map, coloured by family, or by protein when nothing is
annotated) and atlas_<family>.png (one family's proteins)."""
from __future__ import annotations

from cytoself_jax.analysis import atlas
from cytoself_jax.analysis.context import EvalContext, Evaluation, has_classes, largest
from cytoself_jax.analysis.common import safe_name


def evaluate(ctx: EvalContext) -> Evaluation:
    o, xy = ctx.options, ctx.atlas_xy()
    title = f"Localization atlas, {o.split} split (UMAP seed {ctx.atlas_seed})"
    if has_classes(ctx.families, 1):
        atlas.plot_atlas(xy, ctx.families, ctx.out / "atlas.png", title=title, svg=o.svg)
    else:
        atlas.plot_atlas(xy, ctx.proteins, ctx.out / "atlas.png", title=title + ", by protein", by="protein",
                         svg=o.svg)
    family = o.family or next(iter(largest(ctx.families)), "")
    if family:
        atlas.plot_family_proteins(xy, ctx.families, ctx.proteins, family,
                                   ctx.out / f"atlas_{safe_name(family)}.png", svg=o.svg)
    return Evaluation()
