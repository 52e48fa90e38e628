"""One evaluation of a training run: embeddings, scores, tables and pictures of a split, in one output folder.

run_eval(run_dir, EvalOptions(...)) checks everything it can before any heavy work (run directory, checkpoint,
store compatibility, options, output folder), embeds the split once, then runs the evaluators
(analysis/evaluators/, in registry order) into a temporary sibling folder renamed into place at the end
(analysis/outdir.py), so a failed or interrupted evaluation never leaves a partial output folder, and replaces
only a folder an earlier evaluation wrote. With by_field=False it embeds every crop of any compatible store,
without splits (the embed command). See eval.py for the command line.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cytoself_jax.analysis import complexes, outdir
from cytoself_jax.analysis.common import safe_name
from cytoself_jax.analysis.context import EvalContext, largest
from cytoself_jax.analysis.embed import Spill, extract
from cytoself_jax.analysis.evaluators import REGISTRY
from cytoself_jax.analysis.evaluators.reconstructions import EXAMPLES, example_rows
from cytoself_jax.analysis.options import EvalError, EvalOptions, check_options
from cytoself_jax.analysis.summary import metrics_markdown
from cytoself_jax.data.pixels import PixelReport, usable_rows
from cytoself_jax.data.splits import SplitError, class_ids, empty_split_message, splits_for_config
from cytoself_jax.data.store import META_FILE, CropStore, fingerprint, open_store
from cytoself_jax.imaging.fit import Fit, FitError, fit_for
from cytoself_jax.memory import anonymous_rss_mib, peak_rss_mib
from cytoself_jax.provenance import code_identity
from cytoself_jax.staging import staged_writes
from cytoself_jax.run import checkpoint_step, has_checkpoint, load_run, load_run_config

PASS_FOLDER = ".pass"  # inside the staging folder: a large pass's memory-mapped arrays (Spill), removed before commit

__all__ = ["EvalError", "EvalOptions", "EvalResult", "default_out_dir", "eval_command", "evaluation_identity",
           "run_eval"]


@dataclasses.dataclass
class EvalResult:
    out_dir: Path
    metrics: dict
    reused: bool = False  # the output folder already held this evaluation (same code, checkpoint, store, options)


# ---------------------------------------------------------------------------------------------------- checks


def _check_checkpoint(run_dir: Path, which: str) -> None:
    if not has_checkpoint(run_dir, which):
        other = "--which best" if which == "latest" else "--which latest"
        raise EvalError(f"{run_dir / 'checkpoints' / which}: no complete '{which}' checkpoint: train first, evaluate "
                        f"the other checkpoint with {other}, or pass --random_init")


def _open_compatible_store(path: Path, run_dir: Path, info: dict, fit: str = "") -> tuple[CropStore, Fit | None]:
    """The store and the Fit its crops need (None when they have the run's size)."""
    store = open_store(path)
    channels = list(info["channels"])
    missing = [c for c in channels if c not in store.channels]
    if missing:
        raise EvalError(f"{path / META_FILE}: channels: the run {run_dir} was trained on {channels}, the store has "
                        f"{list(store.channels)} (incompatible checkpoint)")
    try:
        return store, fit_for(store.image_shape[:2], info["image_shape"][:2], fit, f"{path / META_FILE}",
                              f"the run {run_dir}")
    except FitError as e:
        raise EvalError(str(e)) from None


def _check_names(o: EvalOptions, proteins: np.ndarray, families: np.ndarray) -> None:
    """Proteins, the interpreted protein and the family named in the options exist in the split."""
    present = set(proteins)
    for name in (*o.proteins, *([o.interpret] if o.interpret else [])):
        if name not in present:
            raise EvalError(f"--proteins/--interpret: protein {name!r} has no crop in the {o.split} split "
                            f"(e.g. {sorted(present)[:5]})")
    if o.family and o.family not in set(families):
        raise EvalError(f"--family: no crop of the {o.split} split has family {o.family!r}; families: "
                        f"{largest(families)}")


def default_out_dir(run_dir: Path, options: EvalOptions, run_store: str | Path = "") -> Path:
    """RUN_DIR/eval/<split> (best checkpoint), <split>-latest (latest) or <split>-random-init (untrained floor);
    for another store than the run's own (`run_store`), <split>...-<store name>; without splits (by_field=False),
    RUN_DIR/embed/<store name>[-latest|-random-init] (a store named 'store', as prepare writes OUT/store, is named
    after its parent). A folder named after the data never holds the run's own eval."""
    suffix = "-random-init" if options.random_init else ("-latest" if options.which == "latest" else "")
    data = Path(options.data or run_store).absolute()
    name = safe_name(data.parent.name if data.name == "store" else data.name)  # prepare writes OUT/store
    if not options.by_field:
        return Path(run_dir) / "embed" / (name + suffix)
    other = options.data and Path(options.data).resolve() != Path(run_store or options.data).resolve()
    return Path(run_dir) / "eval" / (options.split + suffix + (f"-{name}" if other else ""))


def _splits(o: EvalOptions, config, store: CropStore, store_path: Path, run_dir: Path
            ) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """The run's split of this store by field and the proteins it held out of training (({}, ()) without
    splits: by_field=False)."""
    if not o.by_field:
        return {}, ()
    try:
        with warnings.catch_warnings():  # single-field proteins are training's concern, said there
            warnings.simplefilter("ignore")
            run_splits = splits_for_config(store.table, config, where=str(store_path / "crops.csv"),
                                           allow_single_field=True if o.split == "all" else None)
            return run_splits.splits, run_splits.heldout_proteins
    except SplitError as e:
        raise EvalError(f"{e}; to embed every crop of a store without splits (new data, any number of fields), "
                        f"run python -m cytoself_jax.embed --ckpt {run_dir} --data {store_path}") from None


# ---------------------------------------------------------------------------------------------------- reuse


def evaluation_identity(o: EvalOptions, run_dir: Path, store: CropStore) -> dict:
    """What an evaluation's outputs depend on: the code (package source and library versions), the options (not
    where they go, how progress shows or where the pass is held), the checkpoint (step and the time its folder was
    written: a new run in the same folder differs), the store's fingerprint and the complexes table's bytes.
    Recorded in the output's marker."""
    options = {k: v for k, v in dataclasses.asdict(o).items()
               if k not in ("out", "progress", "force", "pass_memory_mib")}
    options["proteins"], options["evaluators"] = list(o.proteins), list(o.evaluators)
    checkpoint: Any = "random-init"
    if not o.random_init:
        step = checkpoint_step(run_dir, o.which)
        checkpoint = {"which": o.which, "step": step,
                      "written_ns": (run_dir / "checkpoints" / o.which / str(step)).stat().st_mtime_ns}
    complexes_sha = hashlib.sha256(Path(o.complexes).read_bytes()).hexdigest() if o.complexes else ""
    return {"run_dir": str(run_dir.absolute()), "checkpoint": checkpoint, "options": options,
            "store": fingerprint(store), "complexes_sha256": complexes_sha, "code": code_identity()}


def _already_evaluated(out: Path, identity: dict) -> dict | None:
    """The metrics of `out` when its marker records this very evaluation and every file it lists is still there
    (a deleted picture is written again); None otherwise."""
    marker = outdir.read_marker(out)
    if marker.get("evaluation") != json.loads(json.dumps(identity)):  # through JSON: tuples become lists
        return None
    if not all((out / name).is_file() for name in marker.get("files", ())):
        return None
    try:
        metrics = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) and "run" in metrics else None


