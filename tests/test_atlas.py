"""Atlas pictures and the shared plot helpers: palette, reconstruction panel, training curves."""
import json
import os
import subprocess
import sys
import logging

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from cytoself_jax import curves, figures
from cytoself_jax.analysis import atlas
from cytoself_jax.analysis.reconstructions import plot_reconstructions
from cytoself_jax.analysis.common import AnalysisInputError


def planted_atlas(rng, families=("nucleolus", "er", "golgi"), per_protein=30, proteins=4, others=200):
    coords, fam, prot = [], [], []
    for i, f in enumerate(families):
        centre = np.array([10.0 * i, 5.0 * (i % 2)])
        for p in range(proteins):
            coords.append(centre + rng.normal(scale=0.7, size=(per_protein, 2)))
            fam += [f] * per_protein
            prot += [f"{f}{p}"] * per_protein
    coords.append(rng.normal(scale=10.0, size=(others, 2)))
    fam += ["others"] * others
    prot += [f"X{j % 9}" for j in range(others)]
    return np.concatenate(coords), np.array(fam, dtype=object), np.array(prot)


def assert_picture(path, min_side=300):
    image = imread(path)
    assert image.shape[0] >= min_side and image.shape[1] >= min_side
    assert image[..., :3].std() > 0.02  # not blank


def test_palette_is_fixed_and_greys_non_classes():
    a = figures.categorical_palette(["golgi", "er", "others"], grey=["others"])
    b = figures.categorical_palette(["er", "others", "golgi", "er"], grey=["others"])
    assert a == b
    assert a["others"] == figures.GREY
    assert a["er"] != a["golgi"] and figures.GREY not in (a["er"], a["golgi"])
    ordered = figures.categorical_palette(["z", "a"], sort=False)
    assert ordered["z"] == figures.categorical_palette(["a"])["a"]  # first given name gets the first colour


def test_plot_atlas_and_family_proteins(tmp_path, caplog):
    rng = np.random.default_rng(0)
    xy, fam, prot = planted_atlas(rng)
    fam[:5] = None  # unannotated crops are drawn grey, not an error
    files = atlas.plot_atlas(xy, fam, tmp_path / "atlas.png", title="planted")
    assert files == [tmp_path / "atlas.png", tmp_path / "atlas.svg"]
    assert_picture(files[0])
    assert files[1].stat().st_size < 2_000_000  # rasterized points keep the SVG small
    with caplog.at_level(logging.WARNING, logger="matplotlib"):
        files = atlas.plot_family_proteins(xy, fam, prot, "golgi", tmp_path / "golgi.png", max_proteins=3, svg=False)
    assert "Ignoring fixed" not in caplog.text  # matplotlib keeps the zoom (it drops it with equal data limits)
    assert files == [tmp_path / "golgi.png"]
    assert_picture(files[0])
    with pytest.raises(AnalysisInputError, match=r"plot_family_proteins: family: no crop has family 'cilia'"):
        atlas.plot_family_proteins(xy, fam, prot, "cilia", tmp_path / "x.png")
    with pytest.raises(AnalysisInputError, match=r"plot_atlas: coords: expected 2-D coordinates \(N, 2\)"):
        atlas.plot_atlas(np.zeros((4, 3)), ["a"] * 4, tmp_path / "x.png")
    with pytest.raises(AnalysisInputError, match=r"plot_atlas: families: expected 4 labels"):
        atlas.plot_atlas(np.zeros((4, 2)), ["a"] * 3, tmp_path / "x.png")


def test_compute_umap_checks_neighbours():
    with pytest.raises(AnalysisInputError, match=r"compute_umap: n_neighbors: expected 2 <= n_neighbors < 10"):
        atlas.compute_umap(np.zeros((10, 4)), n_neighbors=15)


def test_plot_reconstructions(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.random((3, 16, 16, 2)).astype(np.float32)
    x[..., 1] = x[..., 1] * 2 - 1
    files = plot_reconstructions(x, x + 0.05, tmp_path / "recon.png", channels=("protein", "distance"),
                                       row_titles=["A", "B", "C"], svg=False)
    assert files == [tmp_path / "recon.png"]
    assert_picture(files[0], min_side=200)
    with pytest.raises(AnalysisInputError, match=r"plot_reconstructions: reconstructions: expected inputs and"):
        plot_reconstructions(x, x[:2], tmp_path / "bad.png", channels=("protein", "distance"))
    with pytest.raises(AnalysisInputError, match=r"plot_reconstructions: channels: expected 2 names"):
        plot_reconstructions(x, x, tmp_path / "bad.png", channels=("protein",))


def metrics_records():
    records = []
    for epoch in range(3):
        for step, loss in enumerate((4.0 - epoch, 3.0 - epoch)):
            records.append({"kind": "step", "epoch": epoch, "step": 10 * epoch + step, "loss": loss,
                            "reconstruction": loss / 10, "finite": 1.0})
        records.append({"kind": "epoch", "epoch": epoch, "step": 10 * epoch + 9, "learning_rate": 4e-4 / 10 ** epoch,
                        "images_per_s": 100.0, "val_loss": 5.0 - epoch, "val_accuracy_global": 0.1 * epoch,
                        "best_epoch": epoch})
    return records


def test_training_curves_table_and_picture(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in metrics_records()) + "\n")
    table = curves.training_curves_table(path)
    assert list(table.index) == [0, 1, 2]
    np.testing.assert_allclose(table["train_loss"], [3.5, 2.5, 1.5])  # mean of the logged steps of each epoch
    np.testing.assert_allclose(table["train_reconstruction"], [0.35, 0.25, 0.15])
    np.testing.assert_allclose(table["val_loss"], [5.0, 4.0, 3.0])
    np.testing.assert_allclose(table["learning_rate"], [4e-4, 4e-5, 4e-6])
    assert "train_finite" not in table and "train_step" not in table
    same, files = curves.plot_training_curves(metrics_records(), tmp_path / "curves.png")
    pd.testing.assert_frame_equal(same, table)
    assert files == [tmp_path / "curves.png", tmp_path / "curves.svg"]
    assert_picture(files[0])


