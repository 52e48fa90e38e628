"""Synthetic cells' geometry and the small rendering helpers the localization patterns are drawn with.

A cell is an irregular ellipse (its outline) with a nucleus and nucleoli inside; a `Frame` is the cell seen on a
window of pixels (soft masks, distances to the outlines in px). Lengths are in pixels.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

REFERENCE_RADIUS = 20.0  # px: the cell radius for which family feature sizes below are given
CROP_CELL_RADIUS = 0.34  # mean cell radius in a crop, as a fraction of the crop side
CAMERA_OFFSET = 100.0  # counts added by the camera to every pixel


class SyntheticError(ValueError):
    """Bad arguments to the synthetic generator."""


# ---------------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Outline:
    """An irregular ellipse: `radius * (1 + sum_k a_k cos(k(theta - phase_k)))` along each direction.

    `centre` is (row, col) in canvas pixels, `radius` the mean radius in px, `aspect` the ratio of the long
    to the mean axis, `angle` the orientation of the long axis (radians), `amplitudes`/`phases` the radial
    harmonics k = 2, 3, ... (smooth bumps of the boundary).
    """

    centre: tuple[float, float]
    radius: float
    aspect: float
    angle: float
    amplitudes: tuple[float, ...]
    phases: tuple[float, ...]

    def _modulation(self, cos_t: np.ndarray, sin_t: np.ndarray) -> np.ndarray:
        """1 + sum_k a_k cos(k(theta - phase_k)) from cos/sin of theta (angle-addition recurrence, no trig)."""
        m = np.ones_like(cos_t)
        ck, sk = cos_t, sin_t
        for k, (a, ph) in enumerate(zip(self.amplitudes, self.phases), start=2):
            ck, sk = ck * cos_t - sk * sin_t, sk * cos_t + ck * sin_t  # cos/sin of k * theta
            m = m + a * (ck * np.cos(k * ph) + sk * np.sin(k * ph))
        return m

    def polar(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (rho, dist) at the given pixel coordinates (broadcast arrays).

        rho: normalized radius, 0 at the centre, 1 on the boundary; dist: px from the centre.
        """
        dy, dx = rows - self.centre[0], cols - self.centre[1]
        c, s = np.cos(self.angle), np.sin(self.angle)
        u, v = dx * c + dy * s, -dx * s + dy * c
        dist = np.hypot(u, v)
        safe = np.where(dist > 0, dist, 1.0)
        ellipse = np.hypot(u / self.aspect, v * self.aspect)
        return ellipse / (self.radius * self._modulation(np.where(dist > 0, u / safe, 1.0), v / safe)), dist

    def boundary(self, direction: np.ndarray | float) -> np.ndarray:
        """Distance (px) from the centre to the boundary along image-frame direction(s) in radians."""
        theta = np.asarray(direction, dtype=np.float64) - self.angle
        stretch = np.hypot(np.cos(theta) / self.aspect, np.sin(theta) * self.aspect)
        return self.radius * self._modulation(np.cos(theta), np.sin(theta)) / stretch

    def extent(self) -> float:
        """An upper bound of the distance (px) from the centre to any boundary point."""
        return self.radius * max(self.aspect, 1.0 / self.aspect) * (1.0 + float(np.sum(np.abs(self.amplitudes))))


def _draw_outline(rng: np.random.Generator, centre: Sequence[float], radius: float, aspect_sd: float,
                  harmonic_sd: float, harmonics: int) -> Outline:
    k = np.arange(2, 2 + harmonics)
    return Outline(
        centre=(float(centre[0]), float(centre[1])),
        radius=float(radius),
        aspect=float(np.exp(np.clip(rng.normal(0.0, aspect_sd), -2.5 * aspect_sd, 2.5 * aspect_sd))),
        angle=float(rng.uniform(0.0, np.pi)),
        amplitudes=tuple(np.clip(rng.normal(0.0, harmonic_sd / np.sqrt(k - 1)), -0.12, 0.12).tolist()),
        phases=tuple(rng.uniform(0.0, 2 * np.pi, harmonics).tolist()),
    )


@dataclasses.dataclass(frozen=True)
class Cell:
    """One cell: its outline, its nucleus outline, nucleoli (row, col, radius px) and stain brightnesses."""

    outline: Outline
    nucleus: Outline
    nucleoli: tuple[tuple[float, float, float], ...]
    expression: float  # this cell's protein expression, multiplies the protein's brightness
    stain: float  # this cell's nuclear stain brightness multiplier


