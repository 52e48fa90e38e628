"""Is the learned embedding worth training? A linear probe (logistic regression) on a run's global embedding against
the same probe on PCA of the pixels, both trained on the run's own train split and scored on its test split (split
by field of view, as in training), for protein identity and for localization family. Prints a table, writes JSON.

python bench/embedding_probe.py runs/yeast --out bench/results/embedding_probe_yeast.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import numpy as np

import benchlib
from cytoself_jax.analysis.probe import embedding_pipeline, pixel_pipeline, probe_scores, protein_pixels
from cytoself_jax.analysis.scores import NON_CLASSES
from cytoself_jax.data.splits import split_by_field
from cytoself_jax.data.store import open_store
from cytoself_jax.inference import embed_store
from cytoself_jax.run import load_run


def run(run_dir: Path, which: str) -> dict:
    """Probe scores of the embedding and of the pixels, per label ('protein', 'family')."""
    loaded = load_run(run_dir, which)
    config, info = loaded.config, loaded.dataset_info
    store = open_store(info["store"])
    splits = split_by_field(store.table, tuple(config.data.split_fractions), seed=config.data.split_seed,
                            allow_single_field=config.data.allow_single_field)
    train, test = np.sort(splits["train"]), np.sort(splits["test"])
    features = {
        "embedding": (embed_store(loaded, store, train).global_vectors, embed_store(loaded, store, test).global_vectors),
        "pixels (PCA 50)": (protein_pixels(store, train), protein_pixels(store, test)),
    }
    pipelines = {"embedding": embedding_pipeline, "pixels (PCA 50)": pixel_pipeline}
    rows = []
    for label in ("protein", "family"):
        if label not in store.table:
            continue
        values = store.table[label].astype(str).to_numpy()
        keep_train = ~np.isin(values[train], NON_CLASSES)
        keep_test = ~np.isin(values[test], NON_CLASSES)
        for name, (x_train, x_test) in features.items():
            scores = probe_scores(pipelines[name](), x_train[keep_train], values[train][keep_train],
                                  x_test[keep_test], values[test][keep_test])
            rows.append({"label": label, "features": name, **scores})
    return {"benchmark": "embedding_probe", "run": str(run_dir), "checkpoint": which, "rows": rows}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--which", default="best", choices=("best", "latest"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    result = run(args.run, args.which)
    benchlib.print_table(f"linear probes on {args.run} (train split -> test split)",
                         ["label", "features", "macro-F1", "balanced accuracy", "accuracy", "train", "test"],
                         [[r["label"], r["features"], r["macro_f1"], r["balanced_accuracy"], r["accuracy"], r["train"],
                           r["test"]] for r in result["rows"]])
    benchlib.write_json(result, args.out)
    return result


if __name__ == "__main__":
    benchlib.run_cli(main)
