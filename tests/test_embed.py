"""Embedding any crops with a trained run: the Python API (arrays and stores) against a plain forward pass, size
fitting only when asked, the embed command on a store whose proteins each have one field and that the run never
saw, eval's message for an empty split, and the output-folder rules (only a folder eval or embed wrote is ever
replaced; stale temporary folders of killed runs are removed)."""
import dataclasses
import json
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import anndata
import chex
import jax
import numpy as np
import pandas as pd
import pytest
from skimage.transform import resize

from cytoself_jax.analysis.h5ad import store_rows
from cytoself_jax import embed as embed_cli
from cytoself_jax.analysis.outdir import MARKER
from cytoself_jax.analysis.summary import result_text
from cytoself_jax.analysis.report import (EvalError, EvalOptions, _already_evaluated, evaluation_identity,
                                         run_eval)
from cytoself_jax.data.pipeline import normalize_crop
from cytoself_jax.data.store import open_store, write_store
from cytoself_jax.imaging.fit import FitError
from cytoself_jax.inference import embed_images, embed_store, load_run
from run_fixtures import make_run

REPO = Path(__file__).resolve().parents[1]
CHANNELS = ("protein", "distance")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_store_path):
    return make_run(tmp_path_factory.mktemp("embed") / "run", tiny_store_path, CHANNELS)


@pytest.fixture(scope="module")
def run(run_dir):
    return load_run(run_dir)


def _raw(store, rows):
    """Raw crops of store rows in the run's channel order."""
    idx = [store.channels.index(c) for c in CHANNELS]
    return np.asarray(store.images[rows])[..., idx]


def _plain_embed(run, raw):
    images = np.stack([normalize_crop(c, CHANNELS) for c in raw])
    vq_local, vq_global = jax.jit(lambda v, x: run.model.apply(v, x, method=run.model.embed))(run.variables, images)
    return jax.device_get(vq_local), jax.device_get(vq_global)


def test_embed_images_matches_a_plain_forward_and_the_store_path(run, tiny_store_path):
    store = open_store(tiny_store_path)
    rows = np.arange(3, 96, 7)  # 14 crops: one full batch of 8 and a padded one
    raw = _raw(store, rows)
    emb = embed_images(run, raw, batch_size=8, progress=False)
    local, glob = _plain_embed(run, raw)
    chex.assert_shape(emb.global_vectors, (14, *run.model.spec.global_shape))
    chex.assert_trees_all_close(emb.global_vectors, np.asarray(glob.quantized), atol=1e-5)
    chex.assert_trees_all_close(emb.local_vectors, np.asarray(local.quantized), atol=1e-5)
    np.testing.assert_array_equal(emb.local_indices, local.indices)
    np.testing.assert_array_equal(emb.global_indices, glob.indices)
    assert len({v.tobytes() for v in emb.global_vectors}) > 3  # crops differ, so order is tested
    for hist, indices, k in ((emb.local_histograms, local.indices, run.model.spec.vq_local.num_codes),
                             (emb.global_histograms, glob.indices, run.model.spec.vq_global.num_codes)):
        want = np.stack([np.bincount(np.ravel(i), minlength=k) for i in indices])  # slow reference
        np.testing.assert_array_equal(hist, want)
    # The same crops through a store, and the array's channels given in another order: identical results.
    from_store = embed_store(run, store, rows, batch_size=8, progress=False)
    np.testing.assert_array_equal(from_store.global_indices, emb.global_indices)
    chex.assert_trees_all_close(from_store.global_vectors, emb.global_vectors, atol=1e-6)
    swapped = embed_images(run, raw[..., ::-1], channels=CHANNELS[::-1], batch_size=8, progress=False)
    np.testing.assert_array_equal(swapped.global_indices, emb.global_indices)
    with pytest.raises(ValueError, match=r"embed_images: images: expected \(N>0, H, W, 2\)"):
        embed_images(run, raw[..., :1], progress=False)


def test_other_crop_sizes_need_an_explicit_fit(run, tiny_store_path):
    store = open_store(tiny_store_path)
    small = _raw(store, np.arange(0, 96, 12))  # 8 crops of 32x32
    big = np.pad(small, ((0, 0), (4, 5), (3, 4), (0, 0)), mode="reflect")  # 41x39, the original at (4, 3)
    with pytest.raises(FitError, match=r"embed_images: images: shape: the run .*run takes 32x32 crops, these are "
                                       r"41x39: pass --center-crop or --resize"):
        embed_images(run, big, progress=False)
    # Centre crop of 41x39 -> 32x32 starts at ((41-32)//2, (39-32)//2) = (4, 3): the original crops exactly.
    centred = embed_images(run, big, fit="center-crop", batch_size=8, progress=False)
    np.testing.assert_array_equal(centred.global_indices, embed_images(run, small, batch_size=8,
                                                                       progress=False).global_indices)
    resized = embed_images(run, big, fit="resize", batch_size=8, progress=False)
    reference = np.stack([resize(c.astype(np.float32), (32, 32, 2), order=1, preserve_range=True,
                                 anti_aliasing=True) for c in big])
    np.testing.assert_array_equal(resized.global_indices, embed_images(run, reference, batch_size=8,
                                                                       progress=False).global_indices)
    with pytest.raises(FitError, match=r"crops of 20x20 are smaller than the 32x32 the run .* takes; use --resize"):
        embed_images(run, small[:, :20, :20], fit="center-crop", progress=False)


