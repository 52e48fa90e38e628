"""The protein-level atlas (proteins.h5ad: neighbour graph, Leiden communities, dendrogram) and, with
--complexes, how tightly each complex's subunits sit together in it (complexes.csv/.png)."""
from __future__ import annotations

from cytoself_jax.analysis import complexes, proteins as protein_level
from cytoself_jax.analysis.atlas_provenance import atlas_provenance
from cytoself_jax.analysis.context import EvalContext, Evaluation
from cytoself_jax.analysis.records import Score


def evaluate(ctx: EvalContext) -> Evaluation:
    o = ctx.options
    summary, adata = protein_level.protein_atlas(ctx.out, ctx.outputs.global_vectors, ctx.table,
                                                 n_neighbors=o.umap_neighbors, seed=o.seed, svg=o.svg,
                                                 provenance=atlas_provenance(ctx))
    result = Evaluation(details={"proteins": summary, "complexes": None})
    if summary is None:
        result.notes.append(f"protein atlas: needs at least {protein_level.MIN_PROTEINS} proteins; proteins.h5ad "
                            "skipped")
    else:
        result.scores.append(Score("proteins.adjusted_rand_family", "protein communities vs families (ARI)",
                                   summary["adjusted_rand_family"],
                                   f"adjusted Rand index of {summary['communities']} Leiden communities of "
                                   f"{summary['proteins']} proteins against their families (proteins.h5ad)",
                                   chance=0.0, n=summary["proteins"]))
    if o.complexes and adata is not None:
        c = complexes.evaluate_complexes(ctx.out, adata, o.complexes, o.complex_permutations, o.seed, svg=o.svg)
        result.details["complexes"] = c
        if c:
            result.scores.append(Score("complexes.significant", "complexes tighter than chance (q < 0.05)",
                                       float(c["significant_q05"]),
                                       f"of {c['scored']} complexes, vs {c['permutations']} label permutations; "
                                       f"median neighbour fraction {c['median_neighbour_fraction']:.3f} (null "
                                       f"{c['median_null_fraction']:.3f}; complexes.csv)", n=c["scored"], digits=0))
    elif o.complexes:
        result.notes.append("complexes: need the protein atlas (too few proteins); skipped")
    return result
