"""The paper's ablation study (Table 1) on the data we have: train each variant for several seeds, evaluate each
with several UMAP seeds, and write a table (CSV + Markdown) and the variants' UMAPs side by side.

python bench/ablation.py --config configs/demo.py --seeds 3           # built-in synthetic cells, CPU
python bench/ablation.py --config configs/yeast.py --seeds 3          # real yeast crops (import them first)
python bench/ablation.py --config configs/full.py --seeds 5 --set data.path=/data/opencell   # paper size, GPU

Runs land in ROOT/<config>/<variant>/seed<k> (ROOT: --root, default runs/ablation); finished trainings and
evaluations are not redone, an interrupted training resumes from its latest checkpoint.

Each run is evaluated at its latest checkpoint by default (`--checkpoint best` for the lowest validation loss):
every variant gets the same epoch budget. The validation loss includes the VQ terms, which are smallest before
the codebooks come into use, so in short runs 'best' picks an early epoch, sometimes one whose global codebook
is still collapsed (yeast, 8 epochs: best = epoch 2 or 3 in 10 of 12 runs, 3 of them at global perplexity 7-8
against ~100 at the end). docs/ABLATION.md has the measured study.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
from pathlib import Path

import ml_collections
import numpy as np
import pandas as pd

from cytoself_jax.analysis.atlas import plot_atlas_panels
from cytoself_jax.analysis.compare import difference_table, format_cell, mean_interval, training_record
from cytoself_jax.analysis.report import EvalOptions, default_out_dir, run_eval
from cytoself_jax.config import ABLATIONS, apply_ablation, apply_overrides
from cytoself_jax.training.checkpoint import Checkpointer, run_finished
from cytoself_jax.training.loop import train

PAPER_TABLE_1 = {"full": "13.3 +- 2.4", "no_fiducial": "12.4 +- 1.3", "no_distance": "11.2 +- 1.3",
                 "no_split": "12.1 +- 1.46", "no_identification": "0.564 +- 0.14"}


def variant_config(config_file: str, variant: str, seed: int, root: Path, overrides: list[str], folds: int = 0,
                   heldout_per_training: bool = False):
    """The experiment config of one (variant, seed); ValueError where the variant does not apply to this data.

    The overrides go to the config file's base_config() before the variant's switch, so that a variant that
    derives a size from the base (no_split's code width) derives it from the overridden one.
    """
    spec = importlib.util.spec_from_file_location("experiment_config", config_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "base_config"):
        raise SystemExit(f"error: {config_file}: expected a base_config() function (the experiment before its "
                         "ablation switch), as in configs/demo.py")
    c = apply_ablation(apply_overrides(module.base_config(), overrides), variant)
    c.seed = seed
    if folds:  # training k tests on fold k mod folds: each field is the test field in turn
        c.data.split_fold = seed % folds
    if heldout_per_training:  # each training holds out its own proteins (data.heldout_proteins of them)
        c.data.heldout_seed = seed
    c.workdir = str(root / Path(config_file).stem / variant / f"seed{seed}")
    return c


def run_one(c: ml_collections.ConfigDict, options: EvalOptions, train_only: bool = False) -> dict | None:
    """Train (or resume, or skip when done) and evaluate (or reuse) one run; returns its metrics.json (None with
    train_only)."""
    run_dir = Path(c.workdir)
    if not run_finished(run_dir, c.train.max_epochs):  # a finished run is left as it is
        train(c, resume=Checkpointer(run_dir).has("latest"), progress=options.progress)
    if train_only:
        return None
    return run_eval(run_dir, options).metrics  # reused when the same code already evaluated this checkpoint


# The columns of the ablation table (score keys of metrics.json), in the paper's order of importance.
TABLE_SCORES = ("clustering.umap", "clustering.raw", "knn.top1", "map.protein", "map.family",
                "classifier.global_top1", "codebooks.global_perplexity", "codebooks.local_perplexity")


def summarize(variant: str, rows: list[dict]) -> dict:
    """One table row: per score, mean +- between-training sd [95% CI of the mean] (n) over the variant's trainings
    (each training's clustering score is already its mean over UMAP seeds)."""
    row = {"variant": variant, "trainings": len(rows)}
    for key in TABLE_SCORES:
        row[key] = format_cell(mean_interval([r.get(key) for r in rows]))
    row["paper Table 1"] = PAPER_TABLE_1[variant]
    return row


def _p(value) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{value:.2g}"


def markdown_table(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def fixed_map(run_dir: Path, options: EvalOptions) -> tuple[np.ndarray, np.ndarray]:
    """The atlas map (fixed UMAP seed) and families of one training: the first seed's, never the best-scoring."""
    import anndata

    adata = anndata.read_h5ad(default_out_dir(run_dir, options) / "embeddings.h5ad")
    return adata.obsm["X_umap"], adata.obs["family"].astype(str).to_numpy()


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--config", default="configs/demo.py",
                        help="config file with a base_config() (the experiment before its ablation switch)")
    parser.add_argument("--variants", nargs="+", default=list(ABLATIONS), choices=ABLATIONS)
    parser.add_argument("--seeds", type=int, default=3, help="trainings per variant (seeds 0..n-1)")
    parser.add_argument("--umap-seeds", type=int, default=5, help="UMAPs per training for the clustering score")
    parser.add_argument("--root", default="runs/ablation")
    parser.add_argument("--checkpoint", default="latest", choices=("latest", "best"),
                        help="checkpoint evaluated: latest (every variant after the same epoch budget; default) or "
                        "best (lowest validation loss)")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="overrides of the base config for every run (before the variant's switch), "
                        "e.g. train.max_epochs=6")
    parser.add_argument("--folds", type=int, default=0,
                        help="rotate the test field: training k uses data.split_fold = k mod FOLDS (yeast: 4)")
    parser.add_argument("--heldout-per-training", action="store_true",
                        help="training k holds out its own proteins (data.heldout_seed = k)")
    parser.add_argument("--train-only", action="store_true", help="train (or resume) every run; evaluate nothing")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of every score's interval")
    parser.add_argument("--evaluators", nargs="+", default=(), metavar="NAME",
                        help="evaluators to run (default: all; eval.py --help lists them); embeddings_h5ad is "
                        "added, as the UMAP panels are read from it")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    root = Path(args.root)
    evaluators = tuple(args.evaluators) + (("embeddings_h5ad",) if args.evaluators else ())
    options = EvalOptions(split="test", which=args.checkpoint, umap_seeds=args.umap_seeds, bootstrap=args.bootstrap,
                          evaluators=evaluators, progress=not args.quiet)

    rows, panels, notes, trainings = [], [], [], {}
    for variant in args.variants:
        try:
            configs = [variant_config(args.config, variant, s, root, args.overrides, args.folds,
                                      args.heldout_per_training) for s in range(args.seeds)]
        except ValueError as e:  # e.g. no distance channel in the yeast data: say so rather than invent a number
            notes.append(f"{variant}: {e}")
            continue
        for c in configs:
            print(f"== {variant} seed {c.seed}: {c.workdir}", flush=True)
            run_one(c, options, train_only=args.train_only)
        if args.train_only:
            continue
        records = [training_record(c.workdir, default_out_dir(Path(c.workdir), options).name) for c in configs]
        for r in records:
            r["variant"] = variant
        trainings[variant] = records
        rows.append(summarize(variant, records))
        xy, families = fixed_map(Path(configs[0].workdir), options)
        panels.append((f"{variant}\ntraining seed 0, UMAP seed {options.seed}", xy, families))

    out = root / Path(args.config).stem
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    table.to_csv(out / "ablation.csv", index=False)
    records = pd.DataFrame([r for v in trainings.values() for r in v])
    records.to_csv(out / "ablation_trainings.csv", index=False)  # one row per training: the table's evidence
    header = (f"Ablation on `{args.config}` ({args.seeds} trainings x {args.umap_seeds} UMAPs per variant; "
              f"{args.checkpoint} checkpoint; test split). Cells: mean +- between-training sd [95% CI of the mean] "
              "(n trainings); per training: ablation_trainings.csv.\n\n")
    md = header + markdown_table(table) + "\n"
    if "full" in trainings:
        for variant in [v for v in trainings if v != "full"]:
            diff = difference_table(trainings, "full", variant, TABLE_SCORES)
            md += (f"\nfull - {variant}: " + "; ".join(
                f"{d['score']} {d['difference']:+.3g} (Welch p {_p(d['welch_p'])}, permutation p "
                f"{_p(d['permutation_p'])})" for d in diff.to_dict("records") if d["difference"] is not None) + "\n")
    md += "".join(f"\n- {n}" for n in notes) + "\n"
    (out / "ablation.md").write_text(md)
    if panels:
        plot_atlas_panels(panels, out / "ablation_umaps.png")
    print(md)
    print(f"wrote {out / 'ablation.csv'}, {out / 'ablation.md'}, {out / 'ablation_umaps.png'}")
    return table


if __name__ == "__main__":
    main()
