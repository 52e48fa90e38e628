"""Embed every crop of a store with a trained run: no splits, any number of fields per protein, proteins the run
never saw welcome.

    python -m cytoself_jax.embed --ckpt RUN --data STORE [--out DIR] [--center-crop | --resize] [--which latest]
        [--random-init] [--skip-bad-crops]

Writes embeddings.h5ad (one row per crop: the global embedding, code histograms and indices, protein, fov,
family) and, as far as the store's labels allow, the atlas, metrics.md/.json (clustering score of families,
same-protein and same-family retrieval mAP, reconstruction error, codebook use), protein_profiles.csv,
neighbours.csv and the spectra, into DIR (default RUN/embed/<store name>[-latest|-random-init]). Only a folder
this command wrote is ever replaced. A store holding crops with a NaN/inf pixel or a blank protein channel is
refused in one line (--skip-bad-crops leaves them out, counted in metrics.json). Exit status 2 on bad input, 1
when a write fails (full disk, permission), 130/143 on Ctrl-C/SIGTERM, each with one line on stderr and no
partial output. From Python, cytoself_jax.inference embeds numpy arrays.
"""
from __future__ import annotations

import argparse
import logging
import sys

from cytoself_jax.analysis.options import add_embed_arguments, options_from_args


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; returns the exit status (2 with a one-line message on bad input)."""
    parser = argparse.ArgumentParser(prog="python -m cytoself_jax.embed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="run directory made by train.py")
    parser.add_argument("--data", required=True, help="crop store to embed (python -m cytoself_jax.import_crops)")
    fit = parser.add_mutually_exclusive_group()
    fit.add_argument("--center-crop", action="store_true", help="crops larger than the run's: keep the central window")
    fit.add_argument("--resize", action="store_true", help="crops of another size than the run's: resize (bilinear)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_embed_arguments(parser)  # the options shared with eval.py (cytoself_jax/analysis/options.py)
    args = parser.parse_args(argv)

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every restore at INFO
    logging.getLogger("cytoself_jax").setLevel(logging.INFO)
    from cytoself_jax.analysis.report import eval_command
    from cytoself_jax.compile_cache import enable_compilation_cache

    enable_compilation_cache()  # as eval.py: the run's programs compiled once, then loaded

    options = options_from_args(args, split="all", by_field=False, data=args.data, progress=not args.quiet,
                                fit="center-crop" if args.center_crop else ("resize" if args.resize else ""))
    return eval_command(args.ckpt, options)  # one line on stderr for any failure (exit 2, 1, 130, 143)


if __name__ == "__main__":
    sys.exit(main())
