"""Codebook use over the split: perplexity (exp of the entropy of code use, 1..K), codes used and dead codes."""
from __future__ import annotations

import numpy as np

from cytoself_jax.analysis.context import EvalContext, Evaluation
from cytoself_jax.analysis.records import Score


def codebook_usage(counts: np.ndarray) -> dict:
    """Usage of a codebook from its code counts (K,) over a split: perplexity (exp of the entropy of code usage,
    1..K), codes used (count > 0) and dead codes (never used)."""
    counts = np.asarray(counts, dtype=np.float64)
    p = counts / max(counts.sum(), 1.0)
    nz = p[p > 0]
    used = int(np.count_nonzero(counts))
    return {"num_codes": int(len(counts)), "perplexity": float(np.exp(-np.sum(nz * np.log(nz)))),
            "codes_used": used, "dead_codes": int(len(counts) - used)}


def evaluate(ctx: EvalContext) -> Evaluation:
    out = ctx.outputs
    num_global = ctx.run.model.spec.vq_global.num_codes
    usage = {"local": codebook_usage(out.local_histograms.sum(axis=0)),
             "global": codebook_usage(np.bincount(out.global_indices.reshape(-1), minlength=num_global))}
    scores, notes = [], []
    for level, u in usage.items():
        # A property of the trained codebook on this split, not an estimate from a sample: no interval.
        scores.append(Score(f"codebooks.{level}_perplexity", f"{level} codebook perplexity", u["perplexity"],
                            f"{u['codes_used']} of {u['num_codes']} codes used, {u['dead_codes']} dead (over the "
                            "split)", n=len(out), digits=1))
        if u["codes_used"] == 1:
            notes.append(f"{level} codebook: every position of every crop took the same code (collapsed, as in an "
                         "untrained model), so its embedding carries no information")
    return Evaluation(scores=scores, details={"codebooks": usage}, notes=notes)
