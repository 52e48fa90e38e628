"""Embed every crop of a store with a trained run: no splits, any number of fields per protein, proteins the run
never saw welcome.

    python -m cytoself_jax.embed --ckpt RUN --data STORE [--out DIR] [--center-crop | --resize] [--which latest]
        [--random-init]

Writes embeddings.h5ad (one row per crop: the global embedding, code histograms and indices, protein, fov,
family) and, as far as the store's labels allow, the atlas, metrics.md/.json (clustering score of families,
same-protein and same-family retrieval mAP, reconstruction error, codebook use), protein_profiles.csv,
neighbours.csv and the spectra, into DIR (default RUN/embed/<store name>[-latest|-random-init]). Only a folder
this command wrote is ever replaced. From Python, cytoself_jax.inference embeds numpy arrays.
"""
from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; returns the exit status (2 with a one-line message on bad input)."""
    parser = argparse.ArgumentParser(prog="python -m cytoself_jax.embed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="run directory made by train.py")
    parser.add_argument("--data", required=True, help="crop store to embed (python -m cytoself_jax.import_crops)")
    parser.add_argument("--out", default="", help="output folder (default: RUN/embed/<store name>)")
    parser.add_argument("--which", choices=("best", "latest"), default="best", help="checkpoint (default: best)")
    parser.add_argument("--random-init", action="store_true",
                        help="the untrained model of the run's config instead of a checkpoint (a floor for every score)")
    fit = parser.add_mutually_exclusive_group()
    fit.add_argument("--center-crop", action="store_true", help="crops larger than the run's: keep the central window")
    fit.add_argument("--resize", action="store_true", help="crops of another size than the run's: resize (bilinear)")
    parser.add_argument("--batch-size", type=int, default=0, help="global batch (0: the run's eval batch size)")
    parser.add_argument("--umap-seeds", type=int, default=5, help="UMAPs for the clustering score (mean +- sd)")
    parser.add_argument("--seed", type=int, default=0, help="seed of subsamples, UMAPs and example crops")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--force", action="store_true", help="recompute even when the output folder already holds "
                        "this embedding (same checkpoint, store and options)")
    args = parser.parse_args(argv)

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every restore at INFO
    logging.getLogger("cytoself_jax").setLevel(logging.INFO)
    from cytoself_jax.analysis.report import EvalOptions, result_text, run_eval

    options = EvalOptions(split="all", by_field=False, data=args.data, out=args.out, which=args.which,
                          random_init=args.random_init,
                          fit="center-crop" if args.center_crop else ("resize" if args.resize else ""),
                          batch_size=args.batch_size, umap_seeds=args.umap_seeds, seed=args.seed,
                          progress=not args.quiet, force=args.force)
    try:
        result = run_eval(args.ckpt, options)
    except (ValueError, FileNotFoundError) as err:  # EvalError, StoreError, RunError, ...: one line each
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result_text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
