"""Write the built-in synthetic dataset as a crop store.

    python -m cytoself_jax.make_synthetic OUT [--proteins 40] [--crops-per-protein 120] [--fields-per-protein 6]
        [--size 64] [--seed 0] [--dtype float32] [--workers 1] [--overwrite] [--montage PNG] [--complexes 0]
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cytoself_jax.command import run_command
from cytoself_jax.data.store import CropStore, StoreError
from cytoself_jax.staging import kept_message
from cytoself_jax.data.synthetic import SyntheticError, write_synthetic_store


def save_montage(store: CropStore, path: str | os.PathLike, per_family: int = 8) -> Path:
    """Save a PNG grid: one row per family, up to `per_family` crops (cycling through its proteins) of the
    protein channel, then the nucleus and distance channels of the row's first crop."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = store.table
    families = list(dict.fromkeys(table["family"]))
    fig, axes = plt.subplots(len(families), per_family + 2, figsize=(1.2 * (per_family + 2), 1.2 * len(families)),
                             squeeze=False)
    protein_ch, nucleus_ch, distance_ch = store.channel_indices(("protein", "nucleus", "distance"))
    for r, family in enumerate(families):
        # Interleave the family's proteins: first crop of each protein, then the second of each, ...
        sub = table[table["family"] == family]
        order = sub.assign(rank=sub.groupby("protein").cumcount()).sort_values(["rank", "protein"], kind="stable")
        picks = order.index[:per_family].to_numpy()
        for c, i in enumerate(picks):
            image = np.asarray(store.images[i, :, :, protein_ch], dtype=np.float32)
            lo, hi = np.percentile(image, (0.5, 99.8))
            axes[r, c].imshow(np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1), cmap="gray")
        first = picks[0]
        axes[r, per_family].imshow(np.asarray(store.images[first, :, :, nucleus_ch], dtype=np.float32), cmap="gray")
        distance = np.asarray(store.images[first, :, :, distance_ch], dtype=np.float32)
        limit = float(np.abs(distance).max())
        axes[r, per_family + 1].imshow(distance, cmap="RdBu_r", vmin=-limit, vmax=limit)
        axes[r, 0].set_ylabel(family, fontsize=7)
    axes[0, per_family].set_title("nucleus", fontsize=7)
    axes[0, per_family + 1].set_title("distance", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(pad=0.1)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cytoself_jax.make_synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("out", help="crop store directory to create")
    parser.add_argument("--proteins", type=int, default=40, help="number of proteins (families round-robin)")
    parser.add_argument("--crops-per-protein", type=int, default=120)
    parser.add_argument("--fields-per-protein", type=int, default=6,
                        help="fields of view each protein's crops come from")
    parser.add_argument("--size", type=int, default=64, help="crop side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--workers", type=int, default=1, help="processes drawing crops (same result for any number)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing store at OUT")
    parser.add_argument("--montage", metavar="PNG", help="also save a picture of a few crops per family")
    parser.add_argument("--complexes", type=int, default=0,
                        help="complexes of 3 proteins of one family sharing a pattern; OUT_complexes.csv lists them")
    args = parser.parse_args(argv)
    def body() -> int:
        try:
            store = write_synthetic_store(args.out, proteins=args.proteins, crops_per_protein=args.crops_per_protein,
                                          fields_per_protein=args.fields_per_protein, size=args.size,
                                          seed=args.seed, dtype=args.dtype, workers=args.workers,
                                          overwrite=args.overwrite, complexes=args.complexes)
        except (SyntheticError, StoreError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"wrote {store}: {len(store.proteins)} proteins, {store.table['family'].nunique()} families")
        if args.montage:
            print(f"montage: {save_montage(store, args.montage)}")
        return 0

    # a failed write (full disk, permission), Ctrl-C or SIGTERM: one line; the store is written whole or not at all
    return run_command(body, kept=lambda: kept_message(Path(args.out), Path(args.out).exists()))


if __name__ == "__main__":
    sys.exit(main())
