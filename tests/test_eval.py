"""eval: streamed sharded embeddings vs a plain forward pass, feature interpretation, and the eval run's outputs,
errors and random-init floor, on the tiny store with a freshly initialised model (no training)."""
import json
import subprocess
import sys
from pathlib import Path

import chex
import jax
import numpy as np
import pandas as pd
import pytest

from conftest import tiny_config
from cytoself_jax.analysis.h5ad import store_rows
from cytoself_jax.analysis import interpret
from cytoself_jax.analysis.scores import classifier_ranks
from cytoself_jax.analysis.embed import extract
from cytoself_jax.analysis.evaluators.codebooks import codebook_usage
from cytoself_jax.analysis.report import EvalError, EvalOptions, run_eval
from cytoself_jax.data.pipeline import StoreSource
from cytoself_jax.data.splits import split_by_field
from cytoself_jax.data.store import open_store, write_store
from cytoself_jax.training.checkpoint import Checkpointer, LoopState
from cytoself_jax.training.run_record import record_run
from cytoself_jax.models import build_model
from cytoself_jax.train_state import create_train_state

REPO = Path(__file__).resolve().parents[1]
CHANNELS = ("protein", "distance")


def _spread_codebooks(model, variables, images, seed=0):
    """Codebooks drawn from the encoders' outputs on real crops, so an untrained model already gives crops
    different codes (a fresh codebook maps every crop to one or two codes, which would hide ordering bugs)."""
    rng = np.random.default_rng(seed)
    encode = jax.jit(lambda v, x: model.apply(v, x, method=lambda m, x: m.encoder_local(x, False)))
    z_local = encode(variables, images)
    z_global = jax.jit(lambda v, z: model.apply(v, z, method=lambda m, z: m.encoder_global(z, False)))(variables, z_local)
    params = jax.tree.map(np.asarray, variables["params"])
    for level, z in (("vq_local", z_local), ("vq_global", z_global)):
        k, d = params[level]["codebook"].shape
        pool = np.asarray(z).reshape(-1, d)
        params[level]["codebook"] = pool[rng.choice(len(pool), size=k, replace=False)]
    return jax.tree.map(jax.numpy.asarray, params)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_store_path):
    """A run directory (config, dataset.json, 'best' checkpoint, metrics.jsonl) of an untrained tiny model."""
    run_dir = tmp_path_factory.mktemp("eval") / "run"
    config = tiny_config(run_dir, tiny_store_path)
    store = open_store(tiny_store_path)
    image_shape = (32, 32, len(CHANNELS))
    model = build_model(config, image_shape, len(store.proteins))
    state = _init(model, image_shape, jax.random.PRNGKey(1))
    images = np.stack([StoreSource(store, np.arange(0, 96, 6), CHANNELS)[i]["image"] for i in range(16)])
    state = state.replace(params=_spread_codebooks(model, {"params": state.params, **state.model_state}, images))
    splits = split_by_field(store.table, config.data.split_fractions, seed=config.data.split_seed)
    record_run(run_dir, config, {"store": str(tiny_store_path), "proteins": list(store.proteins),
                                 "channels": list(CHANNELS), "image_shape": list(image_shape),
                                 "split_sizes": {k: len(v) for k, v in splits.items()}}, 0)
    checkpointer = Checkpointer(run_dir)
    checkpointer.save("best", state, LoopState(epoch=1, best_epoch=0))
    checkpointer.wait()
    checkpointer.close()
    with open(run_dir / "metrics.jsonl", "w") as f:
        for epoch in range(2):
            f.write(json.dumps({"kind": "step", "epoch": epoch, "step": 5 * epoch + 5, "loss": 3.0 - epoch}) + "\n")
            f.write(json.dumps({"kind": "epoch", "epoch": epoch, "step": 5 * epoch + 5, "val_loss": 3.1 - epoch,
                                "learning_rate": 4e-4, "best_epoch": epoch}) + "\n")
    variables = {"params": state.params, **state.model_state}
    return {"dir": run_dir, "model": model, "variables": variables, "store": store, "splits": splits, "state": state}


