"""Prepare a dataset: fields of view -> nuclei -> crops -> crop store, in parallel, resumable.

Output folder ``OUT``:
- ``OUT/store/``: the crop store (docs/DESIGN.md), channels ``protein``, ``nucleus``, ``distance`` as float32 raw
  values (intensities after z max-projection and scaling; signed distances in store px, not normalized); table
  columns ``protein``, ``fov`` (``protein/fov``), ``family``, ``source`` (the field's file), ``row``, ``col`` (the
  pixel of the input field at the crop's centre), ``nucleus_area`` (px of the crop), ``scale`` (store px per field
  px, prepare/scale.py) and ``nucleus_diameter`` (the field's nucleus diameter in its own px; empty when unknown).
- ``OUT/work/``: one ``.npz`` per finished field, written atomically (temp file + ``os.replace``), and
  ``settings.json``. A rerun with the same settings skips finished fields; fields that failed are retried.
- ``OUT/qc/``: the QC report (see ``qc.py``).
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import signal
import sys
import traceback
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cytoself_jax.data.families import FamiliesError, read_families
from cytoself_jax.data.store import CropStore, create_store
from cytoself_jax.imaging.distance import signed_distance
from cytoself_jax.imaging.scale import rescale_plane, to_input_pixels
from cytoself_jax.prepare.crop import crop_nuclei, drop_unusable
from cytoself_jax.prepare.io import FieldError, FieldSpec, InputError, read_field
from cytoself_jax.prepare.outcome import (STATUS_ERROR, STATUS_OK, STATUS_TEXT, crop_warning, describe_counts,
                                          field_outcome)
from cytoself_jax.prepare.scale import ScaleSettings, scale_and_segment
from cytoself_jax.prepare.segment import SegmentParams
from cytoself_jax.staging import staged_writes

CHANNELS = ("protein", "nucleus", "distance")
STORE_DTYPE = "float32"
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class PrepareError(InputError):
    """The preparation as a whole cannot go on (e.g. no field yielded a crop); the message is one line."""


@dataclass(frozen=True)
class PrepareSettings:
    """Everything that decides a field's crops; a work folder only serves reruns with equal settings. Sizes (crop,
    segmentation) are px at the reference scale of ``scale`` (nuclei 50 px across; prepare/scale.py), or px of the
    fields themselves when ``scale.rescale`` is False. ``rgb``: fields are RGB(A) composites (3 or 4 channels)."""
    protein_channel: int
    nucleus_channel: int
    crop_size: int = 100
    axes: str | None = None
    segment: SegmentParams = SegmentParams()
    scale: ScaleSettings = ScaleSettings()
    rgb: bool = False

    def __post_init__(self) -> None:
        if self.crop_size < 8:
            raise PrepareError(f"--crop-size: expected at least 8 px, found {self.crop_size}")
        if min(self.protein_channel, self.nucleus_channel) < 0:
            raise PrepareError(f"--protein-channel/--nucleus-channel: expected indices >= 0, found "
                               f"{self.protein_channel}, {self.nucleus_channel}")
        if self.protein_channel == self.nucleus_channel:
            raise PrepareError(f"--protein-channel/--nucleus-channel: expected two different channels, found "
                               f"{self.protein_channel} for both; give the nuclear stain's channel index")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FieldSummary:
    """What one field gave, small enough to send back from a worker. ``rejected``: (row, col, area, reason) in
    input-field px; ``reason``: why a field gave no crop (one line); ``warning``: why its crops look wrong;
    ``scale``: store px per field px; ``diameter``: nucleus diameter in field px (NaN when unknown);
    ``scale_source``: where the scale came from (prepare/scale.py)."""
    fov_id: str
    protein: str
    source: str
    status: str
    nuclei: int = 0
    crops: int = 0
    rejected: list = field(default_factory=list)
    error: str = ""
    resumed: bool = False
    reason: str = ""
    warning: str = ""
    scale: float = float("nan")
    diameter: float = float("nan")
    scale_source: str = ""


def work_file(work_dir: Path, fov_id: str) -> Path:
    """The per-field result file: a readable slug of the id plus a hash, so ids differing only in odd characters
    never collide."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", fov_id)[:80]
    return work_dir / f"{slug}-{hashlib.sha1(fov_id.encode()).hexdigest()[:10]}.npz"


