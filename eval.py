"""Evaluate a training run: python eval.py --ckpt RUN_DIR [--split test] [--data DIR] [--out DIR] [--random_init].

Writes embeddings.h5ad, metrics.json/.md, protein_profiles.csv, neighbours.csv and the pictures into one folder
(default RUN_DIR/eval/<split>; RUN_DIR/eval/<split>-<store> for another store) and prints a summary table. Exit
code 2 with one line on stderr when the run, its checkpoint, the data, an option or the output folder is unusable
(a store with NaN/inf or blank crops is refused unless --skip_bad_crops); exit code 1 when a write fails (full
disk, permission), 130/143 on Ctrl-C/SIGTERM, each with one line saying what was kept. No partial output folder
is left behind, and only a folder eval wrote is ever replaced. To embed every crop of new
data without splits, use python -m cytoself_jax.embed. The options are declared once, in
cytoself_jax/analysis/options.py (EvalOptions).
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging

from cytoself_jax.analysis.options import define_absl_flags, options_from_absl

_CKPT = flags.DEFINE_string("ckpt", None, "Run directory made by train.py.")
_OPTIONS = define_absl_flags()
_CENTER_CROP = flags.DEFINE_bool("center_crop", False, "Crops larger than the run's: keep the central window.")
_RESIZE = flags.DEFINE_bool("resize", False, "Crops of another size than the run's: resize them (bilinear).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every restore at INFO
    logging.getLogger("cytoself_jax").setLevel(logging.INFO)
    from cytoself_jax.analysis.report import eval_command
    from cytoself_jax.compile_cache import enable_compilation_cache

    enable_compilation_cache()  # programs compiled by training or an earlier eval are loaded, not compiled again
    if _CENTER_CROP.value and _RESIZE.value:
        raise app.UsageError("--center_crop and --resize: pass at most one")
    options = options_from_absl(_OPTIONS, fit="center-crop" if _CENTER_CROP.value else
                                ("resize" if _RESIZE.value else ""))
    status = eval_command(_CKPT.value, options)  # one line on stderr for any failure (exit 2, 1, 130, 143)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    flags.mark_flag_as_required("ckpt")
    app.run(main)
