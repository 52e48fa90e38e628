"""atlas.html: the interactive atlas (hover thumbnails, search, legend toggles), one self-contained page."""
from __future__ import annotations

from cytoself_jax.analysis import atlas_html
from cytoself_jax.analysis.context import EvalContext, Evaluation


def evaluate(ctx: EvalContext) -> Evaluation:
    o = ctx.options
    protein_channel = ctx.store.channel_indices(("protein",))[0]
    thumbs = atlas_html.thumbnail_rows(ctx.proteins, o.atlas_thumbnails, o.seed)
    thumbnails = {int(i): atlas_html.thumbnail_png(ctx.store.images[int(ctx.rows[i])][..., protein_channel])
                  for i in thumbs}
    summary = atlas_html.write_atlas_html(ctx.out / "atlas.html", ctx.atlas_xy(), ctx.table, thumbnails,
                                         title=f"Localization atlas, {o.split} split")
    return Evaluation(details={"atlas_html": summary})