def draw_cell(rng: np.random.Generator, nucleus_centre: Sequence[float], radius: float) -> Cell:
    """Draw one cell whose nucleus is centred at `nucleus_centre` (row, col px); `radius` is the cell radius px.

    The nucleus is 44-56 % of the cell radius, offset from the cell centre but always inside the cell.
    """
    radius = float(radius) * rng.uniform(0.88, 1.12)
    nuc_radius = radius * rng.uniform(0.44, 0.56)
    nucleus = _draw_outline(rng, nucleus_centre, nuc_radius, aspect_sd=0.10, harmonic_sd=0.035, harmonics=3)
    shape = _draw_outline(rng, (0.0, 0.0), radius, aspect_sd=0.16, harmonic_sd=0.07, harmonics=5)
    # The cell centre sits off the nucleus, never so far that the nucleus pokes out of the cell.
    inner = radius / max(shape.aspect, 1.0 / shape.aspect) * (1.0 - float(np.sum(np.abs(shape.amplitudes))))
    room = max(0.0, 0.85 * inner - nucleus.extent())
    offset_dir = rng.uniform(0.0, 2 * np.pi)
    offset = room * np.sqrt(rng.uniform(0.0, 1.0))
    cell_centre = (nucleus.centre[0] + offset * np.sin(offset_dir), nucleus.centre[1] + offset * np.cos(offset_dir))
    outline = dataclasses.replace(shape, centre=cell_centre)
    nucleoli = []
    for _ in range(int(rng.integers(1, 4))):
        a, r = rng.uniform(0.0, 2 * np.pi), nuc_radius * 0.45 * np.sqrt(rng.uniform())
        nucleoli.append((nucleus.centre[0] + r * np.sin(a), nucleus.centre[1] + r * np.cos(a),
                         nuc_radius * rng.uniform(0.13, 0.24)))
    return Cell(outline, nucleus, tuple(nucleoli), expression=float(rng.lognormal(0.0, 0.35)),
                stain=float(rng.lognormal(0.0, 0.2)))


