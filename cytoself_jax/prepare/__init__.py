"""From raw fields of view to a crop store: z projection, nucleus segmentation, signed distance, crops, QC.

Command line: ``python -m cytoself_jax.prepare INPUT OUT --protein-channel 0 --nucleus-channel 1``.
"""
from cytoself_jax.prepare.io import FieldError, FieldSpec, InputError, fields_from_pattern, fields_from_table, read_field
from cytoself_jax.prepare.run import PrepareError, PrepareResult, PrepareSettings, load_families, prepare
from cytoself_jax.prepare.segment import SegmentParams, segment_nuclei

__all__ = ["FieldError", "FieldSpec", "InputError", "PrepareError", "PrepareResult", "PrepareSettings",
           "SegmentParams", "fields_from_pattern", "fields_from_table", "load_families", "prepare", "read_field",
           "segment_nuclei"]
