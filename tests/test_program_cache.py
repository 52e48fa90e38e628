"""program_cache: a traced program is exported once and loaded (not traced) by later callers, with the same results;
anything its key is made of (every config field, the code, versions, devices) traces again when it changes."""

import importlib
import pickle
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cytoself_jax import mesh as mesh_lib
from cytoself_jax import program_cache, provenance
from cytoself_jax.program_cache import cached_program

from conftest import tiny_config

TRACES: list = []  # one entry per trace of a program made by the factories below


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setattr(program_cache, "program_dir", lambda: tmp_path / "exported")
    TRACES.clear()
    return tmp_path / "exported"


@pytest.fixture
def mesh():
    return mesh_lib.make_mesh()


def step_program(config, mesh):
    """A donated-state step of a pytree state and a batch split over the mesh, scaled by config.scale."""

    def step(state, batch):
        TRACES.append("step")
        new = {"w": state["w"] * config.scale + jnp.tanh(batch).sum(0), "n": state["n"] + 1}
        return new, {"mean": batch.mean(), "norm": jnp.sqrt(jnp.sum(new["w"] ** 2))}

    rep = mesh_lib.replicated(mesh)
    return jax.jit(step, in_shardings=(rep, mesh_lib.batch_sharding(mesh)), out_shardings=(rep, rep),
                   donate_argnums=0)


def init_program(mesh):
    def init(key):
        TRACES.append("init")
        return {"w": jax.random.normal(key, (4,)), "n": jnp.zeros((), jnp.int32)}

    return jax.jit(init, out_shardings=mesh_lib.replicated(mesh))


def callback_program():
    def with_callback(x):
        jax.debug.callback(lambda v: None, x)  # host callbacks cannot be serialized
        return x * 2

    return jax.jit(with_callback)


def _config(**changes):
    c = ml_collections.ConfigDict({"scale": 0.5, "unused": {"note": "a", "sizes": (1, 2)}})
    c.update(changes)
    return c


def _inputs(mesh, seed=0):
    rng = np.random.default_rng(seed)
    state = jax.device_put({"w": jnp.asarray(rng.normal(size=5), jnp.float32), "n": jnp.zeros((), jnp.int32)},
                           mesh_lib.replicated(mesh))
    batch = jax.device_put(jnp.asarray(rng.normal(size=(16, 5)), jnp.float32), mesh_lib.batch_sharding(mesh))
    return state, batch


def _run_step(config, mesh):
    """One step of a fresh cached program (as a new process would make it); the number of traces it took."""
    before = len(TRACES)
    cached_program(step_program, config, mesh, donate_argnums=(0,))(*_inputs(mesh))
    return len(TRACES) - before


def test_a_second_caller_loads_the_program_instead_of_tracing_and_gets_the_same_results(folder, mesh):
    first = cached_program(step_program, _config(), mesh, donate_argnums=(0,))
    state, batch = _inputs(mesh)
    state, metrics = first(state, batch)
    assert TRACES == ["step"], "the first caller traces once, to export"
    assert len(list(folder.glob("step_program-*.jaxexport"))) == 1
    again = cached_program(step_program, _config(), mesh, donate_argnums=(0,))
    for _ in range(2):  # the state comes back with the sharding it went in with: one program, no new file
        state, metrics = again(state, batch)
    assert TRACES == ["step"], "the second caller loaded the program: nothing traced"
    assert len(list(folder.glob("step_program-*.jaxexport"))) == 1
    assert state["w"].sharding == mesh_lib.replicated(mesh)
    assert int(state["n"]) == 3
    # the same three steps traced as usual
    ref_state, ref_batch = _inputs(mesh)
    for _ in range(3):
        ref_state, ref_metrics = step_program(_config(), mesh)(ref_state, ref_batch)
    chex.assert_trees_all_close((state, metrics), (ref_state, ref_metrics), rtol=0, atol=0)


