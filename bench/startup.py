"""Time to a trained step and to an evaluation, cold (empty compilation cache) and warm (the cache of the run before).

Each row is the wall time of one command in a fresh process, as a user runs it: `train.py` for one epoch of one
step (data checks, model init, the step, validation, checkpoints, curves) into a new run directory, then
`eval.py` on that run, then the README's command again on the finished run (recognised: nothing is trained).
`cold` uses an empty $CYTOSELF_JAX_CACHE folder, `warm` the folder the cold commands filled. The crop store is
drawn once beforehand (not timed). Prints a table and writes JSON.

python bench/startup.py --config configs/demo.py --out bench/results/startup_demo_cpu.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import benchlib

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], env: dict, timeout: float) -> float:
    """Wall seconds of cmd; a failure is a one-line BenchError with the command's last output line."""
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise benchlib.BenchError(f"{' '.join(cmd[1:3])}: exit status {done.returncode}: {last}")
    return seconds


def run(config: str, workdir: Path, *, overrides: Sequence[str] = (), timeout: float = 1800.0) -> dict[str, Any]:
    """Cold and warm wall times of train (1 step), eval, and the finished run's train + eval again."""
    cache = workdir / "jax-cache"
    env = {**os.environ, "CYTOSELF_JAX_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    base = [f"--config={config}", *overrides]
    one_step = ["--config.train.max_epochs=1", "--config.train.max_steps_per_epoch=1"]
    # Draw the config's store once if it is not there yet (not timed; a synthetic store is drawn only into the
    # config's own folder): a training run with no step would still compile, so use the function train.py calls.
    _run([sys.executable, "-c", "import sys; from cytoself_jax.training.loop import ensure_dataset; "
          "import benchlib; ensure_dataset(benchlib.load_config(sys.argv[1]).data)", config], {
        **env, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'bench'}"}, timeout)  # noqa: E501
    rows = []
    for phase in ("cold", "warm"):
        run_dir = workdir / f"run-{phase}"
        train_cmd = [sys.executable, "train.py", *base, f"--config.workdir={run_dir}", *one_step]
        eval_cmd = [sys.executable, "eval.py", f"--ckpt={run_dir}", "--umap_seeds=1"]
        row = {"phase": phase, "train_s": _run(train_cmd, env, timeout), "eval_s": _run(eval_cmd, env, timeout)}
        row["train_again_s"] = _run(train_cmd, env, timeout)  # the finished run, recognised
        row["eval_again_s"] = _run(eval_cmd, env, timeout)
        row["cache_files"] = sum(1 for _ in cache.glob("*")) if cache.is_dir() else 0
        rows.append(row)
    return {"benchmark": "startup", "config": config, "overrides": list(overrides), "rows": rows,
            **benchlib.environment([])}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo.py", help="experiment config file")
    p.add_argument("--out", default=None, help="JSON file to write")
    benchlib.add_set_arg(p)
    args = p.parse_args(argv)
    overrides = [f"--config.{o}" for o in args.overrides]
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        result = run(args.config, Path(tmp), overrides=overrides)
    rows = [[r["phase"], r["train_s"], r["eval_s"], r["train_again_s"], r["eval_again_s"], r["cache_files"]]
            for r in result["rows"]]
    benchlib.print_table(f"startup: {args.config} (wall s per command, fresh process each)",
                         ["cache", "train.py, 1 step", "eval.py", "train.py again (finished)", "eval.py again",
                          "cache files"], rows)
    benchlib.write_json(result, args.out)
    return result


if __name__ == "__main__":
    benchlib.run_cli(main)