@pytest.fixture(scope="module")
def evaluated(tiny_run, tmp_path_factory):
    complexes = tmp_path_factory.mktemp("complexes") / "complexes.csv"
    pd.DataFrame({"protein": ["P0", "P2", "P1", "NOPE"], "complex": ["C1", "C1", "C2", "C2"]}).to_csv(complexes,
                                                                                                      index=False)
    result = run_eval(tiny_run["dir"], EvalOptions(umap_seeds=2, complexes=str(complexes), complex_permutations=99,
                                                   atlas_thumbnails=5, bootstrap=200, progress=False))
    return result


def _init(model, image_shape, key):
    return jax.jit(lambda k: create_train_state(model, image_shape, 4e-4, k))(key)  # eager init is ~10x slower


def _plain_forward(model, variables, images):
    return jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)


def test_embed_and_full_pass_match_a_plain_forward_with_a_partial_last_batch(tiny_run):
    model, variables, store = tiny_run["model"], tiny_run["variables"], tiny_run["store"]
    rng = np.random.default_rng(0)
    rows = rng.permutation(96)[:21]  # any order; 21 = 2 batches of 8 + 5 padded to 8 on the 8 devices
    assert jax.device_count() == 8
    emb = extract(model, variables, store, rows, channels=CHANNELS, batch_size=8, full=False, progress=False)
    labels = np.arange(21) % 5 - 1  # -1: a protein the run does not know
    full = extract(model, variables, store, rows, channels=CHANNELS, batch_size=8, full=True, reconstruct=[20, 0, 7],
                   labels=labels, progress=False)
    np.testing.assert_array_equal(emb.index, rows)
    np.testing.assert_array_equal(full.index, rows)
    assert emb.class_ranks is None and emb.squared_error is None

    source = StoreSource(store, rows, CHANNELS)
    images = np.stack([source[i]["image"] for i in range(len(rows))])
    ref = jax.device_get(_plain_forward(model, variables, images))
    chex.assert_shape(emb.global_vectors, (21, *model.spec.global_shape))
    # The embed-only path gives the full forward's vectors, and both the plain forward's, crop by crop.
    chex.assert_trees_all_close(emb.global_vectors, full.global_vectors, atol=1e-6)
    chex.assert_trees_all_close(full.global_vectors, np.asarray(ref.vq_global.quantized), atol=1e-5)
    np.testing.assert_array_equal(full.local_indices, ref.vq_local.indices)
    np.testing.assert_array_equal(emb.global_indices, ref.vq_global.indices)
    assert len({v.tobytes() for v in emb.global_vectors}) > 3  # crops really differ, so order is tested
    positions = int(np.prod(ref.vq_local.indices.shape[1:]))
    hist = np.stack([np.bincount(i.ravel(), minlength=model.spec.vq_local.num_codes) for i in ref.vq_local.indices])
    np.testing.assert_array_equal(emb.local_histograms, hist)
    assert np.all(emb.local_histograms.sum(axis=1) == positions)
    # kept for every crop of a pass, so in 16 bits when the codebook and the map allow it (they do here)
    assert (emb.local_indices.dtype, emb.global_indices.dtype, emb.local_histograms.dtype) == \
        (np.int16, np.int16, np.int16)
    for level in model.spec.heads:  # ranked on the device as classifier_ranks ranks the plain forward's logits
        expected = classifier_ranks(np.asarray(ref.logits[level]), labels)
        np.testing.assert_array_equal(full.class_ranks[level], expected)
    assert (full.class_ranks[level][labels == -1] == ref.logits[level].shape[1]).all()
    assert len(set(full.class_ranks[level][labels >= 0])) > 1
    with pytest.raises(ValueError, match="extract: labels: expected 21 class ids with full=True"):
        extract(model, variables, store, rows, channels=CHANNELS, batch_size=8, full=True, progress=False)
    mse = ((np.asarray(ref.reconstruction, np.float64) - images) ** 2).mean(axis=(1, 2))
    np.testing.assert_allclose(full.squared_error, mse, rtol=1e-4, atol=1e-7)
    chex.assert_trees_all_close(full.reconstructions, np.asarray(ref.reconstruction)[[20, 0, 7]], atol=1e-5)


