"""Square crops centred on nuclei; a crop that would reach outside the field, or whose nucleus is wider than the
crop, is dropped; what each kept crop shows of its own nucleus is measured for the QC's warnings."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cytoself_jax.data.pixels import blank_crops, non_finite_crops
from cytoself_jax.imaging.scale import equivalent_diameters

REJECT_EDGE, REJECT_LARGE = "edge", "too_large"
# Crops training would refuse (docs/DESIGN.md, the crop store): a NaN/inf pixel, or a constant protein channel.
REJECT_NON_FINITE, REJECT_BLANK = "non_finite", "blank"


@dataclass(frozen=True)
class Crops:
    """Crops of one field. ``images`` (n, S, S, C); ``rows``/``cols`` (n,) int32: the field pixel at crop position
    (S // 2, S // 2), so crop i is ``field[rows[i] - S // 2 : rows[i] - S // 2 + S, cols[i] - S // 2 : ...]``;
    ``areas`` (n,) int32 nucleus areas in px; ``inside`` (n,) float64: fraction of the crop inside its own nucleus;
    ``cut`` (n,) bool: its own nucleus reaches past the crop border; ``rejected``: (row, col, area, reason) of
    nuclei left uncropped."""
    images: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    areas: np.ndarray
    inside: np.ndarray
    cut: np.ndarray
    rejected: tuple[tuple[float, float, int, str], ...]

    def subset(self, keep: np.ndarray, rejected: tuple[tuple[float, float, int, str], ...] = ()) -> "Crops":
        """The crops where ``keep`` (n,) bool, with ``rejected`` added to the rejected nuclei."""
        return Crops(images=self.images[keep], rows=self.rows[keep], cols=self.cols[keep], areas=self.areas[keep],
                     inside=self.inside[keep], cut=self.cut[keep], rejected=self.rejected + rejected)


def nucleus_centres(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (n, 2) float64 (row, col px) and areas (n,) int64 of labels 1..n of an (H, W) label image."""
    count = int(labels.max())
    index = np.arange(1, count + 1)
    centres = np.asarray(ndimage.center_of_mass(labels > 0, labels, index), dtype=np.float64).reshape(-1, 2)
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return centres, areas


def crop_nuclei(image: np.ndarray, labels: np.ndarray, size: int) -> Crops:
    """Cut a (size, size) crop of ``image`` (H, W, C) around each nucleus of ``labels`` (H, W; 1..n).

    The crop's centre pixel (size // 2, size // 2) is the nucleus centroid rounded to the nearest pixel. Crops that
    would extend past the field edge are dropped and listed in ``rejected`` with reason "edge"; nuclei whose
    equivalent diameter exceeds ``size`` (more than 79% of the crop inside one nucleus: no room for its cell) with
    reason "too_large".
    """
    if size < 1:
        raise ValueError(f"crop size: expected >= 1, found {size}")
    height, width = labels.shape
    centres, areas = nucleus_centres(labels)
    rows, cols = np.rint(centres[:, 0]).astype(np.int64), np.rint(centres[:, 1]).astype(np.int64)
    top, left = rows - size // 2, cols - size // 2
    fits = (top >= 0) & (left >= 0) & (top + size <= height) & (left + size <= width)
    large = equivalent_diameters(areas) > size
    keep = fits & ~large
    windows = [(t, l) for t, l in zip(top[keep], left[keep])]
    images = np.stack([image[t:t + size, l:l + size] for t, l in windows]) if windows \
        else np.zeros((0, size, size, image.shape[-1]), dtype=image.dtype)
    own = np.array([np.count_nonzero(labels[t:t + size, l:l + size] == k)
                     for (t, l), k in zip(windows, np.flatnonzero(keep) + 1)], dtype=np.int64)
    reasons = np.where(large, REJECT_LARGE, REJECT_EDGE)
    rejected = tuple((float(c[0]), float(c[1]), int(a), str(why))
                     for c, a, why in zip(centres[~keep], areas[~keep], reasons[~keep]))
    return Crops(images=images, rows=rows[keep].astype(np.int32), cols=cols[keep].astype(np.int32),
                 areas=areas[keep].astype(np.int32), inside=own / float(size * size), cut=own < areas[keep],
                 rejected=rejected)


def drop_unusable(crops: Crops, protein: int) -> Crops:
    """``crops`` without those holding a NaN/inf pixel or whose protein channel (index ``protein``) is constant
    (blank); they join ``rejected`` with reason "non_finite" or "blank"."""
    if len(crops.images) == 0:
        return crops
    non_finite = non_finite_crops(crops.images)
    bad = non_finite | blank_crops(crops.images, protein)
    if not bad.any():
        return crops
    rejected = tuple((float(r), float(c), int(a), REJECT_NON_FINITE if nf else REJECT_BLANK)
                     for r, c, a, nf in zip(crops.rows[bad], crops.cols[bad], crops.areas[bad], non_finite[bad]))
    return crops.subset(~bad, rejected)
