"""Image scale: nucleus sizes of a label image, resampling a field by a factor, mapping pixel positions back."""
from __future__ import annotations

import numpy as np


def equivalent_diameters(areas: np.ndarray) -> np.ndarray:
    """Diameter (px) of the disk of each area (px^2): ``2 sqrt(area / pi)``, as cellpose measures cell size."""
    return 2.0 * np.sqrt(np.asarray(areas, dtype=np.float64) / np.pi)


def labels_touching_edge(labels: np.ndarray) -> np.ndarray:
    """Bool (max label + 1,): whether each label of an (H, W) label image touches the image's border (index 0,
    the background, included as it is found)."""
    edge = np.zeros(int(labels.max(initial=0)) + 1, dtype=bool)
    edge[np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))] = True
    return edge


def rescale_plane(image: np.ndarray, factor: float) -> np.ndarray:
    """(H, W) image resampled by ``factor`` (output px per input px) to (round(H f), round(W f)) float32: bilinear,
    anti-aliased when shrinking (a Gaussian before sampling, so that noise does not alias into texture). At
    factor 1 the image is returned as float32 without resampling, so an unscaled field is exactly the input."""
    if factor == 1.0:
        return np.asarray(image, dtype=np.float32)
    from skimage.transform import rescale

    return rescale(np.asarray(image, dtype=np.float32), factor, order=1, anti_aliasing=factor < 1.0,
                   preserve_range=True, mode="reflect").astype(np.float32)


def scaled_shape(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    """(H, W) of an image of ``shape`` resampled by ``factor`` (as ``rescale_plane`` makes it)."""
    return tuple(int(round(s * factor)) for s in shape)  # type: ignore[return-value]


def to_input_pixels(position: np.ndarray, scaled_size: int, input_size: int) -> np.ndarray:
    """Pixel positions along one axis (any shape, px of the resampled image, whose size along that axis is
    ``scaled_size``) -> px of the input image (``input_size``). Pixel centres map onto pixel centres, with the
    ratio of the sizes as ``rescale_plane`` resamples (the rounded size, not the nominal factor): position p of the
    output is the point (p + 0.5) * input_size / scaled_size - 0.5 of the input."""
    return (np.asarray(position, dtype=np.float64) + 0.5) * (input_size / scaled_size) - 0.5
