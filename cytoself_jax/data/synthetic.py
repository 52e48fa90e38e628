"""Procedural fluorescence cells: the built-in synthetic dataset.

Each synthetic protein belongs to one localization family (a visual pattern relative to the cell: nucleus,
nucleolus, cytosol, vesicles, ...) and has its own variant of that family's parameters, so proteins of one
family look alike but can be told apart. Cells are drawn as irregular ellipses (cell and nucleus), the
protein pattern and a Hoechst-like nuclear stain are rendered into a canvas, blurred by a Gaussian PSF, then
get background, Poisson shot noise and Gaussian read noise. Intensities are raw camera counts.

Everything is a function of an explicit `numpy.random.Generator`; `crop_rng(seed, protein, crop)` and
`field_rng(seed, protein, field)` give the generators the dataset uses, so every crop is reproducible on its
own (and independent of how generation is chunked or parallelized).

Lengths are in pixels. Family feature sizes are given for a cell of radius `REFERENCE_RADIUS` and scale with
the actual cell radius, so a crop of any size shows the same biology.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree
from tqdm.auto import tqdm

from cytoself_jax.data.store import CropStore, create_store
from cytoself_jax.imaging.distance import signed_distance

REFERENCE_RADIUS = 20.0  # px: the cell radius for which family feature sizes below are given
CROP_CELL_RADIUS = 0.34  # mean cell radius in a crop, as a fraction of the crop side
CAMERA_OFFSET = 100.0  # counts added by the camera to every pixel

# Key spaces of the per-object random generators (see `crop_rng`).
_PROTEIN_KEY, _FIELD_KEY, _CROP_KEY, _COMPLEX_KEY = 0, 1, 2, 3


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


# ---------------------------------------------------------------------------------------------------------
# Localization families: each maps (rng, frame, params) to a non-negative pre-PSF pattern on the window.
# ---------------------------------------------------------------------------------------------------------
def _nucleoplasm(rng: np.random.Generator, f: Frame, p: Mapping[str, float]) -> np.ndarray:
    texture = np.clip(1.0 + p["texture"] * _noise(rng, f.shape, 1.2 * f.scale), 0.0, None)
    holes = 1.0 - p["exclusion"] * np.clip((1.0 - f.nucleolus_q) * f.nucleolus_radius + 0.5, 0.0, 1.0)
    return f.nucleus * texture * holes + p["cyto_ratio"] * f.cytoplasm


def _nucleolus(rng: np.random.Generator, f: Frame, p: Mapping[str, float]) -> np.ndarray:
    size = p["size"]
    body = np.clip((size - f.nucleolus_q) * f.nucleolus_radius + 0.5, 0.0, 1.0)
    ring = np.exp(-0.5 * ((f.nucleolus_q - 0.8 * size) / (0.22 * size)) ** 2)
    grains = np.clip(1.0 + p["granularity"] * _noise(rng, f.shape, 0.7 * f.scale), 0.0, None)
    blobs = ((1.0 - p["rim"]) * body + p["rim"] * ring * (f.nucleolus_q < 1.1 * size)) * grains
    return blobs * f.nucleus + p["nucleoplasm"] * f.nucleus


def _cytosol(rng: np.random.Generator, f: Frame, p: Mapping[str, float]) -> np.ndarray:
    texture = np.clip(1.0 + p["texture"] * _noise(rng, f.shape, p["grain"] * f.scale), 0.0, None)
    gradient = 1.0 + p["gradient"] * (f.depth - 0.5)
    return texture * (f.cytoplasm * gradient + p["nuclear_ratio"] * f.nucleus)


def _vesicles(rng: np.random.Generator, f: Frame, p: Mapping[str, float]) -> np.ndarray:
    n = max(1, int(rng.poisson(p["count"])))
    rows, cols = _sample(rng, f.cytoplasm * np.exp(-p["perinuclear"] * f.depth), n)
    return _spots(rng, f, rows, cols, p["spot_sigma"] * f.scale, amp_sd=0.45) + p["diffuse"] * f.cytoplasm


def _mitochondria(rng: np.random.Generator, f: Frame, p: Mapping[str, float]) -> np.ndarray:
    n = max(1, int(rng.poisson(p["segments"])))
    rows, cols = _sample(rng, f.cytoplasm * np.exp(-p["perinuclear"] * f.depth), n)
    lengths = p["length"] * f.scale * rng.uniform(0.5, 1.5, n)
    tubes = _curves(rng, f.shape, rows, cols, rng.uniform(0, 2 * np.pi, n), lengths, p["curvature"] / np.sqrt(f.scale))
    tubes = _blur(tubes, p["thickness"] * f.scale) * f.cytoplasm
    return tubes / max(tubes.max(), 1e-12) + 0.03 * f.cytoplasm


def _membrane(rng: np.random.Generator, f: Frame, p: Mapping[str, float]) -> np.ndarray:
    band = np.exp(-0.5 * (f.edge / (p["width"] * f.scale)) ** 2) * f.cell
    patches = np.clip(1.0 + p["patchiness"] * _noise(rng, f.shape, 2.0 * f.scale), 0.1, None)
    return band * patches + p["cyto_ratio"] * f.cytoplasm


def _reticulum(rng: np.random.Generator, f: Frame, p: Mapping[str, float]) -> np.ndarray:
    # Polygonal tubule mesh: edges of a Voronoi tessellation whose seeds crowd near the nucleus.
    spacing = p["mesh"] * f.scale
    n = max(4, int(f.cytoplasm.sum() / spacing**2))
    seeds = np.stack(_sample(rng, f.cytoplasm * np.exp(-p["perinuclear"] * f.depth), n), axis=1)
    grid = np.stack(np.indices(f.shape).reshape(2, -1), axis=1)
    d, _ = cKDTree(seeds).query(grid, k=2)
    mesh = np.exp(-0.5 * ((d[:, 1] - d[:, 0]) / (p["width"] * f.scale)) ** 2).reshape(f.shape)
    mesh *= f.cytoplasm * (0.35 + 0.65 * np.exp(-2.0 * f.depth))
    envelope = np.exp(-0.5 * (f.nuc_edge / (0.7 * f.scale)) ** 2) * f.cell
    sheets = f.cytoplasm * np.exp(-f.depth / 0.2)
    return mesh + p["envelope"] * envelope + p["sheet"] * sheets


def _golgi(rng: np.random.Generator, f: Frame, p: Mapping[str, float]) -> np.ndarray:
    n = max(2, int(rng.poisson(p["elements"])))
    side = rng.uniform(0.0, 2 * np.pi)
    angles = side + rng.normal(0.0, p["arc"], n)
    gaps = (p["gap"] + np.abs(rng.normal(0.0, p["spread"], n))) * f.scale
    rows, cols = f.around_nucleus(angles, gaps)
    cluster = _spots(rng, f, rows, cols, p["element_sigma"] * f.scale) * f.cell
    return cluster + p["diffuse"] * f.cytoplasm


def _speckles(rng: np.random.Generator, f: Frame, p: Mapping[str, float]) -> np.ndarray:
    n = max(1, int(rng.poisson(p["count"])))
    interior = np.clip(f.nuc_edge / (1.5 * f.scale), 0.0, 1.0) * (f.nucleolus_q > 1.2)
    rows, cols = _sample(rng, interior, n)
    speckles = _spots(rng, f, rows, cols, p["spot_sigma"] * f.scale) * f.nucleus
    return speckles + p["nucleoplasm"] * f.nucleus * (0.3 + 0.7 * (f.nucleolus_q > 1.0))


def _centrosome(rng: np.random.Generator, f: Frame, p: Mapping[str, float]) -> np.ndarray:
    angle = rng.uniform(0.0, 2 * np.pi)
    row, col = f.around_nucleus(np.array([angle]), np.array([p["gap"] * f.scale + 1.0]))
    if rng.uniform() < p["pair"]:  # two centrioles / a duplicated centrosome
        a = rng.uniform(0.0, 2 * np.pi)
        row = np.append(row, row[0] + 1.6 * f.scale * np.sin(a))
        col = np.append(col, col[0] + 1.6 * f.scale * np.cos(a))
    dots = _spots(rng, f, row, col, p["dot_sigma"] * f.scale, amp_sd=0.2)
    halo = _spots(rng, f, row, col, 3.0 * f.scale, amp_sd=0.0)
    return (dots + p["halo"] * halo) * f.cell + p["cyto_ratio"] * f.cytoplasm


def _actin(rng: np.random.Generator, f: Frame, p: Mapping[str, float]) -> np.ndarray:
    n = max(1, int(rng.poisson(p["fibres"])))
    rows, cols = _sample(rng, f.cell, n)
    angles = rng.uniform(0.0, np.pi) + rng.normal(0.0, p["spread"], n)
    half = 1.3 * f.cell_geom.outline.radius
    starts_r, starts_c = rows - half * np.sin(angles), cols - half * np.cos(angles)
    fibres = _curves(rng, f.shape, starts_r, starts_c, angles, np.full(n, 2 * half), curvature=0.02)
    fibres = _blur(fibres, p["width"] * f.scale) * f.cell * (1.0 - 0.6 * f.nucleus)
    cortex = np.exp(-0.5 * (f.edge / (1.5 * f.scale)) ** 2) * f.cell
    return fibres / max(fibres.max(), 1e-12) + p["cortex"] * cortex + p["cyto_ratio"] * f.cytoplasm


@dataclasses.dataclass(frozen=True)
class Family:
    """A localization family: parameter ranges (a protein draws uniformly inside each) and its renderer."""

    name: str
    ranges: Mapping[str, tuple[float, float]]
    render: Callable[[np.random.Generator, Frame, Mapping[str, float]], np.ndarray]


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("nucleus", {"texture": (0.05, 0.4), "exclusion": (0.2, 0.9), "cyto_ratio": (0.02, 0.2)}, _nucleoplasm),
    Family("nucleolus", {"size": (0.75, 1.3), "rim": (0.0, 0.8), "granularity": (0.0, 0.5),
                         "nucleoplasm": (0.03, 0.3)}, _nucleolus),
    Family("cytosol", {"texture": (0.05, 0.35), "grain": (0.8, 3.0), "gradient": (-0.8, 0.8),
                       "nuclear_ratio": (0.05, 0.45)}, _cytosol),
    Family("vesicles", {"count": (12, 70), "spot_sigma": (0.5, 1.4), "perinuclear": (0.0, 2.5),
                        "diffuse": (0.0, 0.15)}, _vesicles),
    Family("mitochondria", {"segments": (8, 28), "length": (4.0, 14.0), "thickness": (0.5, 1.1),
                            "curvature": (0.1, 0.45), "perinuclear": (0.0, 1.5)}, _mitochondria),
    Family("membrane", {"width": (0.8, 2.0), "patchiness": (0.0, 0.6), "cyto_ratio": (0.02, 0.2)}, _membrane),
    Family("er", {"mesh": (2.5, 5.0), "width": (0.3, 0.7), "envelope": (0.4, 1.2), "perinuclear": (0.5, 3.0),
                  "sheet": (0.0, 0.5)}, _reticulum),
    Family("golgi", {"elements": (8, 20), "arc": (0.25, 0.8), "spread": (0.8, 2.5), "gap": (0.0, 2.5),
                     "element_sigma": (0.6, 1.3), "diffuse": (0.0, 0.08)}, _golgi),
    Family("nuclear_speckles", {"count": (8, 35), "spot_sigma": (0.6, 1.4), "nucleoplasm": (0.1, 0.45)}, _speckles),
    Family("centrosome", {"pair": (0.2, 0.9), "dot_sigma": (0.5, 0.9), "gap": (0.5, 3.0), "halo": (0.0, 0.35),
                          "cyto_ratio": (0.02, 0.12)}, _centrosome),
    Family("actin", {"fibres": (4, 16), "spread": (0.05, 0.6), "width": (0.4, 0.8), "cortex": (0.3, 1.0),
                     "cyto_ratio": (0.05, 0.2)}, _actin),
)}
FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)


# ---------------------------------------------------------------------------------------------------------
# Proteins and acquisitions
# ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ProteinSpec:
    """A synthetic protein: neutral name, family, its own family parameters, peak brightness (counts)."""

    name: str
    family: str
    params: Mapping[str, float]
    brightness: float


def draw_protein(rng: np.random.Generator, family: str, name: str = "SYN") -> ProteinSpec:
    """A protein of `family` with parameters drawn uniformly inside the family's ranges."""
    if family not in FAMILIES:
        raise SyntheticError(f"synthetic: family: expected one of {', '.join(FAMILY_NAMES)}, got {family!r}")
    params = {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in FAMILIES[family].ranges.items()}
    return ProteinSpec(name, family, params, brightness=float(np.exp(rng.uniform(np.log(300), np.log(1500)))))


