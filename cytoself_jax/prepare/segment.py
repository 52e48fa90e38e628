"""Nucleus segmentation as in the cytoself paper (Methods, "Nucleus segmentation"; OpenCell's pipeline).

1. Gaussian low-pass of the nucleus channel, then Li's minimum cross-entropy threshold: the crude mask.
2. Refinement: (i) a 'refined' mask where the Laplace transform of the (separately) smoothed image marks the
   inside of bright blobs, within the crude mask; (ii) morphological closing (disk radius >= 4) and hole filling
   to remove intra-nuclear holes and gaps; (iii) multiplied by the crude mask again to restore its true holes and
   gaps; (iv) a mask of local minima of the Laplace transform (its lowest percentile: the dark valleys between
   touching nuclei); (v) each connected region of that minima mask that partially overlaps the background of the
   refined mask is cut out of it, which splits under-segmented neighbours.
3. Our additions, each counted as a rejection reason: connected regions smaller than ``min_nucleus_area`` are
   dropped ("too_small"), and so are regions no brighter than the background by ``min_snr`` noise standard
   deviations ("dim"): Li's threshold always splits an image in two, so without this a field with no nuclei
   would yield nuclei made of noise.

Sign convention: ``skimage.filters.laplace`` applies the negative Laplacian kernel (4 at the centre, -1 at the
neighbours), so it is positive inside bright blobs and most negative in dark valleys, as OpenCell uses it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from skimage import filters, morphology

from cytoself_jax.imaging.nucleus import crude_mask, fill_small_holes
from cytoself_jax.prepare.io import FieldError, InputError

REJECT_SMALL, REJECT_DIM = "too_small", "dim"


@dataclass(frozen=True)
class SegmentParams:
    """Segmentation parameters, lengths and areas in px of the field as segmented: prepare first rescales each field
    so that its nuclei are 50 px across (prepare/scale.py), so each size is a fixed fraction of the nucleus
    diameter D (sigma 5 px = D/10, min_nucleus_area 400 px = 0.2 of a nucleus's area) whatever the microscope.

    Defaults follow OpenCell's published code for its 1024x1024 HEK293T fields (nuclei ~50 px across).
    ``sigma``: Gaussian low-pass before Li's threshold; ``laplace_sigma``: Gaussian before the Laplace transform;
    ``closing_radius``: disk of step (ii), at least 4; ``max_hole_area``: largest hole filled in step (ii);
    ``minima_percentile``: percentile of the Laplace transform below which pixels form the minima mask (iv);
    ``min_nucleus_area``: smaller regions are rejected; ``min_snr``: a nucleus's mean intensity must exceed the
    background median by this many background noise sd (0 disables).
    """
    sigma: float = 5.0
    laplace_sigma: float = 4.0
    closing_radius: int = 5
    max_hole_area: int = 10_000
    minima_percentile: float = 7.0
    min_nucleus_area: int = 400
    min_snr: float = 3.0

    def __post_init__(self) -> None:
        checks = (("sigma", self.sigma > 0, "> 0"), ("laplace_sigma", self.laplace_sigma > 0, "> 0"),
                  ("closing_radius", self.closing_radius >= 4, ">= 4 (the paper: smaller disks leave gaps)"),
                  ("max_hole_area", self.max_hole_area >= 0, ">= 0"),
                  ("minima_percentile", 0 < self.minima_percentile < 100, "in (0, 100)"),
                  ("min_nucleus_area", self.min_nucleus_area >= 1, ">= 1"), ("min_snr", self.min_snr >= 0, ">= 0"))
        for name, ok, expected in checks:
            if not ok:
                raise InputError(f"segmentation: {name}: expected {expected}, found {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Segmentation:
    """Result for one field: ``labels`` (H, W) int32 of kept nuclei 1..n, and the rejected regions.

    ``rejected`` holds one (centre row, centre col, area px, reason) tuple per dropped region.
    """
    labels: np.ndarray
    rejected: tuple[tuple[float, float, int, str], ...]


def refine_mask(image: np.ndarray, crude: np.ndarray, params: SegmentParams) -> np.ndarray:
    """Steps (i)-(v) of the paper's refinement of the crude mask; (H, W) bool."""
    lap = filters.laplace(filters.gaussian(image, sigma=params.laplace_sigma), ksize=3)
    refined = (lap > 0) & crude                                                   # (i)
    refined = morphology.closing(refined, morphology.disk(params.closing_radius))  # (ii)
    refined = fill_small_holes(refined, params.max_hole_area)
    refined &= crude                                                              # (iii)
    minima = lap < np.percentile(lap, params.minima_percentile)                   # (iv)
    minima_labels, _ = ndimage.label(minima)
    # (v) a minima region with any pixel on the refined background is a valley between nuclei: cut it out.
    touches_background = np.bincount(minima_labels[~refined], minlength=minima_labels.max() + 1) > 0
    touches_background[0] = False
    return refined & ~touches_background[minima_labels]


def background_stats(image: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Median and robust sd (1.4826 x MAD) of the pixels outside ``mask``."""
    outside = image[~mask]
    if outside.size == 0:
        return float(np.median(image)), 0.0
    median = float(np.median(outside))
    return median, float(1.4826 * np.median(np.abs(outside - median)))


def labelled_regions(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 4-connected regions of a (H, W) bool mask: labels (H, W) (0 background, 1..n), their areas (n,) px and
    their mean intensities (n,) in ``image``."""
    regions, count = ndimage.label(mask)
    areas = np.bincount(regions.ravel(), minlength=count + 1)[1:]
    means = np.asarray(ndimage.mean(image, regions, np.arange(1, count + 1))) if count else np.zeros(0)
    return regions, areas, means


def segment_nuclei(image: np.ndarray, params: SegmentParams = SegmentParams()) -> Segmentation:
    """Segment the nuclei of one (H, W) nucleus-stain image (raw intensities, any real dtype).

    Returns labels (H, W) int32 (0 background, 1..n nuclei, 4-connected regions of the refined mask) and the
    regions rejected as too small or too dim. Raises FieldError when the image is constant (an empty field).
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise FieldError(f"nucleus channel: expected a 2D image, found shape {image.shape}")
    if not np.isfinite(image).all():
        raise FieldError("nucleus channel: contains NaN or infinite values")
    if image.size == 0 or image.min() == image.max():
        raise FieldError(f"nucleus channel: empty field (every pixel is {image.flat[0] if image.size else 'absent'})")
    crude = crude_mask(image, params.sigma)
    refined = refine_mask(image, crude, params)
    regions, areas, means = labelled_regions(image, refined)
    count = len(areas)
    centres = np.asarray(ndimage.center_of_mass(refined, regions, np.arange(1, count + 1))).reshape(-1, 2)
    bg_median, bg_sd = background_stats(image, crude)
    reasons = np.full(count, "", dtype=object)
    reasons[means - bg_median <= params.min_snr * bg_sd] = REJECT_DIM
    reasons[areas < params.min_nucleus_area] = REJECT_SMALL
    keep = reasons == ""
    relabel = np.zeros(count + 1, dtype=np.int32)
    relabel[1:][keep] = np.arange(1, keep.sum() + 1, dtype=np.int32)
    rejected = tuple((float(c[0]), float(c[1]), int(a), str(r))
                     for c, a, r in zip(centres[~keep], areas[~keep], reasons[~keep]))
    return Segmentation(labels=relabel[regions], rejected=rejected)
