"""A training run directory, loaded: its config, its dataset info and a checkpoint's model and variables.

Training (the resume check) and analysis (eval, embed, notebooks) both load runs here. Loading needs the model
definition and the checkpoint format, never the training loop:

    from cytoself_jax.run import load_run
    run = load_run("runs/demo")          # the best validation checkpoint ('latest': the last epoch or mid-epoch)
    run.channels, run.image_shape, run.proteins, run.step
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import ml_collections

from cytoself_jax.jsonio import read_json
from cytoself_jax.training.checkpoint import Checkpointer
from cytoself_jax.models import build_model
from cytoself_jax.train_state import create_train_state

CHECKPOINTS = ("best", "latest")


class RunError(FileNotFoundError):
    """The folder is not a usable run (not made by train.py, or without the checkpoint asked for); one line."""


def load_run_config(run_dir: str | Path) -> tuple[ml_collections.ConfigDict, dict]:
    """(config, dataset_info) of a run directory, with a clear error when it is not one."""
    run_dir = Path(run_dir)
    for name in ("config.json", "dataset.json"):
        if not (run_dir / name).is_file():
            raise RunError(f"{run_dir / name}: missing: not a cytoself-jax run directory (made by train.py)")
    action = "restore it from a copy of the run, or train a new run with another --config.workdir"
    config = ml_collections.ConfigDict(read_json(run_dir / "config.json", action))
    return config, read_json(run_dir / "dataset.json", action)


@dataclasses.dataclass
class Run:
    """A loaded run, ready for inference: ``model.apply(variables, x, train=False)`` on normalized crops.

    checkpoint: 'best', 'latest' or 'random-init' (the untrained model of the run's config, a floor); step: the
    checkpoint's training step (0 for random-init). dataset_info: dataset.json (proteins in class order,
    channels, image_shape, store, split sizes).
    """

    run_dir: Path
    config: ml_collections.ConfigDict
    dataset_info: dict
    model: Any
    variables: dict
    step: int
    checkpoint: str

    @property
    def channels(self) -> tuple[str, ...]:
        """Store channel names the model reads, in input order (protein first)."""
        return tuple(self.dataset_info["channels"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the model's input crops."""
        return tuple(int(s) for s in self.dataset_info["image_shape"])  # type: ignore[return-value]

    @property
    def proteins(self) -> tuple[str, ...]:
        """Protein names in class order (the classifier heads' outputs)."""
        return tuple(self.dataset_info["proteins"])


def checkpoint_step(run_dir: str | Path, which: str) -> int | None:
    """The step of the complete checkpoint in run_dir/checkpoints/<which> (orbax names it after the step; a save
    in progress has another name), None when there is none. Read from the folder, not through orbax, which would
    create empty checkpoint folders in the run."""
    folder = Path(run_dir) / "checkpoints" / which
    steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
    return max(steps, default=None)


def has_checkpoint(run_dir: str | Path, which: str) -> bool:
    """True when run_dir/checkpoints/<which> holds a complete step."""
    return checkpoint_step(run_dir, which) is not None


def load_run(run_dir: str | Path, which: str = "best", random_init: bool = False) -> Run:
    """Load a run directory's model with its 'best' (default) or 'latest' checkpoint's variables; with random_init
    the run's model as training initialised it (the same key), needing no checkpoint."""
    run_dir = Path(run_dir)
    if which not in CHECKPOINTS:
        raise ValueError(f"load_run: which: expected one of {list(CHECKPOINTS)}, got {which!r}")
    config, info = load_run_config(run_dir)
    image_shape = tuple(info["image_shape"])
    model = build_model(config, image_shape, len(info["proteins"]))

    def init(key):
        return create_train_state(model, image_shape, config.train.learning_rate, key)

    if random_init:
        init_key, _ = jax.random.split(jax.random.PRNGKey(config.seed))  # the key training starts from
        state = jax.jit(init)(init_key)  # jitted: op-by-op initialisation takes ~10x longer
        return Run(run_dir, config, info, model, {"params": state.params, **state.model_state}, 0, "random-init")
    if not has_checkpoint(run_dir, which):
        other = "best" if which == "latest" else "latest"
        raise RunError(f"{run_dir / 'checkpoints' / which}: no complete '{which}' checkpoint: train first, load "
                       f"the '{other}' one (--which {other}), or evaluate the untrained model with --random_init")
    checkpointer = Checkpointer(run_dir)
    try:
        state, _ = checkpointer.restore(which, jax.eval_shape(init, jax.random.PRNGKey(0)))
    finally:
        checkpointer.close()
    return Run(run_dir, config, info, model, {"params": state.params, **state.model_state}, int(state.step), which)
