"""The paper's full cytoself model on a crop store at data.path (OpenCell: 100x100, protein + distance).

python train.py --config=configs/full.py --config.data.path=/path/to/store
"""

from cytoself_jax.config import apply_ablation, paper_config


def base_config():
    """The experiment before any ablation switch (bench/ablation.py applies its overrides here)."""
    return paper_config()


def get_config(variant: str = "full"):
    """variant: one of cytoself_jax.config.ABLATIONS, given as --config=configs/full.py:no_split."""
    c = apply_ablation(base_config(), variant)
    if variant != "full":
        c.workdir = f"runs/full_{variant}"
    return c
