"""Evaluate a training run: python eval.py --ckpt RUN_DIR [--split test] [--data DIR] [--out DIR] [--random_init].

Writes embeddings.h5ad, metrics.json/.md, protein_profiles.csv, neighbours.csv and the pictures into one folder
(default RUN_DIR/eval/<split>; RUN_DIR/eval/<split>-<store> for another store) and prints a summary table. Exit
code 2 with one line on stderr when the run, its checkpoint, the data, an option or the output folder is unusable;
no partial output folder is left behind, and only a folder eval wrote is ever replaced. To embed every crop of new
data without splits, use python -m cytoself_jax.embed.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging

from cytoself_jax.analysis.report import EvalOptions

_D = EvalOptions()
_CKPT = flags.DEFINE_string("ckpt", None, "Run directory made by train.py.")
_SPLIT = flags.DEFINE_enum("split", _D.split, ["train", "val", "test", "all"], "Split to evaluate (by field, as in training).")
_DATA = flags.DEFINE_string("data", _D.data, "Crop store to evaluate (default: the run's own store).")
_OUT = flags.DEFINE_string("out", _D.out, "Output folder (default: RUN_DIR/eval/<split>[-latest|-random-init]).")
_WHICH = flags.DEFINE_enum("which", _D.which, ["best", "latest"], "Checkpoint to evaluate.")
_RANDOM = flags.DEFINE_bool("random_init", _D.random_init, "Evaluate the untrained model of the run's config (a floor).")
_BATCH = flags.DEFINE_integer("batch_size", _D.batch_size, "Global eval batch (0: config.train.eval_batch_size).")
_SEEDS = flags.DEFINE_integer("umap_seeds", _D.umap_seeds, "UMAPs for the clustering score (mean +- sd).")
_NEIGH = flags.DEFINE_integer("umap_neighbors", _D.umap_neighbors, "UMAP n_neighbors.")
_MIN_DIST = flags.DEFINE_float("umap_min_dist", _D.umap_min_dist, "UMAP min_dist.")
_METRIC = flags.DEFINE_string("umap_metric", _D.umap_metric, "UMAP metric.")
_KNN_K = flags.DEFINE_integer("knn_k", _D.knn_k, "Neighbours of the kNN protein classifier.")
_KNN_MAX = flags.DEFINE_integer("knn_max_train", _D.knn_max_train, "At most this many train crops as kNN reference.")
_MAP_MAX = flags.DEFINE_integer("map_max_crops", _D.map_max_crops, "At most this many crops for mAP (seeded subsample).")
_FAMILY = flags.DEFINE_string("family", _D.family, "Family of atlas_<family>.png (default: the largest).")
_PROTEINS = flags.DEFINE_list("proteins", list(_D.proteins), "Proteins whose feature spectra are drawn.")
_INTERPRET = flags.DEFINE_string("interpret", _D.interpret, "Protein of the feature-interpretation picture.")
_CODES = flags.DEFINE_integer("interpret_codes", _D.interpret_codes, "Spectrum peaks zeroed in the interpretation.")
_NEIGHBOURS = flags.DEFINE_integer("neighbours", _D.neighbours, "Nearest proteins listed per protein.")
_THUMBS = flags.DEFINE_integer("atlas_thumbnails", _D.atlas_thumbnails,
                               "atlas.html: crops with their own hover thumbnail (at least one per protein).")
_PROBE_MAX = flags.DEFINE_integer("probe_max_crops", _D.probe_max_crops,
                                  "Linear probes: at most this many train and eval crops each (seeded subsample).")
_COMPLEXES = flags.DEFINE_string("complexes", _D.complexes,
                                 "CSV of protein complexes (columns protein, complex): complexes.csv and .png.")
_PERMS = flags.DEFINE_integer("complex_permutations", _D.complex_permutations,
                              "Label permutations of the complexes' null distribution.")
_SEED = flags.DEFINE_integer("seed", _D.seed, "Seed of subsamples, UMAPs and example crops.")
_SVG = flags.DEFINE_bool("svg", _D.svg, "Also write SVG copies of the atlas and spectra.")
_CENTER_CROP = flags.DEFINE_bool("center_crop", False, "Crops larger than the run's: keep the central window.")
_RESIZE = flags.DEFINE_bool("resize", False, "Crops of another size than the run's: resize them (bilinear).")
_FORCE = flags.DEFINE_bool("force", _D.force, "Recompute even when the output folder already holds this evaluation "
                           "(same checkpoint, store and options), e.g. after changing the code.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every restore at INFO
    logging.getLogger("cytoself_jax").setLevel(logging.INFO)
    from cytoself_jax.analysis.report import result_text, run_eval
    from cytoself_jax.compile_cache import enable_compilation_cache

    enable_compilation_cache()  # programs compiled by training or an earlier eval are loaded, not compiled again
    if _CENTER_CROP.value and _RESIZE.value:
        raise app.UsageError("--center_crop and --resize: pass at most one")

    options = EvalOptions(
        split=_SPLIT.value, data=_DATA.value, out=_OUT.value, which=_WHICH.value, random_init=_RANDOM.value,
        batch_size=_BATCH.value, umap_seeds=_SEEDS.value, umap_neighbors=_NEIGH.value, umap_min_dist=_MIN_DIST.value,
        umap_metric=_METRIC.value, knn_k=_KNN_K.value, knn_max_train=_KNN_MAX.value, map_max_crops=_MAP_MAX.value,
        family=_FAMILY.value, proteins=tuple(_PROTEINS.value), interpret=_INTERPRET.value,
        atlas_thumbnails=_THUMBS.value, probe_max_crops=_PROBE_MAX.value, complexes=_COMPLEXES.value,
        complex_permutations=_PERMS.value,
        interpret_codes=_CODES.value, neighbours=_NEIGHBOURS.value, seed=_SEED.value, svg=_SVG.value,
        fit="center-crop" if _CENTER_CROP.value else ("resize" if _RESIZE.value else ""), force=_FORCE.value,
    )
    try:
        result = run_eval(_CKPT.value, options)
    except (ValueError, FileNotFoundError) as e:  # EvalError, StoreError, SplitError, ...: one line each
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(result_text(result))


if __name__ == "__main__":
    flags.mark_flag_as_required("ckpt")
    app.run(main)
