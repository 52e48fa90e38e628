"""The evaluators eval and the embed command run, in order: each is a module with one function
evaluate(EvalContext) -> Evaluation (analysis/context.py) that writes its files into the output folder and returns
its scores, metrics.json details and notes. A new score is one new module plus one line here; `--evaluators`
picks a subset (the registry order is kept)."""
from __future__ import annotations

from typing import Callable

from cytoself_jax.analysis.context import EvalContext, Evaluation
from cytoself_jax.analysis.evaluators import (atlas_pictures, clustering, codebooks, curves, embeddings_h5ad,
                                              identity, interactive_atlas, linear_probe, output_readme,
                                              protein_atlas, reconstruction, reconstructions, retrieval,
                                              similar_proteins, spectra, unseen_proteins)

REGISTRY: dict[str, Callable[[EvalContext], Evaluation]] = {
    "reconstruction": reconstruction.evaluate,
    "codebooks": codebooks.evaluate,
    "identity": identity.evaluate,
    "clustering": clustering.evaluate,
    "retrieval": retrieval.evaluate,
    "similar_proteins": similar_proteins.evaluate,
    "linear_probe": linear_probe.evaluate,
    "unseen_proteins": unseen_proteins.evaluate,
    "protein_atlas": protein_atlas.evaluate,
    "atlas_pictures": atlas_pictures.evaluate,
    "reconstructions": reconstructions.evaluate,
    "spectra": spectra.evaluate,
    "curves": curves.evaluate,
    "embeddings_h5ad": embeddings_h5ad.evaluate,
    "interactive_atlas": interactive_atlas.evaluate,
    "output_readme": output_readme.evaluate,
}
