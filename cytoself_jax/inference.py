"""Embeddings of any crops with a trained run, from Python (notebooks) and for the embed command.

    from cytoself_jax.inference import embed_images, load_run
    run = load_run("runs/demo")                        # once
    emb = embed_images(run, crops)                     # crops: numpy (N, H, W, C) raw intensities
    emb.global_vectors, emb.local_vectors, emb.local_histograms, emb.global_histograms   # numpy

Crops are raw intensities, channels in the run's order (``run.channels``) unless ``channels`` names them; each is
normalized as in training. Crops of another size than the run's need ``fit='center-crop'`` or ``fit='resize'``:
a size mismatch is never fixed silently.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from cytoself_jax.analysis.embed import extract, extract_arrays
from cytoself_jax.data.pixels import PixelReport, array_rows, usable_rows
from cytoself_jax.data.store import IMAGES_FILE, META_FILE, CropStore, StoreError
from cytoself_jax.imaging.fit import fit_for
from cytoself_jax.models.quantizer import code_histogram
from cytoself_jax.run import Run, load_run

__all__ = ["Embeddings", "Run", "embed_images", "embed_store", "load_run"]


@dataclasses.dataclass
class Embeddings:
    """Per-crop embeddings of N crops, numpy arrays in input order.

    global_vectors (N, h2, w2, D2) float32: the global quantized representation (the atlas' embedding; flatten it
    for a vector per crop); local_vectors (N, h1, w1, D1) float32: the local one; local_indices (N, h1, w1, S1) and
    global_indices (N, h2, w2, S2): code indices, int16 (int32 for codebooks over 32,768 codes); local_histograms
    (N, K1) int16 (int32 for maps over 32,767 positions) and global_histograms (N, K2) int32: per-crop code counts
    (the local one is the feature spectrum's input). index: the input crop of each
    row (all of them, in order, unless skip_bad_crops left some out; then ``skipped`` counts them).
    """

    global_vectors: np.ndarray
    local_vectors: np.ndarray
    global_indices: np.ndarray
    local_indices: np.ndarray
    local_histograms: np.ndarray
    global_histograms: np.ndarray
    index: np.ndarray  # (N,) int64: which input crop (array position or store row) each row embeds
    skipped: dict = dataclasses.field(default_factory=dict)  # skip_bad_crops: what was left out (counts, first ones)

    def __len__(self) -> int:
        return len(self.global_vectors)


def _embeddings(run: Run, out, index: np.ndarray, skipped: PixelReport, label: str) -> Embeddings:
    num_codes = run.model.spec.vq_global.num_codes
    return Embeddings(global_vectors=out.global_vectors, local_vectors=out.local_vectors,
                      global_indices=out.global_indices, local_indices=out.local_indices,
                      local_histograms=out.local_histograms,
                      global_histograms=np.asarray(code_histogram(out.global_indices, num_codes)),
                      index=np.asarray(index, np.int64), skipped=skipped.summary(label) if skipped.bad.size else {})


def embed_images(run: Run, images: np.ndarray, *, channels: Sequence[str] | None = None, fit: str = "",
                 batch_size: int = 256, skip_bad_crops: bool = False, progress: bool = True) -> Embeddings:
    """Embed in-memory raw crops (N, H, W, C) with a loaded run (see module doc). ``channels`` names the array's
    channels (default: the run's, in its order); the run's channels are taken from it by name. Crops with a
    NaN/inf pixel or a blank protein channel are refused (StoreError naming the count and the first crops), or
    left out with ``skip_bad_crops`` (``index`` then lists the crops embedded, ``skipped`` counts the others)."""
    images = np.asarray(images)
    names = tuple(channels) if channels is not None else run.channels
    if images.ndim != 4 or images.shape[-1] != len(names) or len(images) == 0:
        raise ValueError(f"embed_images: images: expected (N>0, H, W, {len(names)}) for channels {list(names)}, "
                         f"got shape {images.shape}")
    if not np.issubdtype(images.dtype, np.number):
        raise ValueError(f"embed_images: images: expected numbers, got dtype {images.dtype}")
    missing = [c for c in run.channels if c not in names]
    if missing:
        raise ValueError(f"embed_images: channels: the run {run.run_dir} reads {list(run.channels)}, the array has "
                         f"{list(names)} (missing {missing})")
    images = images[..., [names.index(c) for c in run.channels]]
    fitted = fit_for(images.shape[1:3], run.image_shape[:2], fit, "embed_images: images", f"the run {run.run_dir}")
    index, skipped = array_rows(images, run.channels.index("protein"), "embed_images: images", skip=skip_bad_crops,
                                skip_hint="skip_bad_crops=True")
    if not index.size:
        raise StoreError(f"embed_images: images: every one of the {len(images)} crops is bad ({skipped.describe('crop')})")
    out = extract_arrays(run.model, run.variables, images if index.size == len(images) else images[index],
                         channels=run.channels, batch_size=batch_size, local_vectors=True, fit=fitted,
                         progress=progress)
    return _embeddings(run, out, index, skipped, "crop")


def embed_store(run: Run, store: CropStore, rows: np.ndarray | None = None, *, fit: str = "",
                batch_size: int = 256, skip_bad_crops: bool = False, progress: bool = True) -> Embeddings:
    """Embed crops of an opened store (all rows, or `rows`) with a loaded run; the store needs the run's channels.
    Crops with a NaN/inf pixel or a blank protein channel are refused (StoreError naming crops.npy, the count and
    the first rows), or left out with ``skip_bad_crops`` (``index`` lists the rows embedded); the pixel scan runs
    once per version of the store (data/pixels.py)."""
    missing = [c for c in run.channels if c not in store.channels]
    if missing:
        raise ValueError(f"{store.path / META_FILE}: channels: the run {run.run_dir} reads {list(run.channels)}, the "
                         f"store has {list(store.channels)}")
    fitted = fit_for(store.image_shape[:2], run.image_shape[:2], fit, str(store.path / META_FILE),
                     f"the run {run.run_dir}")
    rows = np.arange(len(store)) if rows is None else np.asarray(rows)
    rows, skipped = usable_rows(store, rows, skip=skip_bad_crops, skip_hint="skip_bad_crops=True", progress=progress)
    if not rows.size:
        raise StoreError(f"{store.path / IMAGES_FILE}: pixels: every crop asked for is bad ({skipped.describe()})")
    out = extract(run.model, run.variables, store, rows, channels=run.channels, batch_size=batch_size,
                  local_vectors=True, fit=fitted, progress=progress)
    return _embeddings(run, out, rows, skipped, "row")