COMPLEX_SIZE = 3  # subunits of each synthetic complex


def complex_members(num_proteins: int, complexes: int, families: Sequence[str] = FAMILY_NAMES) -> list[list[int]]:
    """Protein indices of each synthetic complex: complex c is COMPLEX_SIZE proteins of family c % F (F families,
    round-robin as in make_proteins), its (c // F)-th group of that family's proteins."""
    n_families, out = len(families), []
    for c in range(complexes):
        group = c // n_families
        members = [c % n_families + n_families * (COMPLEX_SIZE * group + m) for m in range(COMPLEX_SIZE)]
        if members[-1] >= num_proteins:
            raise SyntheticError(f"synthetic: complexes: {complexes} complexes of {COMPLEX_SIZE} proteins of one "
                                 f"family need more than {num_proteins} proteins (families round-robin)")
        out.append(members)
    return out


def complex_name(c: int) -> str:
    return f"CPLX{c + 1}"


def make_proteins(num_proteins: int, seed: int, families: Sequence[str] = FAMILY_NAMES,
                  complexes: int = 0) -> list[ProteinSpec]:
    """`num_proteins` proteins named SYN001..., families assigned round-robin; protein i depends only on (seed, i).

    With complexes > 0, the subunits of each complex (complex_members) share one draw of their family's
    parameters (the complex's sub-pattern, depending only on (seed, complex)) and keep their own brightness, so
    they look alike while other proteins of the family do not; complexes=0 gives the proteins of before."""
    if num_proteins < 1:
        raise SyntheticError(f"synthetic: proteins: expected at least 1, got {num_proteins}")
    width = max(3, len(str(num_proteins)))
    proteins = [draw_protein(_rng(seed, _PROTEIN_KEY, i), families[i % len(families)], f"SYN{i + 1:0{width}d}")
                for i in range(num_proteins)]
    for c, members in enumerate(complex_members(num_proteins, complexes, families)):
        shared = draw_protein(_rng(seed, _COMPLEX_KEY, c), proteins[members[0]].family).params
        for i in members:
            proteins[i] = dataclasses.replace(proteins[i], params=dict(shared))
    return proteins


