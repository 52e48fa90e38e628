"""Run directories and orbax checkpoints: the latest (for --resume: each epoch's end, and mid-epoch ones on
config.train.checkpoint_every_steps/_minutes or SIGTERM) and the best-validation one (for eval: epoch ends only).

A run directory holds config.json (the experiment), dataset.json (protein names in class order, channels, image
shape, split sizes), metrics.jsonl, curves.png, train.lock and checkpoints/{latest,best}/<step>/. Orbax writes each
checkpoint into a temporary folder and renames it when complete, so a run killed mid-write never leaves a
checkpoint that a later restore could pick up half-written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

import jax
import numpy as np
import orbax.checkpoint as ocp

from cytoself_jax.staging import os_reason
from cytoself_jax.training.orbax_logs import capture_library_reports
from cytoself_jax.training.signals import signals_held
from cytoself_jax.train_state import TrainState

# In the name of orbax's folder for a save not yet renamed to its final name (atomic commit by rename).
_ORBAX_TMP_MARK = ".orbax-checkpoint-tmp"


class CheckpointError(ValueError):
    """A checkpoint could not be saved or read; the message is one line naming the folder."""


class CheckpointSaveError(CheckpointError):
    """A checkpoint could not be written (a full disk); the previous one is intact."""


def _one_line(err: BaseException, width: int = 160) -> str:
    """'TypeName: first line of the message', shortened: orbax's errors span pages. An operating-system error
    inside (tensorstore ends its message with it) is what is reported: 'No space left on device [errno 28]'."""
    text = os_reason(err)
    return text if len(text) <= width else text[:width - 3] + "..."


@dataclasses.dataclass
class LoopState:
    """Where the epoch loop stands: everything besides the train state that exact resumption needs."""

    epoch: int = 0  # completed epochs
    learning_rate: float = 0.0
    best_val_loss: float = math.inf
    best_epoch: int = -1
    epochs_since_best: int = 0  # early-stop counter
    plateau_epochs: int = 0  # epochs since the last improvement or learning-rate drop
    stop_reason: str = ""
    plateau_best: float = math.inf  # the plateau schedule's own best (train.plateau_min_delta)
    # Crops of epoch `epoch` (the one in progress) already trained on: 0 at an epoch's end, > 0 in a checkpoint
    # saved mid-epoch (train.checkpoint_every_steps/_minutes, SIGTERM), where a resume continues the epoch's batches
    epoch_crops: int = 0

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        for key in ("best_val_loss", "plateau_best"):
            d[key] = None if math.isinf(d[key]) else d[key]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "LoopState":
        d = dict(d)
        # states saved before plateau_best existed had one best for both counters
        d.setdefault("plateau_best", d.get("best_val_loss"))
        for key in ("best_val_loss", "plateau_best"):
            d[key] = math.inf if d.get(key) is None else d[key]
        return cls(**d)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


class Checkpointer:
    """Two orbax managers under run_dir/checkpoints: 'latest' (every epoch, and mid-epoch) and 'best' (on val
    improvement).

    Opening one creates nothing on disk (the folders appear with the first save), so a run that fails its input
    checks leaves no trace. With clean_tmp, orbax's temporary folders of saves cut short by a crash are removed
    (only the training process may do that: an eval reading a live run must not delete the save in flight)."""

    def __init__(self, run_dir: Path, clean_tmp: bool = False):
        # orbax's own error logs and its threads' leftover exceptions are captured: a failure raises an exception
        # that this module reports in one line (a damaged checkpoint: one warning or error, nothing else)
        capture_library_reports()
        self.root = Path(run_dir).absolute() / "checkpoints"
        if clean_tmp:
            # Done here, synchronously: orbax's own cleanup option runs in the background and is only awaited by
            # the next save, so a folder could outlive the constructor.
            for tmp in self.root.glob(f"*/*{_ORBAX_TMP_MARK}*"):
                shutil.rmtree(tmp, ignore_errors=True)
        # Synchronous saves: the loop waits for each save anyway (a failed one must stop the run at once), and
        # orbax's background threads would report a failure again in pages of tracebacks. Own barrier names per
        # manager: in a multi-host run 'latest' and 'best' save the same step at once, and orbax's barriers (keyed
        # by step) would otherwise collide between them.
        self._managers = {
            name: ocp.CheckpointManager(self.root / name, item_names=("state", "loop"), options=ocp.CheckpointManagerOptions(
                max_to_keep=1, create=False, enable_async_checkpointing=False,
                multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)))
            for name in ("latest", "best")
        }

    def save(self, which: str, state: TrainState, loop: LoopState) -> None:
        """Save a replicated (or host) state under 'latest' or 'best' at its step, and wait for it: a save that
        fails (a full disk) raises CheckpointError at once, the previous checkpoint intact, and Ctrl-C or SIGTERM
        take effect only once the save is complete. A step that is already
        saved is left as it is: a resumed run recomputes exactly the state a killed run saved there."""
        mgr = self._managers[which]
        step = int(state.step)
        if step in mgr.all_steps():
            return
        # Saved from a host copy: orbax would otherwise slice each replicated array per device, compiling a
        # small XLA program per parameter shape (seconds on CPU). restore() puts the arrays back on devices.
        host = jax.tree.map(lambda a: np.asarray(a.addressable_data(0) if isinstance(a, jax.Array) else a), state)
        try:
            with signals_held():  # Ctrl-C or SIGTERM stop the run once it is complete
                (self.root / which).mkdir(parents=True, exist_ok=True)
                mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(host),
                                                       loop=ocp.args.JsonSave(loop.to_json())))
        except Exception as err:  # noqa: BLE001 - orbax and tensorstore raise many types for one failed write
            raise CheckpointSaveError(f"{self.root / which}: saving step {step} failed ({_one_line(err)})") from None

    def step(self, which: str) -> int | None:
        """The step of the complete 'latest' or 'best' checkpoint, None when there is none."""
        return self._managers[which].latest_step()

    def has(self, which: str) -> bool:
        return self.step(which) is not None

    def restore(self, which: str, target: TrainState) -> tuple[TrainState, LoopState]:
        """Restore into the structure, dtypes and shardings of target (a state or its jax.eval_shape); raises
        CheckpointError (one line naming the step's folder) when the checkpoint is unreadable."""
        mgr = self._managers[which]
        step = mgr.latest_step()
        if step is None:
            raise FileNotFoundError(f"{mgr.directory}: no complete '{which}' checkpoint found")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), loop=ocp.args.JsonRestore())
            out = mgr.restore(step, args=args)
            return out.state, LoopState.from_json(out.loop)
        except Exception as err:  # noqa: BLE001 - a damaged file surfaces as any of orbax's or tensorstore's errors
            raise CheckpointError(f"{self.root / which / str(step)}: unreadable checkpoint ({_one_line(err)})") \
                from None

    def restore_intact(self, target: TrainState) -> tuple[TrainState, LoopState, str]:
        """The newest readable checkpoint: 'latest', else 'best' (with a warning, the unreadable 'latest' moved to
        checkpoints/unreadable/ so that the run saves that step again). Returns (state, loop, warning or '');
        raises CheckpointError naming the unreadable files when neither can be read."""
        try:
            return (*self.restore("latest", target), "")
        except CheckpointError as err:
            broken = err
        broken_dir = self.root / "latest" / str(self.step("latest"))
        if not self.has("best"):
            raise CheckpointError(f"{broken}; no other checkpoint to resume from: move {self.root} aside to start "
                                  "the run over, or use another --config.workdir") from None
        try:
            state, loop = self.restore("best", target)
        except CheckpointError as err:
            raise CheckpointError(f"{broken}; {err}; no intact checkpoint to resume from: move {self.root} aside to "
                                  "start the run over, or use another --config.workdir") from None
        aside = self.root / "unreadable" / f"latest-{broken_dir.name}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        os.replace(broken_dir, aside)
        self._managers["latest"].reload()
        self.save("latest", state, loop)  # the run has a 'latest' to resume from again, even if stopped at once
        return state, loop, (f"{broken}; resuming from the best checkpoint (epoch {loop.epoch}, step "
                             f"{int(state.step)}) instead; the unreadable one was moved to {aside}")

    def saved_loop(self, which: str) -> LoopState | None:
        """The loop state of the 'latest' or 'best' checkpoint (no arrays read), None when there is none or it is
        unreadable (a corrupted one is the restore's business)."""
        mgr = self._managers[which]
        if mgr.latest_step() is None:
            return None
        try:
            out = mgr.restore(mgr.latest_step(), args=ocp.args.Composite(loop=ocp.args.JsonRestore()))
            return LoopState.from_json(out.loop)
        except Exception:  # noqa: BLE001 - callers only describe the checkpoint or look for a finished run
            return None

    def wait(self) -> None:
        for mgr in self._managers.values():
            mgr.wait_until_finished()

    def close(self) -> None:
        """Wait for saves in flight, then release the managers."""
        for mgr in self._managers.values():
            mgr.close()


