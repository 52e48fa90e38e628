"""What an evaluation computes and how: one declaration (EvalOptions, each field with its help text) from which
eval.py's absl flags and the embed command's argparse options are both built, and the checks every option gets.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Sequence

from cytoself_jax.imaging.fit import FITS

SPLITS = ("train", "val", "test", "all")


class EvalError(ValueError):
    """The evaluation cannot run as asked; the message is one line naming the file or option and what was expected."""


def _opt(default: Any, help: str, *, minimum: int | None = None, embed: bool = False, choices: Sequence[str] = ()):
    """A field of EvalOptions: its default, help text, smallest allowed value, whether the embed command offers it
    too (eval.py offers every option), and its allowed values."""
    return dataclasses.field(default=default, metadata={"help": help, "minimum": minimum, "embed": embed,
                                                        "choices": tuple(choices)})


@dataclasses.dataclass
class EvalOptions:
    """What to evaluate and how. Defaults follow the paper (UMAP: euclidean, 15 neighbours, min_dist 0.1)."""

    split: str = _opt("test", "Split to evaluate (by field of view, as in training).", choices=SPLITS)
    data: str = _opt("", "Crop store to evaluate (default: the run's own store).")
    out: str = _opt("", "Output folder (default: RUN_DIR/eval/<split>[-latest|-random-init]).", embed=True)
    which: str = _opt("best", "Checkpoint to evaluate.", embed=True, choices=("best", "latest"))
    random_init: bool = _opt(False, "Evaluate the untrained model of the run's config (a floor for every score).",
                             embed=True)
    batch_size: int = _opt(0, "Global eval batch (0: config.train.eval_batch_size).", minimum=0, embed=True)
    evaluators: Sequence[str] = _opt((), "Evaluators to run, in registry order (default: all; eval.py --help lists "
                                         "them).", embed=True)
    umap_seeds: int = _opt(5, "UMAPs of the clustering score (mean +- sd over seeds seed, seed+1, ...).", minimum=1,
                           embed=True)
    umap_neighbors: int = _opt(15, "UMAP n_neighbors.", minimum=2)
    umap_min_dist: float = _opt(0.1, "UMAP min_dist.")
    umap_metric: str = _opt("euclidean", "UMAP metric.")
    umap_max_crops: int = _opt(50_000, "UMAPs are fit on at most this many crops (seeded subsample): the clustering "
                                       "scores are taken on them and the atlas places the others with the fitted "
                                       "UMAP's transform.", minimum=3, embed=True)
    knn_k: int = _opt(10, "Neighbours of the kNN classifiers (protein identity, family transfer).", minimum=1)
    knn_max_train: int = _opt(50_000, "At most this many train crops as kNN reference (seeded subsample).",
                              minimum=1)
    map_max_crops: int = _opt(5_000, "At most this many crops for mAP (seeded subsample; O(N^2) cost).", minimum=2)
    bootstrap: int = _opt(1000, "Bootstrap resamples of fields of view for every 95% interval.", minimum=1,
                          embed=True)
    family: str = _opt("", "Family of atlas_<family>.png (default: the largest).")
    proteins: Sequence[str] = _opt((), "Proteins whose feature spectra are drawn.")
    interpret: str = _opt("", "Protein of the feature-interpretation picture.")
    interpret_codes: int = _opt(3, "Spectrum peaks zeroed in the interpretation.", minimum=1)
    neighbours: int = _opt(10, "Nearest proteins listed per protein.", minimum=1)
    atlas_thumbnails: int = _opt(2000, "atlas.html: crops with their own hover thumbnail (at least one per protein).",
                                 minimum=1)
    atlas_max_points: int = _opt(100_000, "atlas.html: at most this many crops drawn as hoverable points (a seeded "
                                          "subsample keeping at least one crop per protein); above it a density "
                                          "image of every crop lies beneath them.", minimum=1, embed=True)
    atlas_contrast: str = _opt("protein", "atlas.html thumbnails: contrast fixed per protein or for the dataset.",
                               choices=("protein", "dataset"), embed=True)
    pixel_size_um: float = _opt(0.0, "Pixel size of the store's crops in micrometres (atlas.html thumbnails get a "
                                     "scale bar; 0: unknown).", embed=True)
    probe_max_crops: int = _opt(10_000, "Linear probes: at most this many train and eval crops each (seeded "
                                        "subsample).", minimum=1)
    complexes: str = _opt("", "CSV of protein complexes (columns protein, complex): complexes.csv and .png.")
    complex_permutations: int = _opt(1000, "Label permutations of the complexes' null distribution.", minimum=1)
    seed: int = _opt(0, "Seed of subsamples, the atlas UMAP (seed), the clustering-score UMAPs and example crops.",
                     embed=True)
    svg: bool = _opt(False, "Also write SVG copies of the atlas and spectra.")
    fit: str = _opt("", "Crops of another size than the run's: 'center-crop' or 'resize' ('' = refuse them).",
                    choices=("", *FITS))
    by_field: bool = _opt(True, "False: every crop of the store, no split by field (the embed command).")
    progress: bool = _opt(True, "Progress bars.")
    skip_bad_crops: bool = _opt(False, "Leave out crops with a NaN/inf pixel or a blank protein channel, counted in "
                                       "metrics.json (default: refuse a store holding any).", embed=True)
    force: bool = _opt(False, "Recompute even when the output folder already holds this evaluation (same code, "
                              "checkpoint, store and options).", embed=True)
    pass_memory_mib: int = _opt(2048, "A pass over the evaluated crops whose per-crop arrays (embeddings, code "
                                      "indices, histograms) would take more than this many MiB keeps them in "
                                      "memory-mapped files in the output's staging folder, removed before the output "
                                      "is written (0: always; the results are the same; it needs that much free "
                                      "disk there).", minimum=0, embed=True)


def option_fields() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(EvalOptions)


def check_options(o: EvalOptions, evaluator_names: Sequence[str]) -> None:
    """Raise EvalError (one line naming the option) for an option outside its allowed values."""
    for f in option_fields():
        value, meta = getattr(o, f.name), f.metadata
        if meta["choices"] and value not in meta["choices"]:
            raise EvalError(f"--{f.name}: expected one of {list(meta['choices'])}, got {value!r}")
        if meta["minimum"] is not None and value < meta["minimum"]:
            raise EvalError(f"--{f.name}: expected an integer >= {meta['minimum']}, got {value}")
    unknown = [e for e in o.evaluators if e not in evaluator_names]
    if unknown:
        raise EvalError(f"--evaluators: unknown {unknown}; expected names among {list(evaluator_names)}")
    if not o.by_field and o.split != "all":
        raise EvalError(f"--split {o.split}: embedding every crop (no split by field) takes split 'all'")


# ---------------------------------------------------------------------------------------------- command lines


def define_absl_flags() -> dict[str, Any]:
    """eval.py's flags, one per option (but by_field, progress and fit: eval.py has --center_crop/--resize);
    returns name -> flag holder."""
    from absl import flags

    holders = {}
    for f in option_fields():
        if f.name in ("by_field", "progress", "fit"):
            continue
        help_text, default = f.metadata["help"], f.default
        if f.metadata["choices"]:
            holders[f.name] = flags.DEFINE_enum(f.name, default, list(f.metadata["choices"]), help_text)
        elif isinstance(default, bool):
            holders[f.name] = flags.DEFINE_bool(f.name, default, help_text)
        elif isinstance(default, int):
            holders[f.name] = flags.DEFINE_integer(f.name, default, help_text)
        elif isinstance(default, float):
            holders[f.name] = flags.DEFINE_float(f.name, default, help_text)
        elif isinstance(default, tuple):
            holders[f.name] = flags.DEFINE_list(f.name, list(default), help_text)
        else:
            holders[f.name] = flags.DEFINE_string(f.name, default, help_text)
    return holders


def options_from_absl(holders: dict[str, Any], **fixed: Any) -> EvalOptions:
    """EvalOptions from define_absl_flags' holders (lists become tuples) and `fixed` values."""
    values = {name: (tuple(h.value) if isinstance(h.value, list) else h.value) for name, h in holders.items()}
    return EvalOptions(**{**values, **fixed})


def add_embed_arguments(parser: argparse.ArgumentParser) -> None:
    """The embed command's options (those declared with embed=True), as --kebab-case arguments."""
    for f in option_fields():
        if not f.metadata["embed"]:
            continue
        flag, help_text, default = "--" + f.name.replace("_", "-"), f.metadata["help"].replace("%", "%%"), f.default
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=help_text)
        elif isinstance(default, tuple):
            parser.add_argument(flag, nargs="+", default=list(default), help=help_text)
        elif f.metadata["choices"]:
            parser.add_argument(flag, choices=f.metadata["choices"], default=default, help=help_text)
        else:
            parser.add_argument(flag, type=type(default), default=default, help=help_text)


def options_from_args(args: argparse.Namespace, **fixed: Any) -> EvalOptions:
    """EvalOptions from add_embed_arguments' parsed arguments and `fixed` values."""
    values = {f.name: getattr(args, f.name) for f in option_fields() if f.metadata["embed"]}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()}
    return EvalOptions(**{**values, **fixed})
