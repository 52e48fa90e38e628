"""embeddings.h5ad: one row per crop of the split (AnnData), as scanpy users pick it up:
- `obsm['X_cytoself']`: the global embedding (flattened); `X` is the same array (an HDF5 hard link: stored
  once). Recommended neighbours: `sc.pp.neighbors(adata, use_rep='X_cytoself', metric='cosine')` (scanpy's default would run PCA-50, euclidean).
- `obsm['X_umap']`: the atlas map (the UMAP at the recorded seed, `uns['umap']['params']`); code histograms and
  indices in `obsm` too.
- `obs_names`: '<store name>:<row in crops.npy>', unique across splits and stores (`store_rows` reads them back);
  obs: protein, fov, family ('unannotated' where crops.csv has none), split, label (class id in the run, -1 for
  proteins it was not trained on); `uns['family_colors']`: the family colours of atlas.png and atlas.html.
- `var`: one row per embedding dimension (global map position y, x and feature channel).
- `uns`: provenance (run, checkpoint step, store, UMAP seed and parameters, date, code), descriptions of obs,
  obsm and var, channels, proteins, shapes.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cytoself_jax.analysis.atlas_provenance import atlas_provenance
from cytoself_jax.analysis.common import smallest_int
from cytoself_jax.analysis.context import EvalContext, Evaluation
from cytoself_jax.analysis.h5ad import embedding_var, family_obs, link_embedding, obs_names

OBS_DESCRIPTION = {
    "protein": "the crop's protein (crops.csv)",
    "fov": "field of view (crops.csv); train/val/test are split by field",
    "family": "localization family from crops.csv (ground truth for scores, never a training input); "
              "'unannotated' where there is none",
    "split": "the run's split of the crop's field: train, val or test ('all' without splits)",
    "label": "the protein's class id in the run's classifier (dataset.json order); -1: not trained on",
}
OBSM_DESCRIPTION = {
    "X_cytoself": "global embedding (quantized global representation, flattened; = X)",
    "X_umap": "the atlas map: UMAP of X_cytoself at uns['provenance']['umap_seed'] (atlas.png, atlas.html)",
    "local_histogram": "count of each local code per crop (the feature spectrum's input)",
    "local_indices": "local code index at each position of the local map (flattened)",
    "global_indices": "global code index at each position of the global map (flattened)",
}


def crop_splits(ctx: EvalContext) -> np.ndarray:
    """(N,) the run's split of each evaluated crop's field ('all' where the store has no split)."""
    split_of_row = np.full(len(ctx.store), "all", dtype=object)
    for name, idx in ctx.splits.items():
        split_of_row[idx] = name
    return split_of_row[ctx.rows]


def evaluate(ctx: EvalContext) -> Evaluation:
    import anndata

    out, spec = ctx.outputs, ctx.run.model.spec
    family, colours = family_obs(ctx.families)
    obs = pd.DataFrame({
        "protein": pd.Categorical(ctx.proteins),
        "fov": pd.Categorical(ctx.table["fov"].to_numpy()),
        "family": family,
        "split": pd.Categorical(crop_splits(ctx)),
        "label": ctx.class_ids.astype(np.int32),
    }, index=pd.Index(obs_names(ctx.store_path.name, out.index), name="crop"))
    o = ctx.options
    provenance = atlas_provenance(ctx)
    vectors = ctx.vectors.astype(np.float32, copy=False)  # no copy of a pass held on disk (Spill)
    uns = {"channels": list(ctx.channels), "proteins": list(ctx.run.proteins), "split": o.split,
           "run_dir": str(ctx.run.run_dir), "store": str(ctx.store_path), "step": int(ctx.run.step),
           "random_init": o.random_init, "local_shape": list(spec.local_shape), "global_shape": list(spec.global_shape),
           "local_codes": spec.vq_local.num_codes, "global_codes": spec.vq_global.num_codes,
           "provenance": provenance, "family_colors": colours,
           "umap": {"params": {"random_state": provenance["umap_seed"], **ctx.umap_kwargs(),
                               "use_rep": "X_cytoself", "library": "umap-learn"}},
           "obs_description": OBS_DESCRIPTION, "obsm_description": OBSM_DESCRIPTION,
           "obs_names": "<store name>:<row of crops.npy>",
           "var_description": "one embedding dimension each: position (y, x) in the global map and feature channel",
           "recommended_neighbors": "sc.pp.neighbors(adata, use_rep='X_cytoself', metric='cosine')"}
    def small(a: np.ndarray, largest: int) -> np.ndarray:  # (N, ...) -> (N, prod(...)), copied only to narrow
        return a.reshape(len(a), -1).astype(smallest_int(largest), copy=False)

    adata = anndata.AnnData(
        X=vectors, obs=obs, var=embedding_var(out.global_vectors.shape[1:]) if out.global_vectors.ndim == 4 else None,
        obsm={"local_histogram": small(out.local_histograms, int(out.local_histograms.max(initial=0))),
              "local_indices": small(out.local_indices, spec.vq_local.num_codes - 1),
              "global_indices": small(out.global_indices, spec.vq_global.num_codes - 1),
              "X_umap": ctx.atlas_xy().astype(np.float32)},
        uns=uns)
    adata.write_h5ad(ctx.out / "embeddings.h5ad")
    link_embedding(ctx.out / "embeddings.h5ad")
    return Evaluation()
