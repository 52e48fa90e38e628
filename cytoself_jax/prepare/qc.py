"""The QC report of a preparation run, in ``OUT/qc/``:

- ``fields.csv``: one row per field: status (ok, error, or why it gave no crop: field_too_small, no_nuclei,
  all_at_edge, nuclei_too_large, all_rejected) and ``reason``, that why in one line; its scale (``scale``: store
  px per field px, ``nucleus_diameter`` in field px, ``scale_source``: estimated, nucleus-diameter, pixel-size,
  ome-metadata or off), nuclei found, crops written, nuclei rejected per reason (edge; too_large: wider than the
  crop; too_small, dim; non_finite: a NaN/inf pixel in the crop; blank: a constant protein channel, which
  training refuses), ``warning`` when the crops look wrong (mostly inside one nucleus, nuclei cut by the crop
  border), whether it was resumed from an earlier run, the error;
- ``proteins.csv``: per protein: family, fields, fields with crops, nuclei, crops;
- ``rejected.csv``: every rejected nucleus: field, position (row, col px of the input field), area (px at the
  store's scale), reason;
- ``errors.csv``: every input that gave no result: files that match no pattern and fields that failed to read
  or segment, with the one-line reason;
- ``summary.json``: the totals (fields per status, fields rescaled, fields with warnings);
- ``montage/<protein>.png``: random crops of each protein from the final store, protein channel above nucleus
  channel, the nucleus mask outline (distance > 0) in yellow and the crop centre in red.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm.auto import tqdm

from cytoself_jax.data.store import CropStore
from cytoself_jax.prepare.crop import REJECT_BLANK, REJECT_EDGE, REJECT_LARGE, REJECT_NON_FINITE
from cytoself_jax.prepare.io import InputError
from cytoself_jax.prepare.segment import REJECT_DIM, REJECT_SMALL
from cytoself_jax.staging import MARKER, OutputFolderError, commit, read_marker, staging_folder

REASONS = (REJECT_EDGE, REJECT_LARGE, REJECT_SMALL, REJECT_DIM, REJECT_NON_FINITE, REJECT_BLANK)
OUTLINE, CENTRE = (1.0, 0.85, 0.0), (1.0, 0.15, 0.15)


QC_COMMAND = "prepare"  # the marker of a QC report folder (staging.py)
QC_FILES = ("fields.csv", "rejected.csv", "errors.csv", "proteins.csv", "summary.json", "montage")


def begin_report(qc_dir: Path) -> Path:
    """A staging folder for a new QC report at `qc_dir` (see staging.py): an earlier report is replaced whole by
    commit_report, never a folder prepare did not write. A report of a version that wrote no marker (its files
    all QC files) is recognised as prepare's."""
    if qc_dir.is_dir() and not read_marker(qc_dir):
        entries = sorted(p.name for p in qc_dir.iterdir())
        if entries and set(entries) <= set(QC_FILES):
            (qc_dir / MARKER).write_text(json.dumps({"written_by": QC_COMMAND, "files": entries}) + "\n")
    try:
        return staging_folder(qc_dir, QC_COMMAND)
    except OutputFolderError as err:
        raise InputError(str(err)) from None


def commit_report(tmp: Path, qc_dir: Path) -> None:
    """Move the complete report into place (replacing the earlier one)."""
    commit(tmp, qc_dir, QC_COMMAND)


