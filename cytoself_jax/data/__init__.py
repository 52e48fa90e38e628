"""Data layer: the crop store, importers, splits by field of view and the grain input pipeline
(``cytoself_jax.data.pipeline``, imported on demand since it loads grain)."""
from cytoself_jax.data.splits import SplitError, split_by_field
from cytoself_jax.data.store import CropStore, StoreError, StoreWriter, create_store, open_store, write_store
from cytoself_jax.data.pixels import check_pixels

__all__ = ["CropStore", "SplitError", "StoreError", "StoreWriter", "check_pixels", "create_store", "open_store",
           "split_by_field", "write_store"]