def test_zero_codes_matches_a_numpy_loop():
    rng = np.random.default_rng(3)
    indices = rng.integers(0, 6, size=(2, 3, 3, 2))  # two splits of 4 dims each
    q = rng.normal(size=(2, 3, 3, 8)).astype(np.float32)
    out = interpret.zero_codes(q, indices, [1, 4])
    expected = q.copy()
    for b, y, x, s in np.ndindex(indices.shape):
        if indices[b, y, x, s] in (1, 4):
            expected[b, y, x, 4 * s: 4 * s + 4] = 0
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(interpret.zero_codes(q, indices, []), q)


def test_interpretation_zeroing_nothing_is_the_plain_reconstruction(tiny_run, tmp_path):
    model, variables, store = tiny_run["model"], tiny_run["variables"], tiny_run["store"]
    image = StoreSource(store, [5], CHANNELS)[0]["image"]
    local = np.asarray(jax.jit(lambda v, x: model.apply(v, x, method=model.embed))(variables, image[None])[0].indices)
    present = int(local.ravel()[0])
    absent = int(np.setdiff1d(np.arange(model.spec.vq_local.num_codes), local)[0])
    result = interpret.interpret_codes(model, variables, image, [[], [absent], [present]])
    plain = np.asarray(_plain_forward(model, variables, image[None]).reconstruction[0])
    chex.assert_trees_all_close(result.reconstruction, plain, atol=1e-5)
    chex.assert_trees_all_close(result.modified[0], plain, atol=1e-5)
    chex.assert_trees_all_close(result.modified[1], plain, atol=1e-5)
    np.testing.assert_array_equal(result.masks[2], (local[0] == present).any(-1))
    assert not result.masks[0].any() and result.masks[2].any()
    # zeroing a code that is there changes the image (an untrained decoder's output is tiny, hence relative)
    assert np.abs(result.modified[2] - plain).max() > 0.1 * np.abs(plain).max()
    files = interpret.plot_interpretation(result, tmp_path / "interp", ["none", "absent", "present"])
    assert files[0].stat().st_size > 0


def test_codebook_usage_counts():
    usage = codebook_usage(np.array([0, 2, 2, 0]))
    assert usage == {"num_codes": 4, "perplexity": pytest.approx(2.0), "codes_used": 2, "dead_codes": 2}


