"""The training loop's three programs, each made from (config, dataset record, mesh) alone.

These factories are what `program_cache.cached_program` keys and keeps: a program can depend on nothing but
their three inputs (hashed whole) and the code, so no setting can be left out of its key.
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


def run_model(config: ml_collections.ConfigDict, dataset_info: dict):
    """The run's model: config.model for crops of dataset_info's image_shape (H, W, C) and its proteins."""
    return build_model(config, tuple(dataset_info["image_shape"]), len(dataset_info["proteins"]))


def init_program(config: ml_collections.ConfigDict, dataset_info: dict, mesh: Mesh) -> Callable:
    """key -> TrainState: the initial state (config.train.learning_rate), replicated over the mesh."""
    init = functools.partial(create_train_state, run_model(config, dataset_info),
                             tuple(dataset_info["image_shape"]), config.train.learning_rate)
    return jax.jit(init, out_shardings=mesh_lib.replicated(mesh))


def train_step_program(config: ml_collections.ConfigDict, dataset_info: dict, mesh: Mesh) -> Callable:
    """(state, batch, key) -> (state, metrics), the state donated (training/step.py)."""
    return make_train_step(run_model(config, dataset_info), config.loss, mesh, dataset_info["data_variance"])


def eval_step_program(config: ml_collections.ConfigDict, dataset_info: dict, mesh: Mesh) -> Callable:
    """(state, batch) -> metrics summed or averaged over the batch (training/step.py); the mesh is unused."""
    del mesh
    return make_eval_step(run_model(config, dataset_info), config.loss, dataset_info["data_variance"])
