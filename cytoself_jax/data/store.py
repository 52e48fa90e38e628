"""The crop store: a directory holding every single-cell crop of a dataset.

Layout (see docs/DESIGN.md, "The crop store"):
- ``crops.npy``: one array ``(N, H, W, C)`` of raw intensities (uint8, uint16, float16 or float32), memory-mapped.
- ``crops.csv``: one row per crop in array order; columns ``protein``, ``fov`` (required, non-empty),
  ``family`` and ``source`` (optional, may be empty). Surrounding whitespace of protein, fov and family is stripped
  (with a warning) when a table is written or read.
- ``store.json``: ``{"format": "cytoself-jax-crops", "version": 1, "channels": [...], "shape": [...], "dtype": ...}``.

Writing goes through a temporary sibling directory renamed into place, so a crash never leaves a half-written
store at the final path.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap

from cytoself_jax.staging import MARKER, kept_message, new_staging, note_kept, require_space, staged_writes

FORMAT = "cytoself-jax-crops"
VERSION = 1
DTYPES = ("uint8", "uint16", "float16", "float32")
REQUIRED_COLUMNS = ("protein", "fov")
OPTIONAL_COLUMNS = ("family", "source")
IMAGES_FILE, TABLE_FILE, META_FILE = "crops.npy", "crops.csv", "store.json"
WRITER = "crop store writer"  # the marker of a store being written (staging.py)


class StoreError(ValueError):
    """A crop store (or data about to become one) is malformed; the message is one line naming file and field."""


def _fail(where: Path | str, field: str, what: str) -> StoreError:
    return StoreError(f"{where}: {field}: {what}")


def _check_channels(channels: Sequence[str], where: Path | str) -> tuple[str, ...]:
    channels = tuple(channels) if not isinstance(channels, str) else (channels,)
    if not channels or not all(isinstance(c, str) and c for c in channels):
        raise _fail(where, "channels", f"expected a non-empty list of non-empty names, found {list(channels)!r}")
    if len(set(channels)) != len(channels):
        raise _fail(where, "channels", f"expected unique names, found {list(channels)!r}")
    if "protein" not in channels:
        raise _fail(where, "channels", f"expected a 'protein' channel, found {list(channels)!r}")
    return channels


def _check_table(table: pd.DataFrame, num_crops: int, where: Path | str) -> pd.DataFrame:
    """Validate a crop table against the array length; returns a copy with string columns and a 0..N-1 index."""
    if not isinstance(table, pd.DataFrame):
        table = pd.DataFrame(table)
    for column in REQUIRED_COLUMNS:
        if column not in table.columns:
            raise _fail(where, column, f"required column missing; found columns {list(table.columns)}")
    if len(table) != num_crops:
        raise _fail(where, "rows", f"expected {num_crops} rows (one per crop in {IMAGES_FILE}), found {len(table)}")
    table = table.reset_index(drop=True).copy()
    for column in OPTIONAL_COLUMNS:
        if column not in table.columns:
            table[column] = ""
    for column in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
        table[column] = table[column].fillna("").astype(str)
    for column in ("protein", "fov", "family"):
        # 'ACTB ' and 'ACTB' are one protein: surrounding whitespace (a spreadsheet's, a typo's) never names a class
        stripped = table[column].str.strip()
        changed = np.flatnonzero(stripped.to_numpy() != table[column].to_numpy())
        if changed.size:
            warnings.warn(f"{where}: {column}: stripped the surrounding whitespace of {changed.size} value(s) (row "
                          f"{int(changed[0])}: {table[column].iloc[changed[0]]!r}), so that equal names are one class",
                          stacklevel=3)
            table[column] = stripped
    for column in REQUIRED_COLUMNS:
        empty = np.flatnonzero(table[column].str.strip().to_numpy() == "")
        if empty.size:
            raise _fail(where, column, f"expected a non-empty value in every row, row {int(empty[0])} is empty "
                                       f"({empty.size} empty rows)")
    return table


class CropStore:
    """An opened, validated crop store. ``images`` is a read-only memmap ``(N, H, W, C)``; ``table`` a DataFrame.

    Pickles cheaply (path and table only; the memmap is reopened), so it can travel to data-loader workers.
    """

    def __init__(self, path: Path, images: np.ndarray, table: pd.DataFrame, channels: tuple[str, ...]):
        self.path = Path(path)
        self.images = images
        self.table = table
        self.channels = channels
        self.proteins: tuple[str, ...] = tuple(sorted(table["protein"].unique()))
        # int32 label per crop: index into self.proteins.
        self.protein_ids: np.ndarray = np.searchsorted(np.asarray(self.proteins, dtype=object),
                                                       table["protein"].to_numpy(dtype=object)).astype(np.int32)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one crop."""
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    def channel_indices(self, names: Sequence[str]) -> tuple[int, ...]:
        """Positions of the named channels in the array's last axis, in the order asked."""
        missing = [n for n in names if n not in self.channels]
        if missing:
            raise _fail(self.path / META_FILE, "channels",
                        f"config asks for {missing[0]!r} but the store has {list(self.channels)}")
        return tuple(self.channels.index(n) for n in names)

    def __getstate__(self) -> dict:
        return {"path": self.path, "table": self.table, "channels": self.channels}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], np.load(Path(state["path"]) / IMAGES_FILE, mmap_mode="r"),
                      state["table"], state["channels"])

    def __repr__(self) -> str:
        return f"CropStore({str(self.path)!r}, N={len(self)}, image_shape={self.image_shape}, channels={self.channels})"


