"""Input pipeline on grain: crops from a store -> normalized float32 -> (train: dihedral augmentation) -> batches.

Batches are host numpy dicts ``{"image": float32 (B, H, W, C), "label": int32 (B,), "index": int32 (B,)}``;
``index`` is the crop's row in the store. Placing them on devices is the training loop's job.

Everything random is a function of (seed, epoch) and the element's position, so an epoch's batches are identical
whether the run was resumed or not, and with or without worker processes. The position within an epoch is
therefore one number, the count of the epoch's crops already read (``start``, which training keeps in its
checkpoints); resuming there reads no skipped crop and replays no iterator.
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import grain
import numpy as np
from absl import flags

from cytoself_jax.data.store import IMAGES_FILE, META_FILE, CropStore, StoreError

_SHUFFLE_STREAM, _AUGMENT_STREAM = 0, 1


def normalize_crop(crop: np.ndarray, channels: Sequence[str]) -> np.ndarray:
    """One crop (H, W, C) of raw intensities -> float32 (H, W, C), per channel by role: ``distance`` divided by
    its max |value| (-> [-1, 1]), every other channel min-max scaled to [0, 1]; a constant channel becomes 0."""
    x = np.asarray(crop, dtype=np.float32)
    out = np.zeros(x.shape, np.float32)
    # A loop over channels: numpy reduces a (H, W) plane ~10x faster than axes (0, 1) of an (H, W, C) array.
    for c, name in enumerate(channels):
        plane = x[..., c]
        lo, hi = plane.min(), plane.max()
        if name == "distance":
            lo, scale = np.float32(0), max(-lo, hi)
        else:
            scale = hi - lo
        if scale > 0:
            np.divide(plane - lo, scale, out=out[..., c])
    return out


def pixel_variance(store: CropStore, rows: np.ndarray, channels: Sequence[str], *, max_crops: int = 20_000,
                   seed: int = 0) -> tuple[float, int]:
    """(variance, crops used): the variance of every normalized pixel value (all channels together) of the crops
    at rows, or of a seeded subsample of max_crops of them; the reconstruction loss's constant divisor (the paper's
    `data_variance`, np.var of the training data). float64 accumulation."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        raise ValueError("pixel_variance: no crops to compute the training data's variance from")
    if len(rows) > max_crops:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_crops, replace=False))
    source = StoreSource(store, rows, channels)
    total, total_sq, count = 0.0, 0.0, 0
    for i in range(len(source)):
        x = source[i]["image"].astype(np.float64)
        total += x.sum()
        total_sq += np.square(x).sum()
        count += x.size
    mean = total / count
    return float(max(total_sq / count - mean * mean, 0.0)), len(rows)


def dihedral(image: np.ndarray, k: int) -> np.ndarray:
    """The k-th (0..7) of the 8 dihedral transforms of an (H, W, ...) image: rotate by 90 deg * (k % 4), then
    flip left-right when k >= 4."""
    out = np.rot90(image, k % 4, axes=(0, 1))
    if k >= 4:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


class StoreSource:
    """Random-access source (grain protocol: ``len``, ``[i]``) over chosen rows of a store.

    Item i is ``{"image": normalized float32 (H, W, C) of row rows[i], channels in the order asked, "label": int32,
    "index": int32}``. ``fit`` (e.g. imaging.fit.Fit) maps each raw crop to another size before normalization.
    Pickles without pixels: the memmap is (re)opened lazily in each process.
    """

    def __init__(self, store: CropStore, rows: np.ndarray, channels: Sequence[str],
                 fit: Callable[[np.ndarray], np.ndarray] | None = None):
        self.path = store.path
        self.fit = fit
        self.rows = np.asarray(rows, dtype=np.int64)
        self.channels = tuple(channels)
        self.channel_indices = list(store.channel_indices(self.channels))
        self.labels = store.protein_ids[self.rows]
        self._images = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        if self._images is None:
            self._images = np.load(self.path / IMAGES_FILE, mmap_mode="r")
        row = self.rows[i]
        crop = self._images[row][..., self.channel_indices]
        if self.fit is not None:
            crop = self.fit(crop)
        return {"image": normalize_crop(crop, self.channels), "label": self.labels[i], "index": np.int32(row)}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}

    def __repr__(self) -> str:  # grain shows this in its debug output
        return f"StoreSource({str(self.path)!r}, n={len(self)}, channels={self.channels})"


class DihedralAugment(grain.transforms.RandomMap):
    """Applies one of the 8 dihedral transforms, drawn uniformly per crop, to ``element["image"]``."""

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        return {**element, "image": dihedral(element["image"], int(rng.integers(8)))}


