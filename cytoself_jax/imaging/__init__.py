"""Image geometry below the data layer: nucleus masks, signed distance transforms, fitting crops to a size.

Used by the data layer (synthetic cells, importers), by prepare (fields of view) and by inference (crops of
another size); depends on numpy, scipy and scikit-image only.
"""
