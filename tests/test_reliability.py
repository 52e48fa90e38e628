"""Reliability: a killed training resumes to the same parameters, half-written checkpoints are never used, a
non-finite loss keeps the last good checkpoint, codebook collapse is reported, runs are deterministic, and every
bad input ends with one clear line and leaves nothing behind.

Faults tried (besides BAD_INPUTS and the command-line cases below), with the message each gives and what is kept:

| fault | message (one line) | kept |
|---|---|---|
| SIGKILL mid-save, mid-epoch | (none: killed) | last complete checkpoint; resume = uninterrupted run |
| SIGTERM mid-epoch | terminated (SIGTERM): the latest complete checkpoint is in epoch 1, after 16 of its crops (step 2): continue with --resume | 'latest' saved at the next step boundary (status 143); resume = uninterrupted run |
| SIGTERM mid-save | terminated (SIGTERM): the latest complete checkpoint is epoch 1 (step 4): continue with --resume | the save in progress completes (status 143) |
| killed after a mid-epoch checkpoint (train.checkpoint_every_steps) | (none: killed) | that checkpoint; resume = uninterrupted run |
| full disk during epoch 2 (file size limit on the process) | error: RUN/checkpoints/latest: saving step 8 failed (File too large [errno 27]); the run stopped and the latest complete checkpoint is epoch 1 (step 4): continue with --resume once the cause is fixed (e.g. disk space freed) | epoch-1 checkpoints; resume = uninterrupted run |
| full disk while logging metrics (/dev/full) | MetricsLog: [Errno 28] No space left on device: 'RUN/metrics.jsonl'; train.py: error: RUN/metrics.jsonl: No space left on device; the run stopped and the latest complete checkpoint is ... | checkpoints |
| store regenerated / pixels / proteins changed, then --resume | RUN/dataset.json: store_fingerprint: the store changed since this run started (pixels (crops.npy) differ); resume with the store it was trained on, or use another --config.workdir for a new run | run untouched |
| --resume with another model, seed, learning rate | RUN/config.json: a run resumes only with the model, data and seed it started with; changed: model.vq_local.num_codes 32 -> 64, seed 0 -> 1 (and 1 more); drop these overrides or pass the run's own values (--config.seed=0 ...) to resume, or ... | run untouched |
| --resume with other batch size, loss weights, epochs | (accepted) | config_history.json: epochs 1-2 and 3- with their settings; config.json = latest |
| latest checkpoint corrupted | warning: RUN/checkpoints/latest/8: unreadable checkpoint (ValueError: ...); resuming from the best checkpoint (epoch 2, step 8) instead; the unreadable one was moved to RUN/checkpoints/unreadable/latest-8 | damaged files set aside |
| latest and best corrupted | RUN/checkpoints/latest/8: unreadable checkpoint (...); RUN/checkpoints/best/8: unreadable checkpoint (...); no intact checkpoint to resume from: move RUN/checkpoints aside to start the run over, or use another --config.workdir | everything |
| partial last line of metrics.jsonl | warning: RUN/metrics.jsonl: line 11 is incomplete (the run stopped while writing it); ignored | every complete record |
| damaged middle line of metrics.jsonl | read_metrics: RUN/metrics.jsonl: line 3: not valid JSON (Expecting property name ...) | file untouched |
| truncated config.json / dataset.json | RUN/config.json: not valid JSON (line 40 column 5: ...; truncated or edited?); restore it from a copy of the run, or train a new run with another --config.workdir | run untouched |
| workdir or RUN/checkpoints is a file | RUN/checkpoints: expected a folder for the run, found a file; move the file away or set --config.workdir to another folder | the file |
| demo config, data.path mistyped | TYPO: store: no crop store here, and this config draws its synthetic cells only into DEMO (config.data.synthetic.path): check --config.data.path, or set --config.data.synthetic.path=TYPO to draw them there | nothing created |
| demo config, data.path = an existing non-store folder | DIR: store: the folder exists but holds no crop store, and synthetic cells are only drawn into a new folder: move it away, or set --config.data.path to a crop store | the folder |
| protein names 'P0' / ' P0' / 'P0 ' | warning: crops.csv: protein: stripped the surrounding whitespace of 2 value(s) (row 0: ' P0'), so that equal names are one class | one class P0 |
| prepare: blank or NaN protein crops | (dropped; rejected.csv reasons 'blank', 'non_finite'; fields.csv rejected_blank, rejected_non_finite) | every usable crop |
| prepare: same protein and nucleus channel | --protein-channel/--nucleus-channel: expected two different channels, found 1 for both; give the nuclear stain's channel index | nothing written |
| prepare: a finite 1e39 pixel | FILE: FieldError: protein channel: values up to 1e+39 exceed the float32 range of the store (max 3.4e+38); rescale the images | other fields |
| eval: no best checkpoint | RUN/checkpoints/best: no complete 'best' checkpoint: train first, evaluate the other checkpoint with --which latest, or pass --random_init | |

Every command, not only training (issue 26): command | fault or bad input | message (one line) | kept

| command | fault or bad input | message | kept |
|---|---|---|---|
| embed, eval, embed_store, embed_images | a NaN pixel (row 5) and a blank protein channel (row 7) | error: STORE/crops.npy: pixels: expected finite values and a protein channel that is not constant, found 2 bad crop(s): row 5 (NaN/inf; protein P0, fov P0/0), row 7 (constant protein channel; protein P0, fov P0/0); remove them from the store (e.g. re-import without them), or pass --skip-bad-crops to leave them out (eval: --skip_bad_crops; API: skip_bad_crops=True; arrays: 'embed_images: images: pixels: ... crop 5 (NaN/inf), crop 7 (constant protein channel); pass skip_bad_crops=True to leave them out') | nothing written (exit 2) |
| embed --skip-bad-crops | the same store | (accepted) metrics.json run.skipped_crops {"non_finite": 1, "blank": 1, "first_rows": [5, 7]} and the note 'bad crops left out (skip_bad_crops): 2 of the evaluated crops, 1 with a NaN/inf pixel and 1 with a blank protein channel (row 5 (NaN/inf), row 7 (constant protein channel))' | every good crop embedded |
| any reader | the same store again | (the scan's record, pixels-checked.json or ~/.cache/cytoself_jax/pixels for a read-only store, keyed by the store's fingerprint and crops.npy's size and mtime: no second scan) | |
| embed, eval | disk full writing the output (metrics.md) | error: OUT/metrics.md: No space left on device [errno 28]; nothing was kept: OUT was not created (the partial output was removed) | no OUT; an earlier OUT: 'OUT keeps its earlier content, unchanged (the partial output was removed)' (exit 1) |
| embed (eval alike) | SIGTERM while writing | terminated (SIGTERM): nothing was kept: OUT was not created (the partial output was removed) | no OUT, no staging folder (exit 143) |
| import_crops | disk full writing crops.csv | error: OUT/crops.csv: No space left on device [errno 28]; nothing was kept: OUT was not created (the partial output was removed) | no OUT (exit 1) |
| import_crops, make_synthetic | no room for crops.npy | error: OUT: No space left on device [errno 28]: needs 16.4 kB, 0 B free; nothing was kept: OUT was not created (the partial output was removed) | no OUT (checked before the memory-mapped write, which would end in SIGBUS) |
| import_crops | permission denied (or a read-only folder, chmod; skipped as root) | error: OUT: Permission denied [errno 13]; nothing was kept: OUT was not created (the partial output was removed) | the folder as it was |
| import_crops --overwrite | disk full writing store.json | error: OUT/store.json: No space left on device [errno 28]; OUT keeps its earlier content, unchanged (the partial output was removed) | the earlier store, byte for byte |
| import_crops | Ctrl-C while writing | interrupted: nothing was kept: OUT was not created (the partial output was removed) | no OUT (exit 130) |
| prepare | disk full writing a field's work file | error: OUT/work/P0_f1-<hash>.npz: No space left on device [errno 28]; finished fields are kept in OUT/work; rerun the same command to resume | finished work files; no store, no qc, no partial file (exit 1) |
| prepare | SIGTERM while processing fields | terminated (SIGTERM): finished fields are kept in OUT/work; rerun the same command to resume | OUT/work only (exit 143) |
| any writer | a staging folder of a killed process (.OUT.tmp-PID with the writer's marker, process gone) | (removed by the next write beside it; a folder without the marker is never touched) | |
| load_run (eval, embed, train --resume) | any file of a checkpoint cut short or garbled | one line, 'RUN/checkpoints/best/STEP: unreadable checkpoint (...)', or none where orbax does not need the file; nothing else on stderr: orbax's thread logs and tensorstore's 'Event loop is closed' reports are captured | |
"""

import dataclasses
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pandas as pd
import pytest
from conftest import nan_training_batches, tiny_config

from cytoself_jax.data import store as store_lib
from cytoself_jax.data.pipeline import make_dataset
from cytoself_jax.data.splits import SplitError, split_by_field
from cytoself_jax import staging as staging_lib
from cytoself_jax.data import pixels as pixels_lib
from cytoself_jax.data.pixels import PIXEL_CHECK_FILE, verify_pixels
from cytoself_jax.data.store import StoreError, open_store, write_store
from cytoself_jax.curves import CurvesError, read_metrics
from cytoself_jax.analysis.report import EvalError, _check_checkpoint
from cytoself_jax.jsonio import JsonFileError
from cytoself_jax import mesh as mesh_lib
from cytoself_jax.training.checkpoint import CheckpointError, Checkpointer, RunLock, describe_latest
from cytoself_jax.training.loop import NonFiniteLossError, codebook_warnings, evaluate, train
from cytoself_jax.training.run_record import HISTORY_FILE, record_run
from cytoself_jax.training.signals import DeferredSigterm, Terminated, raise_terminated
from cytoself_jax.program_cache import cached_program
from cytoself_jax.training.programs import eval_step_program, program_inputs

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests" / "configs" / "tiny.py"
STEPS_PER_EPOCH = 4  # tiny store: 32 training crops (one field of each of 4 proteins), batch 8
FLOOR = 1.5  # config.train.min_codebook_perplexity of these runs (changes no number, only warnings)


def _config(run_dir: Path, store: Path):
    config = tiny_config(run_dir, store)
    config.train.min_codebook_perplexity = FLOOR
    config.train.select_from_epoch = 1  # both epochs may be the best: these runs have a 'best' checkpoint
    return config


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_store_path):
    """An uninterrupted 2-epoch run of the tiny config, in this process."""
    return train(_config(tmp_path_factory.mktemp("reference") / "run", tiny_store_path), progress=False)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _numbers(records: list[dict]) -> list[dict]:
    """Records without their timing, the only field allowed to differ between identical runs."""
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in records]


