"""The one pixel check of every command that reads crops: a crop with a NaN or infinite pixel in any channel, or a
blank (constant) protein channel, is never embedded or trained on silently.

- pixel_report(store): the bad rows of a store, found by a scan that streams `chunk` crops at a time (a 1.1M-crop
  store never loads whole) and runs once per version of the store: the result is recorded in the store folder
  (pixels-checked.json) or, for a read-only store, in the user's cache (~/.cache/cytoself_jax/pixels), keyed by
  the store's fingerprint (data.store.fingerprint) and the array file's size and modification time.
- verify_pixels(store): refuse a store with any bad crop in one line naming the array file, the count and the
  first rows (training; eval and embed unless asked to skip).
- usable_rows(store, rows, skip=...): the rows a command may use, refusing bad ones or, with skip, leaving them
  out and returning what was left out for the output's metrics (eval --skip_bad_crops, embed --skip-bad-crops,
  inference.embed_store(skip_bad_crops=True)).
- array_rows(images, protein, ...): the same for crops in memory (inference.embed_images).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cytoself_jax.data.store import IMAGES_FILE, CropStore, StoreError, StoreWriter, fingerprint
from cytoself_jax.user_cache import user_cache_dir

PIXEL_CHECK_FILE = "pixels-checked.json"  # in the store folder: the recorded scan of its crops.npy
RECORD_VERSION = 2
EXPECTED = "expected finite values and a protein channel that is not constant"
SHOWN_ROWS = 20  # rows listed in a skip summary (the counts are complete)


def non_finite_crops(images: np.ndarray) -> np.ndarray:
    """(N,) bool: which crops of ``images`` (N, H, W, C) hold a NaN or infinite pixel in any channel."""
    if not np.issubdtype(images.dtype, np.floating):
        return np.zeros(images.shape[0], dtype=bool)
    return ~np.isfinite(images.reshape(images.shape[0], -1)).all(axis=1)


def blank_crops(images: np.ndarray, protein: int) -> np.ndarray:
    """(N,) bool: which crops of ``images`` (N, H, W, C) have a constant protein channel (index ``protein``)."""
    plane = images[..., protein].reshape(images.shape[0], -1)
    return plane.min(axis=1) == plane.max(axis=1)


@dataclasses.dataclass(frozen=True)
class PixelReport:
    """Bad crops of an array: rows (sorted int64) with a NaN/inf pixel, and rows with a blank protein channel
    (finite ones only: a crop is counted once, under non_finite first)."""

    non_finite: np.ndarray
    blank: np.ndarray

    @property
    def bad(self) -> np.ndarray:
        return np.union1d(self.non_finite, self.blank).astype(np.int64)

    def within(self, rows: np.ndarray) -> "PixelReport":
        """The report restricted to `rows`."""
        return PixelReport(np.intersect1d(self.non_finite, rows), np.intersect1d(self.blank, rows))

    def summary(self, label: str = "row") -> dict:
        """For metrics.json: counts per reason and the first rows left out."""
        return {"non_finite": int(self.non_finite.size), "blank": int(self.blank.size),
                f"first_{label}s": [int(r) for r in self.bad[:SHOWN_ROWS]]}

    def reason(self, row: int) -> str:
        """Why `row` is bad: 'NaN/inf' or 'constant protein channel'."""
        return "NaN/inf" if row in self.non_finite else "constant protein channel"

    def describe(self, label: str = "row", source=None, limit: int = 3) -> str:
        """'row 5 (NaN/inf), row 7 (constant protein channel), ...' for the first `limit` bad rows; `source(row)`
        adds where each came from."""
        parts = [f"{label} {int(r)} ({self.reason(int(r))}{f'; {source(int(r))}' if source else ''})"
                 for r in self.bad[:limit]]
        return ", ".join(parts) + (", ..." if self.bad.size > limit else "")


def scan(images: np.ndarray, protein: int, *, chunk: int = 4096, progress: bool = False) -> PixelReport:
    """The bad crops of ``images`` (N, H, W, C; a memmap is read `chunk` crops at a time)."""
    non_finite, blank = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start in tqdm(range(0, images.shape[0], chunk), desc="checking pixels", unit="chunk", disable=not progress):
        block = np.asarray(images[start:start + chunk])
        nf = non_finite_crops(block)
        non_finite.append(start + np.flatnonzero(nf))
        blank.append(start + np.flatnonzero(blank_crops(block, protein) & ~nf))
    return PixelReport(np.concatenate(non_finite).astype(np.int64), np.concatenate(blank).astype(np.int64))


def check_pixels(store: CropStore | StoreWriter, *, chunk: int = 4096, progress: bool = False) -> np.ndarray:
    """Rows (sorted int64) of a store or a store being written that hold a NaN/inf pixel or whose protein
    channel is constant (never cached: see pixel_report)."""
    return scan(store.images, store.channels.index("protein"), chunk=chunk, progress=progress).bad


# ------------------------------------------------------------------------------------------------- the record


def _record_key(store: CropStore) -> dict:
    """What the scan's result depends on: the store's fingerprint (shape, dtype, channels, labels, sampled
    pixels) and the array file's size and modification time (any write to crops.npy changes it)."""
    stat = (store.path / IMAGES_FILE).stat()
    return {"fingerprint": fingerprint(store),
            "array": {"file": IMAGES_FILE, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}}


