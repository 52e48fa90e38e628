"""Every pairwise difference between groups of trainings in a per-training table (bench/ablation.py's
ablation_trainings.csv, bench/compare_runs.py's _trainings.csv, or any CSV with one row per training), each with
Welch's t-test and the exact permutation test (analysis/compare.py): which orderings are resolved, which are
within noise. Writes OUT.csv and prints Markdown.

python bench/pairwise_differences.py docs/evaluation/demo_ablation_umap_per_training.csv --by variant \\
    --scores clustering_umap_mean --out docs/evaluation/demo_ablation_umap_differences
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Sequence

import pandas as pd

from cytoself_jax.analysis.compare import difference_table
from cytoself_jax.analysis.records import markdown_table


def pairwise(table: pd.DataFrame, by: str, scores: Sequence[str]) -> pd.DataFrame:
    """One row per (score, first group, second group) in first-seen group order: both means, the difference,
    Welch's and the permutation test's two-sided p-values, and n per group."""
    groups = {name: rows.to_dict("records") for name, rows in table.groupby(by, sort=False)}
    out = []
    for first, second in itertools.combinations(groups, 2):
        diff = difference_table(groups, first, second, scores)
        for d in diff.to_dict("records"):
            out.append({"score": d["score"], "first": first, "second": second, "first_mean": d[first],
                        "second_mean": d[second], "difference": d["difference"], "welch_p": d["welch_p"],
                        "permutation_p": d["permutation_p"], "n_first": len(groups[first]),
                        "n_second": len(groups[second])})
    return pd.DataFrame(out)


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", help="CSV with one row per training")
    parser.add_argument("--by", required=True, help="the column naming each training's group (e.g. variant)")
    parser.add_argument("--scores", nargs="+", required=True, help="score columns to compare")
    parser.add_argument("--out", default=None, help="path prefix of the CSV written")
    args = parser.parse_args(argv)
    table = pd.read_csv(args.table)
    missing = [c for c in [args.by, *args.scores] if c not in table]
    if missing:
        raise SystemExit(f"error: {args.table}: columns {missing} missing; found {list(table.columns)}")
    result = pairwise(table, args.by, args.scores)

    def fmt(v):
        return "n/a" if v is None or pd.isna(v) else f"{v:.3g}"
    print(markdown_table([(r["score"], f"{r['first']} - {r['second']}", f"{r['n_first']} vs {r['n_second']}",
                           fmt(r["difference"]), fmt(r["welch_p"]), fmt(r["permutation_p"]))
                          for r in result.to_dict("records")],
                         ("score", "difference", "trainings", "difference of means", "Welch p", "permutation p")))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        result.to_csv(f"{args.out}.csv", index=False, float_format="%.4g")
    return result


if __name__ == "__main__":
    main()