# ---------------------------------------------------------------------------------------------- kill and resume

def _train_cmd(run_dir: Path, store: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), f"--config={TINY_CONFIG}", f"--config.workdir={run_dir}",
            f"--config.data.path={store}", f"--config.train.min_codebook_perplexity={FLOOR}",
            "--config.train.select_from_epoch=1", *extra]


def _env() -> dict:
    # Same devices (XLA_FLAGS from conftest) and the same compilation cache: the subprocess loads the programs
    # this process compiled instead of compiling them again.
    return {**os.environ, "CYTOSELF_JAX_CACHE": jax.config.jax_compilation_cache_dir or "off"}


def _as_from_a_shell() -> None:
    """In the child before exec: Ctrl-C and SIGTERM at their defaults and unblocked, as a shell starts a command,
    whatever the test process (a pytest-xdist worker, libraries' threads) ignores or blocks; the command's own
    handling is what these tests check."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def _act_when(cmd: list[str], condition, action, log: Path, timeout: float = 120.0) -> int:
    """Run cmd, call action(process) as soon as condition() holds (polled every millisecond or so), wait for the
    process to end; returns its exit status."""
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=_as_from_a_shell)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if condition():
                action(proc)
                break
            time.sleep(0.001)
        else:
            proc.kill()
            proc.wait()
            pytest.fail(f"the run ended (rc={proc.returncode}) before the fault:\n{log.read_text()[-3000:]}")
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"the run did not stop after the fault:\n{log.read_text()[-3000:]}")


def _kill_when(cmd: list[str], condition, log: Path, timeout: float = 120.0) -> None:
    """Run cmd and SIGKILL it as soon as condition() holds."""
    assert _act_when(cmd, condition, lambda proc: proc.send_signal(signal.SIGKILL), log, timeout) == -signal.SIGKILL


def _tmp_dirs(run_dir: Path) -> list[Path]:
    return [p for p in (run_dir / "checkpoints").glob("*/*") if "orbax-checkpoint-tmp" in p.name]


def _step_dirs(run_dir: Path, which: str) -> list[int]:
    folder = run_dir / "checkpoints" / which
    return [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []


def _restore(run_dir: Path, target):
    checkpointer = Checkpointer(run_dir)
    try:
        return checkpointer.restore("latest", target)
    finally:
        checkpointer.close()


def _saved_steps(run_dir: Path) -> tuple[int | None, int | None]:
    """Steps of the complete 'latest' and 'best' checkpoints."""
    checkpointer = Checkpointer(run_dir)
    try:
        return checkpointer.step("latest"), checkpointer.step("best")
    finally:
        checkpointer.close()


def _assert_like_the_reference(run: Path, reference, exact: bool = False) -> None:
    """The run's latest checkpoint (parameters within 1e-6, or the whole state bit for bit when exact; loop state),
    its checkpoints' steps and its metrics log are those of the uninterrupted reference run (timings aside)."""
    state, loop = _restore(run, reference.state)
    assert int(state.step) == int(reference.state.step) == 2 * STEPS_PER_EPOCH
    if exact:
        chex.assert_trees_all_equal(jax.device_get(state), jax.device_get(reference.state))
    else:
        chex.assert_trees_all_close(jax.device_get(state.params), jax.device_get(reference.state.params), atol=1e-6)
    assert dataclasses.replace(loop, stop_reason="") == dataclasses.replace(reference.loop, stop_reason="")
    assert _saved_steps(run) == _saved_steps(reference.run_dir)
    # the metrics log reads as if the run had never been interrupted: every step once, same numbers
    got, want = _numbers(_records(run)), _numbers(_records(reference.run_dir))
    assert [(r["kind"], r["epoch"], r["step"]) for r in got] == [(r["kind"], r["epoch"], r["step"]) for r in want]
    for a, b in zip(got, want):
        np.testing.assert_allclose([v for v in a.values() if isinstance(v, float)],
                                   [v for v in b.values() if isinstance(v, float)], rtol=1e-5)


def _text(path: Path) -> str:
    """The file's text; '' while it does not exist."""
    return path.read_text() if path.exists() else ""


def _in_epoch_2(run_dir: Path) -> bool:
    return bool(_step_dirs(run_dir, "latest")) and '"kind": "step", "epoch": 1,' in _text(run_dir / "metrics.jsonl")


