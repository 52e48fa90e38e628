"""Crop thumbnails a biologist reads: the protein in green over the nucleus (or other fiducial) in magenta, with
contrast fixed per protein or per dataset (so a dim protein looks dim next to a bright one of the same protein,
or of the whole dataset) and a scale bar where the pixel size is known. Small RGB PNGs as data URIs, for
atlas.html's hover panel.
"""
from __future__ import annotations

import base64
import io
from typing import Sequence

import numpy as np

from cytoself_jax.analysis.common import check_choice, fail

THUMBNAIL_PIXELS = 48  # side of a thumbnail in pixels; crops are resized to it
PERCENTILES = (1.0, 99.8)  # the contrast window: these percentiles of the pixels it is computed over
CONTRAST = ("protein", "dataset")  # one window per protein (its crops' pixels) or one for all crops
SCALE_BARS_UM = (1, 2, 5, 10, 20, 50, 100)  # scale bar lengths to choose from (the longest up to a third of the crop)
FIDUCIAL_PREFERENCE = ("nucleus", "fiducial")  # the counterstain shown in magenta, first found; then any other
# channel but 'distance'; with only 'distance' (the signed distance to the nucleus edge), its inside (> 0) is shown


def counterstain_channel(channels: Sequence[str]) -> str | None:
    """The channel shown in magenta: nucleus, else fiducial, else any other non-protein channel but distance,
    else distance (as the nucleus mask); None with the protein channel alone."""
    for name in FIDUCIAL_PREFERENCE:
        if name in channels:
            return name
    others = [c for c in channels if c not in ("protein", "distance")]
    return others[0] if others else ("distance" if "distance" in channels else None)


def contrast_limits(planes: np.ndarray, groups: np.ndarray | None = None) -> dict[str, tuple[float, float]]:
    """The contrast window (PERCENTILES of the pixels) of each group of 2-D planes (n, H, W); groups (n,) names
    each plane's group (a protein), None: one window for all, under the key ''."""
    planes = np.asarray(planes, dtype=np.float32)
    if planes.ndim != 3 or len(planes) == 0:
        raise fail("contrast_limits", "planes", f"expected (n, H, W) with n >= 1, got shape {planes.shape}")
    groups = np.full(len(planes), "", dtype=object) if groups is None else np.asarray(groups, dtype=object)
    limits = {}
    for name in dict.fromkeys(groups):
        lo, hi = np.percentile(planes[groups == name], PERCENTILES)
        limits[str(name)] = (float(lo), float(hi))
    return limits


def scale_bar_um(width_px: int, pixel_size_um: float) -> int | None:
    """The longest of SCALE_BARS_UM up to a third of the crop's width (None when the pixel size is unknown, <= 0,
    or every bar is too long)."""
    if not pixel_size_um or pixel_size_um <= 0:
        return None
    fitting = [b for b in SCALE_BARS_UM if b <= width_px * pixel_size_um / 3]
    return fitting[-1] if fitting else None


def _scaled(plane: np.ndarray, limits: tuple[float, float]) -> np.ndarray:
    lo, hi = limits
    plane = np.asarray(plane, dtype=np.float32)
    return np.clip((plane - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(plane)


def composite_png(protein: np.ndarray, limits: tuple[float, float], counterstain: np.ndarray | None = None,
                  counterstain_limits: tuple[float, float] | None = None, bar_um: int | None = None,
                  pixel_size_um: float = 0.0, size: int = THUMBNAIL_PIXELS) -> str:
    """A data URI (base64 RGB PNG, size x size) of one crop: protein (H, W) in green scaled by `limits`, the
    counterstain (H, W) in magenta scaled by its limits (as given: a mask is 0/1), and a white scale bar of
    `bar_um` micrometres in the lower right (needs pixel_size_um, the crop's pixel size)."""
    from PIL import Image

    green = _scaled(protein, limits)
    magenta = (np.zeros_like(green) if counterstain is None
               else _scaled(counterstain, counterstain_limits or (0.0, 1.0)))
    rgb = np.stack([magenta, green, magenta], axis=-1)
    picture = Image.fromarray((rgb * 255).astype(np.uint8), "RGB").resize((size, size), Image.Resampling.BILINEAR)
    if bar_um:
        pixels = np.asarray(picture).copy()
        length = max(1, int(round(bar_um / pixel_size_um * size / green.shape[1])))
        margin = max(2, size // 16)
        pixels[size - margin - 2:size - margin, size - margin - length:size - margin] = 255
        picture = Image.fromarray(pixels, "RGB")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def crop_thumbnails(images, rows: Sequence[int], proteins: np.ndarray, channels: Sequence[str],
                    contrast: str = "protein", pixel_size_um: float = 0.0, contrast_crops: int = 8,
                    seed: int = 0) -> tuple[dict[int, str], str]:
    """Thumbnails of the crops at positions `rows` of `images` (N, H, W, C; a memory map is fine: only the crops
    needed are read), whose proteins are `proteins` (N,) and channels `channels`.

    contrast 'protein': each protein's window from up to `contrast_crops` of its crops (seeded); 'dataset': one
    window from up to 64 * contrast_crops crops. The counterstain's window is always the dataset's. Returns
    (row -> data URI, the note that says what the colours and the scale bar are).
    """
    check_choice(contrast, CONTRAST, "crop_thumbnails", "contrast")
    proteins = np.asarray(proteins).astype(str)
    rng = np.random.default_rng(seed)
    p_ch = list(channels).index("protein")
    stain = counterstain_channel(channels)
    s_ch = list(channels).index(stain) if stain else None
    if contrast == "protein":
        limits = {}
        for name in np.unique(proteins[np.asarray(rows)]):
            own = np.flatnonzero(proteins == name)
            pick = np.sort(rng.choice(own, size=min(contrast_crops, len(own)), replace=False))
            limits.update(contrast_limits(np.asarray(images[pick])[..., p_ch], np.full(len(pick), name, object)))
    sample = np.sort(rng.choice(len(proteins), size=min(64 * contrast_crops, len(proteins)), replace=False))
    sampled = np.asarray(images[sample])
    dataset = contrast_limits(sampled[..., p_ch])[""]
    stain_limits = None
    if stain == "distance":
        stain_limits = (0.0, 1.0)
    elif stain:
        stain_limits = contrast_limits(sampled[..., s_ch])[""]
    width = int(images.shape[2])
    bar = scale_bar_um(width, pixel_size_um)
    out = {}
    for row in rows:
        crop = np.asarray(images[int(row)])
        counter = None if s_ch is None else crop[..., s_ch]
        if stain == "distance":
            counter = (counter > 0).astype(np.float32) * 0.5  # the nucleus mask, half bright
        window = limits[proteins[row]] if contrast == "protein" else dataset
        out[int(row)] = composite_png(crop[..., p_ch], window, counter, stain_limits, bar, pixel_size_um)
    note = thumbnail_note(stain, contrast, bar)
    return out, note


def thumbnail_note(stain: str | None, contrast: str, bar_um: int | None) -> str:
    """One line under every thumbnail: what green, magenta, the contrast and the bar are."""
    parts = ["green: protein"]
    if stain == "distance":
        parts.append("magenta: nucleus mask (distance > 0)")
    elif stain:
        parts.append(f"magenta: {stain}")
    parts.append("contrast fixed per protein" if contrast == "protein" else "contrast fixed for the dataset")
    parts.append(f"bar: {bar_um} µm" if bar_um else "no scale bar (pixel size unknown: --pixel_size_um)")
    return "; ".join(parts)

