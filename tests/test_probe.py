"""Linear probes: scores against hand-computed macro-F1 / balanced accuracy, unseen classes, the evaluator's table."""
import numpy as np
import pandas as pd
import pytest

from cytoself_jax.analysis import probe, probe_fit
from cytoself_jax.analysis.common import AnalysisInputError


@pytest.fixture(autouse=True)
def no_remembered_fits():
    """Each test fits afresh: the memo of recent fits is module state, shared by every test in the process."""
    probe_fit._FITS.clear()
    yield
    probe_fit._FITS.clear()


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
    # a target with one class is skipped before the others are fitted: the rest keep their own results
    one_class = lambda rows: table(rows).assign(site="everywhere")  # noqa: E731
    again = probe.run_probes(tmp_path, {"embedding": (embedding[train], embedding[test]),
                                        "pixels": (pixels[train], pixels[test])}, one_class(train), one_class(test),
                             targets=("site", "family", "protein"))
    assert again["site"] == {"embedding": None, "pixels": None, "majority": None}
    assert again["family"] == result["family"] and again["protein"] == result["protein"]
    assert result["family"]["embedding"]["macro_f1"] > 0.95
    assert result["protein"]["embedding"]["balanced_accuracy"] > 0.95
    assert result["family"]["pixels"]["balanced_accuracy"] < 0.6  # chance is 1/3
    assert result["family"]["embedding"]["classes"] == 3  # 'mixed' left out of the family probe
    assert result["family"]["embedding"]["test"] == int(np.sum(test & (families != "mixed")))
    assert result["family"]["pixels"]["pca_components"] == 50
    assert result["family"]["pixels"]["selected_on"] == "defaults" and result["family"]["pixels"]["C"] == 1.0
    written = pd.read_csv(tmp_path / "probe.csv")
    assert list(written[["target", "features"]].itertuples(index=False, name=None)) == [
        ("family", "embedding"), ("family", "pixels"), ("family", "majority"), ("protein", "embedding"),
        ("protein", "pixels"), ("protein", "majority")]
    assert written["macro_f1"].iloc[0] == pytest.approx(result["family"]["embedding"]["macro_f1"], abs=1e-4)
    assert written["macro_f1_ci_low"].isna().all()  # no fields of view given: no intervals
    assert set(probe.PROBE_COLUMNS) - {"<metric>", "<metric>_ci_low / _ci_high", "<metric>_chance"} <= set(written)


def test_crop_pixels_are_the_model_s_normalized_channels(tiny_store_path):
    from cytoself_jax.data.pipeline import normalize_crop
    from cytoself_jax.data.store import open_store

    store = open_store(tiny_store_path)
    h, w = store.image_shape[:2]
    x = probe.protein_pixels(store, [3, 5])
    assert x.shape == (2, h * w) and x.dtype == np.float32
    c = store.channel_indices(("protein",))[0]
    np.testing.assert_array_equal(x[1], normalize_crop(store.images[5][..., c:c + 1], ("protein",)).ravel())
    channels = ("protein", "distance")  # every channel the model reads, in its order
    x = probe.crop_pixels(store, [3, 5], channels)
    assert x.shape == (2, h * w * 2)
    idx = list(store.channel_indices(channels))
    np.testing.assert_array_equal(x[0], normalize_crop(store.images[3][..., idx], channels).ravel())


def _slow_selection(train_x, train_y, val_x, val_y, pixels):
    """Every setting fitted from scratch as its own pipeline; the best validation macro-F1, first on ties; along
    each C path (small to large) stop after C_PATIENCE values in a row below the path's best so far."""
    from sklearn.metrics import f1_score

    best = None
    for k in (sorted({min(k, len(train_x) - 1, train_x.shape[1]) for k in probe_fit.PCA_GRID}) if pixels else [None]):
        scores = []
        for c in sorted(probe_fit.C_GRID):
            model = probe.pixel_pipeline(k, 0, C=c) if pixels else probe.embedding_pipeline(C=c)
            predicted = model.fit(train_x, train_y).predict(val_x)
            score = f1_score(val_y, predicted, labels=np.unique(val_y), average="macro", zero_division=0)
            if best is None or score > best[0] + 1e-12:
                best = (score, c, k)
            scores.append(score)
            tail = scores[-probe_fit.C_PATIENCE:]
            if len(scores) > probe_fit.C_PATIENCE and all(t <= max(scores[:-probe_fit.C_PATIENCE]) for t in tail):
                break
    return best