def test_killed_training_resumes_to_the_uninterrupted_parameters(tmp_path, tiny_store_path, reference):
    run = tmp_path / "run"
    cmd = _train_cmd(run, tiny_store_path)
    # 1. killed while orbax writes the first checkpoint (into a temporary folder, renamed when complete)
    _kill_when(cmd, lambda: bool(_tmp_dirs(run)), tmp_path / "log1.txt")
    assert _tmp_dirs(run), "the kill should have caught a checkpoint half-written"
    assert _saved_steps(run)[0] in (None, STEPS_PER_EPOCH)  # never the half-written one
    # 2. resumed, then killed in the middle of epoch 2, the first checkpoint complete
    _kill_when(cmd + ["--resume"], lambda: _in_epoch_2(run), tmp_path / "log2.txt")
    assert _saved_steps(run)[0] == STEPS_PER_EPOCH
    assert not [r for r in _records(run) if r["kind"] == "epoch" and r["epoch"] == 1], "killed mid-epoch 2"
    # 3. resumed to the end
    done = subprocess.run(cmd + ["--resume"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "reached config.train.max_epochs=2" in done.stdout

    assert not _tmp_dirs(run)  # the leftovers of the killed saves were cleaned up
    _assert_like_the_reference(run, reference)


def test_sigterm_saves_at_the_next_step_or_completes_the_save_in_progress_and_resumes_exactly(
        tmp_path, tiny_store_path, reference, monkeypatch):
    """SIGTERM (a cluster preempting the job), twice. In the middle of epoch 1, the run saves 'latest' at the end
    of the step running, with its position in the epoch and not as a 'best' candidate, and train.py exits with
    status 143 and one line saying where --resume continues. Resumed, SIGTERM while the epoch's checkpoint is being
    written: that save completes before the run stops. The last resume continues at the epoch's next batch and
    ends with the uninterrupted run's state (bit for bit), checkpoints and metrics log."""
    run = tmp_path / "run"
    log = tmp_path / "log.txt"

    def sigterm(proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGTERM)

    # step 1's record is written while step 2 runs: the save comes after step 2 or 3, before the epoch's last (4)
    status = _act_when(_train_cmd(run, tiny_store_path), lambda: '"step": 1,' in _text(run / "metrics.jsonl"),
                       sigterm, log)
    assert status == 128 + signal.SIGTERM, log.read_text()[-3000:]
    step, best = _saved_steps(run)
    assert step in (2, 3) and best is None, (step, best)
    assert _last_line(log.read_text()) == (f"terminated (SIGTERM): the latest complete checkpoint is in epoch 1, "
                                           f"after {8 * step} of its crops (step {step}): continue with --resume")
    assert [(r["kind"], r["step"]) for r in _records(run)] == [("step", s) for s in range(1, step + 1)]

    # in this process, with train.py's handler: the signal arrives as orbax starts writing the epoch's checkpoint
    orbax_save = ocp.CheckpointManager.save

    def save_signalled(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return orbax_save(self, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save_signalled)
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        with pytest.raises(Terminated):
            train(_config(run, tiny_store_path), resume=True, progress=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
    monkeypatch.undo()
    assert _saved_steps(run) == (STEPS_PER_EPOCH, STEPS_PER_EPOCH) and not _tmp_dirs(run)
    assert describe_latest(run) == (f"the latest complete checkpoint is epoch 1 (step {STEPS_PER_EPOCH}): continue "
                                    "with --resume")

    train(_config(run, tiny_store_path), resume=True, progress=False)
    _assert_like_the_reference(run, reference, exact=True)


def test_a_deferred_sigterm_is_recorded_then_acted_on_with_the_handler_from_before():
    """Under DeferredSigterm, SIGTERM only sets `received`; act() restores the handler in place before (train.py's
    raises Terminated) and calls it; an ignored SIGTERM stays ignored."""
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        with DeferredSigterm() as sigterm:
            assert not sigterm.received
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)  # the handler runs between bytecodes of the main thread
            assert sigterm.received  # recorded, nothing raised
            with pytest.raises(Terminated):
                sigterm.act()
        assert signal.getsignal(signal.SIGTERM) is raise_terminated
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with DeferredSigterm() as sigterm:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
        assert not sigterm.received and signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Stopped(Exception):
    """The run stopped right after a checkpoint (a job killed without a warning)."""


def test_a_checkpoint_taken_on_the_step_interval_resumes_mid_epoch_exactly(tmp_path, tiny_store_path, reference,
                                                                           monkeypatch):
    """train.checkpoint_every_steps=3: 'latest' is saved at steps 3 and 6 (mid-epoch: after 24 and 16 crops of
    epochs 1 and 2) besides each epoch's end, and 'best' only at epoch ends; a run stopped after the step 6 save
    resumes at the next batch to the uninterrupted run's parameters (bit for bit), checkpoints and log."""
    run = tmp_path / "run"
    config = _config(run, tiny_store_path)
    config.train.checkpoint_every_steps = 3
    saves = []
    save = Checkpointer.save

    def save_then_stop(self, which, state, loop):
        save(self, which, state, loop)
        saves.append((which, int(state.step), loop.epoch, loop.epoch_crops))
        if int(state.step) == 6:
            raise _Stopped()

    monkeypatch.setattr(Checkpointer, "save", save_then_stop)
    with pytest.raises(_Stopped):
        train(config, progress=False)
    monkeypatch.undo()
    assert [s for s in saves if s[0] == "latest"] == [("latest", 3, 0, 24), ("latest", 4, 1, 0), ("latest", 6, 1, 16)]
    assert [s for s in saves if s[0] == "best"] == [("best", 4, 1, 0)]  # epoch 1, validated
    assert _saved_steps(run)[0] == 6
    assert [(r["kind"], r["step"]) for r in _records(run)][-2:] == [("step", 5), ("step", 6)]

    train(config, resume=True, progress=False)
    _assert_like_the_reference(run, reference, exact=True)


def test_a_full_disk_stops_the_run_at_once_with_the_last_checkpoint_intact(tmp_path, tiny_store_path, reference):
    """The disk fills up during epoch 2 (a 64 KiB limit on file size set on the running process: checkpoint files
    are larger, the metrics log stays smaller): the failed save is reported at once in one line, the epoch-1
    checkpoint stays whole, and a resume once there is room again ends with the uninterrupted parameters."""
    resource = pytest.importorskip("resource")
    if not hasattr(resource, "prlimit"):
        pytest.skip("resource.prlimit (Linux) is needed to fill the disk of a running process")
    run = tmp_path / "run"
    log = tmp_path / "log.txt"
    limit = 64 * 1024
    status = _act_when(_train_cmd(run, tiny_store_path), lambda: _in_epoch_2(run),
                       lambda proc: resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (limit, limit)), log)
    assert status == 1, log.read_text()[-3000:]
    text = log.read_text()
    assert "Traceback" not in text and len(text.splitlines()) < 40, text[-3000:]
    assert re.fullmatch(
        rf"error: {re.escape(str(run / 'checkpoints' / 'latest'))}: saving step {2 * STEPS_PER_EPOCH} failed "
        rf"\(File too large \[errno 27\]\); the run stopped and the latest complete checkpoint is epoch 1 \(step "
        rf"{STEPS_PER_EPOCH}\): continue with --resume once the cause is fixed \(e.g. disk space freed\)",
        text.strip().splitlines()[-1]), text[-3000:]
    assert _saved_steps(run) == (STEPS_PER_EPOCH, STEPS_PER_EPOCH)
    result = train(_config(run, tiny_store_path), resume=True, progress=False)
    chex.assert_trees_all_close(jax.device_get(result.state.params), jax.device_get(reference.state.params),
                                atol=1e-6)
    assert not _tmp_dirs(run)


# ------------------------------------------------------------------------------------------ checkpoint safety

def test_a_half_written_checkpoint_is_never_restored(tmp_path, reference):
    run = tmp_path / "run"
    shutil.copytree(reference.run_dir, run)
    # what a save killed mid-write leaves: orbax's temporary folder for a later step, never renamed
    tmp = run / "checkpoints" / "latest" / f"{3 * STEPS_PER_EPOCH}.orbax-checkpoint-tmp"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "_METADATA").write_text("{")
    assert _saved_steps(run)[0] == 2 * STEPS_PER_EPOCH
    state, _ = _restore(run, reference.state)
    chex.assert_trees_all_equal(jax.device_get(state.params), jax.device_get(reference.state.params))
    assert tmp.exists()  # readers (eval) leave it alone: it could be a live run's save in flight
    Checkpointer(run, clean_tmp=True).close()  # the training process removes it
    assert not tmp.exists()


def test_non_finite_loss_mid_run_keeps_the_last_good_checkpoint(tmp_path, tiny_store_path, reference, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(reference.run_dir, run)
    config = _config(run, tiny_store_path)
    config.train.max_epochs = 3
    nan_training_batches(monkeypatch, from_epoch=2)  # poisons the loss from the first step of epoch 3
    with pytest.raises(NonFiniteLossError, match=rf"step {2 * STEPS_PER_EPOCH + 1} \(epoch 3\): .* loss=nan, .*"
                                                 r"the latest checkpoint is the last good one"):
        train(config, resume=True, progress=False)
    assert _saved_steps(run) == (2 * STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH)
    state, loop = _restore(run, reference.state)
    assert loop.epoch == 2
    chex.assert_trees_all_equal(jax.device_get(state.params), jax.device_get(reference.state.params))
    assert [r["epoch"] for r in _records(run) if r["kind"] == "epoch"] == [0, 1]


def test_a_second_training_process_on_the_same_run_is_refused(tmp_path, tiny_store_path):
    run = tmp_path / "run"
    with RunLock(run):
        with pytest.raises(FileExistsError, match="another training process is using this run directory"):
            train(_config(run, tiny_store_path), progress=False)
    assert sorted(p.name for p in run.iterdir()) == ["train.lock"]


# ---------------------------------------------------------------------------- codebook usage and determinism

def test_evaluate_counts_dead_codes_over_the_whole_split():
    """Batch histograms summed over the split (a code used by any batch is alive), losses weighted by batch size;
    checked against numpy with a stand-in eval step."""
    rng = np.random.default_rng(0)
    sizes = [16, 16, 8]  # the last batch partial
    hists = [rng.integers(0, 3, 40) * (rng.random(40) < 0.3) for _ in sizes]  # mostly zeros, different per batch
    losses = rng.random(len(sizes))
    batches = [{"image": np.zeros((b, 2, 2, 1), np.float32), "label": np.full(b, i, np.int32)}
               for i, b in enumerate(sizes)]

    def eval_step(state, batch):
        i = int(np.asarray(batch["label"])[0])
        return {"loss": losses[i], "perplexity_local": 2.0, "codes_local": hists[i].astype(np.float32),
                "correct_local": float(sizes[i] // 2)}

    metrics = evaluate(eval_step, None, batches, mesh_lib.make_mesh())
    assert metrics["dead_codes_local"] == int(np.sum(np.sum(hists, axis=0) == 0)) > 0
    np.testing.assert_allclose(metrics["loss"], np.average(losses, weights=sizes), rtol=1e-12)
    assert metrics["accuracy_local"] == 0.5


def test_codebook_collapse_is_counted_and_warned(tiny_store_path, reference):
    config = _config("unused", tiny_store_path)
    store = open_store(tiny_store_path)
    channels = tuple(config.data.channels)
    splits = split_by_field(store.table, tuple(config.data.split_fractions), seed=config.data.split_seed)
    val = make_dataset(store, splits["val"], channels=channels, batch_size=16, train=False)
    mesh = mesh_lib.make_mesh()
    # The reference run's state and its own eval step, as the training loop makes it: both programs are the
    # reference's (kept by program_cache and the compilation cache), none is compiled for this test.
    info = json.loads((reference.run_dir / "dataset.json").read_text())
    eval_step = cached_program(eval_step_program, program_inputs(config, info), mesh)
    state = reference.state
    # every code far from the encoder's outputs but code 5: every position picks code 5, the other 31 are dead
    old = state.params["vq_local"]["codebook"]
    codebook = jax.device_put(jnp.full_like(old, 1e3).at[5].set(0.0), old.sharding)
    collapsed = state.replace(params={**state.params, "vq_local": {"codebook": codebook}})
    metrics = evaluate(eval_step, collapsed, val, mesh)
    assert metrics["dead_codes_local"] == 31
    np.testing.assert_allclose(metrics["perplexity_local"], 1.0, rtol=1e-5)
    num_codes = {"local": 32, "global": 32}
    warnings = codebook_warnings(metrics, 2.0, num_codes)
    assert ("local codebook perplexity 1.0 is below config.train.min_codebook_perplexity=2 (codebook collapse: "
            "31 of 32 codes unused over the validation split)") in warnings
    assert not codebook_warnings(metrics, 1.0, num_codes)  # a perplexity is never below 1


def test_same_config_and_seed_give_the_same_metrics(tmp_path, tiny_store_path, reference, caplog):
    with caplog.at_level("WARNING", logger="cytoself_jax"):
        again = train(_config(tmp_path / "run", tiny_store_path), progress=False)
    got, want = _numbers(_records(again.run_dir)), _numbers(_records(reference.run_dir))
    assert got == want  # bit for bit
    epochs = [r for r in got if r["kind"] == "epoch"]
    # per epoch each codebook's dead codes and perplexity over the validation split, per step the batch's (issue 27)
    for r in epochs:
        for level in ("local", "global"):
            assert 0 <= r[f"val_dead_codes_{level}"] < 32 and 1.0 <= r[f"val_perplexity_{level}"] <= 32 + 1e-3
    assert all({"perplexity_local", "perplexity_global"} <= set(r) for r in got if r["kind"] == "step")
    # the loop warns exactly for the epochs and codebooks whose logged perplexity is below the floor
    warned = {(int(m.group(1)), m.group(2)) for m in
              (re.match(r"epoch (\d+): (local|global) codebook perplexity", r.getMessage()) for r in caplog.records) if m}
    expected = {(r["epoch"] + 1, level) for r in epochs for level in ("local", "global")
                if r[f"val_perplexity_{level}"] < FLOOR}
    assert warned == expected


# ---------------------------------------------------------------------------------------------- bad input

CHANNELS = ("protein", "nucleus", "distance")


def _crops(proteins: int = 3, fields: int = 3, per_field: int = 4, size: int = 16, seed: int = 0):
    """Random crops (N, size, size, 3) and their table: each protein has `fields` fields of `per_field` crops."""
    rows = [{"protein": f"P{p}", "fov": f"P{p}/{f}", "source": f"P{p}/f{f}_{i}.tif"}
            for p in range(proteins) for f in range(fields) for i in range(per_field)]
    images = np.random.default_rng(seed).random((len(rows), size, size, len(CHANNELS))).astype(np.float32)
    return images, pd.DataFrame(rows)


def _good_store(path: Path) -> Path:
    write_store(path, *_crops(), CHANNELS)
    return path


def _with_pixel(path, row, value):
    images, table = _crops()
    images[row, 3, 5, 0] = value
    write_store(path, images, table, CHANNELS)


def _blank(path):
    images, table = _crops()
    images[7] = 0.0
    write_store(path, images, table, CHANNELS)


def _empty_store(path):
    _good_store(path)
    meta = json.loads((path / "store.json").read_text())
    meta["shape"][0] = 0
    (path / "store.json").write_text(json.dumps(meta))
    np.save(path / "crops.npy", np.zeros((0, 16, 16, 3), np.float32))
    (path / "crops.csv").write_text("protein,fov,family,source\n")


def _two_channel_array(path):
    _good_store(path)
    np.save(path / "crops.npy", _crops()[0][..., :2])


def _single_field(path):
    images, table = _crops()
    table.loc[table["protein"] == "P2", "fov"] = "P2/0"
    write_store(path, images, table, CHANNELS)


def _extra_label(path):
    _good_store(path)
    table = pd.read_csv(path / "crops.csv", dtype=str, keep_default_na=False)
    pd.concat([table, table.iloc[:1]]).to_csv(path / "crops.csv", index=False)


def _non_square(path):
    images, table = _crops()
    write_store(path, images[:, :, :12], table, CHANNELS)


def _store_case(make_store, **config_changes):
    def setup(tmp_path: Path):
        make_store(tmp_path / "store")
        return tmp_path / "store", config_changes
    return setup


def _config_case(**config_changes):
    return _store_case(_good_store, **config_changes)


BAD_INPUTS = {
    "missing dataset": (lambda tmp: (tmp / "absent", {}), StoreError,
                        r"absent: store: expected a crop store directory, found nothing"),
    "empty folder": (lambda tmp: (tmp.joinpath("folder").mkdir() or tmp / "folder", {}), StoreError,
                     r"folder: store: expected a crop store directory \(store.json, crops.npy, crops.csv\), found a "
                     r"folder without them \(make one with python -m cytoself_jax.import_crops\)"),
    "empty store": (_store_case(_empty_store), StoreError,
                    r"store.json: shape: expected at least one crop, found N=0 \(empty store\)"),
    "missing channel": (_config_case(**{"data.channels": ("protein", "fiducial")}), StoreError,
                        r"store.json: channels: config asks for 'fiducial' but the store has "
                        r"\['protein', 'nucleus', 'distance'\]"),
    "array with fewer channels than store.json": (_store_case(_two_channel_array), StoreError,
                                                   r"crops.npy: shape: expected \[36, 16, 16, 3\] \(from store.json\), "
                                                   r"found \[36, 16, 16, 2\]"),
    "non-square crops": (_store_case(_non_square), StoreError,
                         r"store.json: shape: dihedral augmentation needs square crops, found 16x12"),
    "protein channel not first": (_config_case(**{"data.channels": ("distance", "protein")}), ValueError,
                                  r"config.data.channels: expected distinct store channel names with 'protein' "
                                  r"first, found \['distance', 'protein'\]"),
    "NaN pixel": (_store_case(lambda p: _with_pixel(p, 5, np.nan)), StoreError,
                  r"crops.npy: pixels: expected finite values and a protein channel that is not constant, found 1 "
                  r"bad crop\(s\): row 5 \(NaN/inf; source P0/f1_1.tif\); remove them"),
    "infinite pixel": (_store_case(lambda p: _with_pixel(p, 30, np.inf)), StoreError,
                       r"crops.npy: pixels: .* row 30 \(NaN/inf; source P2/f1_2.tif\)"),
    "all-zero crop": (_store_case(_blank), StoreError,
                      r"crops.npy: pixels: .* row 7 \(constant protein channel; source P0/f1_3.tif\)"),
    "protein in a single field": (_store_case(_single_field), SplitError,
                                  r"crops.csv: fov: protein 'P2' has all its 12 crops in one field of view "
                                  r"\('P2/0'\), so it cannot be split by field; set allow_single_field "
                                  r"\(train.py: --config.data.allow_single_field=True\)"),
    "labels and array of different lengths": (_store_case(_extra_label), StoreError,
                                              r"crops.csv: rows: expected 36 rows \(one per crop in crops.npy\), "
                                              r"found 37"),
    "batch not divisible by the devices": (_config_case(**{"train.batch_size": 12}), ValueError,
                                           r"config.train.batch_size: must be a multiple of the 8 devices in use, "
                                           r"got 12"),
    "batch larger than the training split": (_config_case(**{"train.batch_size": 16}), ValueError,
                                             r"config.train.batch_size: expected at most the 12 crops of the "
                                             r"training split \(of 36 in .*store\), found 16"),
    "no validation split": (_config_case(**{"data.split_fractions": (0.9, 0.0, 0.1)}), ValueError,
                            r"config.data.split_fractions: expected \(train, val, test\) with val > 0"),
    "zero learning rate": (_config_case(**{"train.learning_rate": 0.0}), ValueError,
                           r"config.train.learning_rate: expected a positive number, found 0.0"),
    "zero eval batch": (_config_case(**{"train.eval_batch_size": 0}), ValueError,
                        r"config.train.eval_batch_size: expected a positive integer, found 0"),
    "negative checkpoint interval": (_config_case(**{"train.checkpoint_every_steps": -1}), ValueError,
                                     r"config.train.checkpoint_every_steps: expected an integer >= 0 \(0 = off\), "
                                     r"found -1"),
    "infinite checkpoint minutes": (_config_case(**{"train.checkpoint_every_minutes": float("inf")}), ValueError,
                                    r"config.train.checkpoint_every_minutes: expected a number >= 0 \(0 = off\), "
                                    r"found inf"),
    "negative plateau min_delta": (_config_case(**{"train.plateau_min_delta": -0.1}), ValueError,
                                   r"config.train.plateau_min_delta: expected a number >= 0 \(Keras' default 1e-4\), "
                                   r"found -0.1"),
    "negative plateau min_lr": (_config_case(**{"train.plateau_min_lr": -1e-8}), ValueError,
                                r"config.train.plateau_min_lr: expected a number >= 0 \(the paper's code: 1e-8\), "
                                r"found -1e-08"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_in_one_line_and_leaves_no_run(tmp_path, case):
    setup, error, message = BAD_INPUTS[case]
    store, changes = setup(tmp_path)
    config = tiny_config(tmp_path / "run", store)
    for field, value in changes.items():
        section, name = field.split(".")
        config[section][name] = value
    with pytest.raises(error, match=message) as info:
        train(config, progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()
    if "pixels" in message:  # the scan is recorded with the bad rows it found: refused again without a scan
        assert json.loads((store / PIXEL_CHECK_FILE).read_text())["non_finite" if "NaN" in message else "blank"]


def test_single_field_fallback_only_when_asked(tmp_path):
    _single_field(tmp_path / "store")
    config = tiny_config(tmp_path / "run", tmp_path / "store")
    config.data.allow_single_field = True
    config.train.batch_size = 64  # stops the run right after the split, before anything is written
    # train: 4 crops (one field) of P0 and of P1, and all 12 of P2
    with pytest.warns(UserWarning, match=r"1 protein\(s\) with a single field of view go to train only: \['P2'\]"):
        with pytest.raises(ValueError, match="config.train.batch_size: expected at most the 20 crops"):
            train(config, progress=False)


def test_pixel_check_runs_once_per_version_of_the_array(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    store = open_store(_good_store(tmp_path / "store"))
    verify_pixels(store, progress=False)
    assert (store.path / PIXEL_CHECK_FILE).exists()

    def scan(*args, **kwargs):
        raise AssertionError("scanned again")

    with monkeypatch.context() as patch:
        patch.setattr(pixels_lib, "scan", scan)
        verify_pixels(open_store(store.path), progress=False)  # recorded: no scan
    images = np.load(store.path / "crops.npy")
    images[2, 0, 0, 0] = np.nan
    time.sleep(0.01)
    np.save(store.path / "crops.npy", images)  # a new version of the array: scanned again
    with pytest.raises(StoreError, match=r"row 2 \(NaN/inf"):
        verify_pixels(open_store(store.path), progress=False)
    with monkeypatch.context() as patch:  # and refused again from the record
        patch.setattr(pixels_lib, "scan", scan)
        with pytest.raises(StoreError, match=r"found 1 bad crop\(s\): row 2 \(NaN/inf"):
            verify_pixels(open_store(store.path), progress=False)
    assert not list((tmp_path / "cache").rglob("*.json"))  # a writable store keeps its own record


def test_the_pixel_check_of_a_read_only_store_is_recorded_in_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    store = open_store(_good_store(tmp_path / "store"))
    write = pixels_lib._write_record

    def read_only_store(path, key, report):  # the store folder refuses writes (root ignores chmod)
        return False if path.parent == store.path else write(path, key, report)

    monkeypatch.setattr(pixels_lib, "_write_record", read_only_store)
    verify_pixels(store, progress=False)
    assert not (store.path / PIXEL_CHECK_FILE).exists()
    assert len(list((tmp_path / "cache" / "cytoself_jax" / "pixels").glob("*.json"))) == 1
    monkeypatch.setattr(pixels_lib, "scan", lambda *a, **k: pytest.fail("scanned again"))
    verify_pixels(open_store(store.path), progress=False)


# ------------------------------------------------------------------------------------------- the command line

@pytest.mark.parametrize("args, status, last_line", [
    (["--config.train.batchsize=8"], 2,
     "error: --config.train.batchsize: no field 'batchsize' in the config (did you mean 'batch_size'?); "
     "see the config file and cytoself_jax/config.py for the fields"),
    (["--config.trian.batch_size=8"], 2, "error: --config.trian.batch_size: no field 'trian' in the config "
                                         "(did you mean 'train'?); see the config file and cytoself_jax/config.py "
                                         "for the fields"),
    (["--config.train.batch_size=eight"], 2,
     "error: flag --config.train.batch_size=eight: invalid literal for int() with base 10: 'eight'"),
    (["--resum"], 2, "error: Unknown command line flag 'resum'. Did you mean: resume ?"),
    (["extra"], 2, "error: unexpected arguments ['extra'] (config fields are set as --config.<field>=<value>)"),
    ([], 1, "error: {store}: store: expected a crop store directory, found nothing; check the path, or make a "
            "store with python -m cytoself_jax.prepare (microscope fields) or python -m cytoself_jax.import_crops "
            "(ready crops)"),
])
def test_command_line_errors_are_one_line(tmp_path, args, status, last_line):
    cmd = _train_cmd(tmp_path / "run", tmp_path / "store", *args)
    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == status, done.stderr
    assert done.stderr.strip().splitlines()[-1] == last_line.format(store=tmp_path / "store")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("config, last_line", [
    ("missing.py", "error: --config: cannot load the config file ([Errno 2] No such file or directory: "
                   "'missing.py')"),
    (f"{TINY_CONFIG}:extra", f"error: flag --config={TINY_CONFIG}:extra: Error whilst parsing config file: "
                             "TypeError: get_config() takes 0 positional arguments but 1 was given"),
])
def test_a_config_file_that_fails_is_one_line(config, last_line):
    done = subprocess.run([sys.executable, str(REPO / "train.py"), f"--config={config}"], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [last_line]


# ------------------------------------------------------------------------------- a resumed run is the same run

def _own_copy(tmp_path: Path, reference, tiny_store_path) -> tuple[Path, Path]:
    """A copy of the reference run and of its store, the run's config.json pointing at the store's copy (so that
    the store can be changed without touching the session's)."""
    run, store = tmp_path / "run", tmp_path / "store"
    shutil.copytree(reference.run_dir, run)
    shutil.copytree(tiny_store_path, store)
    saved = json.loads((run / "config.json").read_text())
    saved["data"]["path"] = str(store)
    (run / "config.json").write_text(json.dumps(saved))
    return run, store


def _change_pixels(store: Path) -> None:
    images = np.load(store / "crops.npy")
    images[0, 0, 0, 0] += 1.0  # one pixel of the first crop (always among the fingerprint's sampled crops)
    np.save(store / "crops.npy", images)


def _rename_protein(store: Path) -> None:
    table = pd.read_csv(store / "crops.csv", dtype=str, keep_default_na=False)
    table.loc[table["protein"] == "P3", "protein"] = "P9"
    table.to_csv(store / "crops.csv", index=False)


def _more_crops(store: Path) -> None:
    images, table = open_store(store).images, pd.read_csv(store / "crops.csv", dtype=str, keep_default_na=False)
    more = np.concatenate([images, images[:8]])
    shutil.rmtree(store)
    write_store(store, more, pd.concat([table, table.iloc[:8]]), ("protein", "nucleus", "distance"))


@pytest.mark.parametrize("change, what", [
    (_change_pixels, "pixels (crops.npy)"),
    (_rename_protein, "proteins or fields of view (crops.csv)"),
    (_more_crops, "shape [96, 32, 32, 3] -> [104, 32, 32, 3]; proteins or fields of view (crops.csv)"),
])
def test_resume_refuses_a_changed_store_saying_what_changed(tmp_path, tiny_store_path, reference, change, what):
    run, store = _own_copy(tmp_path, reference, tiny_store_path)
    change(store)
    with pytest.raises(ValueError) as info:
        train(_config(run, store), resume=True, progress=False)
    assert str(info.value) == (f"{run / 'dataset.json'}: store_fingerprint: the store changed since this run started "
                               f"({what} differ); resume with the store it was trained on, or use another "
                               "--config.workdir for a new run")
    assert json.loads((run / "dataset.json").read_text()) == json.loads((reference.run_dir / "dataset.json").read_text())


def test_resume_on_the_same_store_is_accepted(tmp_path, tiny_store_path, reference):
    run, store = _own_copy(tmp_path, reference, tiny_store_path)
    result = train(_config(run, store), resume=True, progress=False)  # max_epochs reached: nothing left to train
    assert int(result.state.step) == 2 * STEPS_PER_EPOCH
    assert not (run / HISTORY_FILE).exists()


def test_refused_resume_names_the_differing_fields(tmp_path, reference, tiny_store_path):
    run = tmp_path / "run"
    shutil.copytree(reference.run_dir, run)
    config = _config(run, tiny_store_path)
    config.model.vq_local.num_codes = 64
    config.model.encoder_local.stages = ((1, 3, 1, 8, 1),)
    config.seed = 1
    config.train.learning_rate = 1e-3
    with pytest.raises(ValueError) as info:
        train(config, resume=True, progress=False)
    assert str(info.value) == (
        f"{run / 'config.json'}: a run resumes only with the model, data and seed it started with; changed: "
        "model.encoder_local.stages [[1, 3, 1, 8, 1], [2, 3, 2, 8, 1]] -> [[1, 3, 1, 8, 1]], "
        "model.vq_local.num_codes 32 -> 64, seed 0 -> 1 (and 1 more); drop these overrides or pass the run's own "
        "values (--config.model.vq_local.num_codes=32 --config.seed=0 --config.train.learning_rate=0.0004) to "
        "resume, or use another --config.workdir for a new run")
    assert (run / "config.json").read_text() == (reference.run_dir / "config.json").read_text()


def _settings(**changes):
    config = tiny_config("runs/x", "data/x")
    for field, value in changes.items():
        section, name = field.split(".")
        config[section][name] = value
    return config


def test_settings_history_keeps_the_record_true(tmp_path):
    run = tmp_path / "run"
    first, bigger = _settings(), _settings(**{"train.batch_size": 16, "loss.vq": 2.0})
    record_run(run, first, {}, completed_epochs=0)
    assert not (run / HISTORY_FILE).exists()
    record_run(run, first, {}, completed_epochs=2)  # a plain resume
    assert not (run / HISTORY_FILE).exists()
    record_run(run, bigger, {}, completed_epochs=2)  # epochs 3.. with batch 16 and another loss weight
    history = json.loads((run / HISTORY_FILE).read_text())
    assert [(h["first_epoch"], h["changed"]) for h in history] == [
        (1, {}), (3, {"loss.vq": [1.0, 2.0], "train.batch_size": [8, 16]})]
    assert history[0]["config"] == json.loads(first.to_json())
    assert json.loads((run / "config.json").read_text()) == json.loads(bigger.to_json()) == history[1]["config"]
    record_run(run, bigger, {}, completed_epochs=5)  # resumed again, same settings: nothing new
    assert len(json.loads((run / HISTORY_FILE).read_text())) == 2
    # stopped before epoch 3 completed, resumed with the first settings: no epoch was trained with the others
    record_run(run, first, {}, completed_epochs=2)
    assert not (run / HISTORY_FILE).exists()
    assert json.loads((run / "config.json").read_text()) == json.loads(first.to_json())


def test_resume_with_changed_settings_trains_on_and_records_them(tmp_path, tiny_store_path, reference):
    run = tmp_path / "run"
    shutil.copytree(reference.run_dir, run)
    config = _config(run, tiny_store_path)
    config.train.max_epochs = 3
    config.train.plateau_factor = 0.5
    result = train(config, resume=True, progress=False)
    assert result.loop.epoch == 3
    history = json.loads((run / HISTORY_FILE).read_text())
    assert [(h["first_epoch"], h["changed"]) for h in history] == [
        (1, {}), (3, {"train.max_epochs": [2, 3], "train.plateau_factor": [0.1, 0.5]})]
    assert history[0]["config"] == json.loads((reference.run_dir / "config.json").read_text())
    assert json.loads((run / "config.json").read_text())["train"]["plateau_factor"] == 0.5


# ------------------------------------------------------------------------------------------------------ faults

def _corrupt(step_dir: Path) -> None:
    for file in (step_dir / "state").rglob("*"):
        if file.is_file() and file.parent.name == "d":
            file.write_bytes(b"\0" * 100)  # the array data, cut short


def test_a_corrupted_latest_checkpoint_falls_back_to_best(tmp_path, tiny_store_path, reference, caplog):
    run = tmp_path / "run"
    shutil.copytree(reference.run_dir, run)
    step = 2 * STEPS_PER_EPOCH
    _corrupt(run / "checkpoints" / "latest" / str(step))
    with caplog.at_level("WARNING", logger="cytoself_jax"):
        result = train(_config(run, tiny_store_path), resume=True, progress=False)
    warning = [r.getMessage() for r in caplog.records if "unreadable checkpoint" in r.getMessage()]
    assert len(warning) == 1 and "\n" not in warning[0]
    assert warning[0].startswith(f"{run / 'checkpoints' / 'latest' / str(step)}: unreadable checkpoint (")
    assert warning[0].endswith(f"resuming from the best checkpoint (epoch 2, step {step}) instead; the unreadable "
                               f"one was moved to {run / 'checkpoints' / 'unreadable' / f'latest-{step}'}")
    chex.assert_trees_all_equal(jax.device_get(result.state.params), jax.device_get(reference.state.params))
    # the run has an intact 'latest' again (re-saved from 'best'), and the damaged files are kept aside
    state, _ = _restore(run, reference.state)
    chex.assert_trees_all_equal(jax.device_get(state.params), jax.device_get(reference.state.params))
    assert (run / "checkpoints" / "unreadable" / f"latest-{step}" / "state").is_dir()


def test_no_intact_checkpoint_is_refused_in_one_line_naming_the_files(tmp_path, tiny_store_path, reference):
    run = tmp_path / "run"
    shutil.copytree(reference.run_dir, run)
    step = 2 * STEPS_PER_EPOCH
    for which in ("latest", "best"):
        _corrupt(run / "checkpoints" / which / str(step))
    with pytest.raises(CheckpointError) as info:
        train(_config(run, tiny_store_path), resume=True, progress=False)
    message = str(info.value)
    assert "\n" not in message and len(message) < 900, message
    assert re.fullmatch(rf"{re.escape(str(run / 'checkpoints' / 'latest' / str(step)))}: unreadable checkpoint "
                        rf"\(ValueError: .*\); {re.escape(str(run / 'checkpoints' / 'best' / str(step)))}: unreadable "
                        rf"checkpoint \(ValueError: .*\); no intact checkpoint to resume from: move "
                        rf"{re.escape(str(run / 'checkpoints'))} aside to start the run over, or use another "
                        r"--config.workdir", message)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "latest"]  # nothing moved or removed


def test_a_partial_last_metrics_line_is_tolerated(tmp_path, tiny_store_path, reference):
    run = tmp_path / "run"
    shutil.copytree(reference.run_dir, run)
    complete = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(complete + '{"kind": "step", "epoch": 2, "st')  # cut mid-append
    with pytest.warns(UserWarning, match=r"metrics.jsonl: line \d+ is incomplete \(the run stopped while writing it\)"):
        assert read_metrics(run / "metrics.jsonl") == _records(reference.run_dir)
    with pytest.warns(UserWarning, match="is incomplete"):
        train(_config(run, tiny_store_path), resume=True, progress=False)
    assert (run / "metrics.jsonl").read_text() == complete  # the partial line is gone, the rest kept as it was
    # a damaged line that is not the last is an error naming the file and the line
    lines = complete.splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(lines[:2]) + "{oops\n" + "".join(lines[2:]))
    with pytest.raises(CurvesError, match=rf"read_metrics: {re.escape(str(run / 'metrics.jsonl'))}: line 3: "
                                                 r"not valid JSON \(Expecting property name enclosed"):
        read_metrics(run / "metrics.jsonl")


@pytest.mark.parametrize("name", ["config.json", "dataset.json"])
def test_a_truncated_run_json_file_is_named(tmp_path, tiny_store_path, reference, name):
    run = tmp_path / "run"
    shutil.copytree(reference.run_dir, run)
    text = (run / name).read_text()
    (run / name).write_text(text[:len(text) // 2])
    with pytest.raises(JsonFileError) as info:
        train(_config(run, tiny_store_path), resume=True, progress=False)
    assert re.fullmatch(rf"{re.escape(str(run / name))}: not valid JSON \(line \d+ column \d+: [^;]+; truncated or "
                        r"edited\?\); restore it from a copy of the run, or train a new run with another "
                        r"--config.workdir", str(info.value)), str(info.value)


@pytest.mark.parametrize("layout", ["workdir is a file", "checkpoints is a file"])
def test_a_run_folder_that_is_a_file_is_refused_before_training(tmp_path, tiny_store_path, layout):
    run = tmp_path / "run"
    if layout == "workdir is a file":
        run.write_text("my notes")
        blocked = run
    else:
        run.mkdir()
        blocked = run / "checkpoints"
        blocked.write_text("my notes")
    with pytest.raises(NotADirectoryError) as info:
        train(_config(run, tiny_store_path), progress=False)
    assert str(info.value) == (f"{blocked}: expected a folder for the run, found a file; move the file away or set "
                               "--config.workdir to another folder")
    assert blocked.read_text() == "my notes"


def test_describe_latest_is_true_when_there_is_no_checkpoint(tmp_path, reference):
    assert describe_latest(tmp_path / "nothing") == ("no checkpoint was saved yet: run the same command again to "
                                                     "start over")
    assert not (tmp_path / "nothing").exists()
    assert describe_latest(reference.run_dir) == (f"the latest complete checkpoint is epoch 2 (step "
                                                  f"{2 * STEPS_PER_EPOCH}): continue with --resume")


def test_missing_best_checkpoint_hint_names_which_latest(tmp_path):
    (tmp_path / "checkpoints" / "latest" / "4").mkdir(parents=True)
    with pytest.raises(EvalError, match=r"checkpoints/best: no complete 'best' checkpoint: train first, evaluate "
                                        r"the other checkpoint with --which latest, or pass --random_init"):
        _check_checkpoint(tmp_path, "best")


# --------------------------------------------------------------------------------------- inputs that now fail

def test_synthetic_cells_are_drawn_only_into_their_own_new_folder(tmp_path):
    config = tiny_config(tmp_path / "run", tmp_path / "demo-synthtic")  # a typo of the folder the config names
    config.data.synthetic.update(proteins=4, crops_per_protein=8, fields_per_protein=2, size=32,
                                 path=str(tmp_path / "demo-synthetic"))
    with pytest.raises(StoreError) as info:
        train(config, progress=False)
    assert str(info.value) == (
        f"{tmp_path / 'demo-synthtic'}: store: no crop store here, and this config draws its synthetic cells only "
        f"into {tmp_path / 'demo-synthetic'} (config.data.synthetic.path): check --config.data.path, or set "
        f"--config.data.synthetic.path={tmp_path / 'demo-synthtic'} to draw them there")
    # the user's own folder at the synthetic path: never written into
    (tmp_path / "demo-synthetic").mkdir()
    (tmp_path / "demo-synthetic" / "mine.tif").write_text("user data")
    config.data.path = str(tmp_path / "demo-synthetic")
    with pytest.raises(StoreError, match=r"demo-synthetic: store: the folder exists but holds no crop store, and "
                                         r"synthetic cells are only drawn into a new folder: move it away, or set "
                                         r"--config.data.path to a crop store"):
        train(config, progress=False)
    assert [p.name for p in (tmp_path / "demo-synthetic").iterdir()] == ["mine.tif"]
    assert not (tmp_path / "run").exists() and not (tmp_path / "demo-synthtic").exists()
    # where asked, into a new folder: drawn (the oversized batch then stops the run before it starts)
    shutil.rmtree(tmp_path / "demo-synthetic")
    config.train.batch_size = 64
    with pytest.raises(ValueError, match="config.train.batch_size: expected at most"):
        train(config, progress=False)
    assert len(open_store(tmp_path / "demo-synthetic")) == 32


def test_protein_names_differing_by_surrounding_whitespace_are_one_class(tmp_path):
    images, table = _crops()
    table.loc[[0, 5], "protein"] = [" P0", "P0 "]
    with pytest.warns(UserWarning, match=r"crops.csv: protein: stripped the surrounding whitespace of 2 value\(s\) "
                                         r"\(row 0: ' P0'\), so that equal names are one class"):
        store = write_store(tmp_path / "store", images, table, CHANNELS)
    assert store.proteins == ("P0", "P1", "P2")
    assert (store.table["protein"] == "P0").sum() == 12
    # a table edited by hand afterwards: stripped (with the warning) when the store is opened
    edited = pd.read_csv(tmp_path / "store" / "crops.csv", dtype=str, keep_default_na=False)
    edited.loc[3, "protein"] = "P1\t"
    edited.to_csv(tmp_path / "store" / "crops.csv", index=False)
    with pytest.warns(UserWarning, match=r"row 3: 'P1\\t'"):
        assert open_store(tmp_path / "store").proteins == ("P0", "P1", "P2")


def test_prepare_drops_blank_and_nan_crops_and_counts_them(tmp_path):
    from cytoself_jax.data.synthetic import draw_field
    from cytoself_jax.prepare.io import FieldSpec
    from cytoself_jax.prepare.run import PrepareSettings, prepare
    from cytoself_jax.prepare.scale import ScaleSettings
    from cytoself_jax.prepare.segment import SegmentParams

    crop = 48
    half = crop // 2
    fov = draw_field(np.random.default_rng(3), (256, 256), 8, family="mitochondria")
    inside = [tuple(c) for c in np.rint(fov.centres).astype(int) if ((c >= half + 2) & (c <= 256 - half - 2)).all()]
    (ra, ca), (rb, cb) = inside[0], inside[1]
    protein = fov.protein.copy()
    protein[ra - half:ra + half, ca - half:ca + half] = 7.0  # nucleus A's crop: a constant protein channel
    protein[rb, cb] = np.nan  # nucleus B's crop (and any crop overlapping that pixel): a NaN
    np.save(tmp_path / "f0.npy", np.stack([protein, fov.nucleus]).astype(np.float32))
    settings = PrepareSettings(protein_channel=0, nucleus_channel=1, crop_size=crop,
                               segment=SegmentParams(sigma=2.0, laplace_sigma=2.0, closing_radius=4,
                                                     min_nucleus_area=50), scale=ScaleSettings(rescale=False))
    result = prepare([FieldSpec(str(tmp_path / "f0.npy"), "P1", "f0")], tmp_path / "out", settings, workers=1,
                     montage_crops=0, progress=False)
    store = result.store
    assert np.isfinite(store.images).all()
    assert (store.images[..., 0].reshape(len(store), -1).std(axis=1) > 0).all()
    rejected = pd.read_csv(tmp_path / "out" / "qc" / "rejected.csv")
    for (r, c), reason in (((ra, ca), "blank"), ((rb, cb), "non_finite")):
        near = np.hypot(rejected["row"] - r, rejected["col"] - c) <= 3
        assert (rejected.loc[near, "reason"] == reason).sum() == 1, (reason, rejected)
    fields = pd.read_csv(tmp_path / "out" / "qc" / "fields.csv")
    for reason in ("blank", "non_finite"):
        assert fields[f"rejected_{reason}"].sum() == (rejected["reason"] == reason).sum() >= 1
    assert json.loads((tmp_path / "out" / "qc" / "summary.json").read_text())["rejected"]["blank"] >= 1


@pytest.mark.parametrize("make, message", [
    (lambda: dict(protein_channel=1, nucleus_channel=1),
     "--protein-channel/--nucleus-channel: expected two different channels, found 1 for both; give the nuclear "
     "stain's channel index"),
])
def test_prepare_refuses_bad_settings(make, message):
    from cytoself_jax.prepare.run import PrepareError, PrepareSettings

    with pytest.raises(PrepareError) as info:
        PrepareSettings(**make())
    assert str(info.value) == message


def test_prepare_names_values_beyond_float32_instead_of_calling_them_infinite(tmp_path):
    from cytoself_jax.prepare.io import FieldSpec
    from cytoself_jax.prepare.run import PrepareSettings, process_field

    field = np.random.default_rng(0).random((2, 64, 64))
    field[0, 3, 3] = 1e39  # finite in the float64 file, infinite once in the store's float32
    np.save(tmp_path / "f.npy", field)
    summary = process_field(FieldSpec(str(tmp_path / "f.npy"), "P1", "f"), PrepareSettings(0, 1, crop_size=16),
                            tmp_path)
    assert summary.status == "error"
    assert summary.error == (f"{tmp_path / 'f.npy'}: FieldError: protein channel: values up to 1e+39 exceed the "
                             "float32 range of the store (max 3.4e+38); rescale the images")


def test_a_full_disk_while_logging_metrics_names_the_file():
    from cytoself_jax.training.metrics_log import MetricsLog

    if not Path("/dev/full").exists():
        pytest.skip("/dev/full (a device that is always full) is Linux-only")
    with pytest.raises(OSError) as info:
        MetricsLog(Path("/dev/full")).write({"kind": "step", "epoch": 0, "step": 1})
    assert (info.value.errno, info.value.filename) == (28, "/dev/full")
    assert str(info.value) == "[Errno 28] No space left on device: '/dev/full'"


# ------------------------------------------------------------- every command, not only training (issue 26)

EMBED_CHANNELS = ("protein", "distance")
NAN_ROW, BLANK_ROW = 5, 7  # the bad crops of bad_store


@pytest.fixture(scope="module")
def embed_run(tmp_path_factory, tiny_store_path):
    """An untrained run (codebooks spread over its encoders' outputs) of the tiny store's protein and distance."""
    from run_fixtures import make_run

    return make_run(tmp_path_factory.mktemp("embed-run") / "run", tiny_store_path, EMBED_CHANNELS)


@pytest.fixture(scope="module")
def bad_store(tmp_path_factory, tiny_store_path):
    """The tiny store with a NaN pixel in row 5 and a blank protein channel in row 7."""
    store = open_store(tiny_store_path)
    images = np.array(store.images)
    images[NAN_ROW, 3, 4, 0] = np.nan
    images[BLANK_ROW, ..., 0] = 0.25
    path = tmp_path_factory.mktemp("bad") / "bad-cells"
    write_store(path, images, store.table, store.channels)
    return path


def _one_line_err(text: str) -> str:
    """The single line a command printed on stderr (fails when there are more)."""
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text[-3000:]
    return lines[0]


def _last_line(text: str) -> str:
    """The last line on stderr of a command that also draws progress bars there (no traceback anywhere)."""
    assert "Traceback" not in text, text[-3000:]
    return text.strip().splitlines()[-1].split("\r")[-1]


def _hidden_siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def test_every_reader_refuses_bad_crops_naming_the_store_count_and_first_row(embed_run, bad_store, capsys):
    from cytoself_jax import embed as embed_cli
    from cytoself_jax.analysis.report import EvalOptions, run_eval
    from cytoself_jax.inference import embed_images, embed_store, load_run

    run, store = load_run(embed_run), open_store(bad_store)
    first = (rf"{re.escape(str(bad_store / 'crops.npy'))}: pixels: expected finite values and a protein channel that "
             rf"is not constant, found 2 bad crop\(s\): row 5 \(NaN/inf; protein P0, fov P0/0\), row 7 \(constant "
             r"protein channel; protein P0, fov P0/0\); remove them from the store \(e\.g\. re-import without them\)")
    with pytest.raises(StoreError, match=first + r", or pass skip_bad_crops=True to leave them out$"):
        embed_store(run, store, progress=False)
    raw = np.asarray(store.images)[..., [0, 2]]
    with pytest.raises(StoreError, match=r"^embed_images: images: pixels: expected finite values and a protein "
                                         r"channel that is not constant, found 2 bad crop\(s\): crop 5 \(NaN/inf\), "
                                         r"crop 7 \(constant protein channel\); pass skip_bad_crops=True to leave "
                                         r"them out$"):
        embed_images(run, raw, progress=False)
    with pytest.raises(StoreError, match=first + r", or pass --skip_bad_crops to leave them out$"):
        run_eval(embed_run, EvalOptions(data=str(bad_store), progress=False))
    out = bad_store.parent / "embedded"
    assert embed_cli.main(["--ckpt", str(embed_run), "--data", str(bad_store), "--out", str(out), "--quiet"]) == 2
    assert re.fullmatch("error: " + first + r", or pass --skip-bad-crops to leave them out",
                        _one_line_err(capsys.readouterr().err))
    assert not out.exists() and not (embed_run / "embed").exists()

    # asked for: left out and counted, the other crops embedded exactly as without them (in batches of 8, as in
    # test_embed.py: the same embedding program)
    good = np.setdiff1d(np.arange(len(store)), [NAN_ROW, BLANK_ROW])
    skipped = embed_store(run, store, skip_bad_crops=True, batch_size=8, progress=False)
    np.testing.assert_array_equal(skipped.index, good)
    assert skipped.skipped == {"non_finite": 1, "blank": 1, "first_rows": [NAN_ROW, BLANK_ROW]}
    clean = embed_store(run, store, good, batch_size=8, progress=False)
    np.testing.assert_array_equal(skipped.global_indices, clean.global_indices)
    assert clean.skipped == {} and len(clean) == len(good)
    arrays = embed_images(run, raw, skip_bad_crops=True, batch_size=8, progress=False)
    np.testing.assert_array_equal(arrays.index, good)
    assert arrays.skipped == {"non_finite": 1, "blank": 1, "first_crops": [NAN_ROW, BLANK_ROW]}
    np.testing.assert_array_equal(arrays.global_indices, clean.global_indices)


def test_embed_skip_bad_crops_counts_them_in_the_metrics(embed_run, bad_store, tmp_path, capsys):
    from cytoself_jax import embed as embed_cli

    out = tmp_path / "out"
    args = ["--ckpt", str(embed_run), "--data", str(bad_store), "--out", str(out), "--quiet", "--skip-bad-crops",
            "--evaluators", "reconstruction", "codebooks", "--bootstrap", "10"]
    assert embed_cli.main(args) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["crops"] == 94
    assert metrics["run"]["skipped_crops"] == {"non_finite": 1, "blank": 1, "first_rows": [NAN_ROW, BLANK_ROW]}
    assert ("bad crops left out (skip_bad_crops): 2 of the evaluated crops, 1 with a NaN/inf pixel and 1 with a "
            "blank protein channel (row 5 (NaN/inf), row 7 (constant protein channel))") in metrics["notes"]


def _crop_files(src: Path, cells: int = 4) -> Path:
    """A folder of per-cell crops for import_crops: src/<protein>/<fov>_<cell>_<channel>.npy, two channels."""
    rng = np.random.default_rng(0)
    for p in range(2):
        (src / f"P{p}").mkdir(parents=True, exist_ok=True)
        for c in range(cells):
            for channel in ("gfp", "rfp"):
                np.save(src / f"P{p}" / f"f{c % 2}_{c}_{channel}.npy", rng.random((16, 16)).astype(np.float32))
    return src


def _import_args(src: Path, out: Path, *extra: str) -> list[str]:
    return [str(src), str(out), "--channel", "gfp=protein", "--channel", "rfp=fiducial", "--quiet", *extra]


def _full_disk_at(name: str, original):
    """A stand-in for the writer `original` (Path.write_text, DataFrame.to_csv) raising ENOSPC for files `name`."""
    def write(self, *args, **kwargs):
        target = self if isinstance(self, Path) else Path(args[0])
        if target.name == name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        return original(self, *args, **kwargs)
    return write


def _no_space(folder):
    return shutil._ntuple_diskusage(total=10 ** 9, used=10 ** 9, free=0)


def _denied_mkdir(self, *args, **kwargs):
    """Path.mkdir in a folder that denies new entries (as for a user without write permission there)."""
    if self.exists() and kwargs.get("exist_ok"):
        return None
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))


IMPORT_FAULTS = {
    # name: (setup(monkeypatch, out), last line with {out})
    "disk full writing crops.csv": (
        lambda mp, out: mp.setattr(pd.DataFrame, "to_csv", _full_disk_at("crops.csv", pd.DataFrame.to_csv)),
        "error: {out}/crops.csv: No space left on device [errno 28]; nothing was kept: {out} was not created (the "
        "partial output was removed)"),
    "disk without room for crops.npy": (
        lambda mp, out: mp.setattr(staging_lib.shutil, "disk_usage", _no_space),
        "error: {out}: No space left on device [errno 28]: needs 16.4 kB, 0 B free; nothing was kept: {out} was "
        "not created (the partial output was removed)"),
    "permission denied": (
        lambda mp, out: mp.setattr(Path, "mkdir", _denied_mkdir),
        "error: {out}: Permission denied [errno 13]; nothing was kept: {out} was not created (the partial output "
        "was removed)"),
}


@pytest.mark.parametrize("fault", list(IMPORT_FAULTS))
def test_import_write_faults_are_one_line_and_leave_nothing(tmp_path, monkeypatch, capsys, fault):
    from cytoself_jax import import_crops as import_cli

    src, out = _crop_files(tmp_path / "src"), tmp_path / "data" / "cells"
    (tmp_path / "data").mkdir()
    setup, line = IMPORT_FAULTS[fault]
    setup(monkeypatch, out)
    assert import_cli.main(_import_args(src, out)) == 1
    assert _one_line_err(capsys.readouterr().err) == line.format(out=out)
    assert not out.exists() and not _hidden_siblings(out)


def test_import_with_overwrite_on_a_full_disk_keeps_the_earlier_store(tmp_path, monkeypatch, capsys):
    from cytoself_jax import import_crops as import_cli

    src, out = _crop_files(tmp_path / "src"), tmp_path / "cells"
    assert import_cli.main(_import_args(src, out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(Path, "write_text", _full_disk_at("store.json", Path.write_text))
    assert import_cli.main(_import_args(src, out, "--overwrite")) == 1
    assert _one_line_err(capsys.readouterr().err) == (
        f"error: {out}/store.json: No space left on device [errno 28]; {out} keeps its earlier content, unchanged "
        "(the partial output was removed)")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and not _hidden_siblings(out)


def test_import_into_a_read_only_folder_is_one_line(tmp_path, capsys):
    from cytoself_jax import import_crops as import_cli

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders (permissions are not checked for root)")
    src, parent = _crop_files(tmp_path / "src"), tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        assert import_cli.main(_import_args(src, parent / "cells")) == 1
    finally:
        parent.chmod(0o755)
    assert _one_line_err(capsys.readouterr().err) == (
        f"error: {parent / 'cells'}: Permission denied [errno 13]; nothing was kept: {parent / 'cells'} was not "
        "created (the partial output was removed)")
    assert not list(parent.iterdir())


def test_make_synthetic_on_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    from cytoself_jax import make_synthetic

    out = tmp_path / "synthetic"
    monkeypatch.setattr(staging_lib.shutil, "disk_usage", _no_space)
    args = [str(out), "--proteins", "2", "--crops-per-protein", "4", "--fields-per-protein", "2", "--size", "16"]
    assert make_synthetic.main(args) == 1
    assert _one_line_err(capsys.readouterr().err) == (
        f"error: {out}: No space left on device [errno 28]: needs 24.6 kB, 0 B free; nothing was kept: {out} "
        "was not created (the partial output was removed)")
    assert not out.exists() and not _hidden_siblings(out)


def test_the_next_write_removes_a_killed_writers_staging_folder_only(tmp_path):
    import socket

    out = tmp_path / "store"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".store.tmp-{int(dead.stdout)}"  # a writer killed mid-write (its process is gone)
    stale.mkdir()
    (stale / "cytoself-output.json").write_text(json.dumps({"written_by": store_lib.WRITER, "pid": int(dead.stdout),
                                                            "host": socket.gethostname()}))
    (stale / "crops.npy").write_bytes(b"\0" * 100)
    foreign = tmp_path / ".store.tmp-1"  # not a writer's: no marker
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    _good_store(out)
    assert not stale.exists() and (foreign / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["crops.csv", "crops.npy", "store.json"]


def test_prepare_on_a_full_disk_keeps_finished_fields_and_says_so(tmp_path, monkeypatch, capsys):
    from cytoself_jax.prepare import run as prepare_run
    from cytoself_jax.prepare.__main__ import main as prepare_main

    fields, out = _fields(tmp_path / "fields", 3), tmp_path / "out"
    savez, calls = np.savez, []

    def full_after_one(file, **arrays):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), getattr(file, "name", None))
        return savez(file, **arrays)

    monkeypatch.setattr(prepare_run.np, "savez", full_after_one)
    assert prepare_main(_prepare_args(fields, out)) == 1
    work = out / "work"
    line = _last_line(capsys.readouterr().err)
    assert re.fullmatch(rf"error: {re.escape(str(work))}/P0_f1-[0-9a-f]{{10}}\.npz: No space left on device \[errno "
                        rf"28\]; finished fields are kept in {re.escape(str(work))}; rerun the same command to resume",
                        line), line
    assert [p.name for p in work.iterdir() if p.suffix == ".npz"] and not [p for p in work.iterdir()
                                                                          if ".tmp-" in p.name]
    assert not (out / "store").exists() and not (out / "qc").exists() and not _hidden_siblings(out / "qc")


def _fields(root: Path, count: int) -> Path:
    """`count` synthetic fields of view (2 x 192 x 192 NPY: protein, nucleus) of protein P0, for prepare."""
    from cytoself_jax.data.synthetic import draw_field

    (root / "P0").mkdir(parents=True)
    for k in range(count):
        fov = draw_field(np.random.default_rng(k), (192, 192), 6, family="mitochondria")
        np.save(root / "P0" / f"f{k}.npy", np.stack([fov.protein, fov.nucleus]).astype(np.float32))
    return root


def _prepare_args(fields: Path, out: Path) -> list[str]:
    return [str(fields), str(out), "--protein-channel", "0", "--nucleus-channel", "1", "--crop-size", "32",
            "--sigma", "2", "--laplace-sigma", "2", "--closing-radius", "4", "--min-nucleus-area", "50",
            "--workers", "1", "--montage-crops", "2", "--no-rescale"]


def test_embed_on_a_full_disk_is_one_line_and_keeps_the_earlier_output(embed_run, tiny_store_path, tmp_path,
                                                                       monkeypatch, capsys):
    """The disk fills up while the output is written (the last file, metrics.md): one line naming the file as it
    would have been in the output folder; no partial folder, an earlier output untouched."""
    from cytoself_jax import embed as embed_cli

    out = tmp_path / "out"
    args = ["--ckpt", str(embed_run), "--data", str(tiny_store_path), "--out", str(out), "--quiet",
            "--evaluators", "codebooks", "--bootstrap", "10"]
    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_text", _full_disk_at("metrics.md", Path.write_text))
        assert embed_cli.main(args) == 1
    assert _one_line_err(capsys.readouterr().err) == (
        f"error: {out}/metrics.md: No space left on device [errno 28]; nothing was kept: {out} was not created (the "
        "partial output was removed)")
    assert not out.exists() and not _hidden_siblings(out)
    assert embed_cli.main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(Path, "write_text", _full_disk_at("metrics.md", Path.write_text))
    assert embed_cli.main(args + ["--force"]) == 1
    assert _one_line_err(capsys.readouterr().err).endswith(
        f"; {out} keeps its earlier content, unchanged (the partial output was removed)")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and not _hidden_siblings(out)


def _signal_when(cmd: list[str], condition, sig: int, log: Path, timeout: float = 240.0) -> int:
    """Run cmd (stdout discarded, stderr to log), send `sig` as soon as condition() holds; its exit status."""
    return _act_when(cmd, condition, lambda proc: proc.send_signal(sig), log, timeout)


def test_sigterm_during_embed_leaves_no_partial_output(embed_run, tiny_store_path, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cytoself_jax.embed", "--ckpt", str(embed_run), "--data", str(tiny_store_path),
           "--out", str(out), "--quiet", "--bootstrap", "10", "--umap-seeds", "1"]
    log = tmp_path / "log.txt"
    status = _signal_when(cmd, lambda: bool(_hidden_siblings(out)), signal.SIGTERM, log)
    assert status == 128 + signal.SIGTERM, log.read_text()[-3000:]
    # what the line says was kept depends on the instant the signal lands (a busy machine can deliver it before
    # the staged writes begin); it is one line and it is true either way
    assert _one_line_err(log.read_text()) in (
        f"terminated (SIGTERM): nothing was kept: {out} was not created (the partial output was removed)",
        "terminated (SIGTERM): no output was written")
    assert not out.exists() and not _hidden_siblings(out)


def test_ctrl_c_during_import_leaves_no_partial_store(tmp_path):
    # enough crops that writing them takes longer than the test takes to see the staging folder and signal (with
    # 300 a quiet machine once finished the import first)
    src, out = _crop_files(tmp_path / "src", cells=3000), tmp_path / "cells"
    log = tmp_path / "log.txt"
    cmd = [sys.executable, "-m", "cytoself_jax.import_crops", *_import_args(src, out)]
    status = _signal_when(cmd, lambda: bool(_hidden_siblings(out)), signal.SIGINT, log)
    assert status == 128 + signal.SIGINT, log.read_text()[-3000:]
    assert _one_line_err(log.read_text()) == (f"interrupted: nothing was kept: {out} was not created (the partial "
                                              "output was removed)")
    assert not out.exists() and not _hidden_siblings(out)


def test_sigterm_during_prepare_keeps_finished_fields_only(tmp_path):
    fields, out = _fields(tmp_path / "fields", 12), tmp_path / "out"
    log = tmp_path / "log.txt"
    cmd = [sys.executable, "-m", "cytoself_jax.prepare", *_prepare_args(fields, out)]
    status = _signal_when(cmd, lambda: (out / "work").is_dir() and any((out / "work").glob("*.npz")),
                          signal.SIGTERM, log)
    assert status == 128 + signal.SIGTERM, log.read_text()[-3000:]
    assert _last_line(log.read_text()) == (f"terminated (SIGTERM): finished fields are kept in {out / 'work'}; rerun "
                                           "the same command to resume")
    assert not [p for p in (out / "work").iterdir() if ".tmp-" in p.name]
    assert sorted(p.name for p in out.iterdir()) == ["work"]


# --------------------------------------------------------------------------- damaged checkpoints: one line only

DAMAGE_SCRIPT = r"""
import os, shutil, sys, time
from pathlib import Path
from absl import logging as absl_logging
absl_logging.set_verbosity(absl_logging.WARNING)  # as eval.py and the embed command set it
from cytoself_jax.run import load_run
source, work = Path(sys.argv[1]), Path(sys.argv[2])
step = next((source / "checkpoints" / "best").iterdir())
kinds = {}
for file in sorted(step.rglob("*")):
    if file.is_file():
        rel = file.relative_to(step)
        kinds.setdefault(str(rel.parent / ("<data>" if rel.parent.name == "d" else rel.name)), rel)
for kind, rel in kinds.items():
    for mode in ("cut", "garbled"):
        run = work / f"{len(os.listdir(work))}"
        shutil.copytree(source, run)
        target = run / "checkpoints" / "best" / step.name / rel
        data = target.read_bytes()
        target.write_bytes(data[:len(data) // 2] if mode == "cut" else bytes((b * 7 + 13) % 256 for b in data))
        try:
            load_run(run)
            print(kind, mode, "read")
        except Exception as err:
            print(kind, mode, "error:", str(err).replace(str(run), "RUN"))
time.sleep(2)  # reports of orbax's and tensorstore's threads that arrive late
"""


def test_a_damaged_checkpoint_file_of_any_kind_prints_one_line_and_nothing_else(embed_run, tmp_path):
    """Each kind of file of a checkpoint cut short and garbled in turn, read as eval reads a run: the read works
    (orbax does not need the file) or fails with one line (CheckpointError), and stderr stays empty: orbax's
    reader threads' error logs and tensorstore's late 'Event loop is closed' reports are captured."""
    (tmp_path / "copies").mkdir()
    done = subprocess.run([sys.executable, "-c", DAMAGE_SCRIPT, str(embed_run), str(tmp_path / "copies")],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == ""
    results = done.stdout.strip().splitlines()
    kinds = {line.split()[0] for line in results}
    assert {"_CHECKPOINT_METADATA", "state/_METADATA", "state/manifest.ocdbt", "state/d/<data>",
            "loop/metadata"} <= kinds, results
    errors = [line for line in results if " error: " in line]
    assert len(errors) >= 8, results  # the array data, its index and the metadata cannot be read without
    for line in errors:
        assert re.search(r" error: RUN/checkpoints/best/\d+: unreadable checkpoint \(.{1,160}\)$", line), line


CAPTURE_SCRIPT = r"""
import logging, sys, threading
from pathlib import Path
from cytoself_jax.training import orbax_logs
orbax_logs.capture_library_reports()
absl = logging.getLogger("absl")
for path in (Path(orbax_logs.ORBAX_DIR) / "reader.py", Path("elsewhere.py")):
    absl.handle(absl.makeRecord("absl", logging.ERROR, str(path), 1, f"from {path.name}", (), None))


def fail(message):
    raise RuntimeError(message)


for message in ("Event loop is closed", "something else"):
    thread = threading.Thread(target=fail, args=(message,))
    thread.start()
    thread.join()
    doomed = type("Doomed", (), {"__del__": lambda self, message=message: fail(message)})()
    del doomed  # an exception in __del__: reported through sys.unraisablehook

# a failed task never awaited: asyncio logs it when the task is collected; orbax's read tasks' are not shown
import asyncio, gc
for where in (str(Path(orbax_logs.ORBAX_DIR) / "reader.py"), "elsewhere.py"):
    code = {}
    exec(compile(f"async def read():\n    raise ValueError('task of {Path(where).name}')", where, "exec"), code)
    loop = asyncio.new_event_loop()
    task = loop.create_task(code["read"]())
    loop.run_until_complete(asyncio.sleep(0.01))
    del task
    gc.collect()
    loop.close()

# a tensorstore future awaited as a task of its own fails in C code (asyncio's frames only): captured too; another
# awaitable's failed task is shown
import tensorstore as ts
class Awaitable:
    def __init__(self, message):
        self.message = message
    def __await__(self):
        raise ValueError(self.message)
        yield
opened = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": "/nonexistent/zarr/"}}, open=True)
for awaitable in (opened, Awaitable("not tensorstore's")):
    loop = asyncio.new_event_loop()
    task = asyncio.ensure_future(awaitable, loop=loop)
    loop.run_until_complete(asyncio.sleep(0.2))
    del task
    gc.collect()
    loop.close()
"""


def test_library_reports_of_a_failed_checkpoint_read_are_captured():
    """The capture itself, deterministic: an orbax record, a closed event loop's exceptions (from a thread,
    unraisable) and asyncio's report of a failed orbax task or of a tensorstore future awaited as a task are not
    shown; other records and exceptions are."""
    done = subprocess.run([sys.executable, "-c", CAPTURE_SCRIPT], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "from reader.py" not in done.stderr and "Event loop is closed" not in done.stderr
    assert "from elsewhere.py" in done.stderr
    assert done.stderr.count("RuntimeError: something else") == 2, done.stderr
    assert "task of reader.py" not in done.stderr and "task of elsewhere.py" in done.stderr
    assert 'Error opening "zarr" driver' not in done.stderr and "not tensorstore's" in done.stderr
