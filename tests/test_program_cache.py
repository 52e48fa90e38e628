"""program_cache: a traced program is exported once and loaded (not traced) by later callers, with the same results."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cytoself_jax import program_cache
from cytoself_jax.program_cache import cached_program
from cytoself_jax import mesh as mesh_lib


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setattr(program_cache, "program_dir", lambda: tmp_path)
    return tmp_path


@pytest.fixture
def mesh():
    return mesh_lib.make_mesh()


def _step_fn(traces: list):
    """A donated-state step of a pytree state and a batch split over the mesh; appends to `traces` when traced."""

    def step(state, batch):
        traces.append(1)
        new = {"w": state["w"] * 0.5 + jnp.tanh(batch).sum(0), "n": state["n"] + 1}
        return new, {"mean": batch.mean(), "norm": jnp.sqrt(jnp.sum(new["w"] ** 2))}

    return step


def _inputs(mesh, seed=0):
    rng = np.random.default_rng(seed)
    state = jax.device_put({"w": jnp.asarray(rng.normal(size=5), jnp.float32), "n": jnp.zeros((), jnp.int32)},
                           mesh_lib.replicated(mesh))
    batch = jax.device_put(jnp.asarray(rng.normal(size=(16, 5)), jnp.float32), mesh_lib.batch_sharding(mesh))
    return state, batch


def _jitted(step, mesh):
    rep = mesh_lib.replicated(mesh)
    return jax.jit(step, in_shardings=(rep, mesh_lib.batch_sharding(mesh)), out_shardings=(rep, rep),
                   donate_argnums=0)


def test_a_second_caller_loads_the_program_instead_of_tracing_and_gets_the_same_results(folder, mesh):
    # Each caller gets its own function object, as a new process would (JAX caches traces per function in memory)
    traces = []
    first = cached_program(_jitted(_step_fn(traces), mesh), name="step", identity="v1", donate_argnums=(0,))
    state, batch = _inputs(mesh)
    state, metrics = first(state, batch)
    assert len(traces) == 1, "the first caller traces once, to export"
    assert len(list(folder.glob("step-*.pkl"))) == 1
    again = cached_program(_jitted(_step_fn(traces), mesh), name="step", identity="v1", donate_argnums=(0,))
    for _ in range(2):  # the state comes back with the sharding it went in with: one program, no new file
        state, metrics = again(state, batch)
    assert len(traces) == 1, "the second caller loaded the program: nothing traced"
    assert len(list(folder.glob("step-*.pkl"))) == 1
    assert state["w"].sharding == mesh_lib.replicated(mesh)
    assert int(state["n"]) == 3
    # the same three steps traced as usual
    ref_state, ref_batch = _inputs(mesh)
    for _ in range(3):
        ref_state, ref_metrics = _jitted(_step_fn([]), mesh)(ref_state, ref_batch)
    chex.assert_trees_all_close((state, metrics), (ref_state, ref_metrics), rtol=0, atol=0)


def test_a_placed_key_and_an_unplaced_one_give_the_same_state(folder, mesh):
    """The training loop's init: a PRNG key placed on the mesh uses the cache; an unplaced one runs jitted."""
    rep = mesh_lib.replicated(mesh)

    def init(key):
        return {"w": jax.random.normal(key, (4,)), "n": jnp.zeros((), jnp.int32)}

    key = jax.random.PRNGKey(3)
    expected = jax.jit(init, out_shardings=rep)(key)
    unplaced = cached_program(jax.jit(init, out_shardings=rep), name="init", identity=0)(key)
    assert not list(folder.glob("init-*.pkl"))
    placed = cached_program(jax.jit(init, out_shardings=rep), name="init", identity=0)(jax.device_put(key, rep))
    loaded = cached_program(jax.jit(lambda k: init(k)), name="init", identity=0)(jax.device_put(key, rep))
    assert len(list(folder.glob("init-*.pkl"))) == 1
    chex.assert_trees_all_close((unplaced, placed, loaded), (expected,) * 3, rtol=0, atol=0)
    assert placed["w"].sharding == rep and loaded["w"].sharding == rep
    # the state's shapes, for a checkpoint restore, without tracing nor running init
    traced = []
    shapes = cached_program(jax.jit(lambda k: traced.append(1) or init(k)), name="init",
                            identity=0).eval_shape(jax.device_put(key, rep))
    assert not traced
    chex.assert_trees_all_equal_shapes_and_dtypes(shapes, expected)


def test_the_donated_argument_is_donated(folder, mesh):
    run = cached_program(_jitted(_step_fn([]), mesh), name="step", identity=0, donate_argnums=(0,))
    state, batch = _inputs(mesh)
    run(state, batch)
    assert state["w"].is_deleted() and not batch.is_deleted()


def test_another_identity_or_argument_shape_is_another_program(folder, mesh):
    traces = []
    cached_program(_jitted(_step_fn(traces), mesh), name="step", identity="a", donate_argnums=(0,))(*_inputs(mesh))
    cached_program(_jitted(_step_fn(traces), mesh), name="step", identity="b", donate_argnums=(0,))(*_inputs(mesh))
    state, _ = _inputs(mesh)
    wider = jax.device_put(jnp.ones((32, 5), jnp.float32), mesh_lib.batch_sharding(mesh))
    cached_program(_jitted(_step_fn(traces), mesh), name="step", identity="a", donate_argnums=(0,))(state, wider)
    assert len(traces) == 3
    assert len(list(folder.glob("step-*.pkl"))) == 3


def test_an_unreadable_file_is_exported_again(folder, mesh):
    traces = []
    expected = cached_program(_jitted(_step_fn(traces), mesh), name="step", identity=0,
                              donate_argnums=(0,))(*_inputs(mesh))
    (path,) = folder.glob("step-*.pkl")
    path.write_bytes(b"not a program")
    got = cached_program(_jitted(_step_fn(traces), mesh), name="step", identity=0, donate_argnums=(0,))(*_inputs(mesh))
    assert len(traces) == 2
    chex.assert_trees_all_close(got, expected, rtol=0, atol=0)
    assert path.stat().st_size > 100, "the file was replaced by a good one"


def test_a_function_that_cannot_be_exported_runs_traced(folder, mesh):
    def with_callback(x):
        jax.debug.callback(lambda v: None, x)  # host callbacks cannot be serialized
        return x * 2

    run = cached_program(jax.jit(with_callback), name="callback", identity=0)
    np.testing.assert_array_equal(run(jnp.arange(4.0)), [0.0, 2.0, 4.0, 6.0])
    assert not list(folder.glob("callback-*"))


def test_off_with_the_compilation_cache(monkeypatch, mesh):
    monkeypatch.setattr(program_cache, "program_dir", lambda: None)
    jitted = _jitted(_step_fn([]), mesh)
    assert cached_program(jitted, name="step", identity=0) is jitted
