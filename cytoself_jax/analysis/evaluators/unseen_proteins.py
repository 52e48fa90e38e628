"""Proteins the model never saw (config.data.heldout_proteins): how well their localization family is recovered
from the proteins it knows, as a user annotating an uncharacterised protein would (analysis/transfer.py). The
known side is the train split's crops (of the trained proteins); the unseen side every crop of the held-out
proteins.

- family by kNN label transfer, crop level (vote of the k nearest known crops) and protein level (vote of the
  nearest known protein profiles);
- a linear probe of family trained on known crops (C chosen on the val split), tested on unseen ones, on the
  embedding and, as the baseline it must beat, on PCA of the pixels (every model channel);
- unseen_proteins.csv: per unseen protein its family, the predicted family and its nearest known proteins.
Intervals: bootstrap over the unseen crops' fields of view (crop level) or over unseen proteins (protein level);
chance: a uniform guess among the known families.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from cytoself_jax.analysis import probe, transfer
from cytoself_jax.analysis.common import AnalysisInputError
from cytoself_jax.analysis.context import EvalContext, Evaluation, subsample
from cytoself_jax.analysis.neighbours import protein_families
from cytoself_jax.analysis.records import Score

NEAREST_LISTED = 5  # nearest known proteins listed per unseen protein
PROTEIN_VOTES = 3  # known protein profiles voting on an unseen protein's family


def _labelled(score: Score, key: str, label: str) -> Score:
    return dataclasses.replace(score, key=key, label=label)


def evaluate(ctx: EvalContext) -> Evaluation:
    if not ctx.heldout:
        return Evaluation(details={"unseen_proteins": None})
    reference, unseen = ctx.reference(), ctx.unseen()
    if reference is None or unseen is None:
        return Evaluation(details={"unseen_proteins": None},
                          notes=["unseen proteins: scored on a held-out split (--split val or test) only"])
    o, table = ctx.options, ctx.store.table
    (known_rows, known), (new_rows, new) = reference, unseen
    column = {c: table[c].fillna("").astype(str).to_numpy() for c in ("family", "protein", "fov")}
    k_x, u_x = known.global_vectors.reshape(len(known), -1), new.global_vectors.reshape(len(new), -1)
    k_fam, u_fam = column["family"][known_rows], column["family"][new_rows]
    k_prot, u_prot = column["protein"][known_rows], column["protein"][new_rows]
    result = Evaluation()
    details = {"proteins": sorted(set(u_prot)), "crops": int(len(new_rows)), "known_crops": int(len(known_rows))}
    result.details["unseen_proteins"] = details
    missing = sorted(set(u_fam[ctx.annotated(u_fam)]) - set(k_fam))
    if missing:
        result.notes.append(f"unseen proteins: families {missing} have no known protein; their crops count as "
                            "misses")
    try:
        crop = transfer.crop_family_transfer(k_x, k_fam, u_x, u_fam, column["fov"][new_rows], k=o.knn_k,
                                             n_boot=o.bootstrap, seed=o.seed)
        per_protein, protein = transfer.protein_family_transfer(k_x, k_prot, k_fam, u_x, u_prot, u_fam,
                                                                k=PROTEIN_VOTES, n_boot=o.bootstrap, seed=o.seed)
    except AnalysisInputError as e:
        result.notes.append(f"unseen proteins: not scored ({e})")
        return result
    result.scores += [
        _labelled(crop["balanced_accuracy"], "unseen.family_knn_crop", "unseen proteins: family by kNN (crops)"),
        _labelled(protein["balanced_accuracy"], "unseen.family_knn_protein",
                  "unseen proteins: family by nearest known proteins"),
    ]
    details.update(crop={k: s.to_json() for k, s in crop.items()},
                   protein={k: s.to_json() for k, s in protein.items()})

    # The family probe on the embedding against the same probe on pixels (every model channel, as the model sees
    # them), both fitted on the same seeded subsample of known crops: does the embedding place new proteins better
    # than their pixels would?
    pick = subsample(len(known_rows), o.probe_max_crops, o.seed)
    validation = ctx.validation()
    sides = {"embedding": (k_x[pick], u_x, None if validation is None else
                           validation[1].global_vectors.reshape(len(validation[0]), -1)),
             "pixels": tuple(None if rows is None else ctx.pixels(rows)
                             for rows in (known_rows[pick], new_rows,
                                          None if validation is None else validation[0]))}
    val_family = None if validation is None else column["family"][validation[0]]
    details["probe"] = {}
    probed = probe.transfer_probes(sides, k_fam[pick], u_fam, val_family, unseen_groups=column["fov"][new_rows],
                                   n_boot=o.bootstrap, seed=o.seed)
    for name, fitted in probed.items():
        if isinstance(fitted, AnalysisInputError):
            result.notes.append(f"unseen proteins: family probe on {name} not scored ({fitted})")
            continue
        key = "unseen.family_probe_macro_f1" if name == "embedding" else f"unseen.family_probe_{name}_macro_f1"
        result.scores.append(_labelled(fitted.scores["macro_f1"], key,
                                       f"unseen proteins: family probe on {name} (macro-F1)"))
        details["probe"][name] = fitted.summary()

    families = protein_families(np.concatenate([k_prot, u_prot]), np.concatenate([k_fam, u_fam]))
    near = transfer.nearest_known_proteins(k_x, k_prot, u_x, u_prot, n=min(NEAREST_LISTED, len(set(k_prot))),
                                           families=families)
    listed = near.assign(neighbour=[f"{n} ({f or 'no family'}, {s:.3f})" for n, f, s in
                                    zip(near["neighbour"], near["neighbour_family"], near["similarity"])]
                         ).pivot(index="protein", columns="rank", values="neighbour").add_prefix("nearest_")
    summary = per_protein.set_index("protein")[["predicted", "hit", "votes"]]
    out = listed.join(summary, how="left")
    out.insert(0, "family", [families.get(p, "") for p in out.index])
    out.insert(1, "crops", [int(np.sum(u_prot == p)) for p in out.index])
    out.insert(2, "fields", [len(set(column["fov"][new_rows][u_prot == p])) for p in out.index])
    out.reset_index().to_csv(ctx.out / "unseen_proteins.csv", index=False, float_format="%.4f")
    return result