def open_store(path: str | os.PathLike) -> CropStore:
    """Open and validate the crop store at ``path``; raises StoreError (one line: file, field, what) otherwise."""
    path = Path(path)
    if not path.is_dir():
        found = "a file" if path.exists() else "nothing"
        raise _fail(path, "store", f"expected a crop store directory, found {found}; check the path, or make a store "
                                   "with python -m cytoself_jax.prepare (microscope fields) or python -m "
                                   "cytoself_jax.import_crops (ready crops)")
    if not any((path / name).exists() for name in (META_FILE, IMAGES_FILE, TABLE_FILE)):
        if (path / "store" / META_FILE).is_file():  # prepare's OUT folder: the store is one level down
            raise _fail(path, "store", f"this is an output folder of python -m cytoself_jax.prepare, not a crop "
                                       f"store; did you mean {path / 'store'}?")
        raise _fail(path, "store", f"expected a crop store directory ({META_FILE}, {IMAGES_FILE}, {TABLE_FILE}), "
                                   "found a folder without them (make one with python -m cytoself_jax.import_crops)")
    for name in (META_FILE, IMAGES_FILE, TABLE_FILE):
        if not (path / name).is_file():
            raise _fail(path / name, "file", "missing")

    meta_path = path / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _fail(meta_path, "json", f"unreadable: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _fail(meta_path, "format", f"expected {FORMAT!r}, found {meta.get('format') if isinstance(meta, dict) else meta!r}")
    if meta.get("version") != VERSION:
        raise _fail(meta_path, "version", f"expected {VERSION}, found {meta.get('version')!r}")
    channels = _check_channels(meta.get("channels") or (), meta_path)
    shape = meta.get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise _fail(meta_path, "shape", f"expected [N, H, W, C] of non-negative integers, found {shape!r}")
    if shape[0] == 0:
        raise _fail(meta_path, "shape", "expected at least one crop, found N=0 (empty store)")
    if shape[3] != len(channels):
        raise _fail(meta_path, "channels", f"expected {shape[3]} names (C in shape {shape}), found {len(channels)}")
    dtype = meta.get("dtype")
    if dtype not in DTYPES:
        raise _fail(meta_path, "dtype", f"expected one of {list(DTYPES)}, found {dtype!r}")

    images_path = path / IMAGES_FILE
    try:
        images = np.load(images_path, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise _fail(images_path, "array", f"unreadable .npy: {err}") from None
    if list(images.shape) != shape:
        raise _fail(images_path, "shape", f"expected {shape} (from {META_FILE}), found {list(images.shape)}")
    if str(images.dtype) != dtype:
        raise _fail(images_path, "dtype", f"expected {dtype} (from {META_FILE}), found {images.dtype}")

    table_path = path / TABLE_FILE
    try:
        # dtype=str and no NA parsing: protein names like "NA" or "NULL" must stay strings, empty stays empty.
        table = pd.read_csv(table_path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise _fail(table_path, "csv", f"unreadable: {err}") from None
    table = _check_table(table, shape[0], table_path)
    return CropStore(path, images, table, channels)


class StoreWriter:
    """A store being written: fill ``images[i]`` (a memmap in a temporary sibling dir), then ``finalize(table)``.

    Usable as a context manager: leaving the block with an exception removes the temporary directory.
    """

    def __init__(self, path: Path, num_crops: int, image_shape: Sequence[int], channels: Sequence[str],
                 dtype: str | np.dtype, overwrite: bool):
        self.path = Path(path)
        self.channels = _check_channels(channels, self.path / META_FILE)
        dtype = np.dtype(dtype).name
        if dtype not in DTYPES:
            raise _fail(self.path / META_FILE, "dtype", f"expected one of {list(DTYPES)}, found {dtype!r}")
        if len(image_shape) != 3 or any(int(s) <= 0 for s in image_shape):
            raise _fail(self.path / META_FILE, "shape", f"expected image_shape (H, W, C) > 0, found {tuple(image_shape)}")
        if int(image_shape[2]) != len(self.channels):
            raise _fail(self.path / META_FILE, "channels",
                        f"expected {image_shape[2]} names (C in image_shape), found {len(self.channels)}")
        if num_crops <= 0:
            raise _fail(self.path / META_FILE, "shape", f"expected at least one crop, found num_crops={num_crops}")
        if self.path.exists() and not overwrite:
            raise _fail(self.path, "store", "already exists; pass overwrite=True to replace it")
        if overwrite:
            check_replaceable_store(self.path)
        self.overwrite = overwrite
        self.shape = (int(num_crops), *(int(s) for s in image_shape))
        self.dtype = dtype
        # a staging folder carrying a marker, so that the next writer removes it if this process is killed
        self.tmp_path = new_staging(self.path, WRITER)
        with staged_writes(self.tmp_path, self.path):
            require_space(self.tmp_path, int(np.prod(self.shape)) * np.dtype(dtype).itemsize, self.path)
            self.images = open_memmap(self.tmp_path / IMAGES_FILE, mode="w+", dtype=dtype, shape=self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def finalize(self, table: pd.DataFrame, metadata: dict | None = None) -> CropStore:
        """Validate ``table`` (one row per crop), write it and the metadata (``metadata``: extra store.json keys,
        e.g. how a channel was derived), and move the store into place. A failed write (full disk, permission)
        raises WriteFailed (one line: the file, the reason, what was kept), nothing left behind."""
        table = _check_table(table, self.shape[0], self.path / TABLE_FILE)
        with staged_writes(self.tmp_path, self.path):
            self.images.flush()
            del self.images  # release the memmap before renaming (required on Windows)
            table.to_csv(self.tmp_path / TABLE_FILE, index=False)
            meta = {**(metadata or {}), "format": FORMAT, "version": VERSION, "channels": list(self.channels),
                    "shape": list(self.shape), "dtype": self.dtype}
            (self.tmp_path / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")  # written last: complete
            self._move_into_place()
        (self.path / MARKER).unlink(missing_ok=True)  # the staging marker: a store holds its three files only
        return open_store(self.path)

    def _move_into_place(self) -> None:
        """Rename the complete staging folder to the store's path, replacing an earlier store only."""
        if not self.path.exists():
            os.replace(self.tmp_path, self.path)
            return
        if not self.overwrite:
            raise _fail(self.path, "store", "appeared while writing; pass overwrite=True to replace it")
        check_replaceable_store(self.path)
        # A directory cannot be os.replace'd onto a non-empty one: move the old store aside first, so the
        # final path always holds either the old or the new complete store.
        trash = self.path.parent / f".{self.path.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(self.path, trash)
        os.replace(self.tmp_path, self.path)
        shutil.rmtree(trash, ignore_errors=True)

    def abort(self) -> None:
        """Discard everything written so far."""
        self.__dict__.pop("images", None)
        shutil.rmtree(self.tmp_path, ignore_errors=True)

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
            note_kept(exc, kept_message(self.path, self.path.exists()))


def check_replaceable_store(path: str | os.PathLike) -> None:
    """Refuse (StoreError) to replace `path` unless it is absent, an empty folder or a crop store (its store.json
    says so): overwrite=True replaces a store, never a folder of images or anything else."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink():
        if not any(path.iterdir()):
            return
        try:
            if json.loads((path / META_FILE).read_text()).get("format") == FORMAT:
                return
        except (OSError, ValueError, AttributeError):
            pass
    raise _fail(path, "store", "exists and is not a crop store (no store.json of format "
                f"{FORMAT!r}), so overwrite never replaces it; choose another output folder")


def create_store(path: str | os.PathLike, num_crops: int, image_shape: Sequence[int], channels: Sequence[str],
                 dtype: str | np.dtype, *, overwrite: bool = False) -> StoreWriter:
    """Start writing a store of ``num_crops`` crops of ``image_shape`` (H, W, C); refuses an existing path
    unless ``overwrite``."""
    return StoreWriter(Path(path), num_crops, image_shape, channels, dtype, overwrite)


def write_store(path: str | os.PathLike, images: np.ndarray, table: pd.DataFrame, channels: Sequence[str], *,
                overwrite: bool = False) -> CropStore:
    """Write in-memory ``images`` (N, H, W, C) and their ``table`` as a store; returns the opened store.

    float64 arrays are written as float32, with a warning: raw intensities need no more precision (every pixel
    must fit float32's range)."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise _fail(Path(path) / IMAGES_FILE, "shape", f"expected (N, H, W, C), found {images.shape}")
    images = _storable(images, Path(path) / IMAGES_FILE)
    with create_store(path, images.shape[0], images.shape[1:], channels, images.dtype, overwrite=overwrite) as writer:
        writer.images[:] = images
        return writer.finalize(table)


def _storable(images: np.ndarray, where: Path) -> np.ndarray:
    """images as they are, or float64 ones as float32 with a warning (other dtypes are refused by the writer)."""
    if images.dtype != np.float64:
        return images
    finite = images[np.isfinite(images)]
    if finite.size and np.abs(finite).max() > np.finfo(np.float32).max:
        raise _fail(where, "dtype", f"float64 values up to {np.abs(finite).max():.3g} do not fit float32")
    warnings.warn(f"{where}: dtype: converting float64 to float32 (the store holds {', '.join(DTYPES)})",
                  stacklevel=3)
    return images.astype(np.float32)


def fingerprint(store: CropStore, samples: int = 64) -> dict:
    """A cheap identity of a store's contents, to tell whether a run's store changed: shape, dtype, channels, a
    SHA-256 of the table's protein and fov columns (the labels and the split) and one of the pixels of `samples`
    evenly spaced crops (reads those crops only, never the whole array)."""
    rows = np.unique(np.linspace(0, len(store) - 1, min(samples, len(store))).round().astype(np.int64))
    pixels = hashlib.sha256()
    for row in rows:
        pixels.update(np.ascontiguousarray(store.images[row]).tobytes())
    table = hashlib.sha256("\n".join(store.table["protein"] + "\t" + store.table["fov"]).encode())
    return {"shape": [len(store), *store.image_shape], "dtype": str(store.images.dtype),
            "channels": list(store.channels), "table_sha256": table.hexdigest(), "pixels_sha256": pixels.hexdigest(),
            "pixel_rows_sampled": int(rows.size)}


def fingerprint_changes(saved: dict, now: dict) -> list[str]:
    """What differs between two fingerprints, in words ('shape [96, 32, 32, 3] -> [120, 32, 32, 3]', 'pixels',
    ...); empty when they match."""
    out = [f"{key} {saved.get(key)} -> {now[key]}" for key in ("shape", "dtype", "channels")
           if saved.get(key) != now[key]]
    if saved.get("table_sha256") != now["table_sha256"]:
        out.append(f"proteins or fields of view ({TABLE_FILE})")
    if saved.get("shape") == now["shape"] and saved.get("pixels_sha256") != now["pixels_sha256"]:
        out.append(f"pixels ({IMAGES_FILE})")
    return out
