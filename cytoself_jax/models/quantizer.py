"""Split vector quantizer (van den Oord et al. 2017) with an optional EMA codebook, and code-index helpers.

Codebook health, beyond the paper (both off by default): k-means initialisation of the codebook from the encoder
outputs of the first training batch, and restarts of dead codes (codes whose usage fell below a threshold get
random encoder outputs of the current batch), as in Dhariwal et al. 2020 (Jukebox).

All distances, statistics and losses are float32 whatever the input dtype. Batch statistics (perplexity, EMA
counts, code usage) are plain reductions over the whole batch, so under jit with the batch sharded over devices
they are statistics of the global batch.
"""

from __future__ import annotations

import math

import flax.linen as nn
import flax.struct
import flax.traverse_util
import jax
import jax.numpy as jnp

from cytoself_jax.models.layers import ModelConfigError

CODEBOOK_INITS = ("uniform", "kmeans")
# The variable collection of codebook maintenance (k-means flag, code usage, replaced codes), present only when
# k-means initialisation or restarts are on: mutable in training like batch_stats.
MAINTENANCE = "codebook_state"


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


def sample_rows(key: jax.Array, x: jax.Array, n: int) -> jax.Array:
    """n rows (n, D) of x (N, D) drawn at random: distinct rows when N >= n, else with replacement."""
    picks = jax.random.choice(key, x.shape[0], (n,), replace=x.shape[0] < n)
    return jnp.take(x.astype(jnp.float32), picks, axis=0)


def kmeans(x: jax.Array, centres: jax.Array, iterations: int) -> jax.Array:
    """Lloyd's algorithm: `iterations` rounds of assigning x (N, D) to the nearest of centres (K, D) and moving each
    centre to the mean of its vectors; a centre with no vector stays where it is. Returns (K, D) float32."""
    x = x.astype(jnp.float32)
    num = centres.shape[0]

    def step(_, c: jax.Array) -> jax.Array:
        idx = jnp.argmin(squared_distances(x, c), axis=1)
        counts = jnp.bincount(idx, length=num).astype(jnp.float32)
        sums = jax.ops.segment_sum(x, idx, num_segments=num)
        return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], c)

    return jax.lax.fori_loop(0, iterations, step, centres.astype(jnp.float32))