@pytest.mark.parametrize("pixels", [False, True])
def test_settings_are_chosen_on_validation_as_a_slow_grid_search_would(pixels):
    rng = np.random.default_rng(1 + pixels)
    centres = rng.normal(scale=0.6, size=(3, 40))

    def draw(n):
        y = np.repeat(["a", "b", "c"], n)
        return centres[np.searchsorted(["a", "b", "c"], y)] + rng.normal(size=(3 * n, 40)), y

    (train_x, train_y), (val_x, val_y) = draw(20), draw(30)
    fitted = probe_fit.fit_probe(train_x, train_y, val_x, val_y, pixels=pixels)
    score, c, k = _slow_selection(train_x, train_y, val_x, val_y, pixels)
    assert (fitted.C, fitted.pca_components, fitted.selected_on) == (c, k, "val")
    assert fitted.val_macro_f1 == pytest.approx(score, abs=1e-9)
    np.testing.assert_array_equal(fitted.classes, ["a", "b", "c"])



def test_parallel_paths_fit_exactly_what_one_process_fits(monkeypatch):
    # The pixel side's paths (one per number of components) run in worker processes when there are several cores:
    # the chosen settings and the fitted weights are those of the same paths run one after the other here.
    rng = np.random.default_rng(5)
    centres = rng.normal(scale=0.5, size=(4, 60))
    y = np.repeat(list("abcd"), 25)
    train_x, val_x = (centres[np.searchsorted(list("abcd"), y)] + rng.normal(size=(100, 60)) for _ in range(2))
    calls = []
    monkeypatch.setattr("joblib.cpu_count", lambda: 2)  # worker processes even on a one-core machine
    parallel = probe_fit.fit_probe(train_x, y, val_x, y, pixels=True)
    monkeypatch.setattr(probe_fit, "in_processes", lambda fn, args: calls.append(len(args)) or [fn(*a) for a in args])
    probe_fit._FITS.clear()  # fit again, not recall the fit above
    serial = probe_fit.fit_probe(train_x, y, val_x, y, pixels=True)
    assert calls == [len({min(k, 60) for k in probe_fit.PCA_GRID})]  # components capped at the 60 features
    assert (parallel.C, parallel.pca_components, parallel.val_macro_f1) == \
        (serial.C, serial.pca_components, serial.val_macro_f1)
    np.testing.assert_array_equal(parallel.classifier.coef_, serial.classifier.coef_)
    np.testing.assert_array_equal(parallel.predict(val_x), serial.predict(val_x))
    assert probe_fit.in_processes(divmod, [(7, 2), (9, 4), (1, 1)]) == [(3, 1), (2, 1), (1, 0)]


def test_a_fit_with_the_inputs_of_a_recent_one_is_that_fit(monkeypatch):
    # eval fits the same probe in linear_probe and unseen_proteins (same crops): the second is the first's result,
    # and any change of input (a label, a pixel, the seed) fits again
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(60, 30)), np.repeat(list("abc"), 20)
    fits = []
    real = probe_fit._paths  # planned once per probe fitted
    monkeypatch.setattr(probe_fit, "_paths", lambda *a: fits.append(1) or real(*a))
    first = probe_fit.fit_probe(x, y, x[:30], y[:30], pixels=True)
    assert probe_fit.fit_probe(x.copy(), y.astype(object), x[:30], y[:30], pixels=True) is first and len(fits) == 1
    changed_label = y.copy()
    changed_label[0] = "b"
    changed_pixel = x.copy()
    changed_pixel[5, 7] += 1e-6
    for args, kwargs in [((x, changed_label, x[:30], y[:30]), {}), ((changed_pixel, y, x[:30], y[:30]), {}),
                         ((x, y, x[:30], y[:30]), {"seed": 1}), ((x, y), {})]:
        refit = probe_fit.fit_probe(*args, pixels=True, **kwargs)
        assert refit is not first
    assert len(fits) == 5
    probe_fit._FITS.clear()
    again = probe_fit.fit_probe(x, y, x[:30], y[:30], pixels=True)  # a refit gives the same probe
    assert again is not first and len(fits) == 6
    assert (again.C, again.pca_components, again.val_macro_f1) == (first.C, first.pca_components, first.val_macro_f1)
    np.testing.assert_array_equal(again.classifier.coef_, first.classifier.coef_)


