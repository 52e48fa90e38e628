"""The training loop: epochs over the store, validation, the plateau schedule, checkpoints, exact resume."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cytoself_jax.analysis.plots import plot_training_curves
from cytoself_jax.data.pipeline import make_dataset, steps_per_epoch
from cytoself_jax.data.splits import split_by_field
from cytoself_jax.data.store import CropStore, open_store
from cytoself_jax.training import mesh as mesh_lib
from cytoself_jax.training.checkpoint import Checkpointer, LoopState, load_run_config, save_run_config
from cytoself_jax.training.metrics_log import EpochProgress, MetricsLog
from cytoself_jax.training.schedule import after_validation
from cytoself_jax.training.state import TrainState, build_model, create_train_state, with_learning_rate
from cytoself_jax.training.step import make_eval_step, make_train_step

log = logging.getLogger(__name__)

# Config fields that must not change when a run is resumed: they change the model or what it learns from.
_RESUME_FIXED = ("model", "data.path", "data.channels", "data.split_fractions", "data.split_seed", "seed")


class NonFiniteLossError(RuntimeError):
    """The loss or its gradient became NaN/inf; the latest checkpoint is still the last good one."""


def ensure_dataset(data_cfg: ml_collections.ConfigDict) -> CropStore:
    """Open the store at data.path, drawing the built-in synthetic cells there first when the config asks
    for them (data.synthetic.proteins > 0) and no store exists yet."""
    path = Path(data_cfg.path)
    syn = data_cfg.synthetic
    if syn.proteins > 0 and not (path / "store.json").exists():
        from cytoself_jax.data.synthetic import write_synthetic_store

        log.info("drawing the synthetic dataset into %s", path)
        write_synthetic_store(
            path,
            proteins=syn.proteins,
            crops_per_protein=syn.crops_per_protein,
            fields_per_protein=syn.fields_per_protein,
            size=syn.size,
            seed=syn.seed,
        )
    return open_store(path)


def _get(cfg: ml_collections.ConfigDict, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def _check_resumable(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict, run_dir: Path) -> None:
    for field in _RESUME_FIXED:
        a, b = json.loads(ml_collections.ConfigDict({"v": _get(saved, field)}).to_json()), json.loads(
            ml_collections.ConfigDict({"v": _get(config, field)}).to_json()
        )
        if a != b:
            raise ValueError(
                f"{run_dir / 'config.json'}: {field}: a run can only be resumed with the config it started with "
                f"(saved {a['v']!r}, now {b['v']!r}); use another --config.workdir for a new run"
            )



def evaluate(eval_step, state: TrainState, batches, mesh) -> dict[str, float]:
    """Mean metrics over every crop of an eval dataset (batch means weighted by batch size; accuracy counts
    turned into fractions). A final batch that does not split over the devices runs replicated."""
    sums: dict[str, jax.Array] = {}
    n = 0
    n_dev = mesh.devices.size
    for batch in batches:
        b = len(batch["label"])
        placed = mesh_lib.shard_batch(batch, mesh) if b % n_dev == 0 else mesh_lib.replicate(batch, mesh)
        m = eval_step(state, placed)
        for k, v in m.items():
            w = 1.0 if k.startswith("correct_") else b
            sums[k] = sums.get(k, 0.0) + v * w
        n += b
    if n == 0:
        raise ValueError("evaluation split is empty")
    out = {k: float(v) / n for k, v in jax.device_get(sums).items()}
    return {(k.replace("correct_", "accuracy_") if k.startswith("correct_") else k): v for k, v in out.items()}


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    loop: LoopState
    val: dict[str, float]
    state: TrainState


def train(config: ml_collections.ConfigDict, *, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train the model of `config` in config.workdir; with resume=True continue the run found there exactly."""
    run_dir = Path(config.workdir)
    checkpointer = Checkpointer(run_dir)
    if checkpointer.has("latest") and not resume:
        raise FileExistsError(
            f"{run_dir}: already holds a training run; pass --resume to continue it or set --config.workdir"
        )
    if resume and (run_dir / "config.json").exists():
        _check_resumable(load_run_config(run_dir)[0], config, run_dir)

    store = ensure_dataset(config.data)
    channels = tuple(config.data.channels)
    store.channel_indices(channels)  # clear error when the store lacks a channel the config asks for
    splits = split_by_field(
        store.table, tuple(config.data.split_fractions), seed=config.data.split_seed,
        allow_single_field=config.data.allow_single_field,
    )
    h, w, _ = store.image_shape
    image_shape = (h, w, len(channels))
    model = build_model(config, image_shape, len(store.proteins))
    mesh = mesh_lib.make_mesh()
    mesh_lib.check_batch_size(config.train.batch_size, mesh)
    dataset_info = {
        "store": str(Path(config.data.path).absolute()),
        "proteins": list(store.proteins),
        "channels": list(channels),
        "image_shape": list(image_shape),
        "split_sizes": {k: int(len(v)) for k, v in splits.items()},
    }
    save_run_config(run_dir, config, dataset_info)

    init_key, step_key = jax.random.split(jax.random.PRNGKey(config.seed))
    state = mesh_lib.replicate(create_train_state(model, image_shape, config.train.learning_rate, init_key), mesh)
    loop = LoopState(learning_rate=config.train.learning_rate)
    if resume and checkpointer.has("latest"):
        state, loop = checkpointer.restore("latest", state)
        log.info("resumed %s after epoch %d (step %d)", run_dir, loop.epoch, int(state.step))
    metrics_log = MetricsLog(run_dir / "metrics.jsonl")
    metrics_log.truncate_after_epoch(loop.epoch)

    train_step = make_train_step(model, config.loss, mesh)
    eval_step = make_eval_step(model, config.loss)
    n_train = len(splits["train"])
    steps = steps_per_epoch(n_train, config.train.batch_size)
    if config.train.max_steps_per_epoch:
        steps = min(steps, config.train.max_steps_per_epoch)
    if steps == 0:
        raise ValueError(
            f"config.train.batch_size: {config.train.batch_size} is larger than the {n_train} training crops"
        )
    per_process = config.train.batch_size // jax.process_count()
    data_kw = dict(channels=channels, num_workers=config.data.num_workers, prefetch=config.data.prefetch,
                   shard_index=jax.process_index(), shard_count=jax.process_count())

    val = {}
    while not loop.stop_reason and loop.epoch < config.train.max_epochs:
        epoch = loop.epoch
        state = with_learning_rate(state, loop.learning_rate)
        batches = make_dataset(store, splits["train"], batch_size=per_process, train=True, seed=config.seed,
                               epoch=epoch, drop_remainder=True, **data_kw)
        bar = EpochProgress(epoch, config.train.max_epochs, steps * config.train.batch_size, disable=not progress)
        pending = None  # metrics of the previous step, read while the current one runs
        for i, batch in zip(range(steps), batches):
            state, metrics = train_step(state, mesh_lib.shard_batch(batch, mesh), step_key)
            if pending is not None:
                _log_step(metrics_log, bar, pending, epoch, config)
            pending = (int(state.step), metrics)
        _log_step(metrics_log, bar, pending, epoch, config, force=True)
        images_per_s = bar.close()

        val = evaluate(eval_step, state, _eval_batches(store, splits["val"], config, data_kw), mesh)
        loop, improved = after_validation(loop, val["loss"], config.train)
        checkpointer.save("latest", state, loop)
        if improved:
            checkpointer.save("best", state, loop)
        record = {"kind": "epoch", "epoch": epoch, "step": int(state.step), "images_per_s": images_per_s,
                  "learning_rate": float(jnp.asarray(state.opt_state.hyperparams["learning_rate"])),
                  **{f"val_{k}": v for k, v in val.items()}, "best_epoch": loop.best_epoch}
        metrics_log.write(record)
        _warn_codebook_usage(val, config.train.min_codebook_perplexity, epoch)
        plot_training_curves(metrics_log.path, run_dir / "curves.png", svg=False)
        if progress:
            print(_epoch_summary(record), flush=True)
    checkpointer.wait()
    checkpointer.close()
    if not loop.stop_reason:
        loop.stop_reason = f"reached config.train.max_epochs={config.train.max_epochs}"
    return TrainResult(run_dir=run_dir, loop=loop, val=val, state=state)