def _cache_file(store: CropStore) -> Path:
    """The record of a store in the user's cache (used when the store folder is read-only)."""
    name = hashlib.sha256(str(store.path.resolve()).encode()).hexdigest()[:32]
    return user_cache_dir() / "pixels" / f"{name}.json"


def _read_record(path: Path, key: dict) -> PixelReport | None:
    try:
        record = json.loads(path.read_text())
        if record.get("version") != RECORD_VERSION or record.get("key") != key:
            return None
        return PixelReport(np.asarray(record["non_finite"], np.int64), np.asarray(record["blank"], np.int64))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_record(path: Path, key: dict, report: PixelReport) -> bool:
    record = {"version": RECORD_VERSION, "key": key, "non_finite": report.non_finite.tolist(),
              "blank": report.blank.tolist()}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, path)
        return True
    except OSError:  # a read-only folder, a full disk: the record is an optimisation only
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        return False


def pixel_report(store: CropStore, *, progress: bool = True) -> PixelReport:
    """The bad crops of an opened store, scanned once per version of the store (see module doc)."""
    key = json.loads(json.dumps(_record_key(store)))
    places = (store.path / PIXEL_CHECK_FILE, _cache_file(store))
    for place in places:
        found = _read_record(place, key)
        if found is not None:
            return found
    report = scan(store.images, store.channels.index("protein"), progress=progress)
    for place in places:
        if _write_record(place, key, report):
            break
    return report


# ------------------------------------------------------------------------------------------------ the policy


def _source(store: CropStore, row: int) -> str:
    """Where a store row came from: its source, else its protein and field."""
    entry = store.table.iloc[row]
    return f"source {entry['source']}" if entry["source"] else f"protein {entry['protein']}, fov {entry['fov']}"


def refusal(store: CropStore, report: PixelReport, skip_hint: str = "") -> StoreError:
    """The one-line refusal of a store's bad crops: the array file, the count, the first rows and their source,
    what to do (`skip_hint`: the option that leaves them out, where the command has one)."""
    also = f", or pass {skip_hint} to leave them out" if skip_hint else ""
    return StoreError(f"{store.path / IMAGES_FILE}: pixels: {EXPECTED}, found {report.bad.size} bad crop(s): "
                      f"{report.describe(source=lambda row: _source(store, row))}; remove them from the store (e.g. re-import without them)"
                      f"{also}")


def verify_pixels(store: CropStore, *, progress: bool = True, skip_hint: str = "") -> None:
    """Refuse (StoreError, one line) a store holding any crop with a NaN/inf pixel or a blank protein channel."""
    report = pixel_report(store, progress=progress)
    if report.bad.size:
        raise refusal(store, report, skip_hint)


def usable_rows(store: CropStore, rows: np.ndarray, *, skip: bool, skip_hint: str = "",
                progress: bool = True) -> tuple[np.ndarray, PixelReport]:
    """`rows` of the store that may be used and the report of the bad ones among them: refused (StoreError)
    unless `skip`, which leaves them out."""
    rows = np.asarray(rows, dtype=np.int64)
    found = pixel_report(store, progress=progress).within(rows)
    if found.bad.size and not skip:
        raise refusal(store, found, skip_hint)
    return rows[~np.isin(rows, found.bad)], found


def array_rows(images: np.ndarray, protein: int, where: str, *, skip: bool, skip_hint: str,
               chunk: int = 4096) -> tuple[np.ndarray, PixelReport]:
    """The crops of an in-memory array (N, H, W, C) that may be used and the report of the bad ones: refused
    (StoreError naming `where`, the count and the first crops) unless `skip`."""
    found = scan(images, protein, chunk=chunk)
    if found.bad.size and not skip:
        raise StoreError(f"{where}: pixels: {EXPECTED}, found {found.bad.size} bad crop(s): "
                         f"{found.describe('crop')}; pass {skip_hint} to leave them out")
    return np.setdiff1d(np.arange(images.shape[0]), found.bad), found
