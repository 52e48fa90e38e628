"""The vector quantizer against a slow plain-numpy implementation."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cytoself_jax.models import (
    ModelConfigError,
    VectorQuantizer,
    code_histogram,
    ema_update,
    lookup,
    perplexity_from_counts,
    squared_distances,
)

K, D, S, BETA = 16, 4, 3, 0.25


def np_quantize(z, codebook):
    """Nearest codes by explicit differences (not the |z|^2 - 2zE + |E|^2 expansion): (indices, codes)."""
    d = ((z[:, None, :].astype(np.float64) - codebook[None].astype(np.float64)) ** 2).sum(-1)
    idx = d.argmin(1)
    return d, idx, codebook[idx]


def np_perplexity(idx, k):
    p = np.bincount(idx, minlength=k) / idx.size
    return np.exp(-np.sum(p * np.log(p + 1e-10)))


@pytest.fixture(scope="module")
def vq_setup():
    vq = VectorQuantizer(num_codes=K, code_dim=D, num_splits=S, commitment_cost=BETA)
    z = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 5, S * D)) * 0.05
    variables = vq.init(jax.random.PRNGKey(0), z)
    return vq, variables, z


def test_codebook_init_is_uniform_in_sqrt3_over_k():
    vq = VectorQuantizer(num_codes=2048, code_dim=64)
    codebook = vq.init(jax.random.PRNGKey(0), jnp.zeros((1, 1, 1, 64)))["params"]["codebook"]
    chex.assert_shape(codebook, (2048, 64))
    limit = math.sqrt(3 / 2048)
    assert float(jnp.max(jnp.abs(codebook))) <= limit
    np.testing.assert_allclose(float(jnp.std(codebook)), limit / math.sqrt(3), rtol=0.02)  # std of U(-a, a)


def test_distances_codes_quantized_and_loss_match_numpy(vq_setup):
    vq, variables, z = vq_setup
    codebook = np.asarray(variables["params"]["codebook"])
    flat = np.asarray(z).reshape(-1, D)
    d_ref, idx_ref, q_ref = np_quantize(flat, codebook)

    np.testing.assert_allclose(np.asarray(squared_distances(jnp.asarray(flat), codebook)), d_ref, rtol=1e-5, atol=1e-6)
    out = vq.apply(variables, z)
    chex.assert_shape(out.indices, (2, 3, 5, S))
    chex.assert_type(out.indices, jnp.int32)
    np.testing.assert_array_equal(np.asarray(out.indices).reshape(-1), idx_ref)
    assert len(np.unique(idx_ref)) > 3, "the test data should use several codes"
    np.testing.assert_allclose(np.asarray(out.quantized), q_ref.reshape(z.shape), atol=1e-6)
    mse = np.mean((q_ref - flat) ** 2)
    np.testing.assert_allclose(float(out.loss), (1 + BETA) * mse, rtol=1e-5)
    np.testing.assert_allclose(float(out.perplexity), np_perplexity(idx_ref, K), rtol=1e-5)


def test_split_quantization_equals_quantizing_the_reshaped_chunks(vq_setup):
    vq, variables, z = vq_setup
    whole = VectorQuantizer(num_codes=K, code_dim=D, num_splits=1, commitment_cost=BETA)
    chunks = z.reshape(2, 3, 5 * S, D)  # each position's S contiguous chunks become S positions
    a, b = vq.apply(variables, z), whole.apply(variables, chunks)
    np.testing.assert_array_equal(np.asarray(a.indices).reshape(-1), np.asarray(b.indices).reshape(-1))
    chex.assert_trees_all_close(a.quantized, b.quantized.reshape(z.shape))
    chex.assert_trees_all_close((a.loss, a.perplexity), (b.loss, b.perplexity), rtol=1e-6)


def test_straight_through_gradient_is_identity(vq_setup):
    vq, variables, z = vq_setup
    c = jax.random.normal(jax.random.PRNGKey(2), z.shape)
    grad = jax.grad(lambda z: jnp.sum(vq.apply(variables, z).quantized * c))(z)
    chex.assert_trees_all_close(grad, c)


def test_commitment_and_codebook_gradients(vq_setup):
    vq, variables, z = vq_setup
    codebook = np.asarray(variables["params"]["codebook"])
    flat = np.asarray(z).reshape(-1, D)
    _, idx, q = np_quantize(flat, codebook)
    n = flat.size

    def loss(params, z):
        return vq.apply({"params": params}, z).loss

    g_params, g_z = jax.grad(loss, argnums=(0, 1))(variables["params"], z)
    # The encoder only sees the commitment term, the codebook only the codebook term.
    np.testing.assert_allclose(np.asarray(g_z).reshape(-1, D), BETA * 2 * (flat - q) / n, rtol=1e-4, atol=1e-9)
    expected = np.zeros_like(codebook)
    np.add.at(expected, idx, 2 * (q - flat) / n)
    np.testing.assert_allclose(np.asarray(g_params["codebook"]), expected, rtol=1e-4, atol=1e-9)


def test_perplexity_extremes():
    assert float(perplexity_from_counts(jnp.array([0, 10, 0, 0]))) == pytest.approx(1.0)
    assert float(perplexity_from_counts(jnp.array([5, 5, 5, 5, 0, 0]))) == pytest.approx(4.0, rel=1e-5)


def test_code_histogram_counts_per_image():
    idx = jax.random.randint(jax.random.PRNGKey(0), (5, 4, 4, 3), 0, 7)
    hist = code_histogram(idx, 7)
    chex.assert_shape(hist, (5, 7))
    chex.assert_type(hist, jnp.int32)
    expected = np.stack([np.bincount(np.asarray(i).reshape(-1), minlength=7) for i in idx])
    np.testing.assert_array_equal(np.asarray(hist), expected)
    np.testing.assert_array_equal(np.asarray(hist).sum(1), 4 * 4 * 3)


def test_lookup_concatenates_the_chunks(vq_setup):
    vq, variables, z = vq_setup
    out = vq.apply(variables, z)
    codebook = variables["params"]["codebook"]
    vectors = lookup(codebook, out.indices)
    chex.assert_shape(vectors, z.shape)
    chex.assert_trees_all_close(vectors, out.quantized, atol=1e-6)
    chex.assert_trees_all_close(vq.apply(variables, out.indices, method=VectorQuantizer.vectors), vectors)


def np_ema_step(stats, z, idx, decay, eps):
    counts = np.bincount(idx, minlength=K).astype(np.float64)
    sums = np.zeros((K, D))
    for i, code in enumerate(idx):
        sums[code] += z[i]
    size = decay * stats["cluster_size"] + (1 - decay) * counts
    embed_sum = decay * stats["embed_sum"] + (1 - decay) * sums
    n = size.sum()
    smoothed = (size + eps) / (n + K * eps) * n
    return {"codebook": embed_sum / smoothed[:, None], "cluster_size": size, "embed_sum": embed_sum}


def test_ema_mode_update_matches_numpy():
    vq = VectorQuantizer(num_codes=K, code_dim=D, num_splits=S, commitment_cost=BETA, use_ema=True, ema_decay=0.9)
    z = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 5, S * D)) * 0.05
    variables = vq.init(jax.random.PRNGKey(0), z)
    assert "params" not in variables, "the EMA codebook is not a trained parameter"
    stats = jax.tree.map(np.asarray, variables["codebook_ema"])
    np.testing.assert_array_equal(stats["embed_sum"], stats["codebook"])

    out, new = vq.apply(variables, z, train=True, mutable=["codebook_ema"])
    flat = np.asarray(z).reshape(-1, D)
    _, idx, q = np_quantize(flat, stats["codebook"])
    np.testing.assert_allclose(float(out.loss), BETA * np.mean((q - flat) ** 2), rtol=1e-5)  # commitment only
    expected = np_ema_step(stats, flat, idx, 0.9, 1e-5)
    for name in ("codebook", "cluster_size", "embed_sum"):
        np.testing.assert_allclose(np.asarray(new["codebook_ema"][name]), expected[name], rtol=1e-5, atol=1e-7)
    assert not np.allclose(expected["codebook"], stats["codebook"])

    # No update in evaluation mode or when the collection is not mutable.
    _, same = vq.apply(variables, z, train=False, mutable=["codebook_ema"])
    chex.assert_trees_all_equal(same, variables)
    # Training mode with the collection not mutable: quantized with the codebook as it is, as numpy does, no error
    for result in (out, vq.apply(variables, z, train=True)):
        np.testing.assert_array_equal(np.asarray(result.indices).reshape(-1), idx)
        np.testing.assert_allclose(np.asarray(result.quantized).reshape(-1, D), q, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(float(result.loss), BETA * np.mean((q - flat) ** 2), rtol=1e-5)


def test_bfloat16_input_gives_float32_loss(vq_setup):
    vq, variables, z = vq_setup
    z16 = z.astype(jnp.bfloat16)
    out16, out32 = vq.apply(variables, z16), vq.apply(variables, z16.astype(jnp.float32))
    chex.assert_type([out16.loss, out16.perplexity, out16.quantized], [jnp.float32, jnp.float32, jnp.bfloat16])
    np.testing.assert_array_equal(np.asarray(out16.indices), np.asarray(out32.indices))
    chex.assert_trees_all_close((out16.loss, out16.perplexity), (out32.loss, out32.perplexity))


def test_batch_statistics_are_global_when_the_batch_is_sharded():
    assert jax.device_count() == 8, "conftest should provide 8 virtual CPU devices"
    vq = VectorQuantizer(num_codes=K, code_dim=D, num_splits=S, use_ema=True)
    z = jax.random.normal(jax.random.PRNGKey(1), (8, 3, 5, S * D)) * 0.05
    variables = vq.init(jax.random.PRNGKey(0), z)

    def step(variables, z):
        out, new = vq.apply(variables, z, train=True, mutable=["codebook_ema"])
        return out.perplexity, new

    sharded = jax.device_put(z, NamedSharding(Mesh(jax.devices(), ("data",)), PartitionSpec("data")))
    chex.assert_trees_all_close(jax.jit(step)(variables, sharded), step(variables, z), rtol=1e-5, atol=1e-7)


def test_ema_update_without_data_keeps_unused_codes_in_place():
    codebook = jax.random.normal(jax.random.PRNGKey(0), (K, D))
    new, _, _ = ema_update(jnp.ones(K), codebook, jnp.zeros((0, D)), jnp.zeros((0,), jnp.int32), 0.99, 1e-5)
    chex.assert_trees_all_close(new, codebook, rtol=1e-4)


def test_wrong_input_width_is_a_clear_error(vq_setup):
    vq, variables, _ = vq_setup
    with pytest.raises(ModelConfigError, match=r"num_splits\*code_dim = 3\*4 = 12"):
        vq.apply(variables, jnp.zeros((1, 2, 2, 10)))