def complexes_csv_path(store_path: str | os.PathLike) -> Path:
    """Where write_synthetic_store puts the ground-truth complexes (protein, complex) of a store: beside it."""
    store_path = Path(store_path)
    return store_path.with_name(store_path.name + "_complexes.csv")


@dataclasses.dataclass(frozen=True)
class Acquisition:
    """Imaging conditions of one field of view (the batch effect shared by its cells).

    gain multiplies protein signal, background/nucleus_background are out-of-focus counts, psf_sigma is the
    PSF width for a cell of REFERENCE_RADIUS (px), read_noise the camera's Gaussian noise sd (counts).
    """

    gain: float
    background: float
    nucleus_gain: float
    nucleus_background: float
    psf_sigma: float
    read_noise: float


def draw_acquisition(rng: np.random.Generator) -> Acquisition:
    """Imaging conditions of one field: mild field-to-field variation of brightness, background and focus."""
    return Acquisition(
        gain=float(rng.lognormal(0.0, 0.15)),
        background=float(rng.uniform(15.0, 45.0)),
        nucleus_gain=float(rng.uniform(700.0, 1600.0)),
        nucleus_background=float(rng.uniform(10.0, 30.0)),
        psf_sigma=float(rng.uniform(0.8, 1.15)),
        read_noise=float(rng.uniform(2.0, 5.0)),
    )


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=tuple(int(k) for k in key)))


