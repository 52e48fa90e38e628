"""Streamed, jitted, data-parallel passes of a trained model over crops of a store: the embeddings (encoders and
quantizers only) or, with full=True, also each classifier head's rank of the true protein and per-crop
reconstruction errors.

Batches come from the eval pipeline (store order, no augmentation) or, for crops in memory, from the same
normalization applied to the array, are split over every local device along the
'data' axis with the variables replicated, and the results are gathered back to host numpy arrays in the order of
the rows asked for. A last partial batch is padded to the full batch with zero images, so one compiled program
serves every batch; the padded outputs are dropped.

A pass over many crops can keep its per-crop arrays on disk instead of in memory (`Spill`): memory-mapped .npy
files filled batch by batch, read back through the page cache as the analyses touch them. At the paper's sizes a
pass keeps 42.5 kB per crop (36.9 kB of float32 global vectors): 47 GB for OpenCell's 1.1M crops.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from cytoself_jax.analysis.common import smallest_int
from cytoself_jax.analysis.scores import pessimistic_ranks
from cytoself_jax.data.pipeline import make_dataset, normalize_crop
from cytoself_jax.data.store import CropStore
from cytoself_jax.imaging.fit import Fit
from cytoself_jax.models.quantizer import code_histogram
from cytoself_jax.staging import require_space
from cytoself_jax import mesh as mesh_lib


@dataclasses.dataclass
class SplitOutputs:
    """Per-crop results of a pass over store rows `index` (N,), in that order.

    global_vectors: (N, h2, w2, D2) float32, the global quantized representation (the atlas' embedding);
    global_indices: (N, h2, w2, S2) and local_indices: (N, h1, w1, S1), the code indices; local_histograms:
    (N, K1), per-crop counts of each local code (sum h1*w1*S1 per row); all int16 (int32 for a codebook of more
    than 32,768 codes or a map of more than 32,767 positions).
    With local_vectors=True only: local_vectors (N, h1, w1, D1) float32, the local quantized representation.
    With full=True only: class_ranks, head level -> (N,) int32, how many other classes the head scores >= the
    crop's protein (scores.classifier_ranks' rule; num_classes for a protein the run does not know: ranked on the
    device, so no (N, num_classes) logits are kept); squared_error: (N, C) float32, the
    per-channel mean over pixels of (reconstruction - input)^2 on normalized images; reconstructions:
    (len(reconstruct), H, W, C) float32 of the crops asked for with `reconstruct` (see extract).
    """

    index: np.ndarray
    global_vectors: np.ndarray
    global_indices: np.ndarray
    local_indices: np.ndarray
    local_histograms: np.ndarray
    local_vectors: np.ndarray | None = None
    class_ranks: dict[str, np.ndarray] | None = None
    squared_error: np.ndarray | None = None
    reconstructions: np.ndarray | None = None

    on_disk: Path | None = None  # the folder of the memory-mapped per-crop arrays (Spill); None: in memory

    def __len__(self) -> int:
        return len(self.index)


@dataclasses.dataclass(frozen=True)
class Spill:
    """Keep a pass's per-crop arrays in memory-mapped .npy files in `folder` (created, or empty; one file per array)
    when together they would take more than `above_bytes` in memory (0: always). `out`: the output the pass is for,
    named when the disk lacks the space (refused before writing: a mapped file on a full disk kills the process).
    The caller owns the folder and removes it once the arrays are no longer read."""

    folder: Path
    above_bytes: int
    out: Path


def pass_bytes(shapes: Any, crops: int) -> int:
    """Bytes of the per-crop arrays of a pass over `crops` crops, from the per-batch shapes (leading axis: batch)."""
    return crops * sum(math.prod(s.shape[1:]) * np.dtype(s.dtype).itemsize for s in jax.tree.leaves(shapes))


def _host_buffers(shapes: Any, crops: int, spill: Spill | None) -> tuple[Any, Path | None]:
    """Host arrays (crops, ...) for each per-crop output of a pass: in memory, or memory-mapped files in
    spill.folder when the pass is larger than spill.above_bytes. Returns (buffers, that folder or None)."""
    size = pass_bytes(shapes, crops)
    if spill is None or size <= spill.above_bytes:
        return jax.tree.map(lambda s: np.empty((crops, *s.shape[1:]), s.dtype), shapes), None
    spill.folder.mkdir(parents=True, exist_ok=True)
    if any(spill.folder.iterdir()):  # w+ would truncate files another pass may still be reading
        raise ValueError(f"{spill.folder}: expected an empty folder for the pass's arrays, found files in it")
    require_space(spill.folder, size, spill.out)

    def mapped(path, s):
        name = "_".join(str(getattr(k, "key", k)) for k in path)
        mapping = np.lib.format.open_memmap(spill.folder / f"{name}.npy", mode="w+", dtype=s.dtype,
                                            shape=(crops, *s.shape[1:]))
        return np.asarray(mapping)  # a plain ndarray over the mapping (no copy): libraries that refuse np.memmap
        # (anndata's writer) take it, and it keeps the mapping open as its base
    return jax.tree_util.tree_map_with_path(mapped, shapes), spill.folder


def _compact(values: jax.Array, largest: int) -> jax.Array:
    """values (integers in [0, largest]) in common.smallest_int's type. The indices and histograms are kept for
    every crop of a pass: at the paper's sizes (2,048 local codes on a 25 x 25 map, 9 x 16 global indices) they take
    11.3 kB per crop in int32 and 5.6 kB in int16, for the same values (beside 36.9 kB of float32 global vectors)."""
    return values.astype(smallest_int(largest))


def _embed_fn(model, full: bool, local_vectors: bool = False):
    num_local_codes, num_global_codes = model.spec.vq_local.num_codes, model.spec.vq_global.num_codes

    def embed(variables: Any, images: jax.Array, labels: jax.Array) -> dict:
        if full:
            out = model.apply(variables, images, train=False)
            vq_local, vq_global = out.vq_local, out.vq_global
        else:
            # embed runs encoders and quantizers only: no decoder or classifier is computed.
            vq_local, vq_global = model.apply(variables, images, method=model.embed)
        positions = math.prod(vq_local.indices.shape[1:])
        result = {
            "global_vectors": vq_global.quantized.astype(jnp.float32),
            "global_indices": _compact(vq_global.indices, num_global_codes - 1),
            "local_indices": _compact(vq_local.indices, num_local_codes - 1),
            "local_histograms": _compact(code_histogram(vq_local.indices, num_local_codes), positions),
        }
        if local_vectors:
            result["local_vectors"] = vq_local.quantized.astype(jnp.float32)
        if full:
            result["class_ranks"] = {level: pessimistic_ranks(v.astype(jnp.float32), labels, xp=jnp)
                                     for level, v in out.logits.items()}
            result["squared_error"] = jnp.mean((out.reconstruction - images.astype(jnp.float32)) ** 2, axis=(1, 2))
            result["reconstruction"] = out.reconstruction  # left on the device unless asked for
        return result

    return embed


def extract(
    model,
    variables: Any,
    store: CropStore,
    rows: np.ndarray,
    *,
    channels: Sequence[str],
    batch_size: int = 256,
    full: bool = False,
    reconstruct: Sequence[int] = (),
    labels: np.ndarray | None = None,
    local_vectors: bool = False,
    fit: Fit | None = None,
    mesh: Mesh | None = None,
    num_workers: int = 0,
    prefetch: int = 2,
    progress: bool = True,
    desc: str = "embed",
    spill: Spill | None = None,
) -> SplitOutputs:
    """Run the model over store rows (N,) (any order; each row once) and gather SplitOutputs in that order.

    batch_size is the global batch, rounded up to a multiple of the devices of `mesh` (default: a 1-D mesh of
    all local devices). full=False runs model.embed only; full=True runs the whole forward pass (decoders and
    heads) to add each head's rank of the true class of `labels` ((N,) class ids of the rows in the run's
    classifier, -1 for a protein it does not know; required with full=True) and reconstruction errors, and the
    reconstructions of the crops at positions `reconstruct` (into rows; a few examples: the others never leave
    the devices). local_vectors=True also
    returns the local quantized vectors (large: keep it for small sets). `fit` maps each raw crop to the model's
    size first (imaging.fit.Fit). `spill` keeps a large pass's per-crop arrays in memory-mapped files (Spill;
    the result's on_disk names their folder). Single host: every device must be addressable.
    """
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    mesh = mesh if mesh is not None else mesh_lib.make_mesh(jax.local_devices())
    batch = _global_batch(batch_size, mesh)
    size = fit.size if fit is not None else store.image_shape[:2]
    batches = make_dataset(store, rows, channels=channels, batch_size=batch, train=False, drop_remainder=False,
                           num_workers=num_workers, prefetch=prefetch, fit=fit)
    return _run(model, variables, batches, rows, (*size, len(channels)), batch, mesh, full, reconstruct, labels,
                local_vectors, progress, desc, spill)


def extract_arrays(
    model,
    variables: Any,
    images: np.ndarray,
    *,
    channels: Sequence[str],
    batch_size: int = 256,
    local_vectors: bool = False,
    fit: Fit | None = None,
    mesh: Mesh | None = None,
    progress: bool = True,
    desc: str = "embed",
) -> SplitOutputs:
    """extract() for in-memory raw crops (N, H, W, C), channels named by `channels` in array order: each crop is
    fitted (optional) and normalized exactly as the store pipeline does; index is 0..N-1."""
    images = np.asarray(images)
    mesh = mesh if mesh is not None else mesh_lib.make_mesh(jax.local_devices())
    batch = _global_batch(batch_size, mesh)
    size = fit.size if fit is not None else images.shape[1:3]

    def batches():
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch]
            crops = [fit(c) if fit is not None else c for c in chunk]
            yield {"image": np.stack([normalize_crop(c, channels) for c in crops]),
                   "index": np.arange(start, start + len(chunk))}

    return _run(model, variables, batches(), np.arange(len(images)), (*size, len(channels)), batch, mesh, False, (),
                None, local_vectors, progress, desc)


def _global_batch(batch_size: int, mesh: Mesh) -> int:
    n_dev = mesh.devices.size
    return -(-max(int(batch_size), 1) // n_dev) * n_dev


def _run(model, variables, batches: Iterable[dict], rows: np.ndarray, image_shape: tuple[int, int, int], batch: int,
         mesh: Mesh, full: bool, reconstruct: Sequence[int], labels: np.ndarray | None, local_vectors: bool,
         progress: bool, desc: str, spill: Spill | None = None) -> SplitOutputs:
    """The jitted, sharded pass over batches of normalized crops whose 'index' runs through rows in order."""
    fn = _embed_fn(model, full, local_vectors)
    if full and (labels is None or np.shape(labels) != rows.shape):
        raise ValueError(f"extract: labels: expected {len(rows)} class ids with full=True, got "
                         f"{None if labels is None else np.shape(labels)}")
    labels = np.full(len(rows), -1, np.int32) if labels is None else np.asarray(labels, np.int32)
    shapes = jax.eval_shape(fn, variables, jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32),
                            jax.ShapeDtypeStruct((batch,), jnp.int32))
    # Host buffers for the whole pass, filled batch by batch.
    rec_shape = shapes.pop("reconstruction", None)
    buffers, on_disk = _host_buffers(shapes, len(rows), spill)
    keep = np.asarray(reconstruct, dtype=np.int64).reshape(-1)
    if len(keep) and (not full or keep.min() < 0 or keep.max() >= len(rows)):
        raise ValueError(f"extract: reconstruct: expected positions in [0, {len(rows)}) with full=True, got {keep}")
    reconstructions = np.empty((len(keep), *rec_shape.shape[1:]), np.float32) if full else None
    step = jax.jit(fn, in_shardings=(mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh),
                                     mesh_lib.batch_sharding(mesh)), out_shardings=mesh_lib.batch_sharding(mesh))
    placed = mesh_lib.replicate(variables, mesh)

    def collect(pending: tuple[int, int, Any]) -> None:
        start, count, out = pending
        recon = out.pop("reconstruction", None)
        wanted = np.flatnonzero((keep >= start) & (keep < start + count))
        if len(wanted):
            reconstructions[wanted] = np.asarray(recon)[keep[wanted] - start]
        for buf, value in zip(jax.tree.leaves(buffers), jax.tree.leaves(jax.device_get(out))):
            buf[start:start + count] = value[:count]

    offset, pending = 0, None
    with tqdm(total=len(rows), unit="crop", desc=desc, disable=not progress, dynamic_ncols=True) as bar:
        for data in batches:
            count = len(data["index"])
            if not np.array_equal(data["index"], rows[offset:offset + count]):
                raise RuntimeError(f"extract: the pipeline returned rows out of order at position {offset}")
            images, batch_labels = data["image"], labels[offset:offset + count]
            if count < batch:
                images = np.concatenate([images, np.zeros((batch - count, *images.shape[1:]), images.dtype)])
                batch_labels = np.concatenate([batch_labels, np.full(batch - count, -1, np.int32)])
            sharded = mesh_lib.shard_batch({"image": images, "label": batch_labels}, mesh)
            out = step(placed, sharded["image"], sharded["label"])
            if pending is not None:
                collect(pending)  # the previous batch's results, read while this one runs
            pending = (offset, count, out)
            offset += count
            bar.update(count)
        if pending is not None:
            collect(pending)
    if offset != len(rows):
        raise RuntimeError(f"extract: expected {len(rows)} crops from the pipeline, got {offset}")
    return SplitOutputs(index=rows, reconstructions=reconstructions, on_disk=on_disk, **buffers)
