"""embeddings.h5ad: one row per crop of the split (AnnData): the global embedding in X, code histograms and
indices and the atlas map (X_umap) in obsm, protein / fov / family / split / class label in obs."""
from __future__ import annotations

import numpy as np
import pandas as pd

from cytoself_jax.analysis.context import EvalContext, Evaluation


def _small_int(a: np.ndarray, top: int) -> np.ndarray:
    return a.astype(np.int16 if top <= np.iinfo(np.int16).max else np.int32)


def evaluate(ctx: EvalContext) -> Evaluation:
    import anndata

    out, spec = ctx.outputs, ctx.run.model.spec
    split_of_row = np.full(len(ctx.store), "all", dtype=object)
    for name, idx in ctx.splits.items():
        split_of_row[idx] = name
    obs = pd.DataFrame({
        "protein": pd.Categorical(ctx.proteins),
        "fov": pd.Categorical(ctx.table["fov"].to_numpy()),
        "family": pd.Categorical(ctx.families),
        "split": pd.Categorical(split_of_row[ctx.rows]),
        "index": out.index.astype(np.int64),
        "label": ctx.class_ids.astype(np.int32),
    }, index=pd.Index([str(i) for i in out.index], name="crop"))
    o = ctx.options
    uns = {"channels": list(ctx.channels), "proteins": list(ctx.run.proteins), "split": o.split,
           "run_dir": str(ctx.run.run_dir), "store": str(ctx.store_path), "step": int(ctx.run.step),
           "random_init": o.random_init, "local_shape": list(spec.local_shape), "global_shape": list(spec.global_shape),
           "local_codes": spec.vq_local.num_codes, "global_codes": spec.vq_global.num_codes,
           "umap": {"seed": ctx.atlas_seed, **ctx.umap_kwargs()}}
    adata = anndata.AnnData(
        X=ctx.vectors.astype(np.float32), obs=obs,
        obsm={"local_histogram": _small_int(out.local_histograms, int(out.local_histograms.max(initial=0))),
              "local_indices": _small_int(out.local_indices.reshape(len(out), -1), spec.vq_local.num_codes),
              "global_indices": _small_int(out.global_indices.reshape(len(out), -1), spec.vq_global.num_codes),
              "X_umap": ctx.atlas_xy().astype(np.float32)},
        uns=uns)
    adata.write_h5ad(ctx.out / "embeddings.h5ad")
    return Evaluation()
