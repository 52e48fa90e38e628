"""The training loop's three programs, each made from (program inputs, mesh) alone.

These factories are what `program_cache.cached_program` keys and keeps. Their inputs are `program_inputs`: the
part of the experiment a program can read (the model and loss sections, the learning rate, the crops' shape, the
number of classes, the pixel variance), hashed whole; a factory is handed nothing else, so no setting it reads can
be left out of its key, and settings it cannot read (workdir, data path, seed, epochs, ...) do not make a run
trace again.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import ml_collections
from jax.sharding import Mesh

from cytoself_jax import mesh as mesh_lib
from cytoself_jax.models import build_model
from cytoself_jax.train_state import create_train_state
from cytoself_jax.training.step import make_eval_step, make_train_step


def program_inputs(config: ml_collections.ConfigDict, dataset_info: dict) -> ml_collections.ConfigDict:
    """What the training programs may read of an experiment (config) and its dataset record (dataset.json):
    model and loss (config sections), learning_rate, image_shape (H, W, C), num_classes, data_variance."""
    return ml_collections.ConfigDict({
        "model": config.model.to_dict(), "loss": config.loss.to_dict(),
        "learning_rate": config.train.learning_rate, "image_shape": tuple(dataset_info["image_shape"]),
        "num_classes": len(dataset_info["proteins"]), "data_variance": dataset_info["data_variance"]})


def run_model(inputs: ml_collections.ConfigDict):
    """The run's model: inputs.model for crops of inputs.image_shape and inputs.num_classes proteins."""
    return build_model(inputs, tuple(inputs.image_shape), inputs.num_classes)


def init_program(inputs: ml_collections.ConfigDict, mesh: Mesh) -> Callable:
    """key -> TrainState: the initial state (inputs.learning_rate), replicated over the mesh."""
    init = functools.partial(create_train_state, run_model(inputs), tuple(inputs.image_shape), inputs.learning_rate)
    return jax.jit(init, out_shardings=mesh_lib.replicated(mesh))


def train_step_program(inputs: ml_collections.ConfigDict, mesh: Mesh) -> Callable:
    """(state, batch, key) -> (state, metrics), the state donated (training/step.py)."""
    return make_train_step(run_model(inputs), inputs.loss, mesh, inputs.data_variance)


def eval_step_program(inputs: ml_collections.ConfigDict, mesh: Mesh) -> Callable:
    """(state, batch) -> metrics summed or averaged over the batch (training/step.py); the mesh is unused."""
    del mesh
    return make_eval_step(run_model(inputs), inputs.loss, inputs.data_variance)
