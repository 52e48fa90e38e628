"""CPU config for the real yeast crops (Lu et al. 2019; 64x64, GFP protein + cytosolic RFP fiducial).

Import them once (see README), then:
python train.py --config=configs/yeast.py
The fiducial is a cytosol marker, not a nucleus, so there is no distance-transform channel here.
"""

from cytoself_jax.config import paper_config, small_model


def get_config():
    c = small_model(paper_config())
    c.workdir = "runs/yeast"
    c.data.path = "data/yeast"
    c.data.channels = ("protein", "fiducial")
    c.data.num_workers = 0
    c.train.batch_size = 32
    c.train.max_epochs = 30
    c.train.plateau_patience = 3
    c.train.early_stop_patience = 6
    return c