def test_training_curves_errors(tmp_path):
    with pytest.raises(curves.CurvesError, match=r"read_metrics: .*missing.jsonl: expected a metrics.jsonl file"):
        curves.training_curves_table(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(metrics_records()[0]) + "\n{oops\n")
    with pytest.raises(curves.CurvesError, match=r"read_metrics: .*bad.jsonl: line 2: not valid JSON"):
        curves.training_curves_table(bad)
    with pytest.raises(curves.CurvesError, match=r"training_curves_table: metrics: expected 'step' or 'epoch'"):
        curves.training_curves_table([{"kind": "note", "epoch": 0}])


def test_atlas_panels_share_one_palette(tmp_path):
    from cytoself_jax.analysis.atlas import plot_atlas_panels

    rng = np.random.default_rng(0)
    fam_a = np.array(["er"] * 30 + ["golgi"] * 30)
    fam_b = np.array(["golgi"] * 30 + ["nucleus"] * 30)
    files = plot_atlas_panels([("a", rng.normal(size=(60, 2)), fam_a), ("b", rng.normal(size=(60, 2)), fam_b)],
                              tmp_path / "panels.png", svg=False)
    assert [f.name for f in files] == ["panels.png"] and files[0].stat().st_size > 5000
    with pytest.raises(ValueError, match="panels"):
        plot_atlas_panels([], tmp_path / "none.png")


def test_family_colours_are_distinct_for_colour_blind_readers():
    """The first COLOUR_BLIND_SAFE colours stay >= 14 CIELAB units apart (and from grey and white) in normal vision
    and under simulated deuteranopia, protanopia and tritanopia (Machado et al. 2009, severity 1)."""
    from cytoself_jax.analysis import colours

    machado = {"deutan": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]],
               "protan": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]],
               "tritan": [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]]}

    def linear(c):
        return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)

    def lab(lin):
        xyz = lin @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
        f = xyz / np.array([0.95047, 1.0, 1.08883])
        f = np.where(f > 0.008856, np.cbrt(f), 7.787 * f + 16 / 116)
        return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], -1)

    hexes = list(colours.PALETTE[:colours.COLOUR_BLIND_SAFE]) + [colours.UNANNOTATED_GREY, "#FFFFFF"]
    lin = linear(np.array([colours.rgb(h) for h in hexes]))
    for name, m in [("normal", np.eye(3)), *machado.items()]:
        # simulate in linear RGB, back to sRGB and on to CIELAB (lab() expects linear values)
        seen = np.clip(lin @ np.array(m).T, 0, 1)
        points = lab(seen)
        d = np.linalg.norm(points[:, None] - points[None], axis=-1) + np.eye(len(hexes)) * 1e9
        assert d.min() >= 14, name
    assert len(set(colours.PALETTE)) == len(colours.PALETTE)


def test_one_family_palette_and_legend_order():
    from cytoself_jax.analysis import colours

    names = ["golgi", "", "others", "er", "nuclear speckles", "mixed"]
    assert colours.legend_order(names) == ["er", "golgi", "nuclear speckles", "others", "mixed", "unannotated"]
    palette = colours.family_colours(names)
    assert list(palette) == colours.legend_order(names)
    assert palette["unannotated"] == colours.UNANNOTATED_GREY
    assert colours.UNANNOTATED_GREY not in [palette[n] for n in names if n]  # grey means unannotated only
    assert len({palette[n] for n in palette}) == len(palette)
    with pytest.warns(UserWarning, match="colours repeat"):
        colours.category_colours([str(i) for i in range(len(colours.PALETTE) + 1)])


def test_umap_functions_are_compiled_once_per_machine(tmp_path):
    # umap-learn's numba functions cache their machine code: a second process loads them, and its UMAP is the same
    script = ("import sys, time, numpy as np; from cytoself_jax.analysis.atlas import compute_umap; "
              "x = np.random.default_rng(0).normal(size=(200, 8)); t = time.time(); xy = compute_umap(x, seed=0); "
              "print(time.time() - t); np.save(sys.argv[1], xy)")
    env = {**os.environ, "CYTOSELF_JAX_CACHE": str(tmp_path / "cache")}
    env.pop("NUMBA_CACHE_DIR", None)
    seconds = []
    for name in ("first.npy", "second.npy"):
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        seconds.append(float(done.stdout.split()[-1]))
    cached = list((tmp_path / "cache" / "numba").rglob("*.nbi"))
    assert len(cached) >= 3, cached  # an index per cached function (a file per source file and function)
    np.testing.assert_array_equal(np.load(tmp_path / "first.npy"), np.load(tmp_path / "second.npy"))
    assert seconds[1] < seconds[0] / 2, seconds  # compiling is most of a small UMAP's time
