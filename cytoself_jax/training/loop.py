"""The training loop: epochs over the store, validation, the plateau schedule, checkpoints, exact resume (from an
epoch's end or from mid-epoch: train.checkpoint_every_steps/_minutes, and SIGTERM at the next step boundary)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cytoself_jax.data.pipeline import make_dataset, pixel_variance, steps_per_epoch
from cytoself_jax.data.splits import check_split_sizes, class_ids, splits_for_config
from cytoself_jax.data.pixels import verify_pixels
from cytoself_jax.data.store import META_FILE, TABLE_FILE, CropStore, StoreError, fingerprint, open_store
from cytoself_jax import mesh as mesh_lib
from cytoself_jax.program_cache import cached_program
from cytoself_jax.run import load_run_config
from cytoself_jax.training.checkpoint import (Checkpointer, CheckpointSaveError, LoopState, RunLock, describe_latest,
                                              latest_step, run_finished)
from cytoself_jax.training.metrics_log import EpochProgress, MetricsLog
from cytoself_jax.models.quantizer import perplexity_from_counts
from cytoself_jax.training.losses import MONITORS, monitored_value
from cytoself_jax.training.run_record import check_resumable, check_run_dir, check_same_store, record_run
from cytoself_jax.training.schedule import after_validation
from cytoself_jax.training.signals import DeferredSigterm
from cytoself_jax.train_state import TrainState, with_learning_rate
from cytoself_jax.models import build_model
from cytoself_jax.training.programs import eval_step_program, init_program, program_inputs, train_step_program

log = logging.getLogger(__name__)

# curves.png is redrawn after an epoch at most this often (drawing takes seconds), and at the end of the run.
_PLOT_EVERY_S = 60.0

class NonFiniteLossError(RuntimeError):
    """The loss or its gradient became NaN/inf; the latest checkpoint is still the last good one."""


class RunStoppedError(RuntimeError):
    """Training stopped on a failed write into the run (a full disk); the message says what failed and where the
    run stands (its latest complete checkpoint)."""


def ensure_dataset(data_cfg: ml_collections.ConfigDict) -> CropStore:
    """Open the store at data.path. When the config asks for the built-in synthetic cells (data.synthetic.proteins
    > 0) they are drawn first, but only into data.synthetic.path and only when that folder does not exist yet: a
    mistyped data.path or a folder of the user's is never written into."""
    path = Path(data_cfg.path)
    syn = data_cfg.synthetic
    if syn.proteins > 0 and not (path / META_FILE).exists():
        asked = bool(syn.path) and path.absolute() == Path(syn.path).absolute()
        if not asked:
            raise StoreError(f"{path}: store: no crop store here, and this config draws its synthetic cells only "
                             f"into {syn.path or '(no folder)'} (config.data.synthetic.path): check "
                             f"--config.data.path, or set --config.data.synthetic.path={path} to draw them there")
        if path.exists():
            raise StoreError(f"{path}: store: the folder exists but holds no crop store, and synthetic cells are only "
                             "drawn into a new folder: move it away, or set --config.data.path to a crop store")
        from cytoself_jax.data.synthetic import write_synthetic_store

        log.info("drawing the synthetic dataset into %s", path)
        write_synthetic_store(
            path,
            proteins=syn.proteins,
            crops_per_protein=syn.crops_per_protein,
            fields_per_protein=syn.fields_per_protein,
            size=syn.size,
            seed=syn.seed,
            complexes=syn.get("complexes", 0),  # configs saved before complexes existed lack the field
        )
    return open_store(path)


