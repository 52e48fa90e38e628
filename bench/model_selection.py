"""Which validation rule picks a good checkpoint: replays each run's per-epoch validation record (metrics.jsonl)
through the plateau / early-stop / best-epoch schedule under every candidate rule (monitored quantity x first
selectable epoch), and reports, at the epoch each rule calls "best", the validation accuracy of the classifier
heads and the codebook perplexities, relative to the run's own maximum.

The replay uses the training loop's own functions (training.schedule.after_validation, losses.monitored_value) on
the recorded trajectory; the learning rate of the recorded run is what it was, so a rule's effect through the
schedule is not replayed, only its choice and its early stop. Prints a table and writes JSON.

python bench/model_selection.py runs/ablation/demo/*/ --out bench/results/model_selection_demo.json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import ml_collections
import numpy as np

import benchlib
from cytoself_jax.jsonio import read_json_lines
from cytoself_jax.run import load_run_config
from cytoself_jax.training.checkpoint import LoopState
from cytoself_jax.training.losses import MONITORS, monitored_value
from cytoself_jax.training.schedule import after_validation

def epoch_records(run_dir: Path) -> list[dict]:
    """The per-epoch records of a run's metrics.jsonl, one per epoch (the last write of an epoch wins)."""
    by_epoch = {r["epoch"]: r for r in read_json_lines(run_dir / "metrics.jsonl") if r.get("kind") == "epoch"}
    return [by_epoch[e] for e in sorted(by_epoch)]


def replay(records: Sequence[dict], config: ml_collections.ConfigDict, monitor: str, start: int) -> dict[str, Any]:
    """The best epoch (1-based), the epoch the run would have stopped at, and the factor its learning rate would
    have been cut by (plateau drops) under (monitor, select_from_epoch)."""
    train_cfg = ml_collections.ConfigDict(config.train.to_dict())
    train_cfg.select_from_epoch = start
    loop = LoopState(learning_rate=1.0)
    for r in records:
        val = {k[4:]: v for k, v in r.items() if k.startswith("val_")}
        loop, _ = after_validation(loop, monitored_value(val, config.loss, monitor), train_cfg)
        if loop.stop_reason:
            break
    return {"best_epoch": loop.best_epoch, "stopped_after": loop.epoch, "lr_factor": loop.learning_rate}


def analyse(run_dirs: Sequence[Path], starts: Sequence[int]) -> dict[str, Any]:
    """Per rule: the mean over runs of the chosen epoch's global/local head accuracy as a fraction of the run's
    best, its global perplexity as a fraction of the run's maximum, and the count of choices whose global codebook
    perplexity is below a quarter of the run's maximum (a collapsed-looking codebook)."""
    runs = []
    for run_dir in run_dirs:
        config, _ = load_run_config(run_dir)
        records = epoch_records(run_dir)
        if records:
            runs.append((run_dir, config, records))
    rules = []
    for monitor in MONITORS:
        for start in starts:
            picks = []
            for run_dir, config, records in runs:
                choice = replay(records, config, monitor, start)
                if choice["best_epoch"] < 1:
                    continue
                chosen = records[choice["best_epoch"] - 1]
                row = {"run": str(run_dir), **choice}
                for key in ("val_accuracy_global", "val_accuracy_local", "val_perplexity_global"):
                    if key in chosen:
                        best = max(r[key] for r in records)
                        row[key] = chosen[key]
                        row[f"{key}_of_max"] = chosen[key] / best if best > 0 else None
                row["collapsed"] = bool(chosen["val_perplexity_global"]
                                        < 0.25 * max(r["val_perplexity_global"] for r in records))
                picks.append(row)

            def mean(key: str) -> float | None:
                values = [p[key] for p in picks if p.get(key) is not None]
                return float(np.mean(values)) if values else None

            rules.append({"monitor": monitor, "select_from_epoch": start, "runs": len(picks),
                          "mean_best_epoch": mean("best_epoch"),
                          "accuracy_global_of_max": mean("val_accuracy_global_of_max"),
                          "accuracy_local_of_max": mean("val_accuracy_local_of_max"),
                          "perplexity_global_of_max": mean("val_perplexity_global_of_max"),
                          "collapsed_choices": sum(p["collapsed"] for p in picks),
                          "runs_with_lr_cut": sum(p["lr_factor"] < 1 for p in picks), "picks": picks})
    return {"benchmark": "model_selection", "runs": [str(r[0]) for r in runs], "rules": rules}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (config.json + metrics.jsonl)")
    parser.add_argument("--starts", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="select_from_epoch values")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    result = analyse([r for r in args.runs if (r / "metrics.jsonl").exists()], args.starts)
    columns = ["monitor", "select from epoch", "runs", "mean best epoch", "global acc / run max",
               "local acc / run max", "global perplexity / run max", "collapsed choices", "runs with lr cut"]
    benchlib.print_table("model selection rules replayed", columns, [
        [r["monitor"], r["select_from_epoch"], r["runs"], r["mean_best_epoch"], r["accuracy_global_of_max"],
         r["accuracy_local_of_max"], r["perplexity_global_of_max"], r["collapsed_choices"], r["runs_with_lr_cut"]]
        for r in result["rules"]])
    benchlib.write_json(result, args.out)
    return result


if __name__ == "__main__":
    benchlib.run_cli(main)