# ---------------------------------------------------------------------------------------------------- main


def run_eval(run_dir: str | Path, options: EvalOptions = EvalOptions()) -> EvalResult:
    """Evaluate a run on a split and write its outputs (see README "Outputs"); returns (out_dir, metrics)."""
    o = dataclasses.replace(options, proteins=tuple(options.proteins), evaluators=tuple(options.evaluators))
    run_dir = Path(run_dir)
    check_options(o, tuple(REGISTRY))
    if o.complexes:
        complexes.read_complexes(o.complexes)  # a bad file fails now, not after the embedding
    config, info = load_run_config(run_dir)
    if not o.random_init:
        _check_checkpoint(run_dir, o.which)
    store_path = Path(o.data or info["store"])
    store, fit = _open_compatible_store(store_path, run_dir, info, o.fit)
    splits, heldout = _splits(o, config, store, store_path, run_dir)
    rows = np.arange(len(store)) if o.split == "all" else splits[o.split]
    rows, splits, skipped = _usable(o, store, rows, splits)
    if len(rows) < 3:
        raise EvalError(empty_split_message(store.table, splits, o.split, str(store_path), minimum=3))
    table = store.table.iloc[rows].reset_index(drop=True)
    proteins, families = table["protein"].to_numpy(), table["family"].to_numpy()
    _check_names(o, proteins, families)
    out = Path(o.out) if o.out else default_out_dir(run_dir, o, info["store"])
    command = "eval" if o.by_field else "embed"
    try:
        outdir.check_replaceable(out, command)
    except outdir.OutputFolderError as e:
        raise EvalError(str(e)) from None
    identity = evaluation_identity(o, run_dir, store)
    done = None if o.force else _already_evaluated(out, identity)
    if done is not None:  # the same command run again (the README's first one): seconds, not minutes
        return EvalResult(out_dir=out, metrics=done, reused=True)

    run = load_run(run_dir, o.which, random_init=o.random_init)
    classes = class_ids(proteins, run.proteins)  # -1: a protein the run was not trained on
    tmp = outdir.staging_folder(out, command, {"run_dir": str(run_dir), "store": str(store_path), "split": o.split,
                                               "checkpoint": run.checkpoint, "evaluation": identity})
    # a failed write (full disk, permission) or Ctrl-C/SIGTERM removes tmp: the output appears complete or not at all
    with staged_writes(tmp, out):
        examples = example_rows(proteins, families, EXAMPLES, o.seed)
        config_batch = o.batch_size or config.train.eval_batch_size
        started = time.perf_counter()
        outputs = extract(run.model, run.variables, store, rows, full=True, reconstruct=examples, labels=classes,
                          desc=f"{o.split} crops", channels=run.channels, batch_size=config_batch,
                          num_workers=config.data.num_workers, prefetch=config.data.prefetch, progress=o.progress,
                          fit=fit, spill=Spill(tmp / PASS_FOLDER, o.pass_memory_mib * 2**20, out))
        ctx = EvalContext(options=o, out=tmp, run=run, store=store, store_path=store_path, fit=fit, rows=rows,
                          table=table, outputs=outputs, examples=examples, class_ids=classes, splits=splits,
                          heldout=heldout)
        embed_seconds, embed_rss, embed_anon = time.perf_counter() - started, peak_rss_mib(), anonymous_rss_mib()
        metrics = _run_evaluators(ctx)
        if outputs.on_disk is not None:
            metrics["notes"].append(f"the pass's per-crop arrays ({_gib(outputs.on_disk)}) were held in memory-mapped "
                                    f"files, not in memory (larger than pass_memory_mib = {o.pass_memory_mib})")
            shutil.rmtree(outputs.on_disk)  # not an output (embeddings.h5ad holds the embedding)
        metrics["seconds"] = {"embed": round(embed_seconds, 2), **metrics["seconds"]}
        metrics["peak_rss_mib"] = {"embed": embed_rss, **metrics["peak_rss_mib"]}
        metrics["anonymous_rss_mib"] = {"embed": embed_anon, **metrics["anonymous_rss_mib"]}
        metrics["run"] = {"run_dir": str(run_dir), "checkpoint": run.checkpoint if o.random_init else o.which,
                          "step": int(run.step), "random_init": o.random_init, "store": str(store_path),
                          "split": o.split, "crops": int(len(rows)), "proteins": int(len(set(proteins))),
                          "families": len(largest(families)), "fit": o.fit if fit is not None else "",
                          "heldout_proteins": list(heldout), "code": identity["code"]}
        if o.skip_bad_crops:
            metrics["run"]["skipped_crops"] = skipped.summary()
            metrics["notes"].append(skipped_note(skipped))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        (tmp / "metrics.md").write_text(metrics_markdown(metrics))
        outdir.commit(tmp, out, command)
    return EvalResult(out_dir=out, metrics=metrics)