def test_eval_writes_sane_outputs(tiny_run, evaluated):
    import anndata

    out, m = evaluated.out_dir, evaluated.metrics
    model, store = tiny_run["model"], tiny_run["store"]
    test_rows = tiny_run["splits"]["test"]
    assert out == tiny_run["dir"] / "eval" / "test"
    for name in ("embeddings.h5ad", "metrics.json", "metrics.md", "protein_profiles.csv", "neighbours.csv",
                 "atlas.png", "atlas_left.png", "reconstructions.png", "feature_spectrum.png", "spectra_proteins.png",
                 "spectra_families.png", "curves.png", "atlas.html", "proteins.h5ad", "proteins_atlas.png",
                 "proteins_dendrogram.png", "probe.csv", "complexes.csv", "complexes.png"):
        assert (out / name).stat().st_size > 0, name
    assert len(list(out.glob("interpretation_*.png"))) == 1
    assert not list(out.parent.glob(".*"))  # no temporary folder left

    adata = anndata.read_h5ad(out / "embeddings.h5ad")
    assert adata.n_obs == len(test_rows)
    np.testing.assert_array_equal(np.sort(store_rows(adata)), test_rows)  # each test crop once
    table = store.table.iloc[store_rows(adata)]
    np.testing.assert_array_equal(adata.obs["protein"].astype(str), table["protein"])
    np.testing.assert_array_equal(adata.obs["fov"].astype(str), table["fov"])
    assert set(adata.obs["split"]) == {"test"}
    assert adata.X.shape == (len(test_rows), int(np.prod(model.spec.global_shape)))
    positions = int(np.prod(model.spec.local_shape[:2])) * model.spec.vq_local.num_splits
    assert np.all(adata.obsm["local_histogram"].sum(axis=1) == positions)
    assert adata.obsm["local_indices"].shape == (len(test_rows), positions)
    assert adata.obsm["X_umap"].shape == (len(test_rows), 2)
    assert list(adata.uns["channels"]) == list(CHANNELS) and list(adata.uns["proteins"]) == list(store.proteins)

    assert json.loads((out / "metrics.json").read_text()) == m
    assert m["run"]["crops"] == len(test_rows) and m["run"]["step"] == 0 and not m["run"]["random_init"]
    assert 0 <= m["reconstruction_mse"]["all"] and set(m["reconstruction_mse"]["per_channel"]) == set(CHANNELS)
    for level, usage in m["codebooks"].items():
        assert 1.0 <= usage["perplexity"] <= usage["codes_used"] + 1e-9
        assert usage["codes_used"] + usage["dead_codes"] == usage["num_codes"]
    for block in (m["classifier"]["local"], m["classifier"]["global"], m["knn"]):
        assert 0 <= block["top1"] <= block["top5"] <= 1
    assert m["knn"]["train_crops"] == len(tiny_run["splits"]["train"])
    assert len(m["clustering_score"]["umap"]["scores"]) == 2 and m["clustering_score"]["umap"]["n_neighbors"] == 15
    assert m["clustering_score"]["umap"]["mean"] > 0
    assert 0 <= m["map"]["protein"] <= 1 and 0 <= m["map"]["family"] <= 1 and not m["map"]["subsampled"]
    assert "clustering score (UMAP)" in (out / "metrics.md").read_text()

    profiles = pd.read_csv(out / "protein_profiles.csv")
    assert list(profiles["protein"]) == list(store.proteins)
    codes = profiles[[c for c in profiles if c.startswith("code_")]]
    assert codes.shape[1] == model.spec.vq_local.num_codes
    np.testing.assert_allclose(codes.sum(axis=1), positions)
    # The evaluators: interactive atlas, protein atlas, complexes, linear probes.
    assert m["atlas_html"] == {"points": len(test_rows), "drawn_points": len(test_rows), "thumbnails": 5,
                               "bytes": (out / "atlas.html").stat().st_size}
    proteins = anndata.read_h5ad(out / "proteins.h5ad")
    assert list(proteins.obs_names) == list(store.proteins) and m["proteins"]["proteins"] == 4
    np.testing.assert_allclose(proteins.X[1], adata.X[adata.obs["protein"] == "P1"].mean(0), rtol=1e-5)
    c = pd.read_csv(out / "complexes.csv").set_index("complex")
    assert c.loc["C1", "present"] == 2 and c.loc["C2", "missing"] == "NOPE" and np.isnan(c.loc["C2", "p_value"])
    assert m["complexes"]["scored"] == 1 and m["complexes"]["permutations"] == 99
    probes = pd.read_csv(out / "probe.csv")
    assert set(zip(probes["target"], probes["features"])) == {(t, f) for t in ("family", "protein")
                                                               for f in ("embedding", "pixels", "majority")}
    assert probes["test_crops"].eq(len(test_rows)).all()
    assert probes["train_crops"].eq(len(tiny_run["splits"]["train"])).all()
    # The majority-class floor predicts one class: its balanced accuracy is exactly 1 / classes.
    floor = probes.set_index(["target", "features"]).loc[("protein", "majority")]
    assert floor["balanced_accuracy"] == pytest.approx(1 / floor["classes"])
    # The planted blobs (a protein's bright spot at its own position) are linearly readable from pixels.
    assert m["probe"]["protein"]["pixels"]["balanced_accuracy"] > 0.9
    text = (out / "metrics.md").read_text()
    assert "linear probe family" in text and "complexes tighter than chance" in text
    near = pd.read_csv(out / "neighbours.csv")
    assert len(near) == 4 * 3 and set(near["rank"]) == {1, 2, 3}
    assert not (near["protein"] == near["neighbour"]).any()