def write_tables(qc_dir: Path, summaries: Sequence, problems: Sequence[tuple[str, str]],
                 families: dict[str, str]) -> dict:
    """Write the CSV tables and summary.json for ``summaries`` (run.FieldSummary); returns the summary dict."""
    qc_dir.mkdir(parents=True, exist_ok=True)
    rows, rejected = [], []
    for s in summaries:
        reasons = [r[3] for r in s.rejected]
        rows.append({"fov": s.fov_id, "protein": s.protein, "family": families.get(s.protein, ""), "source": s.source,
                     "status": s.status, "reason": s.reason, "scale": s.scale, "nucleus_diameter": s.diameter,
                     "scale_source": s.scale_source, "nuclei": s.nuclei, "crops": s.crops,
                     **{f"rejected_{why}": reasons.count(why) for why in REASONS},
                     "warning": s.warning, "resumed": s.resumed, "error": s.error})
        rejected += [{"fov": s.fov_id, "source": s.source, "row": round(r, 1), "col": round(c, 1), "area": a,
                      "reason": why} for r, c, a, why in s.rejected]
    fields = pd.DataFrame(rows, columns=["fov", "protein", "family", "source", "status", "reason", "scale",
                                         "nucleus_diameter", "scale_source", "nuclei", "crops",
                                         *(f"rejected_{why}" for why in REASONS), "warning", "resumed", "error"])
    fields.to_csv(qc_dir / "fields.csv", index=False, float_format="%.4g")
    pd.DataFrame(rejected, columns=["fov", "source", "row", "col", "area", "reason"]).to_csv(
        qc_dir / "rejected.csv", index=False)
    errors = [{"source": path, "fov": "", "error": message} for path, message in problems]
    errors += [{"source": s.source, "fov": s.fov_id, "error": s.error} for s in summaries if s.error]
    pd.DataFrame(errors, columns=["source", "fov", "error"]).to_csv(qc_dir / "errors.csv", index=False)
    proteins = fields.groupby("protein", sort=True).agg(
        family=("family", "first"), fields=("fov", "size"), fields_with_crops=("crops", lambda c: int((c > 0).sum())),
        nuclei=("nuclei", "sum"), crops=("crops", "sum")).reset_index()
    proteins.to_csv(qc_dir / "proteins.csv", index=False)
    summary = {"fields": len(fields), "by_status": fields["status"].value_counts().to_dict(),
               "unmatched_files": len(problems), "proteins": len(proteins), "crops": int(fields["crops"].sum()),
               "nuclei": int(fields["nuclei"].sum()),
               "rescaled": int(((fields["scale"] != 1.0) & fields["scale"].notna()).sum()),
               "with_warnings": int((fields["warning"] != "").sum()),
               "rejected": {why: int(fields[f"rejected_{why}"].sum()) for why in REASONS}}
    (qc_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _scaled(channel: np.ndarray) -> np.ndarray:
    """Percentile (1, 99.8) contrast stretch of one crop channel to [0, 1], as a viewer would show it."""
    lo, hi = np.percentile(channel, (1.0, 99.8))
    return np.clip((channel - lo) / max(hi - lo, 1e-12), 0.0, 1.0)


def crop_tiles(crop: np.ndarray, channels: Sequence[str]) -> np.ndarray:
    """(2, H, W, 3) RGB tiles of one crop (H, W, C): protein and nucleus channel in grey, the nucleus outline
    (inner boundary of distance > 0) and the centre pixel marked."""
    mask = crop[..., channels.index("distance")] > 0
    outline = mask & ~ndimage.binary_erosion(mask, border_value=1)
    centre = crop.shape[0] // 2, crop.shape[1] // 2
    tiles = []
    for name in ("protein", "nucleus"):
        tile = np.repeat(_scaled(crop[..., channels.index(name)].astype(np.float64))[..., None], 3, axis=-1)
        tile[outline] = OUTLINE
        tile[centre[0], max(centre[1] - 2, 0):centre[1] + 3] = CENTRE
        tile[max(centre[0] - 2, 0):centre[0] + 3, centre[1]] = CENTRE
        tiles.append(tile)
    return np.stack(tiles)


def protein_montage(store: CropStore, rows: np.ndarray, columns: int = 8, gap: int = 3) -> np.ndarray:
    """RGB montage (float, [0, 1]) of the store crops at ``rows``: ``columns`` crops per line, each crop's protein
    tile above its nucleus tile (a 1 px line between them), white gaps between crops."""
    h, w, _ = store.image_shape
    lines = -(-len(rows) // columns)
    cell_h, cell_w = 2 * h + 1 + gap, w + gap
    canvas = np.ones((lines * cell_h + gap, min(columns, len(rows)) * cell_w + gap, 3))
    for k, row in enumerate(rows):
        top, left = gap + (k // columns) * cell_h, gap + (k % columns) * cell_w
        protein, nucleus = crop_tiles(np.asarray(store.images[row]), store.channels)
        canvas[top:top + h, left:left + w] = protein
        canvas[top + h + 1:top + 2 * h + 1, left:left + w] = nucleus  # 1 px white line between the two
    return canvas


def write_montages(montage_dir: Path, store: CropStore, crops_per_protein: int = 16, seed: int = 0,
                   progress: bool = True) -> list[Path]:
    """One PNG per protein of the store with up to ``crops_per_protein`` random crops (seeded); returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if crops_per_protein <= 0:
        return []
    if not {"protein", "nucleus", "distance"} <= set(store.channels):
        return []
    montage_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w, _ = store.image_shape
    columns, gap = 8, 3
    # Small crops are drawn bigger so that a 48 px crop stays readable; 100 px crops at about their size.
    zoom = max(1.0, 96.0 / w)
    written = []
    for pid, protein in enumerate(tqdm(store.proteins, desc="QC montages", unit="protein", disable=not progress)):
        candidates = np.flatnonzero(store.protein_ids == pid)
        rows = np.sort(rng.choice(candidates, size=min(crops_per_protein, len(candidates)), replace=False))
        canvas = protein_montage(store, rows, columns, gap)
        dpi = 100
        header = 40
        fig = plt.figure(figsize=(canvas.shape[1] * zoom / dpi, (canvas.shape[0] * zoom + header) / dpi), dpi=dpi)
        ax = fig.add_axes((0, 0, 1, canvas.shape[0] * zoom / (canvas.shape[0] * zoom + header)))
        ax.imshow(canvas, interpolation="nearest")
        ax.set_axis_off()
        family = store.table["family"].iloc[candidates[0]]
        fig.suptitle(f"{protein}{f' ({family})' if family else ''}: {len(rows)} of {len(candidates)} crops\n"
                     f"top: protein, bottom: nucleus; yellow: nucleus mask outline, red: crop centre",
                     fontsize=9, y=1 - 4 / (canvas.shape[0] * zoom + header))
        for k, row in enumerate(rows):
            top, left = gap + (k // columns) * (2 * h + 1 + gap), gap + (k % columns) * (w + gap)
            fov = store.table["fov"].iloc[row].split("/", 1)[-1]
            ax.text(left + 1, top + 1, fov, fontsize=6, color="white", va="top", ha="left",
                    bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0})
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", protein)
        path = montage_dir / f"{slug}.png"
        if path in written:  # two names with the same slug, e.g. 'A/B' and 'A_B'
            path = montage_dir / f"{slug}-{pid}.png"
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        written.append(path)
    return written