def _save_atomic(path: Path, **arrays: np.ndarray) -> None:
    """Write a work file whole or not at all: a failed write (full disk) removes the partial file and raises the
    OSError, naming the work file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename in (None, str(tmp)):
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise


def _summary_from_file(path: Path, spec: FieldSpec, resumed: bool) -> FieldSummary | None:
    """The summary of a finished field, or None when the file is missing, unreadable or of another source."""
    try:
        with np.load(path) as z:
            if str(z["source"]) != spec.path:
                return None
            rejected = [(float(r), float(c), int(a), str(why)) for r, c, a, why in
                        zip(z["rejected_rows"], z["rejected_cols"], z["rejected_areas"], z["rejected_reasons"])]
            return FieldSummary(spec.fov_id, spec.protein, spec.path, str(z["status"]), int(z["nuclei"]),
                                int(z["rows"].shape[0]), rejected, resumed=resumed, reason=str(z["reason"]),
                                warning=str(z["warning"]), scale=float(z["scale"]), diameter=float(z["diameter"]),
                                scale_source=str(z["scale_source"]))
    except (OSError, ValueError, KeyError, EOFError):
        return None


def compute_field(spec: FieldSpec, settings: PrepareSettings) -> dict[str, np.ndarray]:
    """Read, project, scale, segment and crop one field; returns the arrays of its work file."""
    fov = read_field(spec.path, settings.protein_channel, settings.nucleus_channel, settings.axes, settings.rgb)
    for name, plane in (("protein", fov.protein), ("nucleus", fov.nucleus)):
        # the store holds float32: larger finite values would silently become infinity there
        finite = plane[np.isfinite(plane)] if np.issubdtype(plane.dtype, np.floating) else plane[:0]
        peak = float(np.abs(finite).max(initial=0.0))
        if peak > _FLOAT32_MAX:
            raise FieldError(f"{name} channel: values up to {peak:.3g} exceed the float32 range of the store "
                             f"(max {_FLOAT32_MAX:.3g}); rescale the images")
    scale, nucleus, segmentation = scale_and_segment(fov.nucleus, settings.scale, settings.segment, fov.pixel_size)
    labels = segmentation.labels
    rejected = list(segmentation.rejected)
    size = settings.crop_size
    images = np.zeros((0, size, size, len(CHANNELS)), np.float32)
    rows = cols = areas = np.zeros(0, np.int32)
    warning = ""
    if labels.max() > 0:
        distance = signed_distance(labels > 0)
        protein = rescale_plane(fov.protein, scale.factor)
        image = np.stack([protein, nucleus.astype(np.float32), distance], axis=-1)
        crops = drop_unusable(crop_nuclei(image, labels, size), CHANNELS.index("protein"))
        rejected += crops.rejected
        images, rows, cols, areas = crops.images, crops.rows, crops.cols, crops.areas
        warning = crop_warning(crops.inside, crops.cut, scale)
    status, reason = field_outcome(fov.nucleus.shape, labels.shape, size, scale, int(labels.max()), len(images),
                                   rejected)
    # positions in the input field's px, where a user would look for them
    (height, width), (scaled_height, scaled_width) = fov.nucleus.shape, labels.shape
    back_rows = partial(to_input_pixels, scaled_size=scaled_height, input_size=height)
    back_cols = partial(to_input_pixels, scaled_size=scaled_width, input_size=width)
    return {
        "images": images.astype(np.float32), "rows": np.rint(back_rows(rows)).astype(np.int32),
        "cols": np.rint(back_cols(cols)).astype(np.int32), "areas": areas,
        "nuclei": np.int64(labels.max()), "source": np.str_(spec.path), "status": np.str_(status),
        "reason": np.str_(reason), "warning": np.str_(warning), "scale": np.float64(scale.factor),
        "diameter": np.float64(np.nan if scale.diameter is None else scale.diameter),
        "scale_source": np.str_(scale.source),
        "rejected_rows": back_rows(np.array([r[0] for r in rejected], np.float64)),
        "rejected_cols": back_cols(np.array([r[1] for r in rejected], np.float64)),
        "rejected_areas": np.array([r[2] for r in rejected], np.int64),
        "rejected_reasons": np.array([r[3] for r in rejected], dtype=np.str_).reshape(-1),
    }


def process_field(spec: FieldSpec, settings: PrepareSettings, work_dir: Path) -> FieldSummary:
    """Prepare one field into its work file, or reuse the file of an earlier run. Never raises for a bad field:
    the error comes back (one line) in the summary, so one broken file cannot stop a whole screen."""
    path = work_file(work_dir, spec.fov_id)
    if path.exists():
        done = _summary_from_file(path, spec, resumed=True)
        if done is not None:
            return done
    try:
        arrays = compute_field(spec, settings)
    except (FieldError, InputError) as err:  # ours: one line naming what was expected
        message = " ".join(str(err).split()) or type(err).__name__
        if spec.path not in message:
            message = f"{spec.path}: {type(err).__name__}: {message}"
        return FieldSummary(spec.fov_id, spec.protein, spec.path, STATUS_ERROR, error=message)
    except MemoryError:
        return FieldSummary(spec.fov_id, spec.protein, spec.path, STATUS_ERROR,
                            error=f"{spec.path}: memory: the field does not fit in memory; use fewer --workers")
    except Exception as err:  # noqa: BLE001 - one bad field must not stop a screen; a library's words help nobody
        # ... on the console; the traceback goes to a file beside the work files, for the bug report
        trace = path.with_suffix(".error.txt")
        try:
            trace.write_text(traceback.format_exc())
            kept = f" and {trace}"
        except OSError:
            kept = ""
        return FieldSummary(spec.fov_id, spec.protein, spec.path, STATUS_ERROR,
                            error=f"{spec.path}: prepare: unexpected {type(err).__name__} on this field (a bug: "
                                  f"please report it with the file{kept})")
    _save_atomic(path, **arrays)
    summary = _summary_from_file(path, spec, resumed=False)
    assert summary is not None, path  # just written
    return summary


def _ignore_sigint() -> None:
    # Workers leave Ctrl-C to the parent, which terminates the pool: no traceback from every worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_fields(specs: Sequence[FieldSpec], settings: PrepareSettings, work_dir: Path, workers: int = 1,
               progress: bool = True) -> Iterable[FieldSummary]:
    """Process ``specs`` (in a pool of ``workers`` processes when > 1), yielding summaries as fields finish."""
    task = partial(process_field, settings=settings, work_dir=work_dir)
    bar = tqdm(total=len(specs), desc="fields", unit="field", disable=not progress)
    try:
        if workers <= 1:
            results: Iterable[FieldSummary] = map(task, specs)
            for summary in results:
                bar.update()
                yield summary
            return
        # spawn, not fork: the parent may hold JAX's threads (tests, notebooks), which fork can deadlock.
        context = multiprocessing.get_context("spawn")
        with context.Pool(min(workers, len(specs)), initializer=_ignore_sigint) as pool:
            for summary in pool.imap_unordered(task, specs):
                bar.update()
                yield summary
    finally:
        bar.close()


def _check_settings(work_dir: Path, settings: PrepareSettings) -> None:
    """Refuse a work folder made with other settings: its crops would silently mix with new ones."""
    path = work_dir / "settings.json"
    wanted = json.loads(json.dumps(settings.to_dict()))
    if path.exists():
        try:
            found = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            found = {}
        if found != wanted:
            differ = [k for k in wanted if not isinstance(found, dict) or found.get(k) != wanted[k]]
            raise PrepareError(f"{path}: settings: this work folder was made with other settings ({', '.join(differ)} "
                               f"differ); use a new OUT folder or delete {work_dir}")
    else:
        work_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(wanted, indent=1) + "\n")
    for stale in work_dir.glob(".*.tmp-*"):  # left by a run killed mid-write
        stale.unlink(missing_ok=True)


def assemble_store(store_path: Path, specs: Sequence[FieldSpec], summaries: dict[str, FieldSummary],
                   work_dir: Path, crop_size: int, families: dict[str, str], progress: bool = True) -> CropStore:
    """Stream the finished fields' crops, field by field in ``specs`` order, into the crop store at ``store_path``."""
    ready = [s for s in specs if summaries[s.fov_id].crops > 0]
    total = sum(summaries[s.fov_id].crops for s in ready)
    tables, start = [], 0
    with create_store(store_path, total, (crop_size, crop_size, len(CHANNELS)), CHANNELS, STORE_DTYPE,
                      overwrite=True) as writer:
        for spec in tqdm(ready, desc="writing store", unit="field", disable=not progress):
            with np.load(work_file(work_dir, spec.fov_id)) as z:
                images = z["images"]
                writer.images[start:start + len(images)] = images
                tables.append(pd.DataFrame({
                    "protein": spec.protein, "fov": spec.fov_id, "family": families.get(spec.protein, ""),
                    "source": spec.path, "row": z["rows"], "col": z["cols"], "nucleus_area": z["areas"],
                    "scale": float(z["scale"]), "nucleus_diameter": float(z["diameter"])}))
                start += len(images)
        return writer.finalize(pd.concat(tables, ignore_index=True))