def test_probes_fitted_together_are_the_probes_fitted_alone(monkeypatch):
    # run_probes fits all its probes in one pool (the costliest paths first): each is what fit_probe gives alone,
    # a problem given twice is fitted once, and the pool gets every path of every probe at once
    rng = np.random.default_rng(9)
    centres = rng.normal(scale=0.5, size=(5, 40))
    y = np.repeat(list("abcde"), 16)
    x, val_x = (centres[np.searchsorted(list("abcde"), y)] + rng.normal(size=(80, 40)) for _ in range(2))
    family = np.where(np.isin(y, ["a", "b"]), "one", "two")
    problems = [dict(train_x=x, train_y=y, val_x=val_x, val_y=y, pixels=True),
                dict(train_x=x, train_y=family, val_x=val_x, val_y=family),
                dict(train_x=x, train_y=y, val_x=val_x, val_y=y, pixels=True)]
    pools = []
    real = probe_fit.in_processes
    monkeypatch.setattr(probe_fit, "in_processes", lambda fn, args: pools.append(len(args)) or real(fn, args))
    together = probe_fit.fit_checked([probe_fit.check_problem(**problem) for problem in problems])
    assert pools == [len({min(k, 40) for k in probe_fit.PCA_GRID}) + 1] and together[2] is together[0]
    probe_fit._FITS.clear()
    alone = [probe_fit.fit_probe(**problem) for problem in problems[:2]]
    for a, b in zip(together, alone):
        assert (a.C, a.pca_components, a.val_macro_f1) == (b.C, b.pca_components, b.val_macro_f1)
        np.testing.assert_array_equal(a.classifier.coef_, b.classifier.coef_)
        np.testing.assert_array_equal(a.classes, b.classes)


def test_score_predictions_against_sklearn_with_intervals_and_chance():
    from sklearn.metrics import balanced_accuracy_score, f1_score

    rng = np.random.default_rng(3)
    truth = np.repeat(["er", "nucleus", "golgi"], [60, 30, 10])
    predicted = np.where(rng.random(100) < 0.7, truth, rng.choice(["er", "nucleus", "golgi"], 100))
    fovs = np.array([f"{t}/{i % 10}" for i, t in enumerate(truth)])
    s = probe.score_predictions(truth, predicted, 4, groups=fovs, strata=truth, n_boot=300)
    assert s["balanced_accuracy"].value == pytest.approx(balanced_accuracy_score(truth, predicted))
    assert s["macro_f1"].value == pytest.approx(f1_score(truth, predicted, average="macro"))
    assert s["accuracy"].value == pytest.approx(np.mean(truth == predicted))
    for score in s.values():
        assert score.low < score.value < score.high and score.groups == 30 and score.n == 100
    # uniform guess among 4 classes: recall 1/4; F1 per class 2 * share * (1/4) / (share + 1/4)
    shares = np.array([0.6, 0.3, 0.1])
    assert s["balanced_accuracy"].chance == s["accuracy"].chance == 0.25
    assert s["macro_f1"].chance == pytest.approx(np.mean(2 * shares * 0.25 / (shares + 0.25)))
    bare = probe.score_predictions(truth, predicted, 4)
    assert bare["accuracy"].low is None and bare["accuracy"].value == s["accuracy"].value


