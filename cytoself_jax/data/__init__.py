"""Data layer: the crop store, importers, splits by field of view and the grain input pipeline."""
from cytoself_jax.data.store import CropStore, StoreError, StoreWriter, check_pixels, create_store, open_store, write_store

__all__ = ["CropStore", "StoreError", "StoreWriter", "check_pixels", "create_store", "open_store", "write_store"]
