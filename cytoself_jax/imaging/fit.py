"""Bring crops of another size to a model's input size: centre crop or resize, chosen by the user, never implied."""
from __future__ import annotations

import dataclasses

import numpy as np

FITS = ("center-crop", "resize")


class FitError(ValueError):
    """Crops cannot be fitted as asked; the message is one line."""


def fit_crop(crop: np.ndarray, size: tuple[int, int], how: str) -> np.ndarray:
    """One crop (H, W, C) of raw intensities -> (h, w, C) float32 with (h, w) = size.

    how: 'center-crop' keeps the central h x w window (needs H >= h and W >= w; an odd margin puts the extra pixel
    after the window); 'resize' interpolates bilinearly (anti-aliased when shrinking) over the whole crop.
    """
    h, w = (int(s) for s in size)
    crop = np.asarray(crop)
    if crop.shape[:2] == (h, w):
        return crop.astype(np.float32, copy=False)
    if how == "center-crop":
        if crop.shape[0] < h or crop.shape[1] < w:
            raise FitError(f"--center-crop: crops of {crop.shape[0]}x{crop.shape[1]} are smaller than the model's "
                           f"{h}x{w}; use --resize")
        top, left = (crop.shape[0] - h) // 2, (crop.shape[1] - w) // 2
        return np.asarray(crop[top:top + h, left:left + w], dtype=np.float32)
    if how == "resize":
        from skimage.transform import resize

        shrink = crop.shape[0] > h or crop.shape[1] > w
        return resize(crop.astype(np.float32), (h, w, crop.shape[2]), order=1, preserve_range=True,
                      anti_aliasing=shrink).astype(np.float32)
    raise FitError(f"crops of {crop.shape[0]}x{crop.shape[1]} differ from the model's {h}x{w}: pass --resize or "
                   f"--center-crop (fit={how!r})")


@dataclasses.dataclass(frozen=True)
class Fit:
    """A picklable crop transform for input pipelines: ``Fit(how, (h, w))(crop)`` is ``fit_crop(crop, (h, w), how)``."""

    how: str
    size: tuple[int, int]

    def __post_init__(self) -> None:
        if self.how not in FITS:
            raise FitError(f"fit: expected one of {list(FITS)}, got {self.how!r}")

    def __call__(self, crop: np.ndarray) -> np.ndarray:
        return fit_crop(crop, self.size, self.how)


def fit_for(size: tuple[int, int], want: tuple[int, int], how: str, where: str, model: str = "the model"
            ) -> Fit | None:
    """The Fit bringing crops of `size` (H, W) to `want`; None when they match. Refuses (FitError, naming `where`
    the crops come from and the `model` that wants them) a mismatch without an explicit `how`, and a centre crop
    of crops smaller than `want`."""
    size, want = tuple(int(s) for s in size[:2]), tuple(int(s) for s in want[:2])
    if size == want:
        return None
    if how not in FITS:
        raise FitError(f"{where}: shape: {model} takes {want[0]}x{want[1]} crops, these are {size[0]}x{size[1]}: "
                       "pass --center-crop or --resize (fit='center-crop' or 'resize')")
    if how == "center-crop" and (size[0] < want[0] or size[1] < want[1]):
        raise FitError(f"{where}: shape: --center-crop: crops of {size[0]}x{size[1]} are smaller than the "
                       f"{want[0]}x{want[1]} {model} takes; use --resize")
    return Fit(how, want)
