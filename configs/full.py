"""The paper's full cytoself model on a crop store at data.path (OpenCell: 100x100, protein + distance).

python train.py --config=configs/full.py --config.data.path=/path/to/store
"""

from cytoself_jax.config import paper_config


def get_config():
    return paper_config()