def field_rng(seed: int, protein: int, field: int) -> np.random.Generator:
    """The generator of field `field` of protein number `protein` in the dataset drawn with `seed`."""
    return _rng(seed, _FIELD_KEY, protein, field)


def crop_rng(seed: int, protein: int, crop: int) -> np.random.Generator:
    """The generator of crop `crop` of protein number `protein` in the dataset drawn with `seed`."""
    return _rng(seed, _CROP_KEY, protein, crop)


# ---------------------------------------------------------------------------------------------------------
# Rendering cells into a canvas
# ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FieldOfView:
    """A drawn image: protein and nucleus channels (H, W) float32 in camera counts; nucleus_labels and
    cell_labels (H, W) int32 (0 background, i+1 the nucleus / whole cell of cell i); centres (n, 2) float64
    nucleus centres (row, col) px."""

    protein: np.ndarray
    nucleus: np.ndarray
    nucleus_labels: np.ndarray
    cell_labels: np.ndarray
    centres: np.ndarray


def _hoechst(rng: np.random.Generator, f: Frame) -> np.ndarray:
    """Nuclear stain: textured chromatin, dimmer nucleoli, a slightly brighter periphery."""
    chromatin = np.clip(1.0 + 0.18 * _noise(rng, f.shape, 0.8 * f.scale), 0.2, None)
    nucleoli = np.clip((1.0 - f.nucleolus_q) * f.nucleolus_radius + 0.5, 0.0, 1.0)
    periphery = 1.0 + 0.15 * np.exp(-np.maximum(f.nuc_edge, 0.0) / (2.0 * f.scale))
    return f.nucleus * chromatin * (1.0 - 0.45 * nucleoli) * periphery


