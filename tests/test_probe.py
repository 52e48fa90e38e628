"""Linear probes: scores against hand-computed macro-F1 / balanced accuracy, unseen classes, the evaluator's table."""
import numpy as np
import pandas as pd
import pytest

from cytoself_jax.analysis import probe
from cytoself_jax.analysis.common import AnalysisInputError


class FixedPredictions:
    """A 'pipeline' that predicts given labels, to check the scoring alone."""

    def __init__(self, predicted):
        self.predicted = np.asarray(predicted)

    def fit(self, x, y):
        return self

    def predict(self, x):
        return self.predicted[: len(x)]


def test_probe_scores_match_hand_computation_and_skip_unseen_classes():
    train_x, train_y = np.zeros((6, 2)), np.array(list("aabbcc"))
    test_y = np.array(list("aaabbcd"))  # 'd' never seen in training: left out and counted
    predicted = np.array(list("abbbbc"))  # for the 6 seen rows
    s = probe.probe_scores(FixedPredictions(predicted), train_x, train_y, np.zeros((7, 2)), test_y)
    # per class: a: tp 1, fp 0, fn 2 -> F1 2*1/(2*1+0+2) = .5; b: tp 2, fp 2, fn 0 -> 4/6; c: tp 1 -> 1.
    assert s["macro_f1"] == pytest.approx((0.5 + 4 / 6 + 1.0) / 3)
    assert s["balanced_accuracy"] == pytest.approx((1 / 3 + 1 + 1) / 3)  # mean recall per true class
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert (s["classes"], s["train"], s["test"], s["test_unseen"]) == (3, 6, 6, 1)
    with pytest.raises(AnalysisInputError, match=r"probe_scores: train_labels: expected at least 2 classes"):
        probe.probe_scores(FixedPredictions([]), train_x, ["a"] * 6, np.zeros((2, 2)), ["a", "a"])
    with pytest.raises(AnalysisInputError, match=r"probe_scores: test_x: expected 2 features like train_x, got 3"):
        probe.probe_scores(FixedPredictions([]), train_x, train_y, np.zeros((2, 3)), ["a", "a"])


def test_run_probes_separable_embedding_beats_noise_pixels(tmp_path):
    rng = np.random.default_rng(0)
    proteins = np.repeat([f"P{i}" for i in range(6)], 30)
    families = np.repeat(["nucleus", "nucleus", "er", "er", "mixed", "golgi"], 30)  # 'mixed' is not a class

    def table(rows):
        return pd.DataFrame({"protein": proteins[rows], "family": families[rows]})

    centres = rng.normal(scale=5.0, size=(6, 8))
    embedding = centres[np.repeat(np.arange(6), 30)] + rng.normal(size=(180, 8))
    pixels = rng.normal(size=(180, 64))  # no signal at all
    train, test = np.arange(180) % 3 != 0, np.arange(180) % 3 == 0
    result = probe.run_probes(tmp_path, {"embedding": (embedding[train], embedding[test]),
                                         "pixels": (pixels[train], pixels[test])}, table(train), table(test))
    assert result["family"]["embedding"]["macro_f1"] > 0.95
    assert result["protein"]["embedding"]["balanced_accuracy"] > 0.95
    assert result["family"]["pixels"]["balanced_accuracy"] < 0.6  # chance is 1/3
    assert result["family"]["embedding"]["classes"] == 3  # 'mixed' left out of the family probe
    assert result["family"]["embedding"]["test"] == int(np.sum(test & (families != "mixed")))
    assert result["family"]["pixels"]["pca_components"] == 50
    written = pd.read_csv(tmp_path / "probe.csv")
    assert list(written[["target", "features"]].itertuples(index=False, name=None)) == [
        ("family", "embedding"), ("family", "pixels"), ("protein", "embedding"), ("protein", "pixels")]
    assert written["macro_f1"].iloc[0] == pytest.approx(result["family"]["embedding"]["macro_f1"], abs=1e-4)


def test_protein_pixels_are_the_normalized_protein_channel(tiny_store_path):
    from cytoself_jax.data.pipeline import normalize_crop
    from cytoself_jax.data.store import open_store

    store = open_store(tiny_store_path)
    x = probe.protein_pixels(store, [3, 5])
    h, w = store.image_shape[:2]
    assert x.shape == (2, h * w) and x.dtype == np.float32
    c = store.channel_indices(("protein",))[0]
    np.testing.assert_array_equal(x[1], normalize_crop(store.images[5][..., c:c + 1], ("protein",)).ravel())
