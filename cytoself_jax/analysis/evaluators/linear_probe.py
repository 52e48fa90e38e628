"""Linear probes, like for like: logistic regression on the train split's global embeddings against the same probe
on PCA of the pixels of every channel the model reads (as the model sees them), each side's C (and PCA size)
chosen on the val split, beside the majority-class floor; scored on the evaluated split with intervals over its
fields of view (probe.csv, columns explained in probe.PROBE_COLUMNS)."""
from __future__ import annotations

import dataclasses

from cytoself_jax.analysis import probe
from cytoself_jax.analysis.context import EvalContext, Evaluation, subsample
from cytoself_jax.analysis.records import Score

FEATURES = {"embedding": "global embedding", "pixels": "PCA of the model's input pixels (all its channels)",
            "majority": "always the most frequent training class"}


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
    sides = [(train_rows[train_pick], train.global_vectors[train_pick])]
    validation = ctx.validation()
    if validation is not None:
        sides.append((validation[0], validation[1].global_vectors))
    else:
        result.notes.append("linear probe: C = 1 (and 50 principal components of the pixels) on both sides, as no "
                            "separate val split is available to choose them on (evaluate --split test)")
    sides.append((ctx.rows[eval_pick], ctx.outputs.global_vectors[eval_pick]))
    features = {"embedding": tuple(v.reshape(len(v), -1) for _, v in sides),
                "pixels": tuple(ctx.pixels(rows) for rows, _ in sides)}
    table = ctx.store.table
    probes = probe.run_probes(
        ctx.out, features, table.iloc[sides[0][0]].reset_index(drop=True),
        table.iloc[sides[-1][0]].reset_index(drop=True), seed=o.seed, n_boot=o.bootstrap,
        val_table=table.iloc[validation[0]].reset_index(drop=True) if validation is not None else None,
        trained_on="train split", tested_on=f"{o.split} split")
    result.details["probe"] = probes
    for target in ("family", "protein"):
        for name, what in FEATURES.items():
            summary = (probes.get(target) or {}).get(name)
            key, label = f"probe.{target}_{name}_macro_f1", f"linear probe {target} ({name}): macro-F1"
            if summary is None:
                result.scores.append(Score(key, label, None, f"logistic regression on the {what}"))
                continue
            record = Score.from_json(summary["scores"]["macro_f1"])
            settings = f"C = {summary['C']:g}" if summary.get("C") is not None else "no fit"
            if summary.get("pca_components"):
                settings += f", {summary['pca_components']} components"
            result.scores.append(dataclasses.replace(
                record, key=key, label=label,
                basis=f"{what}; train -> {o.split} crops, {summary['classes']} classes, {settings} "
                      f"({summary['selected_on'] or 'floor'}); probe.csv"))
    if probes["family"]["embedding"] is None:
        result.notes.append("linear probe of family: needs 2 annotated families in train and test")
    return result