def _eval_batches(store, indices, config, data_kw):
    return make_dataset(store, indices, batch_size=config.train.eval_batch_size, train=False, seed=config.seed,
                        epoch=0, drop_remainder=False, **data_kw)


def _log_step(metrics_log: MetricsLog, bar: EpochProgress, pending, epoch: int, config, force: bool = False) -> None:
    step, metrics = pending
    host = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if host.pop("finite") < 1.0:
        terms = ", ".join(f"{k}={v:.4g}" for k, v in host.items())
        raise NonFiniteLossError(
            f"non-finite loss or gradient at step {step} (epoch {epoch + 1}): {terms}; the run stopped and the "
            "latest checkpoint is the last good one (try a lower config.train.learning_rate)"
        )
    bar.update(config.train.batch_size, host["loss"])
    if force or step % config.train.log_every_steps == 0:
        metrics_log.write({"kind": "step", "epoch": epoch, "step": step, **host})


def _warn_codebook_usage(val: dict[str, float], floor: float, epoch: int) -> None:
    for level in ("local", "global"):
        ppl = val.get(f"perplexity_{level}", 0.0)
        if ppl < floor:
            log.warning("epoch %d: %s codebook perplexity %.1f is below config.train.min_codebook_perplexity=%.1f "
                        "(codebook collapse: few codes in use)", epoch + 1, level, ppl, floor)


def _epoch_summary(r: dict) -> str:
    acc = " ".join(f"{k[4:]}={v:.3f}" for k, v in r.items() if k.startswith("val_accuracy"))
    return (f"epoch {r['epoch'] + 1}: val_loss={r['val_loss']:.4f} {acc} ppl_local={r['val_perplexity_local']:.1f} "
            f"ppl_global={r['val_perplexity_global']:.1f} lr={r['learning_rate']:.2g} {r['images_per_s']:.1f} img/s")