def test_random_init_needs_no_checkpoint_and_evaluates_the_initial_model(tiny_run, tmp_path):
    run_dir = tmp_path / "fresh"
    run_dir.mkdir()
    for name in ("config.json", "dataset.json"):
        (run_dir / name).write_text((tiny_run["dir"] / name).read_text())
    with pytest.raises(EvalError, match="no complete 'best' checkpoint"):
        run_eval(run_dir, EvalOptions(umap_seeds=1, progress=False))
    assert not (run_dir / "eval").exists() and not (run_dir / "checkpoints").exists()

    result = run_eval(run_dir, EvalOptions(random_init=True, split="val", umap_seeds=1, progress=False))
    assert result.out_dir == run_dir / "eval" / "val-random-init"
    assert result.metrics["run"]["random_init"] and result.metrics["run"]["step"] == 0
    assert not (result.out_dir / "curves.png").exists()
    import anndata

    adata = anndata.read_h5ad(result.out_dir / "embeddings.h5ad")
    # The floor is the run's model at initialisation: the training loop's init key from config.seed.
    model, store = tiny_run["model"], tiny_run["store"]
    state = _init(model, (32, 32, 2), jax.random.split(jax.random.PRNGKey(0))[0])
    rows = store_rows(adata)[:4]
    images = np.stack([StoreSource(store, rows, CHANNELS)[i]["image"] for i in range(4)])
    embed = jax.jit(lambda v, x: model.apply(v, x, method=model.embed))
    q = embed({"params": state.params, **state.model_state}, images)[1].quantized
    np.testing.assert_allclose(adata.X[:4], np.asarray(q).reshape(4, -1), atol=1e-5)


def test_bad_options_fail_before_writing(tiny_run, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(EvalError, match="--proteins.*'NOPE'"):
        run_eval(tiny_run["dir"], EvalOptions(proteins=("NOPE",), out=str(out), progress=False))
    with pytest.raises(EvalError, match="--family"):
        run_eval(tiny_run["dir"], EvalOptions(family="nucleolus", out=str(out), progress=False))
    with pytest.raises(ValueError, match=r"nothing\.csv: complexes file not found"):
        run_eval(tiny_run["dir"], EvalOptions(complexes=str(tmp_path / "nothing.csv"), out=str(out), progress=False))
    with pytest.raises(FileNotFoundError, match="config.json"):
        run_eval(tmp_path, EvalOptions(out=str(out), progress=False))
    no_distance = tmp_path / "no_distance"
    table = pd.DataFrame({"protein": ["A"] * 3, "fov": ["A/0", "A/1", "A/2"]})
    write_store(no_distance, np.zeros((3, 32, 32, 2), np.float32), table, ("protein", "nucleus"))
    with pytest.raises(EvalError, match=r"store.json: channels: .*\['protein', 'distance'\].*incompatible"):
        run_eval(tiny_run["dir"], EvalOptions(data=str(no_distance), out=str(out), progress=False))
    assert not out.exists()


def test_cli_incompatible_store_is_one_line_and_exit_code_2(tiny_run, tmp_path):
    other = tmp_path / "small"
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"protein": ["A"] * 3 + ["B"] * 3, "fov": [f"{p}/{i}" for p in "AB" for i in range(3)]})
    write_store(other, rng.random((6, 16, 16, 2)).astype(np.float32), table, ("protein", "distance"))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "eval.py"), f"--ckpt={tiny_run['dir']}", f"--data={other}",
                           f"--out={out}"], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "store.json: shape" in lines[0] and "32x32" in lines[0] and "16x16" in lines[0]
    assert not out.exists()