def test_a_change_to_any_config_field_traces_again(folder, mesh):
    assert _run_step(_config(), mesh) == 1
    assert _run_step(_config(), mesh) == 0
    # a field the program reads, fields it does not read (nested, a tuple), a new field, another type (1 vs 1.0)
    for changed in (_config(scale=0.25), _config(unused={"note": "b", "sizes": (1, 2)}),
                    _config(unused={"note": "a", "sizes": (1, 3)}), _config(extra=True)):
        assert _run_step(changed, mesh) == 1, changed
    assert _run_step(ml_collections.ConfigDict({"scale": 1, "unused": {"note": "a", "sizes": (1, 2)}}), mesh) == 1
    assert _run_step(ml_collections.ConfigDict({"scale": 1.0, "unused": {"note": "a", "sizes": (1, 2)}}), mesh) == 1
    assert _run_step(ml_collections.ConfigDict({"scale": 1.0, "unused": {"note": "a", "sizes": [1, 2]}}), mesh) == 1
    assert len(list(folder.glob("step_program-*.jaxexport"))) == 8


def test_every_field_a_training_program_reads_is_in_the_key_and_nothing_else(folder, mesh):
    """The training loop's key: changing any one leaf of the model or loss section, the learning rate or the
    dataset record's shape, class count or pixel variance gives another program file; settings the programs are
    never handed (workdir, data, seed, epochs, the store's path and protein names) give the same one (keys only:
    nothing is traced here)."""
    from cytoself_jax.training.programs import program_inputs, train_step_program

    config = tiny_config("run", "store")
    info = {"image_shape": [32, 32, 2], "proteins": ["P0", "P1"], "data_variance": 0.1, "store": "store"}
    args = _inputs(mesh)

    def key(c, i):
        return cached_program(train_step_program, program_inputs(c, i), mesh).key(args)

    base = key(config, info)
    assert key(tiny_config("run", "store"), dict(info)) == base
    seen = {base}
    leaves = [p for p in _leaf_paths(config.to_dict()) if p[0] in ("model", "loss") or p == ("train", "learning_rate")]
    assert len(leaves) > 30, "the model and loss sections and the learning rate"
    for path in leaves:
        changed = tiny_config("run", "store")
        parent = changed
        for name in path[:-1]:
            parent = parent[name]
        parent[path[-1]] = _another(parent[path[-1]])
        k = key(changed, info)
        assert k not in seen, ".".join(path)
        seen.add(k)
    for field, value in (("image_shape", [32, 32, 3]), ("proteins", ["P0", "P1", "P2"]), ("data_variance", 0.2)):
        k = key(config, {**info, field: value})
        assert k not in seen, field
        seen.add(k)
    other = tiny_config("elsewhere", "other-store")
    other.seed, other.train.max_epochs, other.train.batch_size = 7, 9, 4
    assert key(other, {**info, "store": "other", "proteins": ["Q0", "Q1"]}) == base


def _leaf_paths(tree, prefix=()):
    out = []
    for name, value in tree.items():
        if isinstance(value, dict):
            out += _leaf_paths(value, prefix + (name,))
        elif value is not None:
            out.append(prefix + (name,))
    return out


