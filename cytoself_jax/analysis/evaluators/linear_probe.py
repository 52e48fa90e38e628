"""Linear probes: logistic regression on the train split's global embeddings (and, as the baseline, on PCA of the
pixels), scored on the evaluated split (probe.csv)."""
from __future__ import annotations

from cytoself_jax.analysis import probe
from cytoself_jax.analysis.context import EvalContext, Evaluation, subsample
from cytoself_jax.analysis.records import Score


def evaluate(ctx: EvalContext) -> Evaluation:
    o = ctx.options
    reference = ctx.reference()
    if reference is None:
        return Evaluation(details={"probe": None},
                          notes=[f"linear probe: needs a held-out split (--split val or test), not {o.split!r}"])
    train_rows, train = reference
    result = Evaluation()
    train_pick = subsample(len(train_rows), o.probe_max_crops, o.seed)
    eval_pick = subsample(len(ctx.rows), o.probe_max_crops, o.seed)
    if len(train_pick) < len(train_rows) or len(eval_pick) < len(ctx.rows):
        result.notes.append(f"linear probe: seeded subsamples of {len(train_pick)} train and {len(eval_pick)} "
                            f"{o.split} crops (--probe_max_crops)")
    features = {
        "embedding": (train.global_vectors[train_pick].reshape(len(train_pick), -1),
                      ctx.outputs.global_vectors[eval_pick].reshape(len(eval_pick), -1)),
        "pixels": (probe.protein_pixels(ctx.store, train_rows[train_pick]),
                   probe.protein_pixels(ctx.store, ctx.rows[eval_pick])),
    }
    probes = probe.run_probes(ctx.out, features, ctx.store.table.iloc[train_rows[train_pick]].reset_index(drop=True),
                              ctx.table.iloc[eval_pick].reset_index(drop=True), seed=o.seed)
    result.details["probe"] = probes
    for target in ("family", "protein"):
        for name, what in (("embedding", "global embedding"), ("pixels", "PCA of protein-channel pixels")):
            s = (probes.get(target) or {}).get(name)
            result.scores.append(Score(f"probe.{target}_{name}_macro_f1", f"linear probe {target} ({name}): macro-F1",
                                       s["macro_f1"] if s else None,
                                       f"logistic regression on the {what}, train -> {s['test'] if s else 0} held-out "
                                       f"crops ({s['classes'] if s else 0} classes; probe.csv)",
                                       n=s["test"] if s else None))
    if probes["family"]["embedding"] is None:
        result.notes.append("linear probe of family: needs 2 annotated families in train and test")
    return result