@dataclasses.dataclass
class Frame:
    """A cell's geometry sampled on a window of the canvas (all arrays window-shaped, coordinates window-local).

    cell/nucleus: soft masks in [0, 1] (1-px anti-aliased); cytoplasm = cell * (1 - nucleus);
    edge: px inside the cell boundary (negative outside); nuc_edge: px inside the nucleus boundary;
    depth: 0 at the nuclear envelope to 1 at the plasma membrane (meaningful in the cytoplasm);
    nucleolus_q: min over nucleoli of distance / nucleolus radius (< 1 inside a nucleolus);
    scale: cell radius / REFERENCE_RADIUS (multiplies family feature sizes).
    """

    cell_geom: Cell
    origin: tuple[int, int]
    cell: np.ndarray
    nucleus: np.ndarray
    cytoplasm: np.ndarray
    edge: np.ndarray
    nuc_edge: np.ndarray
    depth: np.ndarray
    nucleolus_q: np.ndarray
    nucleolus_radius: float
    rho_cell: np.ndarray
    scale: float

    @property
    def shape(self) -> tuple[int, int]:
        return self.cell.shape

    def local(self, row: np.ndarray | float, col: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Canvas coordinates -> window coordinates."""
        return np.asarray(row) - self.origin[0], np.asarray(col) - self.origin[1]

    def around_nucleus(self, angle: np.ndarray, gap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Window coordinates of points `gap` px outside the nuclear boundary in direction(s) `angle`."""
        nuc = self.cell_geom.nucleus
        r = nuc.boundary(angle) + gap
        return self.local(nuc.centre[0] + r * np.sin(angle), nuc.centre[1] + r * np.cos(angle))


def _edge_distance(rho: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Approximate px distance to the outline along the ray from its centre, positive inside."""
    return dist / np.maximum(rho, 1e-6) - dist


def _frame(cell: Cell, window: tuple[slice, slice]) -> Frame:
    rows = np.arange(window[0].start, window[0].stop, dtype=np.float64)[:, None]
    cols = np.arange(window[1].start, window[1].stop, dtype=np.float64)[None, :]
    rho_c, dist_c = cell.outline.polar(rows, cols)
    rho_n, dist_n = cell.nucleus.polar(rows, cols)
    edge, nuc_edge = _edge_distance(rho_c, dist_c), _edge_distance(rho_n, dist_n)
    nuc_soft = np.clip(nuc_edge + 0.5, 0.0, 1.0)
    cell_soft = np.maximum(np.clip(edge + 0.5, 0.0, 1.0), nuc_soft)  # a bulging nucleus stays in its cell
    outside_nucleus = np.maximum(-nuc_edge, 0.0)
    depth = outside_nucleus / np.maximum(outside_nucleus + np.maximum(edge, 0.0), 1e-6)
    q = np.full(rho_c.shape, np.inf)
    for r0, c0, rad in cell.nucleoli:
        q = np.minimum(q, np.hypot(rows - r0, cols - c0) / rad)
    return Frame(
        cell_geom=cell, origin=(window[0].start, window[1].start), cell=cell_soft, nucleus=nuc_soft,
        cytoplasm=cell_soft * (1.0 - nuc_soft), edge=edge, nuc_edge=nuc_edge, depth=depth, nucleolus_q=q,
        nucleolus_radius=float(np.mean([n[2] for n in cell.nucleoli])), rho_cell=rho_c,
        scale=cell.outline.radius / REFERENCE_RADIUS,
    )


# ---------------------------------------------------------------------------------------------------------
# Small rendering helpers
# ---------------------------------------------------------------------------------------------------------
def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Smooth Gaussian random field with unit standard deviation and correlation length ~sigma px."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, truncate=3.0)
    return field / (field.std() + 1e-12)


def _blur(image: np.ndarray, sigma: float, mode: str = "constant") -> np.ndarray:
    """Gaussian blur; "constant" (zeros outside) for patterns on a cell's window, "reflect" for whole images."""
    return ndimage.gaussian_filter(image, sigma, mode=mode, truncate=3.0)


def _splat(shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray, weights: np.ndarray | float = 1.0) -> np.ndarray:
    """Point masses at (rows, cols) accumulated into nearest pixels; points outside the window are dropped."""
    r, c = np.rint(rows).astype(np.int64).ravel(), np.rint(cols).astype(np.int64).ravel()
    w = np.broadcast_to(np.asarray(weights, dtype=np.float64), np.shape(rows)).ravel()
    keep = (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
    flat = np.bincount(r[keep] * shape[1] + c[keep], weights=w[keep], minlength=shape[0] * shape[1])
    return flat.reshape(shape)


def _sample(rng: np.random.Generator, density: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n points (window rows, cols, sub-pixel) drawn with probability proportional to `density`."""
    p = np.maximum(density, 0.0).ravel()
    total = p.sum()
    if n <= 0 or total <= 0:
        return np.zeros(0), np.zeros(0)
    idx = rng.choice(p.size, size=n, p=p / total)
    jitter = rng.uniform(-0.5, 0.5, (2, n))
    return idx // density.shape[1] + jitter[0], idx % density.shape[1] + jitter[1]


def _spots(rng: np.random.Generator, f: Frame, rows: np.ndarray, cols: np.ndarray, sigma: float,
           amp_sd: float = 0.4) -> np.ndarray:
    """Gaussian spots of width sigma px and log-normal amplitudes, peak-normalized to ~1."""
    img = _blur(_splat(f.shape, rows, cols, rng.lognormal(0.0, amp_sd, np.size(rows))), sigma)
    return img / max(img.max(), 1e-12)


def _curves(rng: np.random.Generator, shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray,
            angles: np.ndarray, lengths: np.ndarray, curvature: float, step: float = 0.5) -> np.ndarray:
    """Persistent random-walk curves from the given starts; curvature in radians per sqrt(px)."""
    n_steps = max(1, int(np.ceil(lengths.max() / step)))
    turn = rng.normal(0.0, curvature * np.sqrt(step), (rows.size, n_steps))
    heading = angles[:, None] + np.cumsum(turn, axis=1)
    ys = rows[:, None] + np.cumsum(step * np.sin(heading), axis=1)
    xs = cols[:, None] + np.cumsum(step * np.cos(heading), axis=1)
    on = (np.arange(n_steps)[None, :] * step) < lengths[:, None]
    amp = rng.lognormal(0.0, 0.3, (rows.size, 1))
    return _splat(shape, ys, xs, on * amp * step)
