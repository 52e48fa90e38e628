"""Time to a trained step and to an evaluation, cold (empty compilation cache) and warm (the cache of the run before).

Each row is the wall time of one command in a fresh process, as a user runs it: `train.py` for one epoch of one
step (data checks, model init, the step, validation, checkpoints, curves) into a new run directory, with the
time from its start to its first trained step (the step's record in metrics.jsonl), then
`eval.py` on that run, then the README's command again on the finished run (recognised: nothing is trained).
`cold` uses an empty $CYTOSELF_JAX_CACHE folder, `warm` the folder the cold commands filled (compiled programs,
and the traced programs of program_cache.py). The crop store is
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


def _run(cmd: list[str], env: dict, timeout: float, first_step_in: Path | None = None) -> tuple[float, float | None]:
    """Wall seconds of cmd and, when first_step_in (a run's metrics.jsonl) is given, the seconds from the start
    until its first step record appeared (polled every 20 ms: written as soon as the first step's loss is read,
    before validation, checkpoints and curves). A failure is a one-line BenchError with the last output line."""
    start = time.perf_counter()
    first_step = None
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        while proc.poll() is None:
            if first_step is None and first_step_in is not None and '"kind": "step"' in _read(first_step_in):
                first_step = time.perf_counter() - start
            if time.perf_counter() - start > timeout:
                proc.kill()
                raise benchlib.BenchError(f"{' '.join(cmd[1:3])}: still running after {timeout:.0f} s")
            time.sleep(0.02)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            out.seek(0)
            last = (out.read().strip().splitlines() or ["(no output)"])[-1]
            raise benchlib.BenchError(f"{' '.join(cmd[1:3])}: exit status {proc.returncode}: {last}")
    return seconds, first_step


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def run(config: str, workdir: Path, *, overrides: Sequence[str] = (), timeout: float = 1800.0) -> dict[str, Any]:
    """Cold and warm wall times of train (1 step), eval, and the finished run's train + eval again."""
    cache = workdir / "jax-cache"  # the compiled programs, and in exported/ the traced ones
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
        row = {"phase": phase}
        row["train_s"], row["first_step_s"] = _run(train_cmd, env, timeout, run_dir / "metrics.jsonl")
        row["eval_s"] = _run(eval_cmd, env, timeout)[0]
        row["train_again_s"] = _run(train_cmd, env, timeout)[0]  # the finished run, recognised
        row["eval_again_s"] = _run(eval_cmd, env, timeout)[0]
        row["cache_files"] = sum(1 for p in cache.rglob("*") if p.is_file()) if cache.is_dir() else 0
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
    rows = [[r["phase"], r["first_step_s"], r["train_s"], r["eval_s"], r["train_again_s"], r["eval_again_s"],
             r["cache_files"]] for r in result["rows"]]
    benchlib.print_table(f"startup: {args.config} (wall s per command, fresh process each)",
                         ["cache", "train.py: first step", "train.py, 1 step (whole)", "eval.py",
                          "train.py again (finished)", "eval.py again", "cache files"], rows)
    benchlib.write_json(result, args.out)
    return result


if __name__ == "__main__":
    benchlib.run_cli(main)
