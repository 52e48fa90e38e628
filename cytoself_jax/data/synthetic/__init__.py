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

Modules: cells.py (geometry, rendering helpers), families.py (localization patterns, proteins), imaging.py
(acquisition, rendering, fields of view and crops), dataset.py (the dataset and its store). The names below are
the package's interface.
"""
from cytoself_jax.data.synthetic.cells import CAMERA_OFFSET, Cell, SyntheticError, draw_cell
from cytoself_jax.data.synthetic.dataset import (complex_members, complexes_csv_path, crop_rng, draw_protein_crops,
                                                 field_rng, make_proteins, write_synthetic_store)
from cytoself_jax.data.synthetic.families import FAMILIES, FAMILY_NAMES, ProteinSpec, draw_protein
from cytoself_jax.data.synthetic.imaging import (CHANNELS, Acquisition, FieldOfView, crop_channels, draw_acquisition,
                                                 draw_crop, draw_field)

__all__ = ["CAMERA_OFFSET", "CHANNELS", "FAMILIES", "FAMILY_NAMES", "Acquisition", "Cell", "FieldOfView",
           "ProteinSpec", "SyntheticError", "complex_members", "complexes_csv_path", "crop_channels", "crop_rng",
           "draw_acquisition", "draw_cell", "draw_crop", "draw_field", "draw_protein", "draw_protein_crops",
           "field_rng", "make_proteins", "write_synthetic_store"]