@pytest.fixture(scope="module")
def one_field_store(tmp_path_factory):
    """6 proteins the run never saw, each in one field of view, 40x40 crops (the run takes 32x32); 3 families."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:40, :40]
    images, rows = [], []
    for p in range(6):
        for _ in range(6):
            cy, cx = 10 + 20 * (p % 2) + rng.normal(0, 1), 10 + 6 * (p // 2) + rng.normal(0, 1)
            protein = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 15.0) + 0.1 * rng.random((40, 40))
            distance = 8.0 - np.sqrt((yy - 20) ** 2 + (xx - 20) ** 2)
            images.append(np.stack([protein, distance], -1))
            rows.append({"protein": f"NEW{p}", "fov": f"NEW{p}/only", "family": ["a", "b", "c"][p // 2]})
    path = tmp_path_factory.mktemp("onefield") / "new-cells"
    write_store(path, np.asarray(images, np.float32), pd.DataFrame(rows), CHANNELS)
    return path


def test_embed_command_one_field_per_protein_unseen_proteins(run_dir, one_field_store, capsys):
    # eval's split by field cannot hold out anything here; its message says why and what to do.
    with pytest.raises(EvalError, match=r"one field of view.*python -m cytoself_jax.embed"):
        run_eval(run_dir, EvalOptions(data=str(one_field_store), fit="center-crop", progress=False))
    args = ["--ckpt", str(run_dir), "--data", str(one_field_store), "--umap-seeds", "2", "--quiet"]
    assert embed_cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "40x40" in err and "--center-crop or --resize" in err
    assert not (run_dir / "embed").exists()

    assert embed_cli.main(args + ["--center-crop"]) == 0
    out = run_dir / "embed" / "new-cells"
    printed = capsys.readouterr().out
    assert f"outputs: {out}" in printed and "36 crops, 6 proteins" in printed
    adata = anndata.read_h5ad(out / "embeddings.h5ad")
    assert adata.n_obs == 36 and set(adata.obs["split"]) == {"all"}
    np.testing.assert_array_equal(store_rows(adata), np.arange(36))
    # The h5ad's embedding is the API's on the centre-cropped crops (in batches of 8: the program of
    # test_embed_images_matches_a_plain_forward_and_the_store_path, not one more to compile).
    api = embed_store(load_run(run_dir), open_store(one_field_store), fit="center-crop", batch_size=8,
                      progress=False)
    np.testing.assert_allclose(adata.X, api.global_vectors.reshape(36, -1), atol=1e-5)
    m = json.loads((out / "metrics.json").read_text())
    assert m["run"]["fit"] == "center-crop" and m["run"]["split"] == "all"
    assert m["classifier"] is None and any("no crop is of a protein the run was trained on" in n for n in m["notes"])
    assert m["knn"] is None
    assert len(m["clustering_score"]["umap"]["scores"]) == 2 and m["clustering_score"]["families"] == ["a", "b", "c"]
    # one field per protein: no same-protein positive from another field, so that mAP is undefined, said so
    assert m["map"]["protein"] is None and any("needs a protein with crops in 2 fields" in n for n in m["notes"])
    assert 0 <= m["map"]["family"] <= 1
    for name in ("atlas.png", "protein_profiles.csv", "neighbours.csv", "metrics.md", MARKER):
        assert (out / name).is_file(), name
    assert json.loads((out / MARKER).read_text())["written_by"] == "embed"
    assert not (run_dir / "eval").exists()  # never over the run's own eval
    # Run again, the pass held on disk (--pass-memory-mib 0; the same evaluation, so --force): its own earlier
    # output is replaced, with the same results, and the memory-mapped pass is gone.
    assert embed_cli.main(args + ["--center-crop", "--pass-memory-mib", "0", "--force"]) == 0
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    assert not (out / ".pass").exists() and ".pass" not in json.loads((out / MARKER).read_text())["files"]
    spilled = json.loads((out / "metrics.json").read_text())
    assert spilled["scores"] == m["scores"] and spilled["map"] == m["map"]
    assert [n for n in spilled["notes"] if n not in m["notes"]] == [
        next(n for n in spilled["notes"] if n.startswith("the pass's per-crop arrays ("))]
    np.testing.assert_array_equal(anndata.read_h5ad(out / "embeddings.h5ad").X, adata.X)


def test_a_large_pass_is_held_in_memory_mapped_files_with_the_same_values(run, tiny_store_path, tmp_path,
                                                                         monkeypatch):
    from cytoself_jax.analysis.embed import Spill, extract

    store, rows = open_store(tiny_store_path), np.arange(2, 90, 5)
    kwargs = dict(channels=CHANNELS, batch_size=8, full=True, labels=np.zeros(len(rows), np.int32), progress=False)
    in_memory = extract(run.model, run.variables, store, rows, **kwargs)
    assert in_memory.on_disk is None
    out = tmp_path / "out"
    small = extract(run.model, run.variables, store, rows, spill=Spill(tmp_path / "big", 10**9, out), **kwargs)
    assert small.on_disk is None and not (tmp_path / "big").exists()  # under the limit: in memory
    held = extract(run.model, run.variables, store, rows, spill=Spill(tmp_path / "pass", 0, out), **kwargs)
    assert held.on_disk == tmp_path / "pass"
    for array in (held.global_vectors, held.class_ranks["global"]):  # ndarrays over the files' mappings
        assert type(array) is np.ndarray and isinstance(array.base, np.memmap)
    files = sorted(p.name for p in held.on_disk.iterdir())
    assert files == sorted(["global_vectors.npy", "global_indices.npy", "local_indices.npy", "local_histograms.npy",
                            "class_ranks_global.npy", "class_ranks_local.npy", "squared_error.npy"]), files
    for field in ("global_vectors", "global_indices", "local_indices", "local_histograms", "squared_error"):
        np.testing.assert_array_equal(getattr(held, field), getattr(in_memory, field), err_msg=field)
        assert getattr(held, field).dtype == getattr(in_memory, field).dtype
    np.testing.assert_array_equal(np.load(held.on_disk / "global_vectors.npy"), in_memory.global_vectors)
    # a folder holding files (another pass, still read) is never written over
    with pytest.raises(ValueError, match=r"pass: expected an empty folder for the pass's arrays, found files"):
        extract(run.model, run.variables, store, rows, spill=Spill(tmp_path / "pass", 0, out), **kwargs)
    # a disk without the space is refused before anything is mapped (a mapped file on a full disk kills the process)
    from cytoself_jax import staging

    full = tmp_path / "full"
    monkeypatch.setattr(staging.shutil, "disk_usage", lambda path: types.SimpleNamespace(free=1000))
    with pytest.raises(staging.WriteFailed, match=r"out: .*No space left on device.*needs .*, 1 kB free"):
        extract(run.model, run.variables, store, rows, spill=Spill(full, 0, out), **kwargs)
    assert not any(full.iterdir())


def test_empty_test_split_message_says_why_and_what_to_do(run_dir, tmp_path):
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"protein": [f"P{i // 8}" for i in range(32)],
                          "fov": [f"P{i // 8}/{(i // 4) % 2}" for i in range(32)]})  # 2 fields per protein
    write_store(tmp_path / "two-fields", rng.random((32, 32, 32, 2)).astype(np.float32), table, CHANNELS)
    with pytest.raises(EvalError) as info:
        run_eval(run_dir, EvalOptions(data=str(tmp_path / "two-fields"), progress=False))
    message = str(info.value)
    assert "\n" not in message and "split 'test': expected at least 3 crops, found 0" in message
    assert "4 of 4 proteins have fewer than 3 fields" in message and "P0 (2 fields: train" in message
    assert "--split val" in message and "python -m cytoself_jax.embed" in message


# ------------------------------------------------------------------------------------- output folders (issue 12)
def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_eval_never_replaces_a_folder_it_did_not_write(run_dir, tmp_path):
    before = _snapshot(run_dir)
    with pytest.raises(EvalError, match=rf"{run_dir}: --out: holds files eval did not write .*choose a new folder"):
        run_eval(run_dir, EvalOptions(out=str(run_dir), umap_seeds=1, bootstrap=100, progress=False))
    assert _snapshot(run_dir) == before  # the run's checkpoints, config and metrics are all there
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    with pytest.raises(EvalError, match="holds files eval did not write"):
        run_eval(run_dir, EvalOptions(out=str(mine), umap_seeds=1, bootstrap=100, progress=False))
    assert (mine / "notes.txt").read_text() == "my notes" and len(list(mine.iterdir())) == 1
    # eval's own output folder is replaced by the next eval; embed does not replace eval's folder either.
    out = tmp_path / "eval-out"
    # what the evaluation computes does not matter to these rules (the marker lists whatever files were written):
    # one cheap evaluator
    options = EvalOptions(out=str(out), split="val", evaluators=("codebooks",), bootstrap=100, progress=False)
    run_eval(run_dir, options)
    assert json.loads((out / MARKER).read_text())["written_by"] == "eval"
    (out / "metrics.json").write_text("{}")
    assert not run_eval(run_dir, dataclasses.replace(options, force=True)).reused  # --force: evaluated again
    assert json.loads((out / "metrics.json").read_text())["run"]["split"] == "val"
    (out / "my-figure.svg").write_text("<svg/>")  # a user's file added to eval's folder: not eval's to delete
    with pytest.raises(EvalError, match=r"eval-out: --out: holds files eval did not write \(my-figure.svg\)"):
        run_eval(run_dir, options)
    (out / "my-figure.svg").unlink()
    store_path = json.loads((run_dir / "dataset.json").read_text())["store"]
    assert embed_cli.main(["--ckpt", str(run_dir), "--data", store_path, "--out", str(out), "--quiet"]) == 2
    assert json.loads((out / MARKER).read_text())["written_by"] == "eval"


def test_the_same_eval_again_reuses_its_output_and_anything_that_changes_recomputes(run_dir, tmp_path):
    out = tmp_path / "again"
    options = EvalOptions(out=str(out), split="val", umap_seeds=1, bootstrap=100, progress=False)
    first = run_eval(run_dir, options)
    assert not first.reused
    written = _snapshot(out)
    again = run_eval(run_dir, options)  # the README's first command run twice: nothing recomputed, nothing touched
    assert again.reused and again.metrics == first.metrics and _snapshot(out) == written
    assert "nothing was recomputed" in result_text(again)
    # --force recomputes (test_eval_never_replaces_a_folder_it_did_not_write). What else makes the output stale (checked without running eval again): another option, a new checkpoint
    # in the run's folder, another store content, a deleted picture.
    store = open_store(json.loads((run_dir / "dataset.json").read_text())["store"])
    identity = evaluation_identity(options, run_dir, store)
    assert _already_evaluated(out, identity) == first.metrics
    assert _already_evaluated(out, evaluation_identity(dataclasses.replace(options, knn_k=3), run_dir, store)) is None
    step = next(p for p in (run_dir / "checkpoints" / "best").iterdir() if p.name.isdigit())
    mtime = step.stat().st_mtime_ns
    os.utime(step, ns=(mtime, mtime + 10**9))  # as if saved again
    try:
        assert _already_evaluated(out, evaluation_identity(options, run_dir, store)) is None
    finally:
        os.utime(step, ns=(mtime, mtime))
    changed = dict(identity, store={**identity["store"], "pixels_sha256": "0" * 64})
    assert _already_evaluated(out, changed) is None
    (out / "atlas.png").unlink()
    assert _already_evaluated(out, identity) is None


def test_cli_out_is_the_run_directory_one_line_exit_2(run_dir):
    before = _snapshot(run_dir)
    proc = subprocess.run([sys.executable, str(REPO / "eval.py"), f"--ckpt={run_dir}", f"--out={run_dir}"],
                          capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {run_dir}: --out: holds files eval did not write")
    assert _snapshot(run_dir) == before


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has this id now (until the system reuses it)


def test_stale_temporary_folders_of_killed_evals_are_removed(run_dir, tmp_path):
    out = tmp_path / "ev"
    marker = {"written_by": "eval", "host": socket.gethostname()}
    dead, alive = _dead_pid(), os.getppid()
    stale = tmp_path / f".ev.tmp-{dead}"
    live = tmp_path / f".ev.tmp-{alive}"  # a process still running: its folder is in use
    foreign = tmp_path / f".ev.old-{dead}"  # named alike but without eval's marker: not ours
    for folder in (stale, live, foreign):
        folder.mkdir()
        (folder / "embeddings.h5ad").write_text("partial")
    for folder in (stale, live):
        (folder / MARKER).write_text(json.dumps(marker))
    # the one file checked below is all it needs to write
    run_eval(run_dir, EvalOptions(out=str(out), split="val", evaluators=("embeddings_h5ad",), progress=False))
    assert not stale.exists()
    assert live.exists() and foreign.exists() and (foreign / "embeddings.h5ad").read_text() == "partial"
    assert (out / "embeddings.h5ad").is_file()


def test_embed_help_lists_every_shared_option(capsys):
    # argparse formats help strings with %: an option's '95% interval' once crashed --help
    with pytest.raises(SystemExit) as exit_info:
        embed_cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--bootstrap", "--umap-max-crops", "--atlas-max-points", "--skip-bad-crops"):
        assert option in text
    assert "95% interval" in " ".join(text.split())
