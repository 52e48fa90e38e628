"""Feature interpretation (paper Fig. 5): pick a spectrum's peak codes, mark where they occur in a local code map,
zero them in an image's local representation, decode again and picture the difference."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

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


def zero_codes(quantized, indices, codes) -> np.ndarray:
    """The local quantized map (B, h, w, S*D) with every D-chunk whose code index (B, h, w, S) is in `codes`
    set to the zero vector; other chunks unchanged. float32 numpy.

    "Zeroing a code" (paper Fig. 5) means exactly this: the decoder sees 0 where the feature was, the value it
    also sees beyond the map's border (zero padding) and near the centre of the codebook (initialised uniform
    around 0), i.e. no feature, rather than a different code that would put another feature in its place.
    """
    q = np.array(quantized, dtype=np.float32)
    idx = np.asarray(indices)
    if q.ndim != 4 or idx.shape[:3] != q.shape[:3] or q.shape[-1] % idx.shape[-1]:
        raise fail("zero_codes", "indices", f"expected indices (B, h, w, S) matching quantized (B, h, w, S*D), "
                   f"got {idx.shape} and {q.shape}")
    chunks = q.reshape(*idx.shape, q.shape[-1] // idx.shape[-1])
    chunks[code_mask(idx, codes)] = 0.0
    return chunks.reshape(q.shape)


@dataclasses.dataclass
class Interpretation:
    """One image, its reconstruction and its reconstructions with code sets zeroed (see interpret_codes).

    image, reconstruction: (H, W, C) float32; modified: (M, H, W, C) float32, one per code set; masks: (M, h, w)
    bool, local positions where at least one chunk was zeroed; code_sets: the M code index arrays."""

    image: np.ndarray
    reconstruction: np.ndarray
    modified: np.ndarray
    masks: np.ndarray
    code_sets: list[np.ndarray]


def interpret_codes(model, variables, image, code_sets: Sequence[Sequence[int]]) -> Interpretation:
    """Encode one normalized image (H, W, C), then decode it as is and once per code set with those local codes
    zeroed (zero_codes); the global representation is kept as encoded. Evaluation mode throughout."""
    import jax  # the decode side needs the model; the numpy helpers above do not

    x = np.asarray(image, np.float32)[None]
    vq_local, vq_global = jax.jit(lambda v, im: model.apply(v, im, method=model.embed))(variables, x)
    q, idx = np.asarray(vq_local.quantized), np.asarray(vq_local.indices)
    sets = [np.asarray(c, dtype=np.int64).reshape(-1) for c in code_sets]
    q_all = np.concatenate([q] + [zero_codes(q, idx, c) for c in sets])
    q_global = np.repeat(np.asarray(vq_global.quantized), len(q_all), axis=0)
    decoded = np.asarray(jax.jit(lambda v, a, b: model.apply(v, a, b, method=model.decode))(variables, q_all, q_global))
    masks = np.stack([code_mask(idx[0], c).any(axis=-1) for c in sets]) if sets else np.zeros((0, *idx.shape[1:3]), bool)
    return Interpretation(image=x[0], reconstruction=decoded[0], modified=decoded[1:], masks=masks, code_sets=sets)


def _upsample_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    # Nearest-neighbour: pixel (y, x) belongs to local position (y*h//H, x*w//W).
    h, w = mask.shape
    return mask[np.arange(shape[0]) * h // shape[0]][:, np.arange(shape[1]) * w // shape[1]]


def plot_interpretation(result: Interpretation, path: str | Path, row_titles: Sequence[str], channel: int = 0,
                        channel_name: str = "protein", title: str = "", svg: bool = False) -> list[Path]:
    """Paper Fig. 5 for one image: a row per code set with the input (zeroed local positions in red), the
    reconstruction, the reconstruction with the codes zeroed and their difference (reconstruction - modified,
    one symmetric colour scale shared by all rows so that small effects look small), for one channel."""
    from matplotlib.figure import Figure

    from cytoself_jax.figures import save_figure

    if len(row_titles) != len(result.modified):
        raise fail("plot_interpretation", "row_titles", f"expected {len(result.modified)} titles, got {len(row_titles)}")
    image, recon = result.image[..., channel], result.reconstruction[..., channel]
    diffs = recon[None] - result.modified[..., channel]
    lo, hi = float(image.min()), float(image.max())
    hi = hi if hi > lo else lo + 1.0
    bound = float(np.abs(diffs).max()) or 1.0
    rows = len(diffs)
    fig = Figure(figsize=(8.4, 2.0 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, 4, squeeze=False)
    for r in range(rows):
        overlay = np.zeros((*image.shape, 4))
        overlay[_upsample_mask(result.masks[r], image.shape)] = (1.0, 0.1, 0.1, 0.45)
        panels = ((image, "gray", (lo, hi), "input, zeroed positions red"), (recon, "gray", (lo, hi), "reconstruction"),
                  (result.modified[r, ..., channel], "gray", (lo, hi), "codes zeroed"),
                  (diffs[r], "RdBu_r", (-bound, bound), "difference"))
        for c, (values, cmap, (vmin, vmax), name) in enumerate(panels):
            ax = axes[r, c]
            shown = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            if c == 0:
                ax.imshow(overlay, interpolation="nearest")
                ax.set_ylabel(str(row_titles[r]), fontsize=7)
            if r == 0:
                ax.set_title(name, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 3].set_xlabel(f"max |diff| {np.abs(diffs[r]).max():.3f}", fontsize=7)
    fig.colorbar(shown, ax=axes[:, 3], shrink=0.6, label="reconstruction - modified")
    fig.suptitle(title or f"Feature interpretation ({channel_name} channel)", fontsize=9)
    return save_figure(fig, path, svg=svg)
