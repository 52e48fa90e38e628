"""Where an atlas comes from, recorded beside it: in atlas.html's provenance block and in `uns['provenance']` of
embeddings.h5ad and proteins.h5ad (run, checkpoint and step, store, split, the map's UMAP seed and parameters,
date, code). Values are strings and numbers only, so h5ad stores them as they are."""
from __future__ import annotations

import datetime

from cytoself_jax.analysis.context import EvalContext
from cytoself_jax.provenance import source_sha256, versions


def atlas_provenance(ctx: EvalContext) -> dict[str, str | int | float]:
    """The evaluation's provenance as label -> value (the labels are shown as they are in the page)."""
    o = ctx.options
    umap = ctx.umap_kwargs()
    return {
        "run": str(ctx.run.run_dir),
        "checkpoint": ctx.run.checkpoint,
        "checkpoint_step": int(ctx.run.step),
        "store": str(ctx.store_path),
        "split": o.split,
        "crops": int(len(ctx.rows)),
        "umap_seed": int(ctx.atlas_seed),
        "umap_n_neighbors": int(umap["n_neighbors"]),
        "umap_min_dist": float(umap["min_dist"]),
        "umap_metric": str(umap["metric"]),
        "umap_fit_crops": int(len(ctx.umap_rows())),
        "umap_input": "X_cytoself (flattened global embedding)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cytoself_jax": versions(["cytoself-jax"])["cytoself-jax"],
        "source_sha256": source_sha256()[:16],
    }
