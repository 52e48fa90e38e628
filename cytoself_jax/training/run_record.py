"""The record of a run directory, kept true across resumes: which settings trained which epochs, which store the
run learns from, and the checks that refuse a resume that would not continue the same run.

- config.json: the settings of the run's latest epochs (eval rebuilds the model from it);
- config_history.json (only once a resume changed a setting): one entry per range of epochs trained with the same
  settings, oldest first: {"first_epoch": 1-based, "changed": {"train.batch_size": [8, 16], ...} (from the entry
  before), "config": the full settings};
- dataset.json: the store's proteins, channels, image shape, split sizes and 'store_fingerprint'
  (cytoself_jax.data.store.fingerprint), compared on resume.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_collections

from cytoself_jax.data.store import fingerprint_changes
from cytoself_jax.jsonio import read_json
from cytoself_jax.models.cytoself import CODEBOOK_FIELD_DEFAULTS
from cytoself_jax.training.checkpoint import write_json_atomic

HISTORY_FILE = "config_history.json"
_NEW_RUN = "use another --config.workdir for a new run"

# Config fields that must not change when a run is resumed: they change the model or what it learns from, or the
# checkpoint fixes them (its learning-rate schedule continues from the saved learning rate, its best value is one
# of the monitored quantity).
RESUME_FIXED = ("model", "data.path", "data.channels", "data.split_fractions", "data.split_seed", "data.split_fold",
                "data.heldout_proteins", "data.heldout_seed", "seed", "train.learning_rate", "train.monitor")
# Switches inside those that change neither the parameters nor the results: a run may resume with them flipped,
# and a run saved before they existed has none.
RESUME_FREE = ("model.remat_decoders",)
# Fixed fields added after runs were saved: a run without the field trained with this value, so it may resume with
# the value (and only with it).
RESUME_DEFAULTS = {"data.split_fold": 0, "data.heldout_proteins": 0.0, "data.heldout_seed": 0,
                   **{f"model.{k}": v for k, v in CODEBOOK_FIELD_DEFAULTS.items()}}
_MISSING = "(absent)"


def flat_settings(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
    """{'train.batch_size': 8, 'model.vq_local.num_codes': 32, ...}: every leaf of a config as JSON values."""
    tree = json.loads(config.to_json()) if isinstance(config, ml_collections.ConfigDict) else config
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = node

    walk(tree, "")
    return out


def settings_diff(before: ml_collections.ConfigDict | dict, after: ml_collections.ConfigDict | dict) -> dict:
    """{'train.batch_size': [8, 16], ...}: the fields whose values differ ('(absent)' where one side lacks it)."""
    a, b = flat_settings(before), flat_settings(after)
    return {k: [a.get(k, _MISSING), b.get(k, _MISSING)] for k in sorted(a.keys() | b.keys())
            if a.get(k, _MISSING) != b.get(k, _MISSING)}


def _short(value: Any, width: int = 40) -> str:
    text = json.dumps(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def describe_diff(diff: dict, most: int = 3) -> str:
    """'train.batch_size 8 -> 16, seed 0 -> 1 (and 2 more)': at most `most` fields, values shortened."""
    parts = [f"{k} {_short(a)} -> {_short(b)}" for k, (a, b) in list(diff.items())[:most]]
    more = f" (and {len(diff) - most} more)" if len(diff) > most else ""
    return ", ".join(parts) + more


def check_resumable(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict, run_dir: Path) -> None:
    """Refuse (ValueError, one line naming the differing fields) a resume whose config changes a RESUME_FIXED
    field of the run's config.json."""
    diff = {k: v for k, v in settings_diff(saved, config).items()
            if k.startswith(tuple(f + "." for f in RESUME_FIXED) + RESUME_FIXED) and k not in RESUME_FREE
            and not _default_when_absent(k, v)}
    if diff:
        # A changed default (not an override) differs too: name the flags that give the run its own values back
        flags = " ".join(f"--config.{k}={a}" for k, (a, _) in diff.items()
                         if isinstance(a, (str, int, float, bool)) and a != _MISSING)
        restore = f"drop these overrides or pass the run's own values ({flags})" if flags else "drop these overrides"
        raise ValueError(f"{Path(run_dir) / 'config.json'}: a run resumes only with the model, data and seed it "
                         f"started with; changed: {describe_diff(diff)}; {restore} to resume, or {_NEW_RUN}")


def _default_when_absent(key: str, values: list) -> bool:
    """Whether a difference is only a field absent on one side (a run saved before it existed) and its default on
    the other."""
    a, b = values
    return key in RESUME_DEFAULTS and _MISSING in (a, b) and (b if a == _MISSING else a) == RESUME_DEFAULTS[key]


def check_same_store(run_dir: Path, now: dict) -> None:
    """Refuse (ValueError, one line saying what changed) a resume on a store whose fingerprint differs from the
    one dataset.json recorded. A run recorded before fingerprints existed is not checked."""
    path = Path(run_dir) / "dataset.json"
    if not path.is_file():
        return
    saved = read_json(path, f"restore it from a copy of the run, or {_NEW_RUN}").get("store_fingerprint")
    changes = fingerprint_changes(saved, now) if saved else []
    if changes:
        raise ValueError(f"{path}: store_fingerprint: the store changed since this run started ({'; '.join(changes)} "
                         f"differ); resume with the store it was trained on, or {_NEW_RUN}")


def check_run_dir(run_dir: Path) -> None:
    """Refuse (NotADirectoryError, one line) a run directory, or a folder the run writes into, that is a file,
    before any work starts."""
    run_dir = Path(run_dir)
    checkpoints = run_dir / "checkpoints"
    for path in (run_dir, checkpoints, checkpoints / "latest", checkpoints / "best"):
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(f"{path}: expected a folder for the run, found a file; move the file away or set "
                                     "--config.workdir to another folder")


def record_run(run_dir: Path, config: ml_collections.ConfigDict, dataset_info: dict, completed_epochs: int) -> None:
    """Write config.json and dataset.json for a run about to train epoch completed_epochs + 1, keeping
    config_history.json true: entries of epochs that will be trained again are dropped, and settings that differ
    from those of the epochs kept start a new entry (config.workdir, the run's place, is no setting)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    action = f"restore it from a copy of the run, or {_NEW_RUN}"
    new = json.loads(config.to_json())
    history_path = run_dir / HISTORY_FILE
    if history_path.is_file():
        history = read_json(history_path, action)
    elif completed_epochs and (run_dir / "config.json").is_file():
        history = [{"first_epoch": 1, "changed": {}, "config": read_json(run_dir / "config.json", action)}]
    else:
        history = []
    history = [entry for entry in history if entry["first_epoch"] <= completed_epochs]  # epochs that are kept
    changed = settings_diff(history[-1]["config"], new) if history else {}
    changed.pop("workdir", None)  # where the run is (a moved run), not how it is trained
    if changed:
        history.append({"first_epoch": completed_epochs + 1, "changed": changed, "config": new})
    write_json_atomic(run_dir / "config.json", new)
    write_json_atomic(run_dir / "dataset.json", dataset_info)
    if len(history) > 1:
        write_json_atomic(history_path, history)
    elif history_path.is_file():  # the changed epochs are trained again with the first settings
        history_path.unlink()