def evaluate(eval_step, state: TrainState, batches, mesh) -> dict[str, float]:
    """Metrics over every crop of an eval dataset: batch means weighted by batch size, accuracy counts turned
    into fractions, and per codebook the number of codes no crop used ('dead_codes_<level>') and the perplexity
    of the code usage summed over the whole split (not a mean of per-batch perplexities). A final batch that
    does not split over the devices runs replicated."""
    sums: dict[str, np.ndarray] = {}
    n = 0
    n_dev = mesh.devices.size
    for batch in batches:
        b = len(batch["label"]) * jax.process_count()  # the global batch: every process holds an equal share
        placed = mesh_lib.shard_batch(batch, mesh) if b % n_dev == 0 else mesh_lib.replicate(batch, mesh)
        for k, v in jax.device_get(eval_step(state, placed)).items():  # summed on the host, in float64
            w = 1.0 if k.startswith(("correct_", "codes_")) else b
            sums[k] = sums.get(k, 0.0) + np.asarray(v, np.float64) * w
        n += b
    if n == 0:
        raise ValueError("evaluation split is empty")
    out = {}
    for k, v in sums.items():
        if k.startswith("codes_"):
            out[k.replace("codes_", "dead_codes_")] = int(np.sum(v == 0))
            out[k.replace("codes_", "perplexity_")] = float(perplexity_from_counts(np.asarray(v, np.float32)))
        elif k.startswith("correct_"):
            out[k.replace("correct_", "accuracy_")] = float(v) / n
        else:
            out[k] = float(v) / n
    return out


def codebook_warnings(val: dict[str, float], floor: float, num_codes: dict[str, int]) -> list[str]:
    """One message per codebook ('local', 'global') whose validation perplexity is below floor (collapse)."""
    out = []
    for level, total in num_codes.items():
        ppl = val[f"perplexity_{level}"]
        if ppl < floor:
            out.append(f"{level} codebook perplexity {ppl:.1f} is below config.train.min_codebook_perplexity="
                       f"{floor:g} (codebook collapse: {val[f'dead_codes_{level}']} of {total} codes unused over "
                       "the validation split)")
    return out


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    loop: LoopState
    val: dict[str, float]
    state: TrainState
    already_finished: bool = False  # the run had finished before this call: nothing was trained


def _with_classes(store: CropStore, classes: tuple[str, ...]) -> CropStore:
    """The store with the classifier's classes restricted to `classes` (the proteins trained on): crops' labels
    index into them, -1 for held-out proteins (whose crops are in no split, so never read)."""
    view = copy.copy(store)
    view.proteins = classes
    view.protein_ids = class_ids(store.table["protein"].to_numpy(), classes)
    return view


def _check_train_config(config: ml_collections.ConfigDict) -> None:
    """Refuse training settings the loop cannot run with, naming the config field (ValueError, one line)."""
    t = config.train
    for field in ("batch_size", "eval_batch_size", "max_epochs", "log_every_steps"):
        if not isinstance(t[field], int) or t[field] <= 0:
            raise ValueError(f"config.train.{field}: expected a positive integer, found {t[field]!r}")
    if not isinstance(t.max_steps_per_epoch, int) or t.max_steps_per_epoch < 0:
        raise ValueError(f"config.train.max_steps_per_epoch: expected an integer >= 0 (0 = whole split), found "
                         f"{t.max_steps_per_epoch!r}")
    if isinstance(t.checkpoint_every_steps, bool) or not isinstance(t.checkpoint_every_steps, int) \
            or t.checkpoint_every_steps < 0:
        raise ValueError(f"config.train.checkpoint_every_steps: expected an integer >= 0 (0 = off), found "
                         f"{t.checkpoint_every_steps!r}")
    if not (math.isfinite(t.checkpoint_every_minutes) and t.checkpoint_every_minutes >= 0):
        raise ValueError(f"config.train.checkpoint_every_minutes: expected a number >= 0 (0 = off), found "
                         f"{t.checkpoint_every_minutes!r}")
    if not (math.isfinite(t.plateau_min_delta) and t.plateau_min_delta >= 0):
        raise ValueError(f"config.train.plateau_min_delta: expected a number >= 0 (Keras' default 1e-4), found "
                         f"{t.plateau_min_delta!r}")
    min_lr = t.get("plateau_min_lr", 0.0)
    if isinstance(min_lr, bool) or not isinstance(min_lr, (int, float)) or not (math.isfinite(min_lr) and min_lr >= 0):
        raise ValueError(f"config.train.plateau_min_lr: expected a number >= 0 (the paper's code: 1e-8), found "
                         f"{min_lr!r}")
    if not (math.isfinite(t.learning_rate) and t.learning_rate > 0):
        raise ValueError(f"config.train.learning_rate: expected a positive number, found {t.learning_rate!r}")
    if jax.process_count() > 1 and t.eval_batch_size % jax.device_count():
        raise ValueError(f"config.train.eval_batch_size: expected a multiple of the {jax.device_count()} devices of "
                         f"the {jax.process_count()} processes, found {t.eval_batch_size}")
    if t.batch_size % jax.process_count():
        raise ValueError(f"config.train.batch_size: expected a multiple of the {jax.process_count()} processes, "
                         f"found {t.batch_size}")
    channels = tuple(config.data.channels)
    if not channels or channels[0] != "protein" or len(set(channels)) != len(channels):
        raise ValueError(f"config.data.channels: expected distinct store channel names with 'protein' first, "
                         f"found {list(channels)}")
    if t.monitor not in MONITORS:
        raise ValueError(f"config.train.monitor: expected one of {MONITORS}, found {t.monitor!r}")
    if not isinstance(t.select_from_epoch, int) or t.select_from_epoch < 1:
        raise ValueError(f"config.train.select_from_epoch: expected an integer >= 1 (1 = every epoch may be the "
                         f"best), found {t.select_from_epoch!r}")
    for field in ("split_fold", "heldout_seed"):
        value = config.data.get(field, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"config.data.{field}: expected an integer >= 0, found {value!r}")
    fractions = tuple(config.data.split_fractions)
    if len(fractions) != 3 or not fractions[1] > 0:
        raise ValueError(f"config.data.split_fractions: expected (train, val, test) with val > 0 (the schedule and "
                         f"the best checkpoint follow the validation loss), found {fractions}")