def describe_latest(run_dir: Path) -> str:
    """Where a stopped run stands, for its last message: 'the latest complete checkpoint is epoch 3 (step 120):
    continue with --resume', 'the latest complete checkpoint is in epoch 4, after 512 of its crops (step 128):
    continue with --resume' when saved mid-epoch, or that there is none yet."""
    checkpointer = Checkpointer(run_dir)
    try:
        step = checkpointer.step("latest")
        if step is None:
            return "no checkpoint was saved yet: run the same command again to start over"
        loop = checkpointer.saved_loop("latest")
        if loop is None:
            where = ""
        elif loop.epoch_crops:
            where = f"in epoch {loop.epoch + 1}, after {loop.epoch_crops} of its crops "
        else:
            where = f"epoch {loop.epoch} "
        return f"the latest complete checkpoint is {where}(step {step}): continue with --resume"
    finally:
        checkpointer.close()


def latest_loop_state(run_dir: Path) -> LoopState | None:
    """The loop state saved with the complete 'latest' checkpoint (None when there is none or it is unreadable);
    reads no arrays."""
    checkpointer = Checkpointer(run_dir)
    try:
        return checkpointer.saved_loop("latest")
    finally:
        checkpointer.close()


def run_finished(run_dir: Path, max_epochs: int) -> bool:
    """Whether the run's latest checkpoint ends it: it stopped early or trained max_epochs epochs."""
    saved = latest_loop_state(run_dir)
    return saved is not None and bool(saved.stop_reason or saved.epoch >= max_epochs)


def latest_step(run_dir: Path) -> int | None:
    """Step of the complete 'latest' checkpoint of a run directory (None when there is none); creates nothing."""
    checkpointer = Checkpointer(run_dir)
    try:
        return checkpointer.step("latest")
    finally:
        checkpointer.close()


class RunLock:
    """Context manager holding an exclusive lock on run_dir/train.lock, so that two training processes never
    write the same run. The kernel drops the lock when its process dies, however it dies."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "train.lock"
        self._file = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w")
        if fcntl is None:  # no flock on this platform: run unguarded
            return self
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.close()
            raise FileExistsError(f"{self.path.parent}: another training process is using this run directory") from None
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()  # closing releases the lock