def restart_dead_codes(
    codebook: jax.Array,
    usage: jax.Array,
    counts: jax.Array,
    x: jax.Array,
    key: jax.Array,
    threshold: float,
    decay: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One dead-code restart step. usage (K,): EMA of each code's assignments per batch, updated with this batch's
    counts (K,); codes whose usage is then below threshold are dead: each gets a random row of x (N, D) (this
    batch's encoder outputs; distinct rows when N >= K) and its usage is reset to 1, the start value.
    Returns (codebook (K, D), usage (K,), restarted (K,) bool), float32 arrays."""
    usage = decay * usage + (1.0 - decay) * counts.astype(jnp.float32)
    dead = usage < threshold
    codebook = jnp.where(dead[:, None], sample_rows(key, x, codebook.shape[0]), codebook.astype(jnp.float32))
    return codebook, jnp.where(dead, 1.0, usage), dead


def apply_codebook_replacements(params, model_state):
    """After an optimizer step: each gradient-trained codebook row that the quantizer replaced in this step
    (k-means initialisation, a restart; collection MAINTENANCE: 'replaced' (K,) bool, 'replacement' (K, D)) is set
    to its replacement, whatever the optimizer made of it. Returns (params, model_state) with the marks cleared;
    both unchanged when no quantizer keeps replacements."""
    flat_state = flax.traverse_util.flatten_dict(dict(model_state.get(MAINTENANCE, {})))
    modules = [path[:-1] for path in flat_state if path[-1] == "replaced"]
    if not modules:
        return params, model_state
    flat_params = flax.traverse_util.flatten_dict(dict(params))
    for module in modules:
        replaced = flat_state[(*module, "replaced")]
        key = (*module, "codebook")
        flat_params[key] = jnp.where(replaced[:, None], flat_state[(*module, "replacement")], flat_params[key])
        flat_state[(*module, "replaced")] = jnp.zeros_like(replaced)
    state = {**model_state, MAINTENANCE: flax.traverse_util.unflatten_dict(flat_state)}
    return flax.traverse_util.unflatten_dict(flat_params), state


class VectorQuantizer(nn.Module):
    """Nearest-code quantization of each contiguous code_dim chunk of the last axis against one shared codebook.

    Input z (B, h, w, num_splits*code_dim) -> VQOutput. Loss = mean((q - sg z)^2) + commitment_cost *
    mean((sg q - z)^2); with use_ema the codebook is not a parameter but an exponential moving average of the
    vectors assigned to each code (collection 'codebook_ema': codebook, cluster_size, embed_sum), updated when
    train=True and the collection is mutable, and the loss is the commitment term alone.

    Codebook maintenance (collection MAINTENANCE; runs when train=True, the collection is mutable and a 'dropout'
    rng is given): codebook_init='kmeans' replaces the uniform codebook on the first training step by
    kmeans_iterations Lloyd iterations over that batch's encoder outputs, started from random distinct ones
    (flag 'kmeans_done'), and quantizes that batch with it; restart_threshold > 0 keeps an EMA ('usage', decay
    restart_decay, starting at 1) of each code's assignments per batch and after each training step gives the
    codes whose usage fell below the threshold random encoder outputs of the batch ('restarts': how many since
    training started; a count per step would reach the logs only on logged steps). With use_ema the EMA codebook
    and its statistics are set directly (a replaced code counts as one vector equal to itself, as at init);
    otherwise the parameter cannot change inside the model, so the replaced rows are kept
    ('replaced', 'replacement') for the train step to write over the optimizer's update
    (apply_codebook_replacements).
    """

    num_codes: int = 2048
    code_dim: int = 64
    num_splits: int = 1
    commitment_cost: float = 0.25
    use_ema: bool = False
    ema_decay: float = 0.99
    ema_epsilon: float = 1e-5
    codebook_init: str = "uniform"
    kmeans_iterations: int = 10
    restart_threshold: float = 0.0
    restart_decay: float = 0.99

    def _codebook_init(self, key: jax.Array, shape: tuple[int, int]) -> jax.Array:
        limit = math.sqrt(3.0 / self.num_codes)
        return jax.random.uniform(key, shape, jnp.float32, -limit, limit)

    @property
    def maintained(self) -> bool:
        """Whether k-means initialisation or restarts are on (and so the MAINTENANCE collection exists)."""
        return self.codebook_init == "kmeans" or self.restart_threshold > 0

    def setup(self) -> None:
        if self.codebook_init not in CODEBOOK_INITS:
            raise ModelConfigError(f"VectorQuantizer: codebook_init: expected one of {CODEBOOK_INITS}, got "
                                   f"{self.codebook_init!r}")
        shape = (self.num_codes, self.code_dim)
        if self.codebook_init == "kmeans":
            self.kmeans_done = self.variable(MAINTENANCE, "kmeans_done", lambda: jnp.zeros((), jnp.bool_))
        if self.restart_threshold > 0:
            self.usage = self.variable(MAINTENANCE, "usage", jnp.ones, (self.num_codes,), jnp.float32)
            self.restarts = self.variable(MAINTENANCE, "restarts", lambda: jnp.zeros((), jnp.int32))
        if not self.use_ema:
            self.codebook = self.param("codebook", self._codebook_init, shape)
            if self.maintained:
                self.replaced = self.variable(MAINTENANCE, "replaced", jnp.zeros, (self.num_codes,), jnp.bool_)
                self.replacement = self.variable(MAINTENANCE, "replacement", jnp.zeros, shape, jnp.float32)
            return
        self.ema_codebook = self.variable(
            "codebook_ema", "codebook", lambda: self._codebook_init(self.make_rng("params"), shape)
        )
        # Start as if every code had been assigned one vector equal to itself, so that the first updates
        # leave unused codes where they are instead of dividing them by a near-zero count.
        self.ema_cluster_size = self.variable("codebook_ema", "cluster_size", jnp.ones, (self.num_codes,), jnp.float32)
        # a copy: an eagerly run init would otherwise give both variables one buffer, which a train step that
        # donates its state refuses ("donate the same buffer twice")
        self.ema_embed_sum = self.variable("codebook_ema", "embed_sum", lambda: jnp.copy(self.ema_codebook.value))

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
        maintain = (self.maintained and train and self.is_mutable_collection(MAINTENANCE)
                    and (not self.use_ema or self.is_mutable_collection("codebook_ema")) and not self.is_initializing())
        if maintain:
            key_init, key_restart = jax.random.split(self.make_rng("dropout"))
            target = jax.lax.stop_gradient(flat)
            current = jax.lax.stop_gradient(codebook)
            replaced = jnp.zeros((self.num_codes,), jnp.bool_)
            if self.codebook_init == "kmeans":
                done = self.kmeans_done.value
                # cond, not where: the Lloyd iterations run on the first training step only
                new = jax.lax.cond(done, lambda: current, lambda: kmeans(
                    target, sample_rows(key_init, target, self.num_codes), self.kmeans_iterations))
                replaced = jnp.broadcast_to(~done, replaced.shape)
                self.kmeans_done.value = jnp.ones((), jnp.bool_)
                # forward with exactly the new values (x - x is 0), gradient to the codebook's own
                codebook = new + (codebook - current)
                current = new
        indices = jnp.argmin(squared_distances(flat, codebook), axis=1).astype(jnp.int32)
        q = jnp.take(codebook, indices, axis=0)
        counts = jnp.bincount(indices, length=self.num_codes)

        commitment = jnp.mean((jax.lax.stop_gradient(q) - flat) ** 2)
        loss = self.commitment_cost * commitment
        if not self.use_ema:
            loss = loss + jnp.mean((q - jax.lax.stop_gradient(flat)) ** 2)
        elif train and self.is_mutable_collection("codebook_ema") and not self.is_initializing():
            cluster_size, embed_sum = self.ema_cluster_size.value, self.ema_embed_sum.value
            if maintain:  # k-means centres start their statistics as the initial codes do
                cluster_size, embed_sum = self._reset_ema_rows(replaced, jax.lax.stop_gradient(codebook))
            (self.ema_codebook.value, self.ema_cluster_size.value, self.ema_embed_sum.value) = ema_update(
                cluster_size, embed_sum, jax.lax.stop_gradient(flat), indices, self.ema_decay, self.ema_epsilon
            )
        if maintain:
            new = self.ema_codebook.value if self.use_ema else current
            restarted = jnp.zeros_like(replaced)
            if self.restart_threshold > 0:
                new, self.usage.value, restarted = restart_dead_codes(
                    new, self.usage.value, counts, target, key_restart, self.restart_threshold, self.restart_decay)
                self.restarts.value = self.restarts.value + jnp.sum(restarted).astype(jnp.int32)
            if self.use_ema:  # the k-means rows' statistics were reset before the EMA update, restarted ones now
                self.ema_codebook.value = new
                self.ema_cluster_size.value, self.ema_embed_sum.value = self._reset_ema_rows(restarted, new)
            else:
                self.replaced.value, self.replacement.value = replaced | restarted, new

        quantized = flat + jax.lax.stop_gradient(q - flat)  # straight-through estimator
        return VQOutput(
            quantized=quantized.reshape(z.shape).astype(z.dtype),
            indices=indices.reshape(*z.shape[:-1], self.num_splits),
            loss=loss,
            perplexity=perplexity_from_counts(counts),
        )

    def _reset_ema_rows(self, rows: jax.Array, codebook: jax.Array) -> tuple[jax.Array, jax.Array]:
        """EMA statistics (cluster_size (K,), embed_sum (K, D)) with the rows (K,) bool of codebook (K, D) counted
        as one vector equal to the code, as at init; the other rows as they are."""
        cluster_size = jnp.where(rows, 1.0, self.ema_cluster_size.value)
        embed_sum = jnp.where(rows[:, None], codebook, self.ema_embed_sum.value)
        return cluster_size, embed_sum

    def vectors(self, indices: jax.Array) -> jax.Array:
        """Quantized vectors (..., S*D) float32 of code indices (..., S), from this quantizer's codebook."""
        return lookup(self.get_codebook(), indices)