def _another(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "_"
    return tuple(value) + ((value[-1] if len(value) else 0),)


def test_a_source_version_device_or_setting_change_traces_again(folder, mesh, monkeypatch):
    assert _run_step(_config(), mesh) == 1
    assert _run_step(_config(), mesh) == 0
    changes = [
        (provenance, "source_sha256", lambda: "edited package source"),
        (provenance, "versions", lambda names: {name: "0.0.0" for name in names}),
        (program_cache, "device_description", lambda: [["gpu", "H100", 0, "cuda 12"], 1]),
    ]
    for module, name, replacement in changes:
        with monkeypatch.context() as m:
            m.setattr(module, name, replacement)
            program_cache._environment.cache_clear()
            assert _run_step(_config(), mesh) == 1, name
        program_cache._environment.cache_clear()
    with monkeypatch.context() as m:
        m.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=true")
        program_cache._environment.cache_clear()
        assert _run_step(_config(), mesh) == 1, "XLA_FLAGS"
    program_cache._environment.cache_clear()
    with jax.default_matmul_precision("highest"):  # a jax setting
        program_cache._environment.cache_clear()
        assert _run_step(_config(), mesh) == 1, "jax_default_matmul_precision"
    program_cache._environment.cache_clear()
    assert _run_step(_config(), mesh) == 0, "back to the original environment: its file is loaded"


def test_an_edit_to_the_factorys_own_module_traces_again(folder, mesh, tmp_path, monkeypatch):
    """A factory outside the package (whose source the package hash does not cover) is keyed by its module."""
    module = tmp_path / "edited_program.py"
    source = textwrap.dedent("""
        import jax
        TRACES = []

        def double(mesh):
            def f(x):
                TRACES.append(1)
                return x * {factor}
            return jax.jit(f)
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    x = jax.device_put(jnp.arange(4.0), mesh_lib.replicated(mesh))
    results = []
    for factor in (2, 2, 3):
        module.write_text(source.format(factor=factor))
        sys.modules.pop("edited_program", None)
        importlib.invalidate_caches()
        edited = importlib.import_module("edited_program")
        results.append((np.asarray(cached_program(edited.double, mesh)(x)), len(edited.TRACES)))
    assert [traces for _, traces in results] == [1, 0, 1]
    np.testing.assert_array_equal(results[2][0], [0.0, 3.0, 6.0, 9.0])


def test_the_training_state_program_is_kept_and_read_back(folder, mesh):
    """The loop's init returns a TrainState (a flax struct of optax states): its tree is serialized with the
    program (train_state.py registers its nodes), so a second caller gets its shapes without tracing."""
    from cytoself_jax.training import programs

    # The tiny store's 4 proteins: the traced init is then the tiny config's trainings' own, whose compiled form
    # the session's compilation cache already holds (2 proteins would be a model to compile for this test alone)
    inputs = programs.program_inputs(tiny_config("run", "store"), {"image_shape": [32, 32, 2],
                                                                   "proteins": ["P0", "P1", "P2", "P3"],
                                                                   "data_variance": 0.1})
    key = jax.device_put(jax.random.PRNGKey(0), mesh_lib.replicated(mesh))
    state = cached_program(programs.init_program, inputs, mesh)(key)
    assert len(list(folder.glob("init_program-*.jaxexport"))) == 1
    again = cached_program(programs.init_program, inputs, mesh)
    shapes = again.eval_shape(key)
    assert again._jitted is None, "answered from the file: the factory was not even called"
    assert jax.tree.structure(shapes) == jax.tree.structure(state)
    chex.assert_trees_all_equal_shapes_and_dtypes(shapes, state)
    chex.assert_trees_all_close(again(key), state, rtol=0, atol=0)


def test_a_placed_key_and_an_unplaced_one_give_the_same_state(folder, mesh):
    """The training loop's init: a PRNG key placed on the mesh uses the cache; an unplaced one runs jitted."""
    rep = mesh_lib.replicated(mesh)
    key = jax.random.PRNGKey(3)
    expected = init_program(mesh)(key)
    unplaced = cached_program(init_program, mesh)(key)
    assert not folder.exists()
    placed = cached_program(init_program, mesh)(jax.device_put(key, rep))
    TRACES.clear()
    loaded = cached_program(init_program, mesh)(jax.device_put(key, rep))
    assert not TRACES
    assert len(list(folder.glob("init_program-*.jaxexport"))) == 1
    chex.assert_trees_all_close((unplaced, placed, loaded), (expected,) * 3, rtol=0, atol=0)
    assert placed["w"].sharding == rep and loaded["w"].sharding == rep
    chex.assert_trees_all_equal_shapes_and_dtypes(cached_program(init_program, mesh).eval_shape(
        jax.device_put(key, rep)), expected)
    assert not TRACES


def test_the_donated_argument_is_donated(folder, mesh):
    run = cached_program(step_program, _config(), mesh, donate_argnums=(0,))
    state, batch = _inputs(mesh)
    run(state, batch)
    assert state["w"].is_deleted() and not batch.is_deleted()


def test_another_argument_shape_is_another_program(folder, mesh):
    assert _run_step(_config(), mesh) == 1
    state, _ = _inputs(mesh)
    wider = jax.device_put(jnp.ones((32, 5), jnp.float32), mesh_lib.batch_sharding(mesh))
    cached_program(step_program, _config(), mesh, donate_argnums=(0,))(state, wider)
    assert len(TRACES) == 2
    assert len(list(folder.glob("step_program-*.jaxexport"))) == 2


def test_an_unreadable_or_foreign_file_is_exported_again(folder, mesh):
    expected = cached_program(step_program, _config(), mesh, donate_argnums=(0,))(*_inputs(mesh))
    (path,) = folder.glob("step_program-*.jaxexport")
    good = path.read_bytes()
    path.write_bytes(b"not a program")
    got = cached_program(step_program, _config(), mesh, donate_argnums=(0,))(*_inputs(mesh))
    assert len(TRACES) == 2
    chex.assert_trees_all_close(got, expected, rtol=0, atol=0)
    assert _run_step(_config(), mesh) == 0, "the file was replaced by a good one"
    # a program file of another key under this name (copied, renamed) is not used
    header, _, body = good.partition(b"\n")
    path.write_bytes(header.replace(b'"key": "', b'"key": "0') + b"\n" + body)
    assert _run_step(_config(), mesh) == 1


def test_reading_a_file_executes_no_code(folder, mesh, tmp_path):
    """A pickle payload in the body of a program file (a shared cache folder written by someone else) is
    never unpickled: the file is unreadable, the program traced again."""
    _run_step(_config(), mesh)
    (path,) = folder.glob("step_program-*.jaxexport")
    header = path.read_bytes().partition(b"\n")[0]
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (marker.touch, ())

    path.write_bytes(header + b"\n" + pickle.dumps(Payload()))
    assert _run_step(_config(), mesh) == 1
    assert not marker.exists()


def test_a_function_that_cannot_be_exported_runs_traced(folder, mesh):
    run = cached_program(callback_program)
    np.testing.assert_array_equal(run(jax.device_put(jnp.arange(4.0), mesh_lib.replicated(mesh))),
                                  [0.0, 2.0, 4.0, 6.0])
    assert not list(folder.glob("callback_program-*"))


def test_a_factory_or_input_the_key_cannot_see_is_refused(folder, mesh):
    scale = 0.5

    def closure(mesh):
        return jax.jit(lambda x: x * scale)

    def with_default(mesh, scale=0.5):
        return jax.jit(lambda x: x * scale)

    for factory in (closure, with_default, lambda mesh: jax.jit(lambda x: x)):
        with pytest.raises(TypeError, match="module-level function"):
            cached_program(factory, mesh)
    with pytest.raises(TypeError, match="cannot be part of a program's key"):
        cached_program(step_program, object(), mesh)
    with pytest.raises(TypeError, match="cannot be part of a program's key"):
        cached_program(step_program, {"weights": np.ones(3)}, mesh)


def test_off_with_the_compilation_cache(monkeypatch, mesh):
    monkeypatch.setattr(program_cache, "program_dir", lambda: None)
    run = cached_program(step_program, _config(), mesh, donate_argnums=(0,))
    assert not isinstance(run, program_cache._CachedProgram)
    chex.assert_trees_all_close(run(*_inputs(mesh)), step_program(_config(), mesh)(*_inputs(mesh)), rtol=0, atol=0)