def _numpy_clustering_score(points, labels):
    """The paper's clustering score, written out: spread of class medians over the median class radius."""
    names = sorted(set(labels) - {"", "others", "mixed"})
    centres = np.stack([np.median(points[labels == n], axis=0) for n in names])
    radii = [np.median(np.linalg.norm(points[labels == n] - c, axis=1)) for n, c in zip(names, centres)]
    spread = np.median(np.linalg.norm(centres - np.median(centres, axis=0), axis=1))
    return spread / np.median(radii)


def _snap_ties(sims: np.ndarray) -> np.ndarray:
    """Similarities (n,) with each chain of sorted neighbours closer than TIE_TOLERANCE set to the chain's top value,
    so sklearn sees them as the tie scores.average_precision makes of them."""
    from cytoself_jax.analysis.scores import TIE_TOLERANCE

    order = np.argsort(-sims, kind="stable")
    group = np.concatenate([[0], np.cumsum(-np.diff(sims[order]) > TIE_TOLERANCE)])
    snapped = np.empty_like(sims)
    snapped[order] = sims[order][np.searchsorted(group, group)]  # the first (highest) value of each chain
    return snapped


def test_eval_scores_agree_with_independent_recomputation(tiny_run, evaluated):
    """Each score of metrics.json recomputed from the written embeddings with plain numpy / sklearn."""
    import anndata
    from sklearn.metrics import average_precision_score

    out, m = evaluated.out_dir, evaluated.metrics
    adata = anndata.read_h5ad(out / "embeddings.h5ad")
    x, proteins = np.asarray(adata.X, np.float64), adata.obs["protein"].astype(str).to_numpy()
    families = adata.obs["family"].astype(str).to_numpy()
    scores = m["scores"]
    # codebook perplexity: exp of the entropy of the split's summed local code counts
    counts = adata.obsm["local_histogram"].sum(axis=0).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    assert scores["codebooks.local_perplexity"]["value"] == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    # the atlas map is the fixed-seed UMAP (never the best of several) and its score is the first seed's
    assert adata.uns["umap"]["params"]["random_state"] == 0 and m["clustering_score"]["umap"]["seeds"] == [0, 1]
    assert m["clustering_score"]["umap"]["scores"][0] == pytest.approx(
        _numpy_clustering_score(np.asarray(adata.obsm["X_umap"], np.float64), families), rel=1e-5)
    assert scores["clustering.raw"]["value"] == pytest.approx(_numpy_clustering_score(x, families), rel=1e-6)
    # kNN: the 10 nearest train crops (Euclidean) vote; a hit needs strictly more votes than any other protein
    train_rows = tiny_run["splits"]["train"]
    train = extract(tiny_run["model"], tiny_run["variables"], tiny_run["store"], train_rows, channels=CHANNELS,
                    batch_size=8, full=False, progress=False).global_vectors.reshape(len(train_rows), -1)
    train_p = tiny_run["store"].table["protein"].to_numpy()[train_rows]
    hits = []
    for row, truth in zip(x, proteins):
        nearest = np.argsort(((train - row) ** 2).sum(axis=1), kind="stable")[:10]
        votes = pd.Series(train_p[nearest]).value_counts()
        rivals = votes.drop(truth, errors="ignore")
        hits.append(votes.get(truth, 0) > (rivals.max() if len(rivals) else 0))
    assert scores["knn.top1"]["value"] == pytest.approx(np.mean(hits))
    # mAP same family: sklearn's AP per annotated query on cosine similarity against the annotated crops of other
    # proteins (its own protein's crops are neither positive nor negative), averaged per family then over families.
    # Similarities within scores.TIE_TOLERANCE are one tie there (an untrained model's quantized vectors come close).
    annotated = np.isin(families, sorted(set(families) - {"", "nan", "others", "mixed"}))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    ap, queried = [], []
    for i in np.flatnonzero(annotated):
        others = annotated & (proteins != proteins[i])
        if (families[others] == families[i]).any():
            ap.append(average_precision_score(families[others] == families[i], _snap_ties(unit[others] @ unit[i])))
            queried.append(families[i])
    per_family = pd.Series(ap).groupby(np.array(queried)).mean()
    assert scores["map.family"]["value"] == pytest.approx(per_family.mean())
    # every interval brackets its value, and metrics.md renders every record
    text = (out / "metrics.md").read_text()
    for record in scores.values():
        if record["low"] is not None:
            assert record["low"] - 1e-9 <= record["value"] <= record["high"] + 1e-9, record["key"]
        assert f"| {record['label']} |" in text


