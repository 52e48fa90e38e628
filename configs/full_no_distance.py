"""Paper ablation (Table 1): the full model with 'no_distance'. See cytoself_jax.config.apply_ablation."""

from cytoself_jax.config import apply_ablation, paper_config


def get_config():
    c = apply_ablation(paper_config(), "no_distance")
    c.workdir = "runs/full_no_distance"
    return c
