"""The training core: schedule, losses, one-vs-many-device equivalence, loss decrease, exact resume."""

import dataclasses
import functools
import json
import math
import shutil
import types

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import nan_training_batches, tiny_config

from cytoself_jax import mesh as mesh_lib
from cytoself_jax.training.checkpoint import Checkpointer, LoopState
from cytoself_jax.training.losses import config_loss_terms, loss_terms, monitored_value, total_loss
from cytoself_jax.training.loop import NonFiniteLossError, train
from cytoself_jax.training.schedule import after_validation
from cytoself_jax.models import CytoselfOutput, VectorQuantizer, build_model
from cytoself_jax.train_state import create_train_state, with_learning_rate
from cytoself_jax.training.step import loss_and_grads, make_train_step


def _train_cfg(**kw):
    c = tiny_config("unused", "unused").train
    c.update(kw)
    return c


def test_schedule_plateau_drops_lr_then_restarts_counter_and_stops_early():
    cfg = _train_cfg(plateau_patience=2, plateau_factor=0.1, early_stop_patience=5, max_epochs=100, select_from_epoch=1)
    loop = LoopState(learning_rate=1.0)
    losses = [5.0, 4.0, 4.5, 4.5, 4.5, 4.5, 4.5]
    lrs, best = [], []
    for v in losses:
        loop, improved = after_validation(loop, v, cfg)
        lrs.append(loop.learning_rate)
        best.append(improved)
    assert best == [True, True, False, False, False, False, False]
    # drops after 2 bad epochs, then again 2 epochs later (counter restarted), not every epoch
    np.testing.assert_allclose(lrs, [1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    assert loop.best_epoch == 2 and loop.best_val_loss == 4.0
    assert loop.stop_reason.startswith("early stop")  # 5 epochs without improvement
    assert loop.epoch == 7


def test_plateau_never_drops_the_learning_rate_below_its_floor():
    """The paper's code's ReduceLROnPlateau(min_lr=1e-8): lr = max(lr * factor, min_lr), no drop once at the floor;
    a run saved before the floor existed (no plateau_min_lr) has none."""
    cfg = _train_cfg(plateau_patience=1, plateau_factor=0.1, early_stop_patience=100, max_epochs=100,
                     select_from_epoch=1, plateau_min_lr=0.005)
    loop, lrs, waits = LoopState(learning_rate=1.0), [], []
    for v in [1.0] + [2.0] * 5:
        loop, _ = after_validation(loop, v, cfg)
        lrs.append(loop.learning_rate)
        waits.append(loop.plateau_epochs)
    np.testing.assert_allclose(lrs, [1.0, 0.1, 0.01, 0.005, 0.005, 0.005])
    assert waits == [0, 0, 0, 0, 1, 2]  # reset by each drop; at the floor, no drop and no reset (Keras)
    del cfg["plateau_min_lr"]
    loop = LoopState(learning_rate=1.0)
    for v in [1.0] + [2.0] * 5:
        loop, _ = after_validation(loop, v, cfg)
    assert loop.learning_rate == pytest.approx(1e-5)


def test_warm_up_epochs_are_never_best_and_count_towards_no_patience():
    """The paper's callbacks_start_from: epochs before select_from_epoch (1-based) are not candidates; a warm-up
    epoch with the lowest loss (a collapsed codebook's tiny VQ terms) does not become the best."""
    cfg = _train_cfg(plateau_patience=1, plateau_factor=0.1, early_stop_patience=2, select_from_epoch=3, max_epochs=100)
    loop = LoopState(learning_rate=1.0)
    best = []
    for v in [1.0, 1.5, 4.0, 3.0, 3.5, 3.5]:
        loop, improved = after_validation(loop, v, cfg)
        best.append(improved)
    assert best == [False, False, True, True, False, False]
    assert loop.best_epoch == 4 and loop.best_val_loss == 3.0
    assert loop.stop_reason.startswith("early stop") and loop.epoch == 6
    assert loop.learning_rate == pytest.approx(0.01)  # dropped after epochs 5 and 6, not during the warm-up
    # a run shorter than the warm-up still gets a best epoch: its last
    cfg.max_epochs = 2
    loop = LoopState(learning_rate=1.0)
    assert [after_validation(loop, 1.0, cfg)[1], after_validation(dataclasses.replace(loop, epoch=1), 2.0, cfg)[1]] == [False, True]


def test_plateau_needs_min_delta_early_stop_and_best_any_decrease():
    """The paper's Keras callbacks: ReduceLROnPlateau keeps its own best and counts an epoch as better only below
    it by more than min_delta; EarlyStopping and the best checkpoint take any decrease."""
    cfg = _train_cfg(plateau_patience=2, plateau_factor=0.1, plateau_min_delta=0.1, early_stop_patience=3,
                     select_from_epoch=1, max_epochs=100)
    loop = LoopState(learning_rate=1.0)
    best, lrs = [], []
    for v in [5.0, 4.95, 4.92, 4.8, 4.85, 4.86, 4.87]:
        loop, improved = after_validation(loop, v, cfg)
        best.append(improved)
        lrs.append(loop.learning_rate)
    assert best == [True, True, True, True, False, False, False]
    # 4.95 and 4.92 are no plateau improvement on 5.0 (lr cut after them); 4.8 is (counter restarts), then 2 more
    np.testing.assert_allclose(lrs, [1, 1, 0.1, 0.1, 0.1, 0.01, 0.01])
    assert loop.plateau_best == 4.8 and loop.best_val_loss == 4.8 and loop.best_epoch == 4
    assert loop.stop_reason.startswith("early stop") and loop.epoch == 7
    # without the field (runs saved before it), one best for both counters, as before
    del cfg["plateau_min_delta"]
    loop = LoopState(learning_rate=1.0)
    for v in [5.0, 4.95, 4.92]:
        loop, _ = after_validation(loop, v, cfg)
    assert loop.learning_rate == 1.0 and loop.plateau_best == loop.best_val_loss == 4.92


def test_loop_state_saved_before_plateau_best_resumes_with_one_best():
    old = LoopState(epoch=3, learning_rate=0.1, best_val_loss=2.5, best_epoch=2).to_json()
    del old["plateau_best"]
    assert LoopState.from_json(old).plateau_best == 2.5
    fresh = LoopState(learning_rate=0.1)
    assert fresh.to_json()["plateau_best"] is None and LoopState.from_json(fresh.to_json()) == fresh


def test_paper_config_selects_the_model_as_the_paper_code_does():
    """The TF code's callbacks monitor val_loss (the total) from the 0-based epoch > callbacks_start_from = 1,
    ReduceLROnPlateau(factor 0.1, patience 4, min_delta 1e-4, min_lr 1e-8), EarlyStopping(patience 12, min_delta
    0)."""
    from cytoself_jax.config import paper_config

    t = paper_config().train
    assert (t.monitor, t.select_from_epoch, t.plateau_factor, t.plateau_patience, t.plateau_min_delta,
            t.plateau_min_lr, t.early_stop_patience) == ("loss", 3, 0.1, 4, 1e-4, 1e-8, 12)


def test_monitored_value_leaves_out_the_weighted_vq_terms():
    weights = tiny_config("x", "y").loss
    weights.update(vq=0.5)
    val = {"loss": 10.0, "vq_local": 2.0, "vq_global": 4.0, "reconstruction": 1.0}
    assert monitored_value(val, weights, "loss") == 10.0
    assert monitored_value(val, weights, "loss_without_vq") == pytest.approx(10.0 - 0.5 * 6.0)
    with pytest.raises(ValueError, match=r"config\.train\.monitor: expected"):
        monitored_value(val, weights, "val_loss")


def test_loss_terms_match_numpy():
    rng = np.random.default_rng(0)
    images = rng.random((4, 8, 8, 2)).astype(np.float32)
    recon = rng.random((4, 8, 8, 2)).astype(np.float32)
    pred, target, z = (rng.random((4, 2, 2, 3)).astype(np.float32) for _ in range(3))
    logits = rng.normal(size=(4, 5)).astype(np.float32)
    labels = np.array([0, 3, 4, 1])
    vq = lambda q, loss: types.SimpleNamespace(quantized=jnp.asarray(q), loss=jnp.float32(loss))
    out = types.SimpleNamespace(reconstruction=recon, local_prediction=pred, vq_local=vq(target, 0.5),
                                vq_global=vq(target, 0.25), logits={"global": jnp.asarray(logits)})
    out.z_local = jnp.asarray(z)
    terms = loss_terms(out, jnp.asarray(images), jnp.asarray(labels), data_variance=0.2, local_target="quantized_local")
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = {
        "reconstruction": np.mean((recon - images) ** 2) / 0.2,  # the training data's variance, not the batch's
        "local_prediction": np.mean((pred - target) ** 2),
        "vq_local": 0.5,
        "vq_global": 0.25,
        "classification_global": -np.mean(logp[np.arange(4), labels]),
    }
    chex.assert_trees_all_close({k: np.float32(v) for k, v in expected.items()}, terms, rtol=1e-5)
    weights = tiny_config("x", "y").loss
    weights.update(reconstruction=2.0, classification=0.5)
    want = 2 * expected["reconstruction"] + expected["local_prediction"] + 0.75 + 0.5 * expected["classification_global"]
    np.testing.assert_allclose(float(total_loss(terms, weights)), want, rtol=1e-5)
    # the paper's decoder2 target: encoder1's output before quantization
    paper = config_loss_terms(weights, 0.2)(out, jnp.asarray(images), jnp.asarray(labels))
    np.testing.assert_allclose(float(paper["local_prediction"]), np.mean((pred - z) ** 2), rtol=1e-5)
    np.testing.assert_allclose(float(paper["reconstruction"]), expected["reconstruction"], rtol=1e-5)
    # runs saved before the constant existed divided by each batch's variance
    weights.reconstruction_variance = "batch"
    old = config_loss_terms(weights, None)(out, jnp.asarray(images), jnp.asarray(labels))
    np.testing.assert_allclose(float(old["reconstruction"]), np.mean((recon - images) ** 2) / np.var(images), rtol=1e-5)
    weights.reconstruction_variance = "dataset"
    with pytest.raises(ValueError, match="dataset.json 'data_variance'"):
        config_loss_terms(weights, None)


def test_decoder2_target_passes_gradients_to_encoder1_only_in_the_paper_setting():
    """'z_local': the gradient of local_prediction reaches z1 (encoder1 is pulled towards decoder2's output);
    'quantized_local': the target is a constant."""
    pred = jnp.ones((1, 2, 2, 3))
    vq = types.SimpleNamespace(quantized=jnp.zeros((1, 2, 2, 3)), loss=jnp.float32(0))

    def term(z, q, target):
        out = types.SimpleNamespace(reconstruction=jnp.zeros((1, 4, 4, 1)), local_prediction=pred, z_local=z,
                                    vq_local=types.SimpleNamespace(quantized=q, loss=jnp.float32(0)), vq_global=vq,
                                    logits={})
        return loss_terms(out, jnp.ones((1, 4, 4, 1)), jnp.zeros(1, jnp.int32), data_variance=1.0,
                          local_target=target)["local_prediction"]

    z = q = jnp.zeros((1, 2, 2, 3))
    dz, dq = jax.grad(term, argnums=(0, 1))(z, q, "z_local")
    np.testing.assert_allclose(dz, -2 * np.ones((1, 2, 2, 3)) / 12, rtol=1e-6)
    assert not np.any(dq)
    dz, dq = jax.grad(term, argnums=(0, 1))(z, q, "quantized_local")
    assert not np.any(dz) and not np.any(dq)


def _fixed_batch(n=8, size=32, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.random((n, size, size, 2)).astype(np.float32),
            "label": rng.integers(0, classes, n).astype(np.int32), "index": np.arange(n, dtype=np.int32)}


# The data variance of _run_steps' train steps: bench/train_step.py's (np.var of its random batch of 8 32x32x2 crops,
# seed 0). A train step bakes this constant in, so with it the 1- and 8-device steps below are the very programs of
# test_bench.py (train_step, scaling), compiled once per session thanks to the shared compilation cache.
STEP_VARIANCE = float(np.var(np.random.default_rng(0).random((8, 32, 32, 2), dtype=np.float32)))


def _run_steps(config, mesh, batch, steps):
    model = build_model(config, (32, 32, 2), 4)
    state = mesh_lib.replicate(create_train_state(model, (32, 32, 2), 1e-3, jax.random.PRNGKey(0)), mesh)
    step = make_train_step(model, config.loss, mesh, STEP_VARIANCE)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, mesh_lib.shard_batch(batch, mesh), jax.random.PRNGKey(1))
        losses.append(float(metrics["loss"]))
    return state, losses


class _TwoQuantizers(nn.Module):
    """A toy stand-in for CytoselfModel with its quantizers' names (vq_local, vq_global) and output fields: one
    Dense projection per level, so that the train step compiles in seconds."""

    vq: dict

    @nn.compact
    def __call__(self, x, train):
        z = nn.Dense(8)(x[:, ::8, ::8])  # (B, 4, 4, 8)
        local = VectorQuantizer(name="vq_local", **self.vq)(z, train)
        glob = VectorQuantizer(name="vq_global", **self.vq)(z, train)
        return CytoselfOutput(reconstruction=x, local_prediction=local.quantized, z_local=z, vq_local=local,
                              vq_global=glob, logits={})


def test_train_step_writes_the_quantizers_codebook_replacements(tmp_path):
    """k-means init and restarts on: after the first step each gradient-trained codebook is the k-means result
    the quantizer computed (not the optimizer's update of the uniform codes), the marks are cleared, and the
    restarts are step metrics."""
    config = tiny_config(tmp_path, tmp_path)
    mesh = mesh_lib.make_mesh(jax.devices()[:1])

    def first_step(**options):
        model = _TwoQuantizers(dict(num_codes=16, code_dim=8, **options))
        state = mesh_lib.replicate(create_train_state(model, (32, 32, 2), 1e-3, jax.random.PRNGKey(0)), mesh)
        step = make_train_step(model, config.loss, mesh, 0.1)
        return (jax.device_get(state.params),
                *jax.device_get(step(state, mesh_lib.shard_batch(_fixed_batch(), mesh), jax.random.PRNGKey(1))))

    before, state, metrics = first_step(codebook_init="kmeans", restart_threshold=0.5, restart_decay=0.9)
    for level in ("local", "global"):
        vq = state.model_state["codebook_state"][f"vq_{level}"]
        assert bool(vq["kmeans_done"]) and not vq["replaced"].any()
        chex.assert_trees_all_equal(state.params[f"vq_{level}"]["codebook"], vq["replacement"])
        assert not np.allclose(state.params[f"vq_{level}"]["codebook"], before[f"vq_{level}"]["codebook"], atol=1e-3)
        assert float(metrics[f"codebook_restarts_{level}"]) == int(vq["restarts"])
    _, state, metrics = first_step()  # the paper's quantizers: no maintenance state, no restart metrics
    assert set(state.model_state) == set() and not any(k.startswith("codebook_") for k in metrics)


def test_loss_decreases_on_a_tiny_batch(tmp_path):
    config = tiny_config(tmp_path, tmp_path)
    _, losses = _run_steps(config, mesh_lib.make_mesh(jax.devices()[:1]), _fixed_batch(), 25)
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses


def _loss_and_grads_on(mesh, model, config, state, batch):
    """loss_and_grads of one batch (data variance 0.1), jitted over `mesh`: batch split, state replicated."""
    rep = mesh_lib.replicated(mesh)
    fn = jax.jit(functools.partial(loss_and_grads, model, config.loss, data_variance=0.1),
                 in_shardings=(rep, mesh_lib.batch_sharding(mesh), rep))
    return jax.device_get(fn(mesh_lib.replicate(state, mesh), mesh_lib.shard_batch(batch, mesh), jax.random.PRNGKey(1)))


def test_one_device_and_eight_devices_give_the_same_training(tmp_path):
    assert len(jax.devices()) == 8, "conftest should provide 8 virtual CPU devices"
    config = tiny_config(tmp_path, tmp_path)
    batch = _fixed_batch()
    mesh1, mesh8 = mesh_lib.make_mesh(jax.devices()[:1]), mesh_lib.make_mesh()
    # gradients and batch statistics of one step: what data parallelism must preserve
    model = build_model(config, (32, 32, 2), 4)
    state = create_train_state(model, (32, 32, 2), 1e-3, jax.random.PRNGKey(0))
    grads = {name: _loss_and_grads_on(mesh, model, config, state, batch) for name, mesh in (("one", mesh1),
                                                                                          ("eight", mesh8))}
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads["one"][1]))
    chex.assert_trees_all_close(grads["one"][1], grads["eight"][1], atol=1e-5 * scale, rtol=1e-4)
    chex.assert_trees_all_close(grads["one"][0], grads["eight"][0], atol=1e-6, rtol=1e-4)  # loss, terms, batch stats
    # and the loss over a few optimizer steps
    _, losses1 = _run_steps(config, mesh1, batch, 3)
    _, losses8 = _run_steps(config, mesh8, batch, 3)
    np.testing.assert_allclose(losses1, losses8, rtol=1e-4)
    # the batch really was split: each of the 8 devices held one crop
    assert mesh_lib.shard_batch(batch, mesh8)["image"].addressable_shards[0].data.shape[0] == 1