def render(rng: np.random.Generator, shape: tuple[int, int], cells: Sequence[Cell], protein: ProteinSpec,
           acquisition: Acquisition) -> FieldOfView:
    """Render `cells` expressing `protein` into an (H, W) canvas, imaged with `acquisition`.

    Where cells overlap, a pixel belongs to the cell whose outline it is deepest inside; a cell always owns
    its own nucleus, so nuclei must not overlap (the callers place them apart).
    """
    family = FAMILIES[protein.family]
    prot = np.zeros(shape)
    nuc = np.zeros(shape)
    labels = np.zeros(shape, dtype=np.int32)
    cell_labels = np.zeros(shape, dtype=np.int32)
    owner_score = np.full(shape, np.inf)
    scale = float(np.mean([c.outline.radius for c in cells])) / REFERENCE_RADIUS
    for i, cell in enumerate(cells):
        # The cell is drawn on its whole bounding box, even past the canvas edge, so that a pattern's
        # normalization does not depend on how much of the cell the canvas shows.
        reach = cell.outline.extent() + 2.0
        cy, cx = cell.outline.centre
        r0, c0 = int(np.floor(cy - reach)), int(np.floor(cx - reach))
        r1, c1 = int(np.ceil(cy + reach)) + 1, int(np.ceil(cx + reach)) + 1
        dst = (slice(max(r0, 0), min(r1, shape[0])), slice(max(c0, 0), min(c1, shape[1])))
        if dst[0].start >= dst[0].stop or dst[1].start >= dst[1].stop:
            continue  # entirely outside the canvas
        src = (slice(dst[0].start - r0, dst[0].stop - r0), slice(dst[1].start - c0, dst[1].stop - c0))
        f = _frame(cell, (slice(r0, r1), slice(c0, c1)))
        params = {k: v * float(rng.lognormal(0.0, 0.08)) for k, v in protein.params.items()}
        pattern = family.render(rng, f, params)
        pattern = pattern[src] / max(float(pattern.max()), 1e-12) * (protein.brightness * cell.expression)
        stain = _hoechst(rng, f)[src] * cell.stain
        in_nucleus = f.nuc_edge[src] > 0
        score = np.where(in_nucleus, -1.0, np.where(f.edge[src] > -0.5, f.rho_cell[src], np.inf))
        take = score < owner_score[dst]
        owner_score[dst] = np.where(take, score, owner_score[dst])
        prot[dst] = np.where(take, pattern, prot[dst])
        nuc[dst] = np.where(take, stain, nuc[dst])
        labels[dst] = np.where(take & in_nucleus, i + 1, labels[dst])
        cell_labels[dst] = np.where(take, i + 1, cell_labels[dst])
    psf = acquisition.psf_sigma * scale * float(rng.uniform(0.93, 1.07))
    protein_img = _image(rng, _blur(prot, psf, "reflect") * acquisition.gain, acquisition.background, acquisition)
    nucleus_img = _image(rng, _blur(nuc, 1.15 * psf, "reflect") * acquisition.nucleus_gain,
                         acquisition.nucleus_background, acquisition)
    centres = np.array([c.nucleus.centre for c in cells], dtype=np.float64).reshape(-1, 2)
    return FieldOfView(protein_img, nucleus_img, labels, cell_labels, centres)