def test_a_new_score_is_one_evaluator_function_and_one_registry_line(tiny_run, tmp_path, monkeypatch):
    from cytoself_jax.analysis.context import Evaluation
    from cytoself_jax.analysis.evaluators import REGISTRY
    from cytoself_jax.analysis.records import Score
    from cytoself_jax.analysis.summary import result_text

    def mean_norm(ctx):
        value = float(np.linalg.norm(ctx.vectors, axis=1).mean())
        return Evaluation(scores=[Score("toy.mean_norm", "mean embedding norm", value, "toy score")],
                          details={"toy": {"value": value}})

    monkeypatch.setitem(REGISTRY, "toy", mean_norm)
    result = run_eval(tiny_run["dir"], EvalOptions(out=str(tmp_path / "out"), evaluators=("toy", "codebooks"),
                                                   progress=False))
    m = result.metrics
    assert m["evaluators"] == ["codebooks", "toy"]  # registry order, only those asked for
    assert list(m["seconds"]) == ["embed", "codebooks", "toy"] and min(m["seconds"].values()) >= 0
    assert list(m["scores"]) == ["codebooks.local_perplexity", "codebooks.global_perplexity", "toy.mean_norm"]
    assert "| mean embedding norm |" in (result.out_dir / "metrics.md").read_text()
    assert "mean embedding norm" in result_text(result) and m["toy"]["value"] > 0
    with pytest.raises(EvalError, match=r"--evaluators: unknown \['nope'\]"):
        run_eval(tiny_run["dir"], EvalOptions(out=str(tmp_path / "o2"), evaluators=("nope",), progress=False))


def test_unseen_proteins_are_placed_from_the_known_ones(tiny_run, tmp_path):
    """A run that held P3 out of training: its crops are in no split, and the unseen-protein evaluator's crop-level
    kNN family transfer equals a plain numpy vote of the 10 nearest known (train) crops."""
    from cytoself_jax.data.splits import splits_for_config

    run_dir = tmp_path / "heldout"
    config = tiny_config(run_dir, tiny_run["dir"].parent / "unused")
    config.data.path = json.loads((tiny_run["dir"] / "dataset.json").read_text())["store"]
    config.data.heldout_proteins = ("P3",)
    store = tiny_run["store"]
    run_splits = splits_for_config(store.table, config)
    proteins = store.table["protein"].to_numpy()
    assert run_splits.heldout_proteins == ("P3",) and run_splits.trained_proteins == ("P0", "P1", "P2")
    for rows in run_splits.splits.values():  # no crop of the held-out protein in any split
        assert not (proteins[rows] == "P3").any()
    image_shape = (32, 32, len(CHANNELS))
    model = build_model(config, image_shape, 3)
    state = _init(model, image_shape, jax.random.PRNGKey(2))
    record_run(run_dir, config, {"store": config.data.path, "proteins": ["P0", "P1", "P2"],
                                 "heldout_proteins": ["P3"], "channels": list(CHANNELS),
                                 "image_shape": list(image_shape),
                                 "split_sizes": {k: len(v) for k, v in run_splits.splits.items()}}, 0)
    checkpointer = Checkpointer(run_dir)
    checkpointer.save("best", state, LoopState(epoch=1, best_epoch=0))
    checkpointer.wait()
    checkpointer.close()
    result = run_eval(run_dir, EvalOptions(evaluators=("unseen_proteins",), umap_seeds=1, bootstrap=50,
                                           progress=False))
    scores = result.metrics["scores"]
    for key in ("unseen.family_knn_crop", "unseen.family_knn_protein", "unseen.family_probe_macro_f1",
                "unseen.family_probe_pixels_macro_f1"):
        assert scores[key]["value"] is not None and 0 <= scores[key]["value"] <= 1, key
    for key in ("unseen.family_knn_crop", "unseen.family_knn_protein"):  # a uniform guess among 2 known families
        assert scores[key]["chance"] == pytest.approx(0.5)
    table = pd.read_csv(result.out_dir / "unseen_proteins.csv")
    assert list(table["protein"]) == ["P3"] and table.loc[0, "family"] == "right"
    assert table.loc[0, "crops"] == 24 and table.loc[0, "fields"] == 3
    assert {c for c in table if c.startswith("nearest_")} == {"nearest_1", "nearest_2", "nearest_3"}
    # numpy reference of the crop-level transfer: 10 nearest train crops (Euclidean) vote; a tie is a miss
    variables = {"params": state.params, **state.model_state}
    known_rows, new_rows = run_splits.splits["train"], np.flatnonzero(proteins == "P3")
    known, new = (extract(model, variables, store, rows, channels=CHANNELS, batch_size=8, full=False,
                          progress=False).global_vectors.reshape(len(rows), -1) for rows in (known_rows, new_rows))
    families = store.table["family"].to_numpy()
    hits = []
    for row in new:
        nearest = np.argsort(((known - row) ** 2).sum(axis=1), kind="stable")[:10]
        votes = pd.Series(families[known_rows][nearest]).value_counts()
        rivals = votes.drop("right", errors="ignore")
        hits.append(votes.get("right", 0) > (rivals.max() if len(rivals) else 0))
    # one unseen family: balanced accuracy is the accuracy on it
    assert scores["unseen.family_knn_crop"]["value"] == pytest.approx(np.mean(hits))


