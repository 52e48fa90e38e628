"""Imaging synthetic cells: a field's acquisition (the batch effect of its cells), rendering cells expressing a
protein into a canvas with a nuclear stain, PSF blur, background and camera noise; fields of view and crops."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from cytoself_jax.data.synthetic.cells import (CAMERA_OFFSET, CROP_CELL_RADIUS, REFERENCE_RADIUS, Cell, Frame,
                                               SyntheticError, _blur, _frame, _noise, draw_cell)
from cytoself_jax.data.synthetic.families import FAMILIES, FAMILY_NAMES, ProteinSpec, draw_protein
from cytoself_jax.imaging.distance import signed_distance

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
