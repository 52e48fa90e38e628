"""Side-by-side table of groups of evaluated runs (e.g. the paper's decoder against the PyTorch reference's, 3
trainings each): the ablation table's columns (bench/ablation.py `summarize`) plus the epoch of the checkpoint
that was evaluated and the validation perplexities there. Prints Markdown and writes CSV/JSON.

python bench/compare_runs.py --eval-dir test \\
    --group paper runs/paper/demo/full/seed* --group pytorch_reference runs/reference/demo/full/seed* \\
    --out docs/paper_model/decoders_demo
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ablation import _mean_sd, markdown_table, summarize
from model_selection import epoch_records


def chosen_epoch(run_dir: Path) -> dict:
    """The best epoch (1-based) of a run's last epoch record and the validation perplexities recorded there."""
    records = epoch_records(run_dir)
    best = records[-1]["best_epoch"] if records else 0
    at = next((r for r in records if r["epoch"] + 1 == best), {})
    return {"epoch": best, "epochs": len(records), "val_perplexity_global": at.get("val_perplexity_global"),
            "val_perplexity_local": at.get("val_perplexity_local")}


def group_row(name: str, run_dirs: Sequence[Path], eval_dir: str) -> dict:
    """One table row for a group of runs evaluated into RUN/eval/<eval_dir>/metrics.json."""
    metrics = [json.loads((r / "eval" / eval_dir / "metrics.json").read_text()) for r in run_dirs]
    chosen = [chosen_epoch(r) for r in run_dirs]
    row = summarize("full", metrics)
    row.pop("paper Table 1")
    row["variant"] = name
    row["evaluated epoch (of run length)"] = ", ".join(f"{c['epoch']}/{c['epochs']}" for c in chosen)
    row["val perplexity global there"] = _mean_sd([c["val_perplexity_global"] for c in chosen])
    row["val perplexity local there"] = _mean_sd([c["val_perplexity_local"] for c in chosen])
    return row


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", nargs="+", action="append", required=True, metavar=("NAME", "RUN"),
                        help="a name and its run directories; repeat for each group")
    parser.add_argument("--eval-dir", default="test", help="the eval folder under RUN/eval/ (test, test-latest)")
    parser.add_argument("--out", default=None, help="path prefix for .csv, .md and .json")
    args = parser.parse_args(argv)
    rows = []
    for name, *runs in args.group:
        runs = [Path(r) for r in runs if (Path(r) / "eval" / args.eval_dir / "metrics.json").exists()]
        if runs:
            rows.append(group_row(name, runs, args.eval_dir))
    table = pd.DataFrame(rows).rename(columns={"variant": "group"})
    text = markdown_table(table)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out.with_suffix(".csv"), index=False)
        out.with_suffix(".md").write_text(text + "\n")
        out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    return table


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
