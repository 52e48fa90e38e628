"""CPU config for the real yeast crops (Lu et al. 2019; 64x64, GFP protein + cytosolic RFP fiducial).

Import them once (see README), then:
python train.py --config=configs/yeast.py
The fiducial is a cytosol marker, not a nucleus, so there is no distance-transform channel here.
"""

from cytoself_jax.config import apply_ablation, paper_config, small_model


def get_config(variant: str = "full"):
    """variant: one of cytoself_jax.config.ABLATIONS, given as --config=configs/yeast.py:no_split."""
    if variant == "no_distance":
        raise ValueError("configs/yeast.py: variant: 'no_distance' does not apply: the yeast fiducial is a cytosol "
                         "marker with no distance-transform channel")
    c = small_model(paper_config())
    c.data.channels = ("protein", "fiducial")
    c = apply_ablation(c, variant)
    c.workdir = "runs/yeast" if variant == "full" else f"runs/yeast_{variant}"
    c.data.path = "data/yeast"
    c.data.num_workers = 0
    c.train.batch_size = 32
    c.train.max_epochs = 30
    c.train.plateau_patience = 3
    c.train.early_stop_patience = 6
    return c