def test_remat_decoders_gives_the_same_loss_and_gradients_from_the_same_params(tmp_path):
    config = tiny_config(tmp_path, tmp_path)
    batch = _fixed_batch()
    results, jaxprs = {}, {}
    for remat in (False, True):
        config.model.remat_decoders = remat
        model = build_model(config, (32, 32, 2), 4)
        state = create_train_state(model, (32, 32, 2), 1e-3, jax.random.PRNGKey(0))
        # on one device, as in test_one_device_and_eight_devices_give_the_same_training: without remat, its program
        results[remat] = _loss_and_grads_on(mesh_lib.make_mesh(jax.devices()[:1]), model, config, state, batch)
        fn = functools.partial(loss_and_grads, model, config.loss, data_variance=0.1)
        jaxprs[remat] = str(jax.make_jaxpr(fn)(state, batch, jax.random.PRNGKey(1)))
    # the switch is really on: each decoder block is one remat (decoder2 and decoder1 have 2 each), and only then
    assert jaxprs[True].count("remat") == 4 and "remat" not in jaxprs[False]
    chex.assert_trees_all_equal_structs(results[False], results[True])  # same parameter names and shapes
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(results[False][1]))
    chex.assert_trees_all_close(results[False][1], results[True][1], atol=1e-6 * scale, rtol=1e-5)
    chex.assert_trees_all_close(results[False][0], results[True][0], atol=1e-6, rtol=1e-5)


