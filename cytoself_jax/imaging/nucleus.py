"""Nucleus masks from a nuclear-stain image: a threshold of a Gaussian low-pass, small holes filled.

The first step of prepare's field segmentation (Li's threshold, as in the paper; prepare/segment.py refines it
further) and, with Otsu's threshold, the mask of a pre-cut single-cell crop whose distance channel is derived at
import (data/importers.py). Why Otsu for crops: a crop is mostly one nucleus and its cell, and Li's threshold then
sits low and grows the mask by the blur of the edge. Measured on 64x64 crops of a disk (radius 6/12/20 px, edge
blurred by a Gaussian PSF of 0-3 px, noise sd 30 on a 900 step), low-pass sigma 1: intersection over union with
the disk 0.47-0.93 with Li, 0.64-1.0 with Otsu (0.92-1.0 for radii >= 12 px).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import filters

from cytoself_jax.imaging.distance import signed_distance


THRESHOLDS = {"li": filters.threshold_li, "otsu": filters.threshold_otsu}


def crude_mask(image: np.ndarray, sigma: float, threshold: str = "li") -> np.ndarray:
    """Gaussian low-pass (sigma px) then Li's (default) or Otsu's threshold: (H, W) bool, True on nuclei."""
    smooth = filters.gaussian(image, sigma=sigma)
    return smooth > THRESHOLDS[threshold](smooth)


def fill_small_holes(mask: np.ndarray, max_area: int) -> np.ndarray:
    """Fill holes (background regions not connected to the image border, 4-connected) of at most ``max_area`` px."""
    holes = ndimage.binary_fill_holes(mask) & ~mask
    hole_labels, _ = ndimage.label(holes)
    small = np.bincount(hole_labels.ravel()) <= max_area
    small[0] = False
    return mask | small[hole_labels]


def crop_nucleus_distance(nucleus: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """The distance channel of one single-cell crop from its nucleus channel (H, W) of raw intensities: the signed
    distance (float32 px, positive inside) to the edge of the nucleus mask (Otsu's threshold of a Gaussian
    low-pass of sigma px; every nucleus in the crop, holes filled). Raises ValueError when the crop is constant
    or its mask is empty or covers the whole crop."""
    image = np.asarray(nucleus, dtype=np.float64)
    if image.ndim != 2 or not np.isfinite(image).all() or image.min() == image.max():
        raise ValueError(f"nucleus mask: expected a finite, non-constant 2-D image, found shape {image.shape}")
    mask = fill_small_holes(crude_mask(image, sigma, "otsu"), image.size)
    return signed_distance(mask)
