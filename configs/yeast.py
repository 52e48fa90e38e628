"""CPU config for the real yeast crops (Lu et al. 2019; 64x64, GFP protein + cytosolic RFP fiducial).

Import them once (see README), then:
python train.py --config=configs/yeast.py
The fiducial is a cytosol marker, not a nucleus, so there is no distance-transform channel here.
"""

from cytoself_jax.config import apply_ablation, paper_config, small_model


def base_config():
    """The experiment before any ablation switch (bench/ablation.py applies its overrides here)."""
    c = small_model(paper_config())
    c.data.channels = ("protein", "fiducial")
    c.data.path = "data/yeast"
    c.data.num_workers = 0
    c.train.batch_size = 32
    c.train.max_epochs = 30
    c.train.plateau_patience = 3
    c.train.early_stop_patience = 6
    # Model selection on the validation loss without the VQ terms, not the paper's total: over 5 trainings to
    # early stop each (docs/EVALUATION.md, "Yeast: trainings to early stop"), the total loss stopped 3 of 5 at
    # epoch 9 with epoch 3 as the best (codebooks barely in use) and lost on kNN (-0.20, Welch p 0.027), family mAP
    # (-0.28, p 0.013) and the family probe (-0.21, p 0.012).
    c.train.monitor = "loss_without_vq"
    return c


def get_config(variant: str = "full"):
    """variant: one of cytoself_jax.config.ABLATIONS except 'no_distance' (no distance channel here), given as
    --config=configs/yeast.py:no_split."""
    c = apply_ablation(base_config(), variant)
    c.workdir = "runs/yeast" if variant == "full" else f"runs/yeast_{variant}"
    return c