def test_umap_above_umap_max_crops_is_fit_on_a_subsample_and_places_the_rest(tiny_run, tmp_path):
    import anndata

    result = run_eval(tiny_run["dir"], EvalOptions(out=str(tmp_path / "out"), split="val", umap_seeds=1,
                                                   umap_max_crops=16, atlas_max_points=12, bootstrap=50,
                                                   progress=False,
                                                   evaluators=("clustering", "embeddings_h5ad", "interactive_atlas")))
    m = result.metrics
    n = m["run"]["crops"]
    assert n > 16
    assert m["clustering_score"]["umap"]["fit_crops"] == 16
    assert f"16 of {n} crops" in m["scores"]["clustering.umap"]["basis"]
    assert any(note.startswith(f"UMAP: fit on a seeded subsample of 16 of {n} crops") for note in m["notes"])
    adata = anndata.read_h5ad(result.out_dir / "embeddings.h5ad")
    chex.assert_shape(adata.obsm["X_umap"], (n, 2))
    assert np.isfinite(adata.obsm["X_umap"]).all()
    assert adata.uns["provenance"]["umap_fit_crops"] == 16
    # atlas.html above --atlas_max_points: 12 crops drawn (as many thumbnails), a density image of all beneath
    assert m["atlas_html"]["points"] == n and m["atlas_html"]["drawn_points"] == m["atlas_html"]["thumbnails"] == 12
    assert f"12 of {n} crops drawn as points" in (result.out_dir / "atlas.html").read_text()
    # each stage's wall time and the process's peak memory after it (a running peak: never decreasing)
    assert list(m["peak_rss_mib"]) == list(m["seconds"]) == ["embed", "clustering", "embeddings_h5ad",
                                                             "interactive_atlas"]
    assert list(m["anonymous_rss_mib"]) == list(m["seconds"])
    peaks = list(m["peak_rss_mib"].values())
    assert peaks[0] > 50 and peaks == sorted(peaks)
    # the arrays held, without the pages of the memory-mapped store: at most the peak
    assert all(0 < anon <= peak for anon, peak in zip(m["anonymous_rss_mib"].values(), peaks))
