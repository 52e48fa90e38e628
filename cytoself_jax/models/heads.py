"""The identification pretext task's classifier: a 2-layer perceptron on a flattened representation."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class ClassifierHead(nn.Module):
    """flatten -> Dense(hidden) -> ReLU -> Dropout(dropout, 'dropout' rng) -> Dense(num_classes).

    x (B, ...) -> logits (B, num_classes), always float32 (softmax is left to the loss).
    """

    num_classes: int
    hidden: int = 1000
    dropout: float = 0.5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="hidden")(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="logits")(x).astype(jnp.float32)
