"""curves.png: the run's training curves (not for the untrained floor)."""
from __future__ import annotations

from cytoself_jax.analysis.context import EvalContext, Evaluation
from cytoself_jax.curves import plot_training_curves


def evaluate(ctx: EvalContext) -> Evaluation:
    if ctx.options.random_init:
        return Evaluation()
    metrics = ctx.run.run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return Evaluation(notes=[f"{metrics}: missing; curves.png skipped"])
    plot_training_curves(metrics, ctx.out / "curves.png", svg=False)
    return Evaluation()
