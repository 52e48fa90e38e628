"""Feature interpretation (paper Fig. 5), numpy side: pick a spectrum's peak codes and mark where they occur in
a local code map, so the decode side can zero them out and decode again."""
from __future__ import annotations

import numpy as np

from cytoself_jax.analysis.common import as_matrix, fail


def top_spectrum_codes(protein_spectrum, n: int) -> np.ndarray:
    """Indices of the n largest entries of a spectrum (K,) (the peaks to zero out), largest first; equal
    values in code order. Codes with a count of 0 are never peaks, so fewer than n may come back. int64 (<= n,)."""
    s = as_matrix(np.asarray(protein_spectrum)[None], "top_spectrum_codes", "protein_spectrum")[0]
    if n < 1:
        raise fail("top_spectrum_codes", "n", f"expected n >= 1, got {n}")
    order = np.argsort(-s, kind="stable")[:n]
    return order[s[order] > 0]


def code_mask(indices, codes) -> np.ndarray:
    """True where a code map (any shape, e.g. (B, 25, 25, 1) local indices) holds one of `codes`; same shape."""
    idx = np.asarray(indices)
    if not np.issubdtype(idx.dtype, np.integer):
        raise fail("code_mask", "indices", f"expected integer code indices, got dtype {idx.dtype}")
    return np.isin(idx, np.asarray(codes, dtype=np.int64))
