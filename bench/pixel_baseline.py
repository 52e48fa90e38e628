"""A plain pixel baseline for the protein-identification task: PCA + logistic regression on protein pixels.

Measured two ways: on the same split by field of view that training uses (train on the train split, report
the test split), and with 5-fold cross-validation over random crop splits (how the yeast data's README
measured its 53%). Prints a table and writes JSON.

python bench/pixel_baseline.py --config configs/yeast.py --out bench/results/pixel_baseline_yeast.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import benchlib
from benchlib import load_config
from sklearn.model_selection import StratifiedKFold, cross_val_score

from cytoself_jax.analysis.probe import pixel_pipeline as baseline
from cytoself_jax.analysis.probe import protein_pixels
from cytoself_jax.data.splits import split_by_field
from cytoself_jax.data.store import open_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/yeast.py")
    parser.add_argument("--data", default=None, help="store path (default: the config's data.path)")
    parser.add_argument("--components", type=int, default=50)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    config = load_config(args.config)
    store = open_store(args.data or config.data.path)
    x, y = protein_pixels(store), store.protein_ids
    splits = split_by_field(store.table, tuple(config.data.split_fractions), seed=config.data.split_seed,
                            allow_single_field=config.data.allow_single_field)
    model = baseline(args.components).fit(x[splits["train"]], y[splits["train"]])
    by_field = float(np.mean(model.predict(x[splits["test"]]) == y[splits["test"]]))
    cv = cross_val_score(baseline(args.components), x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0))
    result = {"store": str(store.path), "crops": len(store), "proteins": len(store.proteins),
              "test_accuracy_split_by_field": by_field, "cv5_accuracy_random_split": float(cv.mean()),
              "cv5_sd": float(cv.std()), "test_crops": int(len(splits["test"])), "chance": 1 / len(store.proteins)}
    print("| measurement | protein-identity accuracy |\n|---|---|")
    print(f"| PCA({args.components}) + logistic regression, train split -> test split (by field) | {by_field:.3f} |")
    print(f"| same, 5-fold CV over random crop splits | {cv.mean():.3f} +- {cv.std():.3f} |")
    print(f"| chance | {result['chance']:.3f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    benchlib.run_cli(main)