def load_families(path: str | os.PathLike) -> dict[str, str]:
    """protein -> family from a CSV with columns ``protein`` and ``family`` (or ``localization``, with a note)."""
    try:
        return read_families(path)
    except FamiliesError as err:
        raise PrepareError(str(err)) from None


def warn(message: str) -> None:
    """A one-line warning on stderr that does not break the progress bar."""
    tqdm.write(f"warning: {message}", file=sys.stderr)


@dataclass(frozen=True)
class PrepareResult:
    """Where the outputs are and what the run did (fields by status, crops written)."""
    store: CropStore
    qc_dir: Path
    summaries: tuple[FieldSummary, ...]

    @property
    def counts(self) -> dict[str, int]:
        """Fields per status (outcome.STATUS_TEXT), 'resumed' and 'warned' (fields whose crops look wrong)."""
        counts: dict[str, int] = {}
        for s in self.summaries:
            counts[s.status] = counts.get(s.status, 0) + 1
        counts["resumed"] = sum(s.resumed for s in self.summaries)
        counts["warned"] = sum(bool(s.warning) for s in self.summaries)
        return counts


def prepare(specs: Sequence[FieldSpec], out: str | os.PathLike, settings: PrepareSettings, *,
            families: dict[str, str] | None = None, problems: Sequence[tuple[str, str]] = (), workers: int = 1,
            montage_crops: int = 16, seed: int = 0, keep_work: bool = True, progress: bool = True,
            quiet: bool = False) -> PrepareResult:
    """Prepare ``specs`` into ``out`` (store/, work/, qc/). ``problems`` are (path, message) of inputs already
    rejected while listing fields; they go into the QC report. Raises PrepareError when no field yields a crop.
    ``quiet``: no per-field warnings on stderr (the QC report keeps them all).

    With ``workers > 1`` fields run in 'spawn' worker processes, so a script calling this needs the usual
    ``if __name__ == "__main__":`` guard."""
    from cytoself_jax.prepare import qc

    out = Path(out)
    families = families or {}
    work_dir, qc_dir = out / "work", out / "qc"
    _check_settings(work_dir, settings)
    say = (lambda _: None) if quiet else warn
    for path, message in problems:
        say(f"{path}: {message}")
    summaries: dict[str, FieldSummary] = {}
    for summary in run_fields(specs, settings, work_dir, workers, progress):
        summaries[summary.fov_id] = summary
        if summary.status == STATUS_ERROR:
            say(summary.error)
        elif not summary.resumed and (summary.reason or summary.warning):
            say(f"{summary.source}: {summary.fov_id}: {summary.reason or summary.warning}")
    ordered = tuple(summaries[s.fov_id] for s in specs)
    total = sum(s.crops for s in ordered)
    # The QC report is written into a staging folder renamed into place last, so OUT/qc is always a whole report
    tmp_qc = qc.begin_report(qc_dir)
    with staged_writes(tmp_qc, qc_dir):
        qc.write_tables(tmp_qc, ordered, problems, families)
        if total == 0:
            qc.commit_report(tmp_qc, qc_dir)
            counts = {k: sum(s.status == k for s in ordered) for k in STATUS_TEXT}
            raise PrepareError(f"{out}: no field yielded a crop ({len(ordered)} fields: {describe_counts(counts)}); "
                               f"see {qc_dir / 'fields.csv'}")
        store = assemble_store(out / "store", specs, summaries, work_dir, settings.crop_size, families, progress)
        qc.write_montages(tmp_qc / "montage", store, montage_crops, seed, progress)
        qc.commit_report(tmp_qc, qc_dir)
    if not keep_work:
        for spec in specs:
            work_file(work_dir, spec.fov_id).unlink(missing_ok=True)
    return PrepareResult(store, qc_dir, ordered)