def _image(rng: np.random.Generator, signal: np.ndarray, background: float, acquisition: Acquisition) -> np.ndarray:
    """Camera counts: offset + Poisson(signal + background) + Gaussian read noise, as float32."""
    # Uneven illumination: a gentle random tilt of the background across the image.
    tilt = rng.normal(0.0, 0.06, 2)
    rows = np.linspace(-1.0, 1.0, signal.shape[0])[:, None]
    cols = np.linspace(-1.0, 1.0, signal.shape[1])[None, :]
    shading = 1.0 + tilt[0] * rows + tilt[1] * cols
    photons = rng.poisson(np.maximum(signal + background * shading, 0.0))
    read = rng.normal(0.0, acquisition.read_noise, signal.shape)
    return (CAMERA_OFFSET + photons + read).astype(np.float32)


def draw_field(rng: np.random.Generator, shape: tuple[int, int] = (256, 256), n_cells: int = 8, *,
               family: str | None = None, protein: ProteinSpec | None = None, cell_radius: float = 22.0,
               acquisition: Acquisition | None = None) -> FieldOfView:
    """A field of view with `n_cells` cells at random, non-overlapping nucleus positions.

    Give `protein`, or a `family` (a protein variant is then drawn), or neither (a random family).
    Nuclei lie entirely inside the field; cells may be cut by its edge. Label i+1 is the nucleus whose centre
    is `centres[i]` (row, col px). Raises SyntheticError when the cells do not fit.
    """
    if protein is None:
        family = family if family is not None else FAMILY_NAMES[int(rng.integers(len(FAMILY_NAMES)))]
        protein = draw_protein(rng, family)
    h, w = shape
    if min(h, w) < 2.5 * cell_radius:
        raise SyntheticError(f"synthetic: shape: field {shape} too small for cells of radius {cell_radius} px")
    cells: list[Cell] = []
    for _ in range(200 * n_cells):
        if len(cells) == n_cells:
            break
        cell = draw_cell(rng, rng.uniform((0.0, 0.0), (h, w)), cell_radius)
        (row, col), reach = cell.nucleus.centre, cell.nucleus.extent() + 1.0
        inside = reach <= row <= h - 1 - reach and reach <= col <= w - 1 - reach
        if inside and all(np.hypot(row - o.nucleus.centre[0], col - o.nucleus.centre[1])
                          >= max(1.7 * cell_radius, reach + o.nucleus.extent() + 3.0) for o in cells):
            cells.append(cell)
    if len(cells) < n_cells:
        raise SyntheticError(f"synthetic: n_cells: only {len(cells)} cells of radius {cell_radius} px fit in a "
                             f"{h}x{w} field, asked for {n_cells}")
    return render(rng, shape, cells, protein, acquisition or draw_acquisition(rng))


