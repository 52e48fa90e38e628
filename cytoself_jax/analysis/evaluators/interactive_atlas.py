"""atlas.html: the interactive atlas (composite hover thumbnails, search with nearest proteins, colour-by, lasso,
provenance; above --atlas_max_points crops a subsample as points over a density image of all), one self-contained
page that reaches no network."""
from __future__ import annotations

import numpy as np
import pandas as pd

from cytoself_jax.analysis import atlas_html, neighbours, thumbnails
from cytoself_jax.analysis.atlas_provenance import atlas_provenance
from cytoself_jax.analysis.context import EvalContext, Evaluation
from cytoself_jax.analysis.evaluators.embeddings_h5ad import crop_splits


def _leiden_of_crops(ctx: EvalContext) -> np.ndarray | None:
    """Each crop's protein's Leiden community from proteins.h5ad (written by the protein_atlas evaluator, which
    runs first); None when that evaluator did not write it."""
    path = ctx.out / "proteins.h5ad"
    if not path.is_file():
        return None
    import anndata

    community = anndata.read_h5ad(path).obs["leiden"].astype(str)
    return np.array([community.get(p, "") for p in ctx.proteins], dtype=object)


def _nearest(ctx: EvalContext) -> dict[str, list[tuple[str, float]]]:
    """protein -> its nearest proteins (cosine similarity of mean global embeddings, as neighbours.csv)."""
    names, profiles = neighbours.protein_profiles(ctx.outputs.global_vectors, ctx.proteins)
    if len(names) < 2:
        return {}
    near = neighbours.nearest_proteins(profiles, names, n=min(ctx.options.neighbours, len(names) - 1))
    return {p: list(zip(g["neighbour"], g["similarity"])) for p, g in near.groupby("protein", sort=False)}


def evaluate(ctx: EvalContext) -> Evaluation:
    o = ctx.options
    # Thumbnailed crops are drawn points, so no more of them than atlas_max_points (but one per protein).
    rows = atlas_html.protein_subsample(ctx.proteins, min(o.atlas_thumbnails, o.atlas_max_points), o.seed)
    images = _SplitImages(ctx.store.images, ctx.rows)
    thumbs, note = thumbnails.crop_thumbnails(images, rows, ctx.proteins, ctx.store.channels,
                                              contrast=o.atlas_contrast, pixel_size_um=o.pixel_size_um, seed=o.seed)
    table = pd.DataFrame({"protein": ctx.proteins, "family": ctx.families, "fov": ctx.table["fov"].to_numpy(),
                          "split": crop_splits(ctx)})
    leiden = _leiden_of_crops(ctx)
    if leiden is not None:
        table.insert(2, "leiden", leiden)
    summary = atlas_html.write_atlas_html(ctx.out / "atlas.html", ctx.atlas_xy(), table, thumbs,
                                          title=f"Localization atlas, {o.split} split", neighbours=_nearest(ctx),
                                          provenance=atlas_provenance(ctx), thumbnail_note=note,
                                          max_points=o.atlas_max_points, seed=o.seed)
    return Evaluation(details={"atlas_html": summary})


class _SplitImages:
    """The evaluated split's crops as one array-like (N, H, W, C) over the store's memory map: indexing reads only
    the crops asked for."""

    def __init__(self, images, rows: np.ndarray):
        self.images, self.rows = images, np.asarray(rows)
        self.shape = (len(self.rows), *images.shape[1:])

    def __getitem__(self, index):
        return np.asarray(self.images[self.rows[index]])
