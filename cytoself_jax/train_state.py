"""The train state pytree and the optimizer: everything a step reads and writes, nothing else.

Training steps it; loading a run (run.py: eval, embed, inference) builds its structure to restore a checkpoint
into. Its pytree nodes are registered for jax.export, so that a traced program taking or returning a state can
be kept on disk (program_cache.py) and read back without executing code.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax import export


@flax.struct.dataclass
class TrainState:
    """step: int32 scalar; params: model parameters (float32); model_state: the other variable collections
    (batch_stats, and codebook_ema when EMA codebook updates are on); opt_state: Adam moments + learning rate."""

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any


def make_optimizer(learning_rate: float) -> optax.GradientTransformation:
    """Adam whose learning rate sits in the optimizer state, so the plateau schedule can change it between
    epochs without recompiling the step and it is checkpointed with everything else."""
    return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)


def create_train_state(model, image_shape: tuple[int, int, int], learning_rate: float, key: jax.Array) -> TrainState:
    """Initialise a model for images of image_shape (H, W, C) with a batch of 2, and its Adam state."""
    variables = model.init({"params": key, "dropout": key}, jnp.zeros((2, *image_shape), jnp.float32), train=False)
    variables = dict(variables)
    params = variables.pop("params")
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=variables,
        opt_state=make_optimizer(learning_rate).init(params),
    )


def with_learning_rate(state: TrainState, lr: float) -> TrainState:
    """The same state with a new learning rate."""
    hyper = dict(state.opt_state.hyperparams)
    old = hyper["learning_rate"]
    hyper["learning_rate"] = jax.device_put(jnp.asarray(lr, old.dtype), old.sharding)
    return state.replace(opt_state=state.opt_state._replace(hyperparams=hyper))


# jax.export serializes dicts, lists, tuples and None itself; the state's other nodes are named here. TrainState
# has no static fields (its flattening's auxiliary data is the empty tuple).
export.register_pytree_node_serialization(TrainState, serialized_name="cytoself_jax.TrainState",
                                          serialize_auxdata=lambda aux: b"", deserialize_auxdata=lambda data: ())
for _node in (optax.InjectStatefulHyperparamsState, optax.ScaleByAdamState, optax.EmptyState):
    export.register_namedtuple_serialization(_node, serialized_name=f"optax.{_node.__name__}")