def draw_crop(rng: np.random.Generator, protein: ProteinSpec, size: int = 64,
              acquisition: Acquisition | None = None) -> FieldOfView:
    """A (size, size) crop centred (+- a few px) on one cell's nucleus, cell 0; often with partial neighbours."""
    radius = CROP_CELL_RADIUS * size
    centre = (size - 1) / 2.0 + rng.normal(0.0, 0.03 * size, 2)
    cells = [draw_cell(rng, centre, radius)]
    for _ in range(int(rng.choice(3, p=(0.45, 0.4, 0.15)))):
        angle = rng.uniform(0.0, 2 * np.pi)
        distance = 2.0 * radius * rng.uniform(0.95, 1.1)
        cells.append(draw_cell(rng, centre + distance * np.array([np.sin(angle), np.cos(angle)]), radius))
    return render(rng, (size, size), cells, protein, acquisition or draw_acquisition(rng))


CHANNELS: tuple[str, ...] = ("protein", "nucleus", "distance")


def crop_channels(crop: FieldOfView) -> np.ndarray:
    """(H, W, 3) float32: protein, nucleus, signed distance of all nuclei in the crop (the store's channels)."""
    return np.stack([crop.protein, crop.nucleus, signed_distance(crop.nucleus_labels > 0)], axis=-1)


# ---------------------------------------------------------------------------------------------------------
# The dataset: proteins x fields x crops, streamed into a crop store
# ---------------------------------------------------------------------------------------------------------
BLOCK = 128  # crops drawn per task: bounds memory per worker and keeps the progress bar moving


def field_of_crop(crop: int, crops_per_protein: int, fields_per_protein: int) -> int:
    """The field (0-based) a protein's crop number `crop` comes from: consecutive crops share a field."""
    return crop * fields_per_protein // crops_per_protein


def dataset_table(proteins: Sequence[ProteinSpec], crops_per_protein: int, fields_per_protein: int,
                  seed: int) -> pd.DataFrame:
    """The crop table (protein, fov, family, source) of a synthetic dataset, in array order."""
    fields = [field_of_crop(j, crops_per_protein, fields_per_protein) + 1 for j in range(crops_per_protein)]
    return pd.DataFrame({
        "protein": [p.name for p in proteins for _ in fields],
        "fov": [f"{p.name}/{k}" for p in proteins for k in fields],
        "family": [p.family for p in proteins for _ in fields],
        "source": f"synthetic seed={seed}",
    })


def draw_protein_crops(protein: ProteinSpec, index: int, start: int, stop: int, *, crops_per_protein: int,
                       fields_per_protein: int, size: int, seed: int) -> np.ndarray:
    """Crops start..stop-1 of protein number `index`: (stop - start, size, size, 3) float32 in CHANNELS order.

    Each crop depends only on (seed, index, crop number); its field's imaging conditions only on
    (seed, index, field), so any chunking gives the same dataset.
    """
    acquisitions: dict[int, Acquisition] = {}
    out = np.empty((stop - start, size, size, len(CHANNELS)), dtype=np.float32)
    for j in range(start, stop):
        k = field_of_crop(j, crops_per_protein, fields_per_protein)
        if k not in acquisitions:
            acquisitions[k] = draw_acquisition(field_rng(seed, index, k))
        out[j - start] = crop_channels(draw_crop(crop_rng(seed, index, j), protein, size, acquisitions[k]))
    return out


def _blocks(num_proteins: int, crops_per_protein: int) -> Iterator[tuple[int, int, int]]:
    for i in range(num_proteins):
        for start in range(0, crops_per_protein, BLOCK):
            yield i, start, min(start + BLOCK, crops_per_protein)


