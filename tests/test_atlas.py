"""Atlas pictures and the shared plot helpers: palette, reconstruction panel, training curves."""
import json
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
