"""AnnData conventions shared by embeddings.h5ad and proteins.h5ad: crop names, families with their colours
(scanpy's `uns['<key>_colors']`), the embedding's var, and obsm['X_cytoself'] stored once (a link to X)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cytoself_jax.analysis.colours import family_colours, family_label, legend_order


def obs_names(store_name: str, rows: np.ndarray) -> list[str]:
    """Crop names: '<store name>:<row of crops.npy>'."""
    return [f"{store_name}:{int(r)}" for r in rows]


def store_rows(adata) -> np.ndarray:
    """(N,) int64 rows of crops.npy of an embeddings.h5ad's crops (read back from obs_names)."""
    return np.array([int(str(n).rsplit(":", 1)[1]) for n in adata.obs_names], dtype=np.int64)


def family_obs(families: np.ndarray, every: np.ndarray | None = None) -> tuple[pd.Categorical, list[str]]:
    """Families as a categorical in legend order ('' -> 'unannotated') and their colours in that order (scanpy's
    uns['family_colors'] convention). Colours come from the families of `every` (default: these), e.g. every
    crop's when these are the proteins' families, so a family has the same colour in every output."""
    labels = [family_label(f) for f in families]
    colours = family_colours(labels if every is None else list(every) + labels)
    order = legend_order(labels)
    return pd.Categorical(labels, categories=order), [colours[n] for n in order]


def embedding_var(global_shape) -> pd.DataFrame:
    """var of a flattened global map (h, w, d): one row per dimension with its position y, x and feature."""
    h, w, d = (int(s) for s in global_shape)
    y, x, k = np.unravel_index(np.arange(h * w * d), (h, w, d))
    return pd.DataFrame({"y": y.astype(np.int16), "x": x.astype(np.int16), "feature": k.astype(np.int16)},
                        index=pd.Index([f"global_{a}_{b}_{c}" for a, b, c in zip(y, x, k)], name="dimension"))


def link_embedding(path: str | Path, source: str = "X", name: str = "obsm/X_cytoself") -> None:
    """Make obsm['X_cytoself'] an HDF5 hard link to X: anndata reads it as its own array, the file holds the
    embedding once (at OpenCell's size, 4 GB instead of 8)."""
    import h5py

    with h5py.File(path, "r+") as f:
        f[name] = f[source]