def write_synthetic_store(path: str | os.PathLike, *, proteins: int = 40, crops_per_protein: int = 120,
                          fields_per_protein: int = 6, size: int = 64, seed: int = 0, dtype: str = "float32",
                          workers: int = 1, overwrite: bool = False, progress: bool = True,
                          complexes: int = 0) -> CropStore:
    """Draw a synthetic dataset and stream it into a crop store at `path`; returns the opened store.

    `proteins` proteins (families round-robin), each with `crops_per_protein` crops of `size` x `size` px split
    evenly over `fields_per_protein` fields of view. Channels CHANNELS, raw counts / px; dtype float32 or
    float16 (enough: counts stay far below 65504 and float16's rounding is far below the shot noise).
    `workers` > 1 draws in that many processes; the result is identical for any `workers`.
    `complexes` > 0 draws that many complexes (see make_proteins) and writes their subunits as a CSV (protein,
    complex) beside the store (complexes_csv_path), the ground truth of eval.py --complexes.
    """
    checks = {"proteins": (proteins, 1), "crops_per_protein": (crops_per_protein, 1),
              "fields_per_protein": (fields_per_protein, 1), "size": (size, 16), "workers": (workers, 1)}
    for name, (value, low) in checks.items():
        if int(value) != value or value < low:
            raise SyntheticError(f"synthetic: {name}: expected an integer >= {low}, got {value!r}")
    if fields_per_protein > crops_per_protein:
        raise SyntheticError(f"synthetic: fields_per_protein: expected at most crops_per_protein "
                             f"({crops_per_protein}) so every field has a crop, got {fields_per_protein}")
    if dtype not in ("float32", "float16"):
        raise SyntheticError(f"synthetic: dtype: expected 'float32' or 'float16', got {dtype!r}")
    specs = make_proteins(proteins, seed, complexes=complexes)
    table = dataset_table(specs, crops_per_protein, fields_per_protein, seed)
    if complexes:
        table["source"] = f"synthetic seed={seed} complexes={complexes}"
    kwargs = dict(crops_per_protein=crops_per_protein, fields_per_protein=fields_per_protein, size=size, seed=seed)
    with (create_store(path, len(table), (size, size, len(CHANNELS)), CHANNELS, dtype, overwrite=overwrite) as writer,
          tqdm(total=len(table), desc="drawing synthetic crops", unit="crop", disable=not progress) as bar):
        if workers == 1:
            blocks = (draw_protein_crops(specs[i], i, a, b, **kwargs)
                      for i, a, b in _blocks(proteins, crops_per_protein))
            _write_blocks(writer.images, _blocks(proteins, crops_per_protein), blocks, crops_per_protein, bar)
        else:
            # spawn, not fork: the parent may hold JAX's threads, which fork does not survive.
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                results = _bounded_map(lambda i, a, b: pool.submit(draw_protein_crops, specs[i], i, a, b, **kwargs),
                                       _blocks(proteins, crops_per_protein), 2 * workers)
                _write_blocks(writer.images, _blocks(proteins, crops_per_protein), results, crops_per_protein, bar)
        store = writer.finalize(table)
    if complexes:
        pd.DataFrame([(specs[i].name, complex_name(c)) for c, members in
                      enumerate(complex_members(proteins, complexes)) for i in members],
                     columns=["protein", "complex"]).to_csv(complexes_csv_path(path), index=False)
    return store


def _bounded_map(submit: Callable[[int, int, int], Future],
                 blocks: Iterator[tuple[int, int, int]], in_flight: int) -> Iterator[np.ndarray]:
    """Results of `submit` over `blocks` in order, with at most `in_flight` blocks drawn but not yet written."""
    queue: deque[Future] = deque()
    for block in blocks:
        queue.append(submit(*block))
        if len(queue) >= in_flight:
            yield queue.popleft().result()
    while queue:
        yield queue.popleft().result()


def _write_blocks(images: np.ndarray, blocks: Iterator[tuple[int, int, int]], arrays: Iterator[np.ndarray],
                  crops_per_protein: int, bar: tqdm) -> None:
    for (i, a, b), array in zip(blocks, arrays):
        images[i * crops_per_protein + a:i * crops_per_protein + b] = array
        bar.update(b - a)
