"""Reconstruction error: mean squared error between the decoded crop and the input, on normalized pixels."""
from __future__ import annotations

from cytoself_jax.analysis.context import EvalContext, Evaluation, interval_of_mean
from cytoself_jax.analysis.records import Score


def evaluate(ctx: EvalContext) -> Evaluation:
    se = ctx.outputs.squared_error  # (N, C): per crop and channel, the mean over pixels
    per_crop = se.mean(axis=1)
    low, high, fields = interval_of_mean(ctx, per_crop)
    per_channel = {c: float(v) for c, v in zip(ctx.channels, se.mean(axis=0))}
    basis = "mean squared error on normalized pixels (" + ", ".join(f"{c} {v:.4f}" for c, v in per_channel.items()) + ")"
    return Evaluation(
        scores=[Score("reconstruction.mse", "reconstruction MSE", float(per_crop.mean()), basis, low, high,
                      n=len(per_crop), groups=fields, digits=4)],
        details={"reconstruction_mse": {"all": float(per_crop.mean()), "per_channel": per_channel}})
