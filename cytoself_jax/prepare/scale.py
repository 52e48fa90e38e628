"""Bring every field to the scale of the model's training data before segmenting and cropping.

The paper's pre-processing (Methods, "Image pre-processing") cuts 100x100 crops around nuclei from OpenCell's
1024x1024 fields of HEK293T cells, whose nuclei are about ``REFERENCE_DIAMETER`` = 50 px across; every
segmentation size of ``SegmentParams`` and the crop size are tuned for that. A field from another microscope is
resampled by ``factor`` = 50 / (its nucleus diameter in px), so that a crop shows the same content (a nucleus
and its cell, ~20% of the crop inside the nucleus) whatever the magnification, and every size (Gaussian sigmas,
closing disk, hole and nucleus areas, crop) stays relative to the nucleus diameter (sigma 5 px = D / 10).

The field's nucleus diameter, in this order:
1. ``--nucleus-diameter`` (px of the input fields), when given;
2. a pixel size (``--pixel-size``, else the OME-TIFF's PhysicalSizeX): ``REFERENCE_NUCLEUS_UM`` / pixel size. The
   reference assumes OpenCell's pixels of ~``REFERENCE_PIXEL_SIZE_UM`` µm, which make its 50 px nuclei ~10 µm;
3. estimated per field as cellpose estimates cell size: the median equivalent diameter of its nuclei. A rough
   pass (Li's threshold of a light low-pass, regions brighter than the background by ``min_snr`` noise sd)
   gives a first diameter; the field is resampled to it and segmented with the paper's steps, whose nuclei's
   median diameter (those off the field's edge when any, specks left out) corrects it (up to ``MAX_PASSES``
   times, until it moves less than 10%).
A factor within ``NO_RESCALE_BAND`` of 1 (diameters of 41.7-60 px) is taken as exactly 1: such fields (OpenCell's)
are segmented and cropped as they are, with the output of the unscaled pipeline.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cytoself_jax.imaging.nucleus import crude_mask, fill_small_holes
from cytoself_jax.imaging.scale import equivalent_diameters, labels_touching_edge, rescale_plane, scaled_shape
from cytoself_jax.prepare.io import FieldError, InputError
from cytoself_jax.prepare.segment import (REJECT_SMALL, SegmentParams, Segmentation, background_stats,
                                          labelled_regions, segment_nuclei)

REFERENCE_DIAMETER = 50.0     # px: nucleus diameter in the training data's fields (OpenCell, 1024x1024)
REFERENCE_PIXEL_SIZE_UM = 0.2  # µm per px assumed for those fields
REFERENCE_NUCLEUS_UM = REFERENCE_DIAMETER * REFERENCE_PIXEL_SIZE_UM
NO_RESCALE_BAND = 1.2          # factors in [1/1.2, 1.2] are taken as 1
CONVERGED = 1.1                # the estimate stops when one pass changes the factor by less than this ratio
MAX_PASSES = 3
ROUGH_SIGMA = 1.0              # px: the rough pass's low-pass, small enough for nuclei a few px across
ROUGH_MIN_AREA = 12            # px: smaller rough regions are specks, not nuclei
MAX_SCALED_PIXELS = 4096 * 4096  # a resampled field larger than this is refused rather than filling the memory

SOURCE_OFF, SOURCE_GIVEN, SOURCE_PIXEL_SIZE, SOURCE_METADATA, SOURCE_ESTIMATED = (
    "off", "nucleus-diameter", "pixel-size", "ome-metadata", "estimated")


@dataclass(frozen=True)
class ScaleSettings:
    """How fields are brought to the reference scale. ``rescale`` False: fields are used at their own pixel size
    (sizes then in their px). ``nucleus_diameter``: px of the input fields; ``pixel_size``: µm per px of the input
    fields (overrides the files' metadata)."""
    rescale: bool = True
    nucleus_diameter: float | None = None
    pixel_size: float | None = None

    def __post_init__(self) -> None:
        for name, flag in (("nucleus_diameter", "--nucleus-diameter"), ("pixel_size", "--pixel-size")):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise InputError(f"{flag}: expected a positive number, found {value!r}")
        if not self.rescale and (self.nucleus_diameter or self.pixel_size):
            raise InputError("--no-rescale: expected no --nucleus-diameter or --pixel-size with it (they only "
                             "serve the rescaling)")

@dataclass(frozen=True)
class FieldScale:
    """A field's scale: ``factor`` (store px per field px), ``diameter`` (its nuclei's diameter in field px; None
    when not known) and ``source`` (one of the SOURCE_* names)."""
    factor: float
    diameter: float | None
    source: str


def snap(factor: float) -> float:
    """``factor``, or exactly 1 within ``NO_RESCALE_BAND``."""
    return 1.0 if 1.0 / NO_RESCALE_BAND <= factor <= NO_RESCALE_BAND else float(factor)


def check_size(shape: tuple[int, int], factor: float, diameter: float) -> None:
    """Refuse (FieldError) a factor that would make the field larger than ``MAX_SCALED_PIXELS``."""
    height, width = scaled_shape(shape, factor)
    if height * width > MAX_SCALED_PIXELS:
        raise FieldError(f"scale: nuclei {diameter:.1f} px across would need the {shape[0]}x{shape[1]} field "
                         f"enlarged {factor:.1f}x to {height}x{width} px (at most {MAX_SCALED_PIXELS} px); if the "
                         f"nuclei are larger, give --nucleus-diameter or --pixel-size")


def rough_diameter(image: np.ndarray, min_snr: float) -> float | None:
    """First guess of the median nucleus diameter (px) of an (H, W) nucleus image: Li's threshold of a light
    low-pass, holes filled; regions of at least ``ROUGH_MIN_AREA`` px brighter than the background by ``min_snr``
    noise sd, those off the field's edge when any (cut nuclei look small). None when no region qualifies."""
    mask = fill_small_holes(crude_mask(image, ROUGH_SIGMA), image.size)
    regions, areas, means = labelled_regions(image, mask)
    if not len(areas):
        return None
    median, sd = background_stats(image, mask)
    keep = (areas >= ROUGH_MIN_AREA) & (means - median > min_snr * sd)
    inner = keep & ~labels_touching_edge(regions)[1:]
    chosen = inner if inner.any() else keep
    return float(np.median(equivalent_diameters(areas[chosen]))) if chosen.any() else None


def measured_diameter(segmentation: Segmentation, factor: float) -> float | None:
    """Median equivalent diameter (px of the segmented image) of a segmentation's nuclei, with regions rejected
    only as too small (at a wrong first scale real nuclei can be), of an image resampled by ``factor``; None when
    there are none. As in the rough pass, specks (under ``ROUGH_MIN_AREA`` px of the input field) are left out, and
    so are regions at the image's edge when any region lies off it (cut nuclei look small): without this, the
    median of a small field with one nucleus cut by its edge and a few specks shrinks at every pass, and the
    estimate runs away to nuclei a few px across."""
    labels = segmentation.labels
    height, width = labels.shape
    areas = np.bincount(labels.ravel())[1:].astype(np.float64)
    edge = labels_touching_edge(labels)
    sizes, at_edge = [areas[areas > 0]], [edge[1:][areas > 0]]
    for row, col, area, why in segmentation.rejected:
        if why == REJECT_SMALL and area >= ROUGH_MIN_AREA * factor ** 2:
            reach = float(equivalent_diameters(area)) / 2.0 + 1.0  # a disk of its area about its centre
            sizes.append(np.array([area], dtype=np.float64))
            at_edge.append(np.array([min(row, col, height - 1 - row, width - 1 - col) < reach]))
    sizes_all, edge_all = np.concatenate(sizes), np.concatenate(at_edge)
    if not sizes_all.size:
        return None
    chosen = sizes_all[~edge_all] if (~edge_all).any() else sizes_all
    return float(np.median(equivalent_diameters(chosen)))


def estimate_and_segment(image: np.ndarray, params: SegmentParams) -> tuple[FieldScale, np.ndarray, Segmentation]:
    """Estimate a field's nucleus diameter and segment it at the reference scale: (scale, the nucleus image
    resampled by scale.factor, its segmentation). Without any nucleus the field is segmented as it is."""
    image = np.asarray(image, dtype=np.float64)
    diameter = rough_diameter(image, params.min_snr) if image.min() < image.max() else None
    if diameter is None:
        return FieldScale(1.0, None, SOURCE_ESTIMATED), image, segment_nuclei(image, params)
    factor = snap(REFERENCE_DIAMETER / diameter)
    measured_pass = None  # (factor, diameter, scaled, segmentation) of the last pass that found nuclei
    for attempt in range(MAX_PASSES):
        check_size(image.shape, factor, diameter)
        scaled = image if factor == 1.0 else rescale_plane(image, factor)
        segmentation = segment_nuclei(scaled, params)
        measured = measured_diameter(segmentation, factor)
        if measured is None:
            break  # no nucleus at this scale: the last pass that found some stands, if any
        diameter = measured / factor
        measured_pass = (factor, diameter, scaled, segmentation)
        new = snap(REFERENCE_DIAMETER / diameter)
        if new == factor or max(new / factor, factor / new) < CONVERGED or attempt == MAX_PASSES - 1:
            break  # the last pass keeps its own factor: the segmentation returned is of that factor
        factor = new
    if measured_pass is not None:
        factor, diameter, scaled, segmentation = measured_pass
    return FieldScale(factor, diameter, SOURCE_ESTIMATED), scaled, segmentation


def known_scale(settings: ScaleSettings, metadata_pixel_size: float | None) -> FieldScale | None:
    """The scale given by the settings or the file's pixel size; None when it must be estimated."""
    if not settings.rescale:
        return FieldScale(1.0, None, SOURCE_OFF)
    if settings.nucleus_diameter:
        return FieldScale(snap(REFERENCE_DIAMETER / settings.nucleus_diameter), settings.nucleus_diameter,
                          SOURCE_GIVEN)
    pixel_size = settings.pixel_size or metadata_pixel_size
    if pixel_size:
        diameter = REFERENCE_NUCLEUS_UM / pixel_size
        return FieldScale(snap(REFERENCE_DIAMETER / diameter), diameter,
                          SOURCE_PIXEL_SIZE if settings.pixel_size else SOURCE_METADATA)
    return None


def scale_and_segment(nucleus: np.ndarray, settings: ScaleSettings, params: SegmentParams,
                      metadata_pixel_size: float | None = None) -> tuple[FieldScale, np.ndarray, Segmentation]:
    """A field's scale, its nucleus image (H, W) resampled to it (float) and the segmentation of that image."""
    scale = known_scale(settings, metadata_pixel_size)
    if scale is None:
        return estimate_and_segment(nucleus, params)
    if scale.diameter is not None:
        check_size(nucleus.shape, scale.factor, scale.diameter)
    scaled = nucleus if scale.factor == 1.0 else rescale_plane(nucleus, scale.factor)
    return scale, scaled, segment_nuclei(scaled, params)
