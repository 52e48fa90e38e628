"""CPU demo: a small cytoself on the built-in synthetic cells (drawn on first use), minutes on a laptop.

python train.py --config=configs/demo.py && python eval.py --ckpt runs/demo
"""

from cytoself_jax.config import apply_ablation, paper_config, small_model


def base_config():
    """The experiment before any ablation switch (bench/ablation.py applies its overrides here)."""
    c = small_model(paper_config())
    # narrow codes (the paper's decoders run at the code width) keep a CPU epoch short
    c.model.vq_local.code_dim = 16
    c.model.vq_global.code_dim = 16
    c.model.decoder_min_features = 16
    c.data.path = "data/demo-synthetic"
    # 4 complexes of 3 proteins (ground truth for eval.py --complexes data/demo-synthetic_complexes.csv)
    c.data.synthetic.update(proteins=40, crops_per_protein=120, fields_per_protein=6, size=48, seed=0, complexes=4)
    c.data.num_workers = 0
    c.train.batch_size = 32
    c.train.max_epochs = 8
    c.train.plateau_patience = 2
    c.train.early_stop_patience = 4
    return c


def get_config(variant: str = "full"):
    """variant: one of cytoself_jax.config.ABLATIONS, given as --config=configs/demo.py:no_split."""
    c = apply_ablation(base_config(), variant)  # after the sizes: 'no_split' derives its code width from them
    c.workdir = "runs/demo" if variant == "full" else f"runs/demo_{variant}"
    return c
