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
    apply_codebook_replacements,
    code_histogram,
    ema_update,
    kmeans,
    lookup,
    perplexity_from_counts,
    restart_dead_codes,
    sample_rows,
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
    k = len(stats["cluster_size"])
    counts = np.bincount(idx, minlength=k).astype(np.float64)
    sums = np.zeros((k, z.shape[1]))
    for i, code in enumerate(idx):
        sums[code] += z[i]
    size = decay * stats["cluster_size"] + (1 - decay) * counts
    embed_sum = decay * stats["embed_sum"] + (1 - decay) * sums
    n = size.sum()
    smoothed = (size + eps) / (n + k * eps) * n
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


# ---------------------------------------------------------------------------------------------- codebook health


def np_lloyd(x, centres, iterations):
    """Plain Lloyd's algorithm: explicit distances, a loop over clusters; an empty cluster keeps its centre."""
    c = centres.astype(np.float64).copy()
    for _ in range(iterations):
        idx, _, _ = np_quantize(x, c)[1], None, None
        for k in range(len(c)):
            members = x[idx == k]
            if len(members):
                c[k] = members.mean(0)
    return c


def _blobs(n=60, seed=0):
    """n vectors (n, D) float32 around 4 well-separated centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, D)) * 3
    return (centres[np.arange(n) % 4] + rng.normal(size=(n, D)) * 0.3).astype(np.float32)


def test_kmeans_matches_numpy_lloyd_and_keeps_empty_clusters():
    x = _blobs()
    start = np.concatenate([x[:5], np.full((1, D), 100.0, np.float32)])  # the last centre attracts nothing
    got = kmeans(jnp.asarray(x), jnp.asarray(start), 6)
    chex.assert_shape(got, (6, D))
    chex.assert_type(got, jnp.float32)
    want = np_lloyd(x, start, 6)
    chex.assert_trees_all_close(got, want.astype(np.float32), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(got)[5], start[5])
    assert not np.allclose(want[:5], start[:5]), "the iterations should move the centres"
    chex.assert_trees_all_close(kmeans(jnp.asarray(x), jnp.asarray(start), 0), start)


def test_sample_rows_draws_distinct_rows_when_there_are_enough():
    x = jnp.arange(40, dtype=jnp.float32).reshape(20, 2)
    rows = np.asarray(sample_rows(jax.random.PRNGKey(3), x, 16))
    chex.assert_shape(rows, (16, 2))
    assert len({tuple(r) for r in rows}) == 16 and set(rows[:, 0]) <= set(np.asarray(x)[:, 0])
    few = np.asarray(sample_rows(jax.random.PRNGKey(3), x[:4], 16))  # fewer rows than codes: with replacement
    assert set(few[:, 0]) <= {0.0, 2.0, 4.0, 6.0}


def test_restart_dead_codes_matches_numpy():
    rng = np.random.default_rng(0)
    codebook = rng.normal(size=(K, D)).astype(np.float32)
    usage = rng.uniform(0.2, 2.0, K).astype(np.float32)
    counts = rng.integers(0, 3, K)
    x = rng.normal(size=(40, D)).astype(np.float32)
    key, threshold, decay = jax.random.PRNGKey(7), 0.6, 0.8
    got = restart_dead_codes(jnp.asarray(codebook), jnp.asarray(usage), jnp.asarray(counts), jnp.asarray(x), key,
                             threshold, decay)

    ema = decay * usage.astype(np.float64) + (1 - decay) * counts
    dead = ema < threshold
    assert 0 < dead.sum() < K, "the test data should have dead and live codes"
    picks = np.asarray(jax.random.choice(key, 40, (K,), replace=False))  # the rows drawn, as the rng gives them
    want_codebook = np.where(dead[:, None], x[picks], codebook)
    want_usage = np.where(dead, 1.0, ema)
    chex.assert_trees_all_close(got, (want_codebook, want_usage.astype(np.float32), dead), rtol=1e-6)
    chex.assert_type(got, (jnp.float32, jnp.float32, jnp.bool_))


def _train_step(vq, variables, z, key=0):
    """One training-mode call with every collection but params mutable: (output, new collections)."""
    mutable = [c for c in variables if c != "params"]
    return vq.apply(variables, z, train=True, mutable=mutable, rngs={"dropout": jax.random.PRNGKey(key)})


def test_kmeans_init_runs_once_on_the_first_training_step():
    z = jnp.asarray(_blobs(60).reshape(2, 5, 6, D))
    flat = np.asarray(z).reshape(-1, D)
    vqs = {it: VectorQuantizer(num_codes=8, code_dim=D, codebook_init="kmeans", kmeans_iterations=it) for it in (0, 4)}
    variables = vqs[4].init(jax.random.PRNGKey(0), z)
    assert set(variables) == {"params", "codebook_state"}
    assert not variables["codebook_state"]["kmeans_done"]
    # 0 iterations: the starting centres, distinct encoder outputs; 4: numpy's Lloyd from the same start (same rng)
    start = np.asarray(_train_step(vqs[0], variables, z)[1]["codebook_state"]["replacement"])
    assert len({tuple(r) for r in start}) == 8 and all((flat == r).all(1).any() for r in start)
    out, new = _train_step(vqs[4], variables, z)
    state = new["codebook_state"]
    centres = np_lloyd(flat, start, 4)
    chex.assert_trees_all_close(state["replacement"], centres.astype(np.float32), rtol=1e-5, atol=1e-6)
    assert bool(state["kmeans_done"]) and np.asarray(state["replaced"]).all()
    # the first batch is quantized with the centres already
    np.testing.assert_array_equal(np.asarray(out.indices).reshape(-1), np_quantize(flat, centres)[1])
    # the train step writes them over the parameter; the next training call leaves the codebook alone
    params, state2 = apply_codebook_replacements(variables["params"], {"codebook_state": state})
    chex.assert_trees_all_close(params["codebook"], state["replacement"])
    assert not np.asarray(state2["codebook_state"]["replaced"]).any()
    _, again = _train_step(vqs[4], {"params": params, **state2}, z, key=1)
    assert not np.asarray(again["codebook_state"]["replaced"]).any()
    chex.assert_trees_all_close(again["codebook_state"]["replacement"], params["codebook"])


def test_restarts_replace_unused_codes_by_batch_outputs_deterministically():
    z = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 5, S * D)) * 0.05
    flat = np.asarray(z).reshape(-1, D)
    # usage starts at 1: after one step with decay 0.5, unused codes are at 0.5 < 0.6, used ones at >= 1
    vq = VectorQuantizer(num_codes=K, code_dim=D, num_splits=S, restart_threshold=0.6, restart_decay=0.5)
    variables = vq.init(jax.random.PRNGKey(0), z)
    codebook = np.asarray(variables["params"]["codebook"])
    np.testing.assert_array_equal(np.asarray(variables["codebook_state"]["usage"]), np.ones(K))
    out, new = _train_step(vq, variables, z)
    state = new["codebook_state"]
    counts = np.bincount(np_quantize(flat, codebook)[1], minlength=K)
    unused = counts == 0
    assert 0 < unused.sum() < K
    np.testing.assert_array_equal(np.asarray(state["replaced"]), unused)
    assert int(state["restarts"]) == unused.sum()
    _, newer = _train_step(vq, {"params": variables["params"], **new}, z * 0.5, key=2)  # cumulative: no step missed
    restarted_again = np.asarray(newer["codebook_state"]["replaced"]).sum()
    assert int(newer["codebook_state"]["restarts"]) == unused.sum() + restarted_again
    replacement = np.asarray(state["replacement"])
    np.testing.assert_array_equal(replacement[~unused], codebook[~unused])
    assert all((flat == r).all(1).any() for r in replacement[unused]), "restarted codes are encoder outputs"
    np.testing.assert_allclose(np.asarray(state["usage"]), np.where(unused, 1.0, 0.5 + 0.5 * counts), rtol=1e-6)
    chex.assert_trees_all_close(out.loss, vq.apply(variables, z).loss)  # this step quantized with the old codes
    chex.assert_trees_all_equal(_train_step(vq, variables, z)[1], new)  # deterministic given the rng
    assert not np.array_equal(_train_step(vq, variables, z, key=5)[1]["codebook_state"]["replacement"], replacement)
    # evaluation mode touches nothing
    _, same = vq.apply(variables, z, train=False, mutable=["codebook_state"])
    chex.assert_trees_all_equal(same, {"codebook_state": variables["codebook_state"]})


def test_ema_codebook_with_kmeans_and_restarts_resets_the_statistics_of_replaced_codes():
    z = jnp.asarray(_blobs(60).reshape(2, 5, 6, D))
    flat = np.asarray(z).reshape(-1, D)
    kw = dict(num_codes=8, code_dim=D, codebook_init="kmeans", kmeans_iterations=3)
    plain = VectorQuantizer(**kw)
    centres = np.asarray(_train_step(plain, plain.init(jax.random.PRNGKey(0), z), z)[1]["codebook_state"]["replacement"])
    vq = VectorQuantizer(**kw, use_ema=True, ema_decay=0.9, restart_threshold=0.5, restart_decay=0.4)
    variables = vq.init(jax.random.PRNGKey(0), z)
    _, new = _train_step(vq, variables, z)
    # the EMA update starts from the k-means centres counted as one vector each, as the initial codes are
    _, idx, _ = np_quantize(flat, centres)
    expected = np_ema_step({"cluster_size": np.ones(8), "embed_sum": centres}, flat, idx, 0.9, 1e-5)
    counts = np.bincount(idx, minlength=8)
    restarted = 0.4 + 0.6 * counts < 0.5  # codes the centres attracted nothing to (usage started at 1)
    assert int(new["codebook_state"]["restarts"]) == restarted.sum()
    ema = jax.tree.map(np.asarray, new["codebook_ema"])
    np.testing.assert_allclose(ema["codebook"][~restarted], expected["codebook"][~restarted], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ema["cluster_size"][~restarted], expected["cluster_size"][~restarted], rtol=1e-5)
    np.testing.assert_allclose(ema["cluster_size"][restarted], 1.0)
    np.testing.assert_array_equal(ema["embed_sum"][restarted], ema["codebook"][restarted])
    assert "replaced" not in new["codebook_state"], "the EMA codebook is set directly"


def test_codebook_options_off_leave_variables_and_outputs_unchanged(vq_setup):
    """Defaults (uniform init, no restarts) are the paper's quantizer: no maintenance collection, and training
    mode with everything mutable changes nothing; the options on keep the same parameters and evaluation."""
    vq, variables, z = vq_setup
    assert set(variables) == {"params"}
    out, new = vq.apply(variables, z, train=True, mutable=["codebook_state", "codebook_ema"],
                        rngs={"dropout": jax.random.PRNGKey(0)})
    assert new == {}
    chex.assert_trees_all_equal(out, vq.apply(variables, z))
    on = VectorQuantizer(num_codes=K, code_dim=D, num_splits=S, commitment_cost=BETA, codebook_init="kmeans",
                         restart_threshold=0.5)
    on_vars = on.init(jax.random.PRNGKey(0), z)
    chex.assert_trees_all_equal(on_vars["params"], variables["params"])
    chex.assert_trees_all_equal(on.apply(on_vars, z), vq.apply(variables, z))
    with pytest.raises(ModelConfigError, match=r"codebook_init: expected one of \('uniform', 'kmeans'\)"):
        VectorQuantizer(codebook_init="random").init(jax.random.PRNGKey(0), z)