def train(config: ml_collections.ConfigDict, *, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train the model of `config` in config.workdir; with resume=True continue the run found there exactly.

    Every input is checked before anything is written, so a refused run leaves no trace. However the run ends
    (an error, Ctrl-C), the checkpoint saves already started are completed before this returns or raises."""
    run_dir = Path(config.workdir)
    _check_train_config(config)
    check_run_dir(run_dir)
    has_checkpoint = latest_step(run_dir) is not None
    finished = not resume and run_finished(run_dir, config.train.max_epochs)
    if has_checkpoint and not resume and not finished:
        raise FileExistsError(
            f"{run_dir}: already holds a training run; pass --resume to continue it or set --config.workdir"
        )
    # A finished run (the same command run again) is checked and opened like a resume; its loop has nothing to do.
    resume = resume or finished
    if resume and (run_dir / "config.json").exists():
        check_resumable(load_run_config(run_dir)[0], config, run_dir)

    store = ensure_dataset(config.data)
    channels = tuple(config.data.channels)
    store.channel_indices(channels)  # clear error when the store lacks a channel the config asks for
    verify_pixels(store, progress=progress)
    store_fingerprint = fingerprint(store)
    if resume and has_checkpoint:
        check_same_store(run_dir, store_fingerprint)
    run_splits = splits_for_config(store.table, config, where=str(store.path / TABLE_FILE))
    splits = run_splits.splits
    for message in check_split_sizes(store.table, splits, str(store.path / TABLE_FILE)):
        log.warning(message)
    if run_splits.heldout_proteins:
        log.info("%d proteins held out of training (dataset.json 'heldout_proteins'): %s",
                 len(run_splits.heldout_proteins), ", ".join(run_splits.heldout_proteins[:5])
                 + (" ..." if len(run_splits.heldout_proteins) > 5 else ""))
        store = _with_classes(store, run_splits.trained_proteins)
    h, w, _ = store.image_shape
    image_shape = (h, w, len(channels))
    spec = build_model(config, image_shape, len(store.proteins)).spec  # a bad model setting is refused here
    mesh = mesh_lib.make_mesh()
    mesh_lib.check_batch_size(config.train.batch_size, mesh)
    n_train = len(splits["train"])
    steps = steps_per_epoch(n_train, config.train.batch_size)
    if config.train.max_steps_per_epoch:
        steps = min(steps, config.train.max_steps_per_epoch)
    if steps == 0:
        raise ValueError(
            f"config.train.batch_size: expected at most the {n_train} crops of the training split (of "
            f"{len(store)} in {store.path}), found {config.train.batch_size}"
        )
    per_process = config.train.batch_size // jax.process_count()
    data_kw = dict(channels=channels, num_workers=config.data.num_workers, prefetch=config.data.prefetch,
                   shard_index=jax.process_index(), shard_count=jax.process_count())

    def epoch_batches(epoch: int, start: int = 0):
        """The training batches of `epoch` after its first `start` crops (a resume mid-epoch)."""
        return make_dataset(store, splits["train"], batch_size=per_process, train=True, seed=config.seed,
                            epoch=epoch, drop_remainder=True, start=start, **data_kw)

    # Several processes: equal shares of whole global batches (a partial last batch cannot be split across hosts)
    val_batches = make_dataset(store, splits["val"], batch_size=config.train.eval_batch_size // jax.process_count(),
                               train=False, seed=config.seed, epoch=0, drop_remainder=jax.process_count() > 1,
                               **data_kw)
    epoch_batches(0)  # built once now so that a data setting it refuses fails before anything is written

    # One constant for the reconstruction loss of training and validation alike (the paper's data_variance)
    variance, variance_crops = pixel_variance(store, splits["train"], channels, seed=config.data.split_seed)
    dataset_info = {
        "store": str(Path(config.data.path).absolute()),
        "proteins": list(store.proteins),  # the classifier's classes, in class order: the proteins trained on
        "heldout_proteins": list(run_splits.heldout_proteins),
        "channels": list(channels),
        "image_shape": list(image_shape),
        "split_sizes": {k: int(len(v)) for k, v in splits.items()},
        "data_variance": variance,
        "data_variance_crops": variance_crops,
        "store_fingerprint": store_fingerprint,
    }
    primary = jax.process_index() == 0  # in a multi-host run, the process that writes the run's files
    with RunLock(run_dir) if primary else contextlib.nullcontext():
        checkpointer = Checkpointer(run_dir, clean_tmp=primary)
        try:
            result = _train_loop(config, resume, progress, run_dir, checkpointer, spec, mesh, dataset_info, steps,
                                 epoch_batches, val_batches)
        except (OSError, CheckpointSaveError) as err:  # a write into the run failed (a full disk): say so at once
            where = f"{err.filename}: " if getattr(err, "filename", None) else ""
            raise RunStoppedError(f"{where}{getattr(err, 'strerror', None) or err}; the run stopped and "
                                  f"{describe_latest(run_dir)} once the cause is fixed (e.g. disk space freed)"
                                  ) from None
        finally:
            checkpointer.close()  # completes the saves in flight: the latest checkpoint is whole even on errors
        result.already_finished = finished
        return result


def _train_loop(config, resume, progress, run_dir, checkpointer, spec, mesh, dataset_info, steps, epoch_batches,
                val_batches) -> TrainResult:
    replicated = mesh_lib.replicated(mesh)
    # Placed on the mesh like the state: programs of placed arguments are kept on disk (program_cache.py)
    init_key, step_key = (jax.device_put(k, replicated) for k in jax.random.split(jax.random.PRNGKey(config.seed)))
    # The programs are made from what they may read of the config and dataset record, and the mesh: their key
    # (program_cache.py). One jitted init (cached across runs by the compilation cache) instead of hundreds of
    # eager ops.
    programs = (program_inputs(config, dataset_info), mesh)
    init = cached_program(init_program, *programs)
    loop = LoopState(learning_rate=config.train.learning_rate)
    if resume and checkpointer.has("latest"):
        # The restore only needs the state's structure: its shapes are enough (compiling init was a few seconds of
        # every resume, and of a finished run started again)
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                              init.eval_shape(init_key))
        state, loop, warning = checkpointer.restore_intact(target)
        if warning:
            log.warning(warning)
        log.info("resumed %s after epoch %d%s (step %d)", run_dir, loop.epoch,
                 f" and {loop.epoch_crops} crops of epoch {loop.epoch + 1}" if loop.epoch_crops else "",
                 int(state.step))
        if loop.best_epoch == loop.epoch and not loop.epoch_crops:
            checkpointer.save("best", state, loop)  # no-op unless the run died between its last two saves
    else:
        if resume:
            log.warning("%s: no checkpoint to resume from; starting a new run", run_dir)
        state = init(init_key)
    primary = jax.process_index() == 0
    if primary:
        record_run(run_dir, config, dataset_info, loop.epoch)
    metrics_log = MetricsLog(run_dir / "metrics.jsonl" if primary else None)
    metrics_log.truncate_after(loop.epoch, int(state.step))

    train_step = mesh_lib.compiled_together(cached_program(train_step_program, *programs, donate_argnums=(0,)),
                                            "train step")
    eval_step = mesh_lib.compiled_together(cached_program(eval_step_program, *programs), "eval step")
    num_codes = {"local": spec.vq_local.num_codes, "global": spec.vq_global.num_codes}
    val = {}
    last_plot, plotted_epoch = time.monotonic(), None
    batch_size = config.train.batch_size
    # SIGTERM (a preemption) only sets sigterm.received: the loop saves 'latest' at the next step boundary (after
    # an epoch's last step, with the epoch's own checkpoint after validation), then acts on it (train.py: exit 143)
    with DeferredSigterm() as sigterm:
        last_save = time.monotonic()
        while not loop.stop_reason and loop.epoch < config.train.max_epochs:
            epoch = loop.epoch
            # The first process drew the curves and wrote the run's files meanwhile: start the epoch together.
            mesh_lib.wait_for_all_processes(f"epoch {epoch}")
            state = with_learning_rate(state, loop.learning_rate)
            # A checkpoint saved mid-epoch goes on with the next batch of the epoch's order (data/pipeline.py)
            start = loop.epoch_crops
            remaining = max(steps * batch_size - start, 0) // batch_size
            bar = EpochProgress(epoch, config.train.max_epochs, remaining * batch_size,
                                disable=not (progress and primary))
            pending = None  # metrics of the previous step, read while the current one runs
            try:
                for i, batch in zip(range(remaining), epoch_batches(epoch, start)):
                    state, metrics = train_step(state, mesh_lib.shard_batch(batch, mesh), step_key)
                    if pending is not None:
                        _log_step(metrics_log, bar, pending, epoch, config)
                    pending = (int(state.step), metrics)
                    if i + 1 == remaining:
                        continue  # the epoch's own checkpoint comes after its validation
                    terminated, due = _save_due(sigterm.received, config.train, pending[0], last_save)
                    if terminated:  # set, never cleared here: the handler may have run since it was read
                        sigterm.received = True
                    if terminated or due:
                        _log_step(metrics_log, bar, pending, epoch, config)  # the log and the checkpoint agree
                        pending = None
                        loop = dataclasses.replace(loop, epoch_crops=start + (i + 1) * batch_size)
                        checkpointer.save("latest", state, loop)
                        last_save = time.monotonic()
                        sigterm.act()
                if pending is not None:
                    _log_step(metrics_log, bar, pending, epoch, config, force=True)
            finally:  # also when the epoch is cut short: the bar's line comes before the run's last line
                images_per_s = bar.close()
            loop = dataclasses.replace(loop, epoch_crops=0)  # the epoch's steps are done

            val = evaluate(eval_step, state, val_batches, mesh)
            if not math.isfinite(val["loss"]):
                raise NonFiniteLossError(
                    f"non-finite validation loss after epoch {epoch + 1} (step {int(state.step)}): {_terms(val)}; the "
                    "run stopped and the latest checkpoint is the last good one"
                )
            monitored = monitored_value(val, config.loss, config.train.monitor)
            loop, improved = after_validation(loop, monitored, config.train)
            record = {"kind": "epoch", "epoch": epoch, "step": int(state.step), "images_per_s": images_per_s,
                      "learning_rate": float(jnp.asarray(state.opt_state.hyperparams["learning_rate"])),
                      **{f"val_{k}": v for k, v in val.items()}, "val_monitored": monitored,
                      "best_epoch": loop.best_epoch}
            # The record goes first: a run killed before its checkpoint is complete redoes this epoch (from its
            # latest mid-epoch checkpoint, if any) on resume, and the resume drops the records of what it redoes.
            metrics_log.write(record)
            checkpointer.save("latest", state, loop)
            if improved:
                checkpointer.save("best", state, loop)
            last_save = time.monotonic()
            # a SIGTERM during the epoch's last step or its validation: stop now, the epoch saved
            if _any_process(sigterm.received)[0]:
                sigterm.received = True
            sigterm.act()
            for message in codebook_warnings(val, config.train.min_codebook_perplexity, num_codes):
                log.warning("epoch %d: %s", epoch + 1, message)
            if primary and time.monotonic() - last_plot > _PLOT_EVERY_S:
                _draw_curves(metrics_log.path, run_dir / "curves.png")
                last_plot, plotted_epoch = time.monotonic(), epoch
            if progress and primary:
                print(_epoch_summary(record, num_codes), flush=True)
    if val and primary and plotted_epoch != loop.epoch - 1:  # the final curves, unless just drawn
        _draw_curves(metrics_log.path, run_dir / "curves.png")
    if not loop.stop_reason:
        loop.stop_reason = f"reached config.train.max_epochs={config.train.max_epochs}"
    return TrainResult(run_dir=run_dir, loop=loop, val=val, state=state)


def _save_due(received: bool, train_cfg: ml_collections.ConfigDict, step: int,
              last_save: float) -> tuple[bool, bool]:
    """(SIGTERM received in any process, a mid-epoch 'latest' due) after `step`: a save is due every
    train.checkpoint_every_steps steps, or train.checkpoint_every_minutes after the last save (0 = off).

    Saves are collective, and SIGTERM and the clocks reach the processes of a multi-process run apart, so there
    they decide together, but only every train.log_every_steps steps: a collective at every step would cost each
    step a round trip between hosts. A step interval needs no agreement (every process is at the same step)."""
    every_steps, every_minutes = train_cfg.checkpoint_every_steps, train_cfg.checkpoint_every_minutes
    by_steps = bool(every_steps and step % every_steps == 0)
    by_clock = bool(every_minutes and time.monotonic() - last_save >= 60.0 * every_minutes)
    if jax.process_count() == 1:
        return received, by_steps or by_clock
    if step % train_cfg.log_every_steps:
        return False, by_steps
    terminated, by_clock = _any_process(received, by_clock)
    return terminated, by_steps or by_clock


def _any_process(*flags: bool) -> tuple[bool, ...]:
    """Each flag, true when it is true in any process of a multi-process run: saves are collective, and SIGTERM
    and the clocks reach the processes apart, so all decide together. One process: the flags as given."""
    if jax.process_count() == 1:
        return flags
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.asarray(flags, np.int32))
    return tuple(bool(x) for x in np.any(gathered, axis=0))


def _draw_curves(metrics_path: Path, out: Path) -> None:
    # Imported here: matplotlib is half a second of every start, and the first curves come after an epoch
    from cytoself_jax.curves import plot_training_curves

    plot_training_curves(metrics_path, out, svg=False)


def _terms(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if not k.startswith(("dead_codes_", "accuracy_")))


def _log_step(metrics_log: MetricsLog, bar: EpochProgress, pending, epoch: int, config, force: bool = False) -> None:
    step, metrics = pending
    host = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if host.pop("finite") < 1.0:
        raise NonFiniteLossError(
            f"non-finite loss or gradient at step {step} (epoch {epoch + 1}): {_terms(host)}; the run stopped and the "
            "latest checkpoint is the last good one (try a lower config.train.learning_rate)"
        )
    bar.update(config.train.batch_size, host["loss"])
    if force or step % config.train.log_every_steps == 0:
        metrics_log.write({"kind": "step", "epoch": epoch, "step": step, **host})


def _epoch_summary(r: dict, num_codes: dict[str, int]) -> str:
    acc = " ".join(f"{k[4:]}={v:.3f}" for k, v in r.items() if k.startswith("val_accuracy"))
    codes = " ".join(f"ppl_{level}={r[f'val_perplexity_{level}']:.1f} (dead {r[f'val_dead_codes_{level}']}/{n})"
                     for level, n in num_codes.items())
    return (f"epoch {r['epoch'] + 1}: val_loss={r['val_loss']:.4f} {acc} {codes} lr={r['learning_rate']:.2g} "
            f"{r['images_per_s']:.1f} img/s")