def test_majority_row_and_run_probes_with_validation(tmp_path):
    rng = np.random.default_rng(4)
    proteins = np.repeat([f"P{i}" for i in range(6)], 30)
    families = np.repeat(["nucleus", "nucleus", "nucleus", "er", "er", "golgi"], 30)
    fovs = np.array([f"{p}/{i % 3}" for i, p in enumerate(proteins)])
    centres = rng.normal(scale=4.0, size=(6, 8))
    embedding = centres[np.repeat(np.arange(6), 30)] + rng.normal(size=(180, 8))
    pixels = rng.normal(size=(180, 30))
    part = np.array([f[-1] for f in fovs]).astype(int)  # field 0 train, 1 val, 2 test
    table = pd.DataFrame({"protein": proteins, "family": families, "fov": fovs})
    split = {name: part == i for i, name in enumerate(("train", "val", "test"))}
    features = {name: tuple(x[split[s]] for s in ("train", "val", "test"))
                for name, x in (("embedding", embedding), ("pixels", pixels))}
    result = probe.run_probes(tmp_path, features, table[split["train"]], table[split["test"]],
                              val_table=table[split["val"]], n_boot=100)
    floor = result["family"]["majority"]
    assert floor["accuracy"] == pytest.approx(0.5) and floor["balanced_accuracy"] == pytest.approx(1 / 3)
    assert result["family"]["embedding"]["selected_on"] == "val"
    assert result["family"]["embedding"]["C"] in probe_fit.C_GRID
    assert result["family"]["pixels"]["pca_components"] in {16, 30}  # the grid capped at the 30 pixel features
    emb = result["protein"]["embedding"]["scores"]["balanced_accuracy"]
    assert emb["value"] > 0.9 and emb["groups"] == 6 and emb["low"] <= emb["value"] <= emb["high"]
    written = pd.read_csv(tmp_path / "probe.csv")
    assert written.loc[written["features"] == "majority", "test_crops"].tolist() == [60, 60]
    assert (written["test_fovs"] == 6).all()
    assert written.loc[written["features"] != "majority", "selected_on"].eq("val").all()


def test_transfer_probes_place_unseen_proteins_by_family():
    rng = np.random.default_rng(5)
    family_centre = {"nucleus": np.full(6, 3.0), "er": np.full(6, -3.0), "golgi": np.r_[np.full(3, 3.0),
                                                                                        np.full(3, -3.0)]}

    def crops(fams):
        x = np.stack([family_centre[f] for f in fams]) + rng.normal(size=(len(fams), 6))
        return x, np.asarray(fams)

    seen_x, seen_f = crops(["nucleus"] * 40 + ["er"] * 40)
    val_x, val_f = crops(["nucleus"] * 10 + ["er"] * 10)
    unseen_x, unseen_f = crops(["nucleus"] * 12 + ["er"] * 12 + ["golgi"] * 5)  # no seen protein is golgi
    groups = np.array([f"u{i // 4}" for i in range(len(unseen_f))])
    noise = rng.normal(size=(len(seen_f) + len(unseen_f) + len(val_f), 20))
    bad = noise[len(seen_f):len(seen_f) + len(unseen_f)].copy()
    bad[3, 4] = np.nan
    sides = {"embedding": (seen_x, unseen_x, val_x),
             "pixels": (noise[:len(seen_f)], noise[len(seen_f):len(seen_f) + len(unseen_f)], noise[-len(val_f):]),
             "broken": (noise[:len(seen_f)], bad, None)}
    results = probe.transfer_probes(sides, seen_f, unseen_f, val_f, unseen_groups=groups, n_boot=200)
    result = results["embedding"]
    assert (result.test, result.test_unseen, result.classes) == (24, 5, 2)
    assert result.scores["macro_f1"].value > 0.95 and result.scores["macro_f1"].basis.startswith("crops of proteins")
    # fitted together, each side is what it is alone; a side with unusable inputs gets its error, not the others
    alone = probe.transfer_probes({"pixels": sides["pixels"]}, seen_f, unseen_f, val_f, unseen_groups=groups,
                                  n_boot=200)["pixels"]
    assert results["pixels"].scores == alone.scores and results["pixels"].pca_components == alone.pca_components
    assert isinstance(results["broken"], AnalysisInputError)
    assert str(results["broken"]).startswith("probe of family on broken: test_x: expected finite values")
    with pytest.raises(AnalysisInputError, match="probe of family on broken: test_x"):
        probe.evaluate_probes([dict(features="broken", target="family", train_x=sides["broken"][0],
                                    train_y=seen_f, test_x=bad, test_y=unseen_f)])


def test_macro_f1_from_counts_equals_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(3)
    for n_true, n_pred in ((2, 2), (4, 6), (5, 3)):  # predicted classes never true, true classes never predicted
        truth = rng.choice([f"c{i}" for i in range(n_true)], 200)
        predicted = rng.choice([f"c{i}" for i in range(n_pred)], 200)
        expected = f1_score(truth, predicted, labels=np.unique(truth), average="macro", zero_division=0)
        assert probe_fit.macro_f1(truth, predicted) == pytest.approx(expected, abs=1e-12)
