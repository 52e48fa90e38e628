"""The localization families of the synthetic proteins: each maps (rng, frame, params) to a non-negative pattern
before the PSF; a protein is one family with its own draw of the family's parameters."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from scipy.spatial import cKDTree

from cytoself_jax.data.synthetic.cells import Frame, SyntheticError, _blur, _curves, _noise, _sample, _spots

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
