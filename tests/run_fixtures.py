"""Run directories for embedding tests: the tests' tiny model, initialised with codebooks drawn from its encoders'
outputs (so crops get different codes) and saved as the 'best' checkpoint, without training."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from conftest import tiny_config
from cytoself_jax.data.pipeline import StoreSource
from cytoself_jax.data.store import open_store
from cytoself_jax.training.checkpoint import Checkpointer, LoopState
from cytoself_jax.training.run_record import record_run
from cytoself_jax.models import build_model
from cytoself_jax.train_state import create_train_state
from test_eval import _spread_codebooks


def make_run(run_dir: Path, store_path: Path, channels: Sequence[str], seed: int = 1) -> Path:
    """A run of the tiny config on the store at store_path (its proteins, crop size and `channels`)."""
    config = tiny_config(run_dir, store_path)
    config.data.channels = tuple(channels)
    store = open_store(store_path)
    image_shape = (*store.image_shape[:2], len(channels))
    model = build_model(config, image_shape, len(store.proteins))
    state = jax.jit(lambda k: create_train_state(model, image_shape, 4e-4, k))(jax.random.PRNGKey(seed))
    rows = np.linspace(0, len(store) - 1, min(16, len(store))).astype(int)
    images = np.stack([StoreSource(store, rows, channels)[i]["image"] for i in range(len(rows))])
    state = state.replace(params=_spread_codebooks(model, {"params": state.params, **state.model_state}, images))
    record_run(run_dir, config, {"store": str(store_path), "proteins": list(store.proteins),
                                 "channels": list(channels), "image_shape": list(image_shape),
                                 "split_sizes": {}}, 0)
    checkpointer = Checkpointer(run_dir)
    checkpointer.save("best", state, LoopState(epoch=1, best_epoch=0))
    checkpointer.wait()
    checkpointer.close()
    return run_dir
