"""Split vector quantizer (van den Oord et al. 2017) with an optional EMA codebook, and code-index helpers.

All distances, statistics and losses are float32 whatever the input dtype. Batch statistics (perplexity, EMA
counts) are plain reductions over the whole batch, so under jit with the batch sharded over devices they are
statistics of the global batch.
"""

from __future__ import annotations

import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from cytoself_jax.models.layers import ModelConfigError


@flax.struct.dataclass
class VQOutput:
    """quantized: (B,h,w,S*D) straight-through quantized input, in the input's dtype; indices: int32 (B,h,w,S);
    loss: float32 scalar; perplexity: float32 scalar, exp(entropy of code usage over all positions of the batch)."""

    quantized: jax.Array
    indices: jax.Array
    loss: jax.Array
    perplexity: jax.Array


def squared_distances(z: jax.Array, codebook: jax.Array) -> jax.Array:
    """Squared L2 distances (N, K) float32 between vectors z (N, D) and codes (K, D), as one matrix product."""
    z = z.astype(jnp.float32)
    codebook = codebook.astype(jnp.float32)
    # HIGHEST keeps the product in full float32 on GPUs (TF32 could pick a wrong nearest code); it is a small
    # fraction of the model's work.
    cross = jnp.dot(z, codebook.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.sum(z * z, axis=1, keepdims=True) - 2.0 * cross + jnp.sum(codebook * codebook, axis=1)


def lookup(codebook: jax.Array, indices: jax.Array) -> jax.Array:
    """Code vectors of indices (..., S) from codebook (K, D), chunks concatenated: (..., S*D) float32."""
    vectors = jnp.take(codebook.astype(jnp.float32), indices, axis=0)
    return vectors.reshape(*indices.shape[:-1], indices.shape[-1] * codebook.shape[-1])


def code_histogram(indices: jax.Array, num_codes: int) -> jax.Array:
    """Per-image counts of each code: indices int (B, ...) -> (B, num_codes) int32 (indices >= num_codes are
    not counted)."""
    flat = indices.reshape(indices.shape[0], -1)
    return jax.vmap(lambda i: jnp.bincount(i, length=num_codes))(flat).astype(jnp.int32)


def perplexity_from_counts(counts: jax.Array) -> jax.Array:
    """exp(entropy) of the code-usage distribution given by counts (K,); float32 scalar, 1 .. K."""
    probs = counts.astype(jnp.float32) / jnp.maximum(jnp.sum(counts), 1).astype(jnp.float32)
    return jnp.exp(-jnp.sum(probs * jnp.log(probs + 1e-10)))


def ema_update(
    cluster_size: jax.Array,
    embed_sum: jax.Array,
    z: jax.Array,
    indices: jax.Array,
    decay: float,
    epsilon: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One EMA codebook step (van den Oord et al. 2017, appendix) with Laplace smoothing of the counts.

    cluster_size (K,), embed_sum (K, D): running statistics; z (N, D) vectors assigned to codes indices (N,).
    Returns (codebook (K, D), cluster_size, embed_sum), all float32.
    """
    num_codes = cluster_size.shape[0]
    counts = jnp.bincount(indices, length=num_codes).astype(jnp.float32)
    sums = jax.ops.segment_sum(z.astype(jnp.float32), indices, num_segments=num_codes)
    cluster_size = decay * cluster_size + (1.0 - decay) * counts
    embed_sum = decay * embed_sum + (1.0 - decay) * sums
    total = jnp.sum(cluster_size)
    # Laplace smoothing keeps unused codes from dividing by ~0.
    smoothed = (cluster_size + epsilon) / (total + num_codes * epsilon) * total
    return embed_sum / smoothed[:, None], cluster_size, embed_sum


class VectorQuantizer(nn.Module):
    """Nearest-code quantization of each contiguous code_dim chunk of the last axis against one shared codebook.

    Input z (B, h, w, num_splits*code_dim) -> VQOutput. Loss = mean((q - sg z)^2) + commitment_cost *
    mean((sg q - z)^2); with use_ema the codebook is not a parameter but an exponential moving average of the
    vectors assigned to each code (collection 'codebook_ema': codebook, cluster_size, embed_sum), updated when
    train=True and the collection is mutable, and the loss is the commitment term alone.
    """

    num_codes: int = 2048
    code_dim: int = 64
    num_splits: int = 1
    commitment_cost: float = 0.25
    use_ema: bool = False
    ema_decay: float = 0.99
    ema_epsilon: float = 1e-5

    def _codebook_init(self, key: jax.Array, shape: tuple[int, int]) -> jax.Array:
        limit = math.sqrt(3.0 / self.num_codes)
        return jax.random.uniform(key, shape, jnp.float32, -limit, limit)

    def setup(self) -> None:
        shape = (self.num_codes, self.code_dim)
        if not self.use_ema:
            self.codebook = self.param("codebook", self._codebook_init, shape)
            return
        self.ema_codebook = self.variable(
            "codebook_ema", "codebook", lambda: self._codebook_init(self.make_rng("params"), shape)
        )
        # Start as if every code had been assigned one vector equal to itself, so that the first updates
        # leave unused codes where they are instead of dividing them by a near-zero count.
        self.ema_cluster_size = self.variable("codebook_ema", "cluster_size", jnp.ones, (self.num_codes,), jnp.float32)
        self.ema_embed_sum = self.variable("codebook_ema", "embed_sum", lambda: self.ema_codebook.value)

    def get_codebook(self) -> jax.Array:
        """The current codebook (num_codes, code_dim) float32."""
        return self.ema_codebook.value if self.use_ema else self.codebook

    def __call__(self, z: jax.Array, train: bool = False) -> VQOutput:
        width = self.num_splits * self.code_dim
        if z.ndim != 4 or z.shape[-1] != width:
            raise ModelConfigError(
                f"VectorQuantizer: input: expected (B, h, w, num_splits*code_dim = {self.num_splits}*{self.code_dim}"
                f" = {width}), got shape {tuple(z.shape)}"
            )
        codebook = self.get_codebook()
        flat = z.astype(jnp.float32).reshape(-1, self.code_dim)
        indices = jnp.argmin(squared_distances(flat, codebook), axis=1).astype(jnp.int32)
        q = jnp.take(codebook, indices, axis=0)

        commitment = jnp.mean((jax.lax.stop_gradient(q) - flat) ** 2)
        loss = self.commitment_cost * commitment
        if not self.use_ema:
            loss = loss + jnp.mean((q - jax.lax.stop_gradient(flat)) ** 2)
        elif train and self.is_mutable_collection("codebook_ema") and not self.is_initializing():
            (self.ema_codebook.value, self.ema_cluster_size.value, self.ema_embed_sum.value) = ema_update(
                self.ema_cluster_size.value,
                self.ema_embed_sum.value,
                jax.lax.stop_gradient(flat),
                indices,
                self.ema_decay,
                self.ema_epsilon,
            )

        quantized = flat + jax.lax.stop_gradient(q - flat)  # straight-through estimator
        return VQOutput(
            quantized=quantized.reshape(z.shape).astype(z.dtype),
            indices=indices.reshape(*z.shape[:-1], self.num_splits),
            loss=loss,
            perplexity=perplexity_from_counts(jnp.bincount(indices, length=self.num_codes)),
        )

    def vectors(self, indices: jax.Array) -> jax.Array:
        """Quantized vectors (..., S*D) float32 of code indices (..., S), from this quantizer's codebook."""
        return lookup(self.get_codebook(), indices)