def test_learning_rate_lives_in_the_state():
    config = tiny_config("x", "y")
    model = build_model(config, (32, 32, 2), 4)
    state = create_train_state(model, (32, 32, 2), 4e-4, jax.random.PRNGKey(0))
    def lr(s):
        return float(s.opt_state.hyperparams["learning_rate"])

    assert math.isclose(lr(state), 4e-4, rel_tol=1e-6)
    assert math.isclose(lr(with_learning_rate(state, 4e-5)), 4e-5, rel_tol=1e-6)


def _epochs(run_dir):
    return [r for r in (json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory, tiny_store_path):
    """A finished 1-epoch run of the tiny config, trained once for this module: tests that start from such a run
    work on a copy of its folder, as they would on a run they had trained themselves."""
    config = tiny_config(tmp_path_factory.mktemp("one-epoch") / "run", tiny_store_path)
    config.train.max_epochs = 1
    return train(config, progress=False)


def test_resume_continues_exactly(tmp_path, tiny_store_path, one_epoch_run):
    straight = tiny_config(tmp_path / "straight", tiny_store_path)
    full = train(straight, progress=False)

    shutil.copytree(one_epoch_run.run_dir, tmp_path / "resumed")  # the first epoch (max_epochs 1)
    second = tiny_config(tmp_path / "resumed", tiny_store_path)  # max_epochs 2 again: only the budget changes
    resumed = train(second, resume=True, progress=False)

    assert int(resumed.state.step) == int(full.state.step) > 0
    chex.assert_trees_all_close(jax.device_get(full.state.params), jax.device_get(resumed.state.params), atol=1e-6)
    a, b = _epochs(tmp_path / "straight"), _epochs(tmp_path / "resumed")
    assert [r["epoch"] for r in b] == [0, 1]
    assert all(r["images_per_s"] > 0 for r in a + b)  # measured with the progress bar off too
    np.testing.assert_allclose([r["val_loss"] for r in a], [r["val_loss"] for r in b], rtol=1e-5)
    assert resumed.loop.best_epoch == full.loop.best_epoch
    # the best checkpoint is kept beside the latest
    ck = Checkpointer(tmp_path / "resumed")
    assert ck.has("best") and ck.has("latest")


def test_resume_refuses_a_different_model(tmp_path, tiny_store_path, one_epoch_run):
    shutil.copytree(one_epoch_run.run_dir, tmp_path / "run")  # a run trained for max_epochs 1
    config = tiny_config(tmp_path / "run", tiny_store_path)
    config.train.max_epochs = 2  # the run is not finished for this budget: a new run must not start over it
    with pytest.raises(FileExistsError, match="--resume"):
        train(config, progress=False)
    config.train.max_epochs = 1
    # a memory switch may be flipped on resume, and a run saved before the switch existed resumes too
    config.model.remat_decoders = True
    assert int(train(config, resume=True, progress=False).state.step) > 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    del saved["model"]["remat_decoders"]
    (tmp_path / "run" / "config.json").write_text(json.dumps(saved))
    assert int(train(config, resume=True, progress=False).state.step) > 0
    config.model.head_hidden = 32
    with pytest.raises(ValueError, match="model"):
        train(config, resume=True, progress=False)


def test_a_finished_run_run_again_trains_nothing(tmp_path, tiny_store_path, one_epoch_run):
    first = one_epoch_run
    shutil.copytree(first.run_dir, tmp_path / "run")
    config = tiny_config(tmp_path / "run", tiny_store_path)
    config.train.max_epochs = 1
    records = (tmp_path / "run" / "metrics.jsonl").read_text()
    again = train(config, progress=False)  # the README's command run a second time
    assert again.already_finished and not first.already_finished
    assert int(again.state.step) == int(first.state.step) > 0
    assert again.loop.best_epoch == first.loop.best_epoch
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == records
    chex.assert_trees_all_close(jax.device_get(again.state.params), jax.device_get(first.state.params))


def test_non_finite_loss_stops_with_the_step_and_terms_named(tmp_path, tiny_store_path, monkeypatch):
    config = tiny_config(tmp_path / "run", tiny_store_path)
    nan_training_batches(monkeypatch)  # NaN pixels from the first batch on: the loss is NaN at step 1
    with pytest.raises(NonFiniteLossError, match=r"step 1 .*reconstruction="):
        train(config, progress=False)
    assert not Checkpointer(tmp_path / "run").has("latest")


def test_heldout_proteins_are_not_trained_on_and_are_recorded(tmp_path, tiny_store_path):
    """A protein held out of training is no class, in no split; dataset.json names it; a resume must keep it."""
    import pandas as pd

    from cytoself_jax.data.store import open_store, write_store
    from cytoself_jax.data.splits import splits_for_config

    # The tiny store and a fifth protein, P4 (P0's crops again, in 3 fields of its own), held out: the 4 trained
    # proteins split and train as in the tiny store, so the run's programs are the tiny config's, compiled once
    # per session (a protein fewer would make 3-class programs to compile for this test alone).
    tiny = open_store(tiny_store_path)
    table = pd.read_csv(tiny_store_path / "crops.csv", dtype=str, keep_default_na=False)
    p4 = table.iloc[:24].copy()
    assert set(p4["protein"]) == {"P0"}
    p4["protein"], p4["fov"] = "P4", p4["fov"].str.replace("P0/", "P4/", regex=False)
    store_path = tmp_path / "store"
    write_store(store_path, np.concatenate([tiny.images, tiny.images[:24]]), pd.concat([table, p4]), tiny.channels)

    config = tiny_config(tmp_path / "run", store_path)
    config.data.heldout_proteins = ("P4",)
    config.train.max_epochs = 1
    result = train(config, progress=False)
    info = json.loads((tmp_path / "run" / "dataset.json").read_text())
    assert info["proteins"] == ["P0", "P1", "P2", "P3"] and info["heldout_proteins"] == ["P4"]
    assert sum(info["split_sizes"].values()) == 96  # 4 proteins x 24 crops: none of P4's
    # the classifier heads have one output per trained protein (4 of the store's 5)
    logits = [v.shape for path, v in jax.tree_util.tree_flatten_with_path(result.state.params)[0]
              if "'logits'" in jax.tree_util.keystr(path) and "kernel" in jax.tree_util.keystr(path)]
    assert logits == [(16, 4)] * len(config.model.heads), logits
    # eval finds the same splits from the saved config
    saved = splits_for_config(open_store(store_path).table, config)
    assert saved.heldout_proteins == ("P4",) and sum(len(v) for v in saved.splits.values()) == 96
    config.data.heldout_proteins = ("P1",)
    with pytest.raises(ValueError, match="changed: data.heldout_proteins"):
        train(config, resume=True, progress=False)


def test_resume_check_treats_absent_split_fields_as_their_defaults(tmp_path):
    """A run saved before split_fold / heldout_* / the codebook options existed trained with their defaults: it
    resumes with them, and only with them."""
    from cytoself_jax.training.run_record import check_resumable

    config = tiny_config(tmp_path / "run", tmp_path / "store")
    saved = json.loads(config.to_json())
    added = {"data": {"split_fold": 1, "heldout_proteins": 0.2, "heldout_seed": 3},
             "model": {"codebook_init": "kmeans", "codebook_kmeans_iterations": 3, "codebook_restart_threshold": 0.1,
                       "codebook_restart_decay": 0.9}}
    for section, fields in added.items():
        for field in fields:
            del saved[section][field]
    old = ml_collections.ConfigDict(saved)
    check_resumable(old, config, tmp_path)
    for section, fields in added.items():
        for field, value in fields.items():
            changed = tiny_config(tmp_path / "run", tmp_path / "store")
            changed[section][field] = value
            with pytest.raises(ValueError, match=f"changed: {section}.{field} \"\\(absent\\)\" -> "):
                check_resumable(old, changed, tmp_path)