def _gib(folder: Path) -> str:
    return f"{sum(p.stat().st_size for p in folder.iterdir()) / 2**30:.2f} GiB"


def _usable(o: EvalOptions, store: CropStore, rows: np.ndarray, splits: dict[str, np.ndarray]
            ) -> tuple[np.ndarray, dict[str, np.ndarray], PixelReport]:
    """The evaluated rows and the splits without the store's bad crops (NaN/inf pixel, blank protein channel):
    a store holding any is refused in one line unless o.skip_bad_crops, which leaves them out (the pixel scan
    runs once per version of the store: data/pixels.py)."""
    hint = "--skip_bad_crops" if o.by_field else "--skip-bad-crops"
    every = np.arange(len(store))
    _, found = usable_rows(store, every, skip=o.skip_bad_crops, skip_hint=hint, progress=o.progress)
    if not found.bad.size:
        return rows, splits, found
    keep = {name: split[~np.isin(split, found.bad)] for name, split in splits.items()}
    return rows[~np.isin(rows, found.bad)], keep, found.within(rows)


def skipped_note(skipped: PixelReport) -> str:
    """The note of metrics.json/md on evaluated crops left out by --skip_bad_crops."""
    return (f"bad crops left out (skip_bad_crops): {skipped.bad.size} of the evaluated crops, "
            f"{skipped.non_finite.size} with a NaN/inf pixel and {skipped.blank.size} with a blank protein channel"
            + (f" ({skipped.describe()})" if skipped.bad.size else ""))