def derive_seed(seed: int, epoch: int, stream: int) -> int:
    """A 32-bit seed that depends only on (seed, epoch, stream)."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(stream)]).generate_state(1)[0])


def steps_per_epoch(n: int, batch_size: int, drop_remainder: bool = True) -> int:
    """Number of (global) batches an epoch of ``n`` crops gives."""
    return n // batch_size if drop_remainder else -(-n // batch_size)


class Batches:
    """An epoch of batches: iterate for numpy batch dicts; ``len()`` batches, ``num_examples`` crops (this shard)."""

    def __init__(self, dataset: grain.IterDataset, num_batches: int, num_examples: int, batch_size: int):
        self.dataset = dataset
        self.num_batches = num_batches
        self.num_examples = num_examples
        self.batch_size = batch_size

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict]:
        iterator = iter(self.dataset)
        try:
            yield from iterator
        finally:
            # Stops worker processes now rather than at garbage collection when a loop ends early.
            close = getattr(iterator, "close", None)
            if close is not None:
                close()


def _shard_of_global_batches(ds: grain.MapDataset, shard: int, batch: int, global_batch: int) -> grain.MapDataset:
    """Global batch s is positions [s*G, (s+1)*G) of ds; shard h takes its rows [h*b, (h+1)*b). The hosts' pieces
    then form each global array in the same order as one host reads it (dropout and drop-path masks follow the
    position in the batch, so the order matters, not only the set)."""
    n = len(ds)
    count = (n // global_batch) * batch + min(batch, max(0, n % global_batch - shard * batch))
    return grain.MapDataset.range(count).map(
        lambda k: ds[(k // batch) * global_batch + shard * batch + k % batch])


def make_dataset(store: CropStore, indices: np.ndarray, *, channels: Sequence[str], batch_size: int, train: bool,
                 seed: int = 0, epoch: int = 0, num_workers: int = 0, prefetch: int = 2,
                 drop_remainder: bool | None = None, shard_index: int = 0, shard_count: int = 1,
                 fit: Callable[[np.ndarray], np.ndarray] | None = None, start: int = 0) -> Batches:
    """One epoch of batches over the store rows ``indices``.

    ``batch_size`` is this shard's batch: host ``shard_index`` of ``shard_count`` yields batches of ``batch_size``
    rows, and the shards' batches at step s together form global batch s of ``batch_size * shard_count`` rows
    (the global batch stream does not depend on the number of hosts).
    Train: shuffled (seed derived from (seed, epoch)) and dihedrally augmented per crop, remainder dropped by default.
    Eval (``train=False``): store order, no augmentation, last partial batch kept, so every crop appears once.
    ``num_workers > 0`` reads in that many worker processes (same batches as in-process; starting them costs
    ~2 s per call, so use 0 for small datasets); ``prefetch`` is the number of batches buffered (per worker).
    Multi-host eval: shards may get last batches of different sizes (or none); pad before placing on devices.
    ``fit`` maps each raw crop to the model's size first (see StoreSource).
    ``start``: the epoch continues after its first ``start`` crops (of the global order, all shards together), as
    a run resumed mid-epoch does; batches are then drawn from the crops that follow, each as in the whole epoch.
    """
    rows = np.asarray(indices, dtype=np.int64).reshape(-1)
    if rows.size == 0:
        raise StoreError(f"{store.path}: indices: expected at least one crop, found none")
    if rows.min() < 0 or rows.max() >= len(store):
        raise StoreError(f"{store.path}: indices: expected rows in [0, {len(store)}), found {rows.min()}..{rows.max()}")
    channels = tuple(channels)
    if not channels or channels[0] != "protein":
        raise ValueError(f"config: data.channels: expected 'protein' first (the model treats channel 0 as the "
                         f"protein), found {list(channels)}")
    if not isinstance(start, (int, np.integer)) or start < 0:
        raise ValueError(f"make_dataset: start: expected an integer >= 0 (crops of the epoch already read), found "
                         f"{start!r}")
    if batch_size <= 0 or not 0 <= shard_index < shard_count:
        raise ValueError(f"make_dataset: batch_size, shard_index: expected batch_size > 0 and 0 <= shard_index < "
                         f"shard_count={shard_count}, found batch_size={batch_size}, shard_index={shard_index}")
    height, width, _ = store.image_shape
    if train and height != width:
        raise StoreError(f"{store.path / META_FILE}: shape: dihedral augmentation needs square crops, found "
                         f"{height}x{width}")
    drop = train if drop_remainder is None else drop_remainder
    global_batch = batch_size * shard_count

    ds = grain.MapDataset.source(StoreSource(store, rows, channels, fit))
    if train:
        ds = ds.shuffle(seed=derive_seed(seed, epoch, _SHUFFLE_STREAM))
        # Augmentation is keyed on the position in the global shuffled order, before sharding, so it does not
        # depend on the number of hosts.
        ds = ds.random_map(DihedralAugment(), seed=derive_seed(seed, epoch, _AUGMENT_STREAM))
    if drop:
        ds = ds[: steps_per_epoch(len(rows), global_batch) * global_batch]  # equal share for every host
    if start:
        ds = ds[start:]  # after shuffle and augmentation: each remaining crop is read as in the whole epoch
    if shard_count > 1:
        ds = _shard_of_global_batches(ds, shard_index, batch_size, global_batch)
    num_examples = len(ds)
    ds = ds.batch(batch_size, drop_remainder=drop)
    num_batches = len(ds)
    # One reader thread overlaps reading with the training step; more threads only contend for the GIL
    # (measured: 13k -> 7k yeast crops/s from 1 to 8 threads). Scale out with worker processes instead.
    threads = 1 if prefetch > 0 and num_workers == 0 else 0
    iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch * threads))
    if num_workers > 0:
        # grain 0.2.18 reads an absl flag when starting workers and fails in programs that never parse absl
        # flags (google/grain#1355, fixed upstream by #1362); marking them parsed keeps every flag's default.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                                    per_worker_buffer_size=max(prefetch, 1)))
    return Batches(iter_ds, num_batches, num_examples, batch_size)
