"""Nucleus masks from a nuclear-stain image: Li's threshold of a Gaussian low-pass, small holes filled.

The first step of prepare's field segmentation (prepare/segment.py refines it further) and, on its own, the mask
of a pre-cut single-cell crop whose distance channel is derived at import (data/importers.py).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import filters

from cytoself_jax.imaging.distance import signed_distance


def crude_mask(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian low-pass (sigma px) then Li's threshold: (H, W) bool, True on nuclei."""
    smooth = filters.gaussian(image, sigma=sigma)
    return smooth > filters.threshold_li(smooth)


def fill_small_holes(mask: np.ndarray, max_area: int) -> np.ndarray:
    """Fill holes (background regions not connected to the image border, 4-connected) of at most ``max_area`` px."""
    holes = ndimage.binary_fill_holes(mask) & ~mask
    hole_labels, _ = ndimage.label(holes)
    small = np.bincount(hole_labels.ravel()) <= max_area
    small[0] = False
    return mask | small[hole_labels]


def crop_nucleus_distance(nucleus: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """The distance channel of one single-cell crop from its nucleus channel (H, W) of raw intensities: the signed
    distance (float32 px, positive inside) to the edge of the nucleus mask (every nucleus in the crop, holes
    filled). Raises ValueError when the crop is constant or its mask is empty or covers the whole crop."""
    image = np.asarray(nucleus, dtype=np.float64)
    if image.ndim != 2 or not np.isfinite(image).all() or image.min() == image.max():
        raise ValueError(f"nucleus mask: expected a finite, non-constant 2-D image, found shape {image.shape}")
    mask = fill_small_holes(crude_mask(image, sigma), image.size)
    return signed_distance(mask)
