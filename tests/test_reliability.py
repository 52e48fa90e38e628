"""Reliability: a killed training resumes to the same parameters, half-written checkpoints are never used, a
non-finite loss keeps the last good checkpoint, codebook collapse is reported, runs are deterministic, and every
bad input ends with one clear line and leaves nothing behind."""

import dataclasses
import functools
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
import pandas as pd
import pytest
from conftest import tiny_config

from cytoself_jax.data import store as store_lib
from cytoself_jax.data.pipeline import make_dataset
from cytoself_jax.data.splits import SplitError, split_by_field
from cytoself_jax.data.store import PIXEL_CHECK_FILE, StoreError, open_store, verify_pixels, write_store
from cytoself_jax.training import mesh as mesh_lib
from cytoself_jax.training.checkpoint import Checkpointer, RunLock
from cytoself_jax.training.loop import NonFiniteLossError, codebook_warnings, evaluate, train
from cytoself_jax.training.state import build_model, create_train_state
from cytoself_jax.training.step import make_eval_step

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests" / "configs" / "tiny.py"
STEPS_PER_EPOCH = 4  # tiny store: 32 training crops (one field of each of 4 proteins), batch 8
FLOOR = 1.5  # config.train.min_codebook_perplexity of these runs (changes no number, only warnings)


def _config(run_dir: Path, store: Path):
    config = tiny_config(run_dir, store)
    config.train.min_codebook_perplexity = FLOOR
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
            f"--config.data.path={store}", f"--config.train.min_codebook_perplexity={FLOOR}", *extra]


def _env() -> dict:
    # Same devices (XLA_FLAGS from conftest) and the same compilation cache: the subprocess loads the programs
    # this process compiled instead of compiling them again.
    return {**os.environ, "CYTOSELF_JAX_CACHE": jax.config.jax_compilation_cache_dir or "off"}


def _kill_when(cmd: list[str], condition, log: Path, timeout: float = 120.0) -> None:
    """Run cmd and SIGKILL it as soon as condition() holds (polled every millisecond or so)."""
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if condition():
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
        else:
            proc.kill()
            proc.wait()
            pytest.fail(f"the run ended (rc={proc.returncode}) before the kill point:\n{log.read_text()[-3000:]}")
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


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


def _in_epoch_2(run_dir: Path) -> bool:
    path = run_dir / "metrics.jsonl"
    return bool(_step_dirs(run_dir, "latest")) and path.exists() and '"kind": "step", "epoch": 1,' in path.read_text()


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
    state, loop = _restore(run, reference.state)
    assert int(state.step) == int(reference.state.step) == 2 * STEPS_PER_EPOCH
    chex.assert_trees_all_close(jax.device_get(state.params), jax.device_get(reference.state.params), atol=1e-6)
    assert dataclasses.replace(loop, stop_reason="") == dataclasses.replace(reference.loop, stop_reason="")
    assert _saved_steps(run) == _saved_steps(reference.run_dir)
    # the metrics log reads as if the run had never been interrupted: every step once, same numbers
    got, want = _numbers(_records(run)), _numbers(_records(reference.run_dir))
    assert [(r["kind"], r["epoch"], r["step"]) for r in got] == [(r["kind"], r["epoch"], r["step"]) for r in want]
    for a, b in zip(got, want):
        np.testing.assert_allclose([v for v in a.values() if isinstance(v, float)],
                                   [v for v in b.values() if isinstance(v, float)], rtol=1e-5)


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


def test_non_finite_loss_mid_run_keeps_the_last_good_checkpoint(tmp_path, tiny_store_path, reference):
    run = tmp_path / "run"
    shutil.copytree(reference.run_dir, run)
    config = _config(run, tiny_store_path)
    config.train.max_epochs = 3
    config.loss.reconstruction = float("nan")  # poisons the loss from the first step of epoch 3
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


def test_codebook_collapse_is_counted_and_warned(tiny_store_path):
    config = _config("unused", tiny_store_path)
    store = open_store(tiny_store_path)
    channels = tuple(config.data.channels)
    image_shape = (32, 32, len(channels))
    model = build_model(config, image_shape, len(store.proteins))
    splits = split_by_field(store.table, tuple(config.data.split_fractions), seed=config.data.split_seed)
    val = make_dataset(store, splits["val"], channels=channels, batch_size=16, train=False)
    mesh = mesh_lib.make_mesh()
    init = functools.partial(create_train_state, model, image_shape, config.train.learning_rate)
    state = jax.jit(init, out_shardings=mesh_lib.replicated(mesh))(jax.random.PRNGKey(0))
    # every code far from the encoder's outputs but code 5: every position picks code 5, the other 31 are dead
    codebook = jnp.full_like(state.params["vq_local"]["codebook"], 1e3).at[5].set(0.0)
    collapsed = state.replace(params={**state.params, "vq_local": {"codebook": codebook}})
    metrics = evaluate(make_eval_step(model, config.loss, 0.1), collapsed, val, mesh)
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
    assert all({"val_dead_codes_local", "val_dead_codes_global", "val_perplexity_local"} <= set(r) for r in epochs)
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
    if "pixels" in message:
        assert not (store / PIXEL_CHECK_FILE).exists()  # a refused array is not recorded as checked


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
    store = open_store(_good_store(tmp_path / "store"))
    verify_pixels(store, progress=False)
    assert (store.path / PIXEL_CHECK_FILE).exists()

    def scan(*args, **kwargs):
        raise AssertionError("scanned again")

    monkeypatch.setattr(store_lib, "check_pixels", scan)
    verify_pixels(open_store(store.path), progress=False)  # recorded: no scan
    images = np.load(store.path / "crops.npy")
    images[2, 0, 0, 0] = np.nan
    time.sleep(0.01)
    np.save(store.path / "crops.npy", images)  # a new version of the array: scanned again
    monkeypatch.undo()
    with pytest.raises(StoreError, match=r"row 2 \(NaN/inf"):
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
    ([], 1, "error: {store}: store: expected a crop store directory, found nothing"),
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