def _run_evaluators(ctx: EvalContext) -> dict:
    """Run the chosen evaluators in registry order; metrics.json's content: scores (key -> record, in order),
    each evaluator's details, notes, which evaluators ran, each one's wall time (seconds) and the process's peak
    resident memory after it (peak_rss_mib: the peak so far, so a stage that raised it shows its own peak; it counts
    the pages of the memory-mapped store read so far) and its anonymous resident memory then (anonymous_rss_mib:
    the arrays it holds, without mapped files; Linux)."""
    chosen = [name for name in REGISTRY if not ctx.options.evaluators or name in ctx.options.evaluators]
    metrics: dict[str, Any] = {"scores": {}, "notes": [], "evaluators": chosen, "seconds": {}, "peak_rss_mib": {},
                               "anonymous_rss_mib": {}}
    for name in chosen:
        started = time.perf_counter()
        result = REGISTRY[name](ctx)
        metrics["seconds"][name] = round(time.perf_counter() - started, 2)  # where an eval's time goes
        for score in result.scores:
            metrics["scores"][score.key] = score.to_json()
        metrics.update(result.details)
        metrics["notes"].extend(result.notes)
        metrics["peak_rss_mib"][name] = peak_rss_mib()
        metrics["anonymous_rss_mib"][name] = anonymous_rss_mib()
    if ctx.umap_note():
        metrics["notes"].append(ctx.umap_note())
    return metrics


def eval_command(run_dir: str | Path, options: EvalOptions) -> int:
    """eval.py's and the embed command's run: the summary on stdout and status 0, or one line on stderr: status 2
    for unusable input (run, checkpoint, store, option, output folder), 1 for a failed write, 130/143 for Ctrl-C and
    SIGTERM (command.run_command; the output folder is written whole or not at all)."""
    from cytoself_jax.analysis.summary import result_text
    from cytoself_jax.command import run_command

    def body() -> int:
        try:
            result = run_eval(run_dir, options)
        except (ValueError, FileNotFoundError) as err:  # EvalError, StoreError, RunError, ...: one line each
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(result_text(result))
        return 0

    return run_command(body, kept=lambda: "no output was written")
