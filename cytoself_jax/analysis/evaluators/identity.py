"""Protein identity: the classifier heads' top-1/top-5 and a kNN vote among train crops (global embedding)."""
from __future__ import annotations

import numpy as np

from cytoself_jax.analysis import scores as scoring
from cytoself_jax.analysis.context import EvalContext, Evaluation, interval_of_mean
from cytoself_jax.analysis.records import Score


def evaluate(ctx: EvalContext) -> Evaluation:
    o, out = ctx.options, ctx.outputs
    num_classes = len(ctx.run.proteins)
    chance = {"top1": 1 / num_classes, "top5": min(5, num_classes) / num_classes}  # a uniform guess
    known = ctx.class_ids >= 0
    result = Evaluation(details={"chance": chance})
    heads = {}
    for level, ranks in sorted((out.class_ranks or {}).items()):  # ranked in the pass (classifier_ranks' rule)
        heads[level] = {}
        for k in (1, 5):
            hits = (ranks < k).astype(np.float64)
            low, high, fields = interval_of_mean(ctx, hits)
            heads[level][f"top{k}"] = float(hits.mean())
            result.scores.append(Score(f"classifier.{level}_top{k}", f"classifier top-{k} ({level} head)",
                                       float(hits.mean()), "protein identity", low, high, chance=chance[f"top{k}"],
                                       n=len(hits), groups=fields))
    result.details["classifier"] = {**heads, "crops_unknown_protein": int(np.sum(~known))} if heads and known.any() \
        else None
    if not heads:
        result.notes.append("classifier: the model has no identification head (config.model.heads is empty)")
    elif not known.any():
        result.notes.append("classifier: no crop is of a protein the run was trained on, so protein identity is "
                            "not scored")
    elif int(np.sum(~known)):
        result.notes.append(f"classifier: {int(np.sum(~known))} crops of proteins the run was not trained on count "
                            "as misses")

    reference = ctx.reference()
    if reference is None:
        result.details["knn"] = None
        result.notes.append(f"kNN: needs a held-out split to query (--split val or test), not {o.split!r}")
        return result
    rows, train = reference
    train_proteins = ctx.store.table["protein"].to_numpy()[rows]
    if len(rows) < len(ctx.splits["train"]):
        result.notes.append(f"kNN: reference is a seeded subsample of {len(rows)} of {len(ctx.splits['train'])} "
                            f"train crops (seed {o.seed})")
    k = min(o.knn_k, len(rows))
    ranks = scoring.knn_ranks(train.global_vectors, train_proteins, ctx.vectors, ctx.proteins, k=k,
                              progress=o.progress)
    knn = {"k": k, "metric": "euclidean", "train_crops": int(len(rows))}
    for kk in (1, 5):
        hits = (ranks < kk).astype(np.float64)
        low, high, fields = interval_of_mean(ctx, hits)
        knn[f"top{kk}"] = float(hits.mean())
        result.scores.append(Score(f"knn.top{kk}", f"kNN top-{kk}", float(hits.mean()),
                                   f"protein identity by vote of the {k} nearest of {len(rows)} train crops (global "
                                   "embedding)", low, high, chance=chance[f"top{kk}"], n=len(hits), groups=fields))
    result.details["knn"] = knn
    return result
