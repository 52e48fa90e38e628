"""Signed distance transform of a nucleus mask, the model's 'distance' channel.

Stored raw, in pixels: the training pipeline divides each crop by its own max |value| to reach [-1, 1]
(docs/DESIGN.md, "Normalization"), so the store keeps the field-level distances.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """(H, W) float32 px: inside the mask the distance to the nearest background pixel (>= 1), outside minus the
    distance to the nearest mask pixel (<= -1); Euclidean. Needs at least one pixel of each kind."""
    mask = np.asarray(mask, dtype=bool)
    if mask.all() or not mask.any():
        raise ValueError(f"signed distance: expected a mask with both inside and outside pixels, found "
                         f"{'all inside' if mask.all() else 'all outside'} (shape {mask.shape})")
    inside = ndimage.distance_transform_edt(mask)
    outside = ndimage.distance_transform_edt(~mask)
    return np.where(mask, inside, -outside).astype(np.float32)
