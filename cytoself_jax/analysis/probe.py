"""Linear probes: how well a linear classifier reads localization (or protein identity) off an embedding.

The standard evaluation of DINO4Cells and SubCell: logistic regression trained on the train split's embeddings,
scored on the held-out split (macro-F1 and balanced accuracy, so small classes count as much as large ones).
Like for like against the baseline a learned embedding must beat to be worth training: the same probe on PCA of
the pixels of every channel the model reads, normalized as the model sees them (crop_pixels). Each side gets its
own regularization C (and the pixel side its number of principal components), chosen on the validation split, so
neither side is handicapped by a setting tuned for the other. Beside them the majority-class row (always the most
frequent training class): the floor. Scores carry cluster-bootstrap intervals over fields of view
(analysis/uncertainty.py). transfer_probes train on proteins the model saw and test on proteins it never saw.
Fitting (C and PCA size chosen on validation, the paths of all probes in one pool of workers): analysis/probe_fit.py.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from cytoself_jax.analysis.common import AnalysisInputError, as_labels, as_matrix, fail
from cytoself_jax.analysis.probe_fit import (DEFAULT_C, PIXEL_COMPONENTS, LinearProbe, check_problem, fit_checked,
                                            macro_f1, rows_kept)
from cytoself_jax.analysis.scores import NON_CLASSES, macro_mean
from cytoself_jax.analysis.records import Score
from cytoself_jax.analysis.uncertainty import bootstrap_ci, bootstrap_mean_ci

METRICS = ("macro_f1", "balanced_accuracy", "accuracy")


def crop_pixels(store, rows: Sequence[int], channels: Sequence[str],
                fit: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """(N, H*W*C) float32 pixels of the store's crops `rows`, channels in the order asked, exactly as the model
    sees them before augmentation (data.pipeline.StoreSource: `fit` to the model's size, then normalize_crop)."""
    from cytoself_jax.data.pipeline import StoreSource

    source = StoreSource(store, np.asarray(rows, dtype=np.int64), channels, fit)
    return np.stack([source[i]["image"].ravel() for i in range(len(source))]) if len(source) else \
        np.zeros((0, int(np.prod(store.image_shape[:2])) * len(channels)), np.float32)


def protein_pixels(store, rows: Sequence[int] | None = None) -> np.ndarray:
    """(N, H*W) the protein channel alone (crop_pixels with ('protein',)): the earlier, narrower baseline, kept
    for bench/pixel_baseline.py and bench/embedding_probe.py; the like-for-like baseline is crop_pixels with the
    run's channels."""
    return crop_pixels(store, range(len(store)) if rows is None else rows, ("protein",))


def pixel_pipeline(components: int = PIXEL_COMPONENTS, seed: int = 0, C: float = DEFAULT_C):
    """The pixel baseline with fixed settings: standardize pixels, PCA to `components`, logistic regression."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), PCA(components, random_state=seed), LogisticRegression(C=C, max_iter=2000))


def embedding_pipeline(C: float = DEFAULT_C):
    """The linear probe on an embedding with a fixed C: standardize features, logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """A probe scored on a test set: scores {macro_f1, balanced_accuracy, accuracy} -> Score (value, 95%
    interval over `unit`s when groups were given, chance = a uniform guess among the training classes),
    classes (trained on), train / test crops (test: rows of a class seen in training), test_unseen (rows of a
    class it never saw, not scored), and the probe's settings (C, pca_components, selected_on, val_macro_f1)."""

    features: str
    target: str
    scores: dict
    classes: int
    train: int
    test: int
    test_unseen: int
    C: float | None = None
    pca_components: int | None = None
    selected_on: str = ""
    val_macro_f1: float = math.nan

    def summary(self) -> dict:
        """A JSON-ready dict: the plain values as before (macro_f1, balanced_accuracy, accuracy, classes, train,
        test, test_unseen, pca_components, C, selected_on, val_macro_f1) and 'scores' with each Score.to_json()."""
        out = {name: score.value for name, score in self.scores.items()}
        out.update(classes=self.classes, train=self.train, test=self.test, test_unseen=self.test_unseen,
                   pca_components=self.pca_components, C=self.C, selected_on=self.selected_on,
                   val_macro_f1=None if math.isnan(self.val_macro_f1) else self.val_macro_f1,
                   scores={name: score.to_json() for name, score in self.scores.items()})
        return out


def _chance(truth: np.ndarray, n_classes: int) -> dict[str, float]:
    """Expected scores of a uniform random guess among n_classes training classes, from the expected confusion
    counts: recall 1/n per class; macro-F1 over the classes present with precision = the class's share."""
    share = pd.Series(truth).value_counts(normalize=True).to_numpy()
    recall = 1.0 / n_classes
    return {"macro_f1": float(np.mean(2 * share * recall / (share + recall))), "balanced_accuracy": recall,
            "accuracy": recall}


def score_predictions(truth, predicted, n_classes: int, groups=None, strata=None, n_boot: int = 1000, seed: int = 0,
                on: str = "", unit: str = "fields of view") -> dict[str, Score]:
    """Scores of predictions (N,) against truth (N,) (classes seen in training only), each a Score: macro-F1
    (classes present in truth), balanced accuracy (mean recall per true class) and accuracy, with 95% cluster
    bootstrap intervals over `groups` (N,) (fields of view; within `strata` (N,), e.g. the family, when given)
    when groups are given, and chance levels for n_classes training classes."""
    where = "score_predictions"
    truth = as_labels(truth, np.size(truth), where, "truth")
    predicted = as_labels(predicted, len(truth), where, "predicted")
    if len(truth) == 0:
        raise fail(where, "truth", "expected at least one test row")
    correct = (truth == predicted).astype(np.float64)
    chance = _chance(truth, n_classes)
    boot = dict(n_boot=n_boot, seed=seed, strata=strata)
    if groups is None or len(np.unique(as_labels(groups, len(truth), where, "groups"))) < 2:
        values = {"macro_f1": macro_f1(truth, predicted), "balanced_accuracy": macro_mean(correct, truth),
                  "accuracy": float(correct.mean())}
        return {m: Score(m, m, values[m], basis=on, chance=chance[m], n=len(truth),
                         groups=None if groups is None else 1) for m in METRICS}
    intervals = {
        "macro_f1": bootstrap_ci(lambda rows: macro_f1(truth[rows], predicted[rows]), groups, **boot),
        "balanced_accuracy": bootstrap_mean_ci(correct, groups, by=truth, **boot),
        "accuracy": bootstrap_mean_ci(correct, groups, **boot),
    }
    return {m: Score.from_interval(m, m, intervals[m], unit=unit, basis=on, chance=chance[m], n=len(truth))
            for m in METRICS}


def _annotated(labels: np.ndarray, target: str) -> np.ndarray:
    return ~np.isin(labels, NON_CLASSES) if target == "family" else np.ones(len(labels), bool)


def evaluate_probe(features: str, target: str, train_x, train_y, test_x, test_y, val_x=None, val_y=None,
                   pixels: bool = False, groups=None, n_boot: int = 1000, seed: int = 0, on: str = ""
                   ) -> ProbeResult:
    """Fit a probe (fit_probe: C, and PCA size for pixels, chosen on val when given) on train and score it on the
    test rows of classes seen in training (score_predictions; the others counted in test_unseen). For target 'family',
    rows labelled NON_CLASSES are left out everywhere and the bootstrap keeps each family's number of fields
    (strata); groups (N_test,) are the test rows' fields of view."""
    return evaluate_probes([dict(features=features, target=target, train_x=train_x, train_y=train_y, test_x=test_x,
                                 test_y=test_y, val_x=val_x, val_y=val_y, pixels=pixels, groups=groups,
                                 n_boot=n_boot, seed=seed, on=on)])[0]


def evaluate_probes(probes: Sequence[dict], keep_errors: bool = False) -> list:
    """evaluate_probe for several probes, each a dict of its arguments: fitted together (probe_fit.fit_checked:
    all their paths in one pool of worker processes), then each scored; each result is evaluate_probe's alone.
    A probe whose inputs are unusable raises its AnalysisInputError, or with keep_errors gets it in its place
    (the others are still fitted and scored)."""
    prepared = []
    for spec in probes:
        try:
            problem, score_args = _probe_problem(**spec)
            prepared.append((check_problem(**problem, where=f"probe of {spec['target']} on {spec['features']}"),
                             score_args))
        except AnalysisInputError as e:
            if not keep_errors:
                raise
            prepared.append(e)
    fits = iter(fit_checked([p[0] for p in prepared if not isinstance(p, AnalysisInputError)]))
    results = []
    for p in prepared:
        if isinstance(p, AnalysisInputError):
            results.append(p)
            continue
        fitted = next(fits)
        try:
            results.append(_scored(fitted, **p[1]))
        except AnalysisInputError as e:
            if not keep_errors:
                raise
            results.append(e)
    return results


def _probe_problem(features: str, target: str, train_x, train_y, test_x, test_y, val_x=None, val_y=None,
                   pixels: bool = False, groups=None, n_boot: int = 1000, seed: int = 0, on: str = ""
                   ) -> tuple[dict, dict]:
    """(fit_probe's arguments, _scored's arguments) of one evaluate_probe, its inputs checked and the rows of
    target 'family' without a family left out."""
    where = f"probe of {target} on {features}"
    train_x = as_matrix(train_x, where, "train_x", flatten=True)
    train_y = as_labels(train_y, len(train_x), where, "train_y")
    test_x = as_matrix(test_x, where, "test_x", flatten=True)
    test_y = as_labels(test_y, len(test_x), where, "test_y")
    keep_train, keep_test = _annotated(train_y, target), _annotated(test_y, target)
    val = dict(val_x=None, val_y=None)
    if val_x is not None:
        val_x = as_matrix(val_x, where, "val_x", flatten=True)
        val_y = as_labels(val_y, len(val_x), where, "val_y")  # None too: 'expected a 1-D sequence of labels'
        keep_val = _annotated(val_y, target)
        val = dict(val_x=rows_kept(val_x, keep_val), val_y=val_y[keep_val])
    problem = dict(train_x=rows_kept(train_x, keep_train), train_y=train_y[keep_train], **val, pixels=pixels,
                   seed=seed)
    return problem, dict(features=features, target=target, trained=int(keep_train.sum()), test_x=test_x,
                         test_y=test_y, keep_test=keep_test, groups=groups, n_boot=n_boot, seed=seed, on=on)


def _scored(probe: LinearProbe, features: str, target: str, trained: int, test_x: np.ndarray, test_y: np.ndarray,
            keep_test: np.ndarray, groups, n_boot: int, seed: int, on: str) -> ProbeResult:
    """A fitted probe scored on the kept test rows of a class it was trained on (evaluate_probe)."""
    where = f"probe of {target} on {features}"
    seen = keep_test & np.isin(test_y, probe.classes)
    if not seen.any():
        raise fail(where, "test_y", "expected test rows of a class seen in training, found none")
    truth = test_y[seen]
    groups_seen = None if groups is None else as_labels(groups, len(test_y), where, "groups")[seen]
    scores = score_predictions(truth, probe.predict(test_x[seen]), len(probe.classes), groups_seen,
                               strata=truth if (target == "family" and groups is not None) else None,
                               n_boot=n_boot, seed=seed, on=on)
    return ProbeResult(features=features, target=target, scores=scores, classes=len(probe.classes), train=trained,
                       test=int(seen.sum()), test_unseen=int((keep_test & ~seen).sum()), C=probe.C,
                       pca_components=probe.pca_components, selected_on=probe.selected_on,
                       val_macro_f1=probe.val_macro_f1)


def majority_probe(target: str, train_y, test_y, groups=None, n_boot: int = 1000, seed: int = 0, on: str = ""
                   ) -> ProbeResult:
    """The floor: always predict the most frequent training class (ties: the first by name)."""
    where = "majority_probe"
    train_y = as_labels(train_y, len(np.asarray(train_y)), where, "train_y")
    test_y = as_labels(test_y, len(np.asarray(test_y)), where, "test_y")
    train_y = train_y[_annotated(train_y, target)]
    keep_test = _annotated(test_y, target)
    names, counts = np.unique(train_y, return_counts=True)
    if len(names) == 0:
        raise fail(where, "train_y", "expected at least one training row")
    seen = keep_test & np.isin(test_y, names)
    if not seen.any():
        raise fail(where, "test_y", "expected test rows of a class seen in training, found none")
    truth = test_y[seen]
    groups_seen = None if groups is None else as_labels(groups, len(test_y), where, "groups")[seen]
    scores = score_predictions(truth, np.full(len(truth), names[np.argmax(counts)]), len(names), groups_seen,
                         strata=truth if (target == "family" and groups is not None) else None, n_boot=n_boot,
                         seed=seed, on=on)
    return ProbeResult(features="majority", target=target, scores=scores, classes=len(names), train=len(train_y),
                       test=int(seen.sum()), test_unseen=int((keep_test & ~seen).sum()))


def transfer_probes(features: dict[str, tuple], seen_family, unseen_family, val_family=None, unseen_groups=None,
                    n_boot: int = 1000, seed: int = 0) -> dict[str, ProbeResult | AnalysisInputError]:
    """Localization family of proteins the model never saw, per feature set name -> (seen_x (N, d), unseen_x
    (M, d), val_x (V, d) or None); 'pixels' gets the PCA side: a probe fitted on crops of the proteins it trained on
    (family seen_family (N,); C chosen on val_x / val_family, seen proteins' validation crops), scored on crops of
    the held-out proteins (unseen_family (M,)), with intervals over unseen_groups (M,) (their fields of view). A
    held-out protein of a family no seen protein has counts in test_unseen. The probes are fitted together; a
    feature set whose inputs are unusable gets its AnalysisInputError in its place (the others are still scored).
    """
    names = list(features)
    return dict(zip(names, evaluate_probes([
        dict(features=name, target="family", train_x=features[name][0], train_y=seen_family,
             test_x=features[name][1], test_y=unseen_family, val_x=features[name][2],
             val_y=val_family if features[name][2] is not None else None, pixels=name == "pixels",
             groups=unseen_groups, n_boot=n_boot, seed=seed, on="crops of proteins held out of training")
        for name in names], keep_errors=True)))


def probe_scores(pipeline, train_x, train_labels, test_x, test_labels) -> dict:
    """Fit a given sklearn `pipeline` on (train_x (N, d), train_labels (N,)) and score it on the test rows whose
    label occurs in training (the others are counted in 'test_unseen'); for fixed settings (bench scripts).

    Returns macro_f1, balanced_accuracy, accuracy (fractions, as score_predictions), classes, train, test, test_unseen.
    """
    where = "probe_scores"
    train_x = as_matrix(train_x, where, "train_x", flatten=True)
    test_x = as_matrix(test_x, where, "test_x", flatten=True)
    if train_x.shape[1] != test_x.shape[1]:
        raise fail(where, "test_x", f"expected {train_x.shape[1]} features like train_x, got {test_x.shape[1]}")
    train_labels = as_labels(train_labels, len(train_x), where, "train_labels")
    test_labels = as_labels(test_labels, len(test_x), where, "test_labels")
    classes = np.unique(train_labels)
    if len(classes) < 2:
        raise fail(where, "train_labels", f"expected at least 2 classes to train on, got {list(classes)}")
    seen = np.isin(test_labels, classes)
    if not seen.any():
        raise fail(where, "test_labels", "expected test rows of a class seen in training, found none")
    predicted = pipeline.fit(train_x, train_labels).predict(test_x[seen])
    scores = score_predictions(test_labels[seen], predicted, len(classes))
    return {**{m: s.value for m, s in scores.items()}, "classes": int(len(classes)), "train": int(len(train_x)),
            "test": int(seen.sum()), "test_unseen": int((~seen).sum())}


# probe.csv, one row per (target, features); every score with its interval.
PROBE_COLUMNS = {
    "target": "what is predicted: 'family' (annotated localization families only) or 'protein' (identity)",
    "features": "'embedding' (the model's), 'pixels' (PCA of the model's input pixels), 'majority' (the most "
                "frequent training class, always)",
    "trained_on": "the crops the probe was fitted on",
    "tested_on": "the crops it was scored on",
    "<metric>": "macro_f1, balanced_accuracy, accuracy on the tested crops (fractions)",
    "<metric>_ci_low / _ci_high": "95% cluster-bootstrap interval over the tested crops' fields of view (empty "
                                  "without fields)",
    "<metric>_chance": "expected score of a uniform random guess among the training classes",
    "classes": "classes the probe was trained on",
    "train_crops": "crops it was fitted on",
    "test_crops": "tested crops of a class seen in training (scored)",
    "test_fovs": "their fields of view (the bootstrap's unit)",
    "test_crops_unseen_class": "tested crops of a class never seen in training (not scored)",
    "C": "inverse L2 regularization of the logistic regression",
    "pca_components": "principal components of the pixels (pixels only)",
    "selected_on": "'val': C (and components) chosen by validation macro-F1; 'defaults': C=1, 50 components",
    "val_macro_f1": "the chosen setting's validation macro-F1",
}


def _csv_row(result: ProbeResult, trained_on: str, tested_on: str) -> dict:
    row = {"target": result.target, "features": result.features, "trained_on": trained_on, "tested_on": tested_on}
    for name, s in result.scores.items():
        row.update({name: s.value, f"{name}_ci_low": s.low, f"{name}_ci_high": s.high, f"{name}_chance": s.chance})
    some = next(iter(result.scores.values()))
    row.update(classes=result.classes, train_crops=result.train, test_crops=result.test, test_fovs=some.groups,
               test_crops_unseen_class=result.test_unseen, C=result.C, pca_components=result.pca_components,
               selected_on=result.selected_on, val_macro_f1=result.val_macro_f1)
    return row


def run_probes(out: Path, features: dict[str, tuple], train_table: pd.DataFrame, test_table: pd.DataFrame,
               targets: Sequence[str] = ("family", "protein"), seed: int = 0, *, val_table: pd.DataFrame | None = None,
               n_boot: int = 1000, trained_on: str = "train split", tested_on: str = "test split") -> dict:
    """The probe evaluator: for each target column (family: annotated rows only; protein) and each feature set
    (name -> (train (N, d), test (M, d)) or (train, val (V, d), test) with val_table; 'pixels' gets the PCA side),
    fit on train (settings chosen on val when given), score on test with intervals over test_table's 'fov'
    column (when present), plus the majority-class row. Writes out/probe.csv (columns: PROBE_COLUMNS) and returns
    {target: {features: ProbeResult.summary() or None}} (None: fewer than 2 classes, or no test row of a seen one).
    """
    groups = test_table["fov"].astype(str).to_numpy() if "fov" in test_table else None
    labels, specs = {}, []
    for target in targets:
        train_y = train_table[target].fillna("").astype(str).to_numpy()
        test_y = test_table[target].fillna("").astype(str).to_numpy()
        val_y = None if val_table is None else val_table[target].fillna("").astype(str).to_numpy()
        keep_train, keep_test = _annotated(train_y, target), _annotated(test_y, target)
        if len(np.unique(train_y[keep_train])) < 2 or not np.isin(test_y[keep_test], train_y[keep_train]).any():
            continue
        labels[target] = train_y, test_y
        for name, arrays in features.items():
            val_x = arrays[1] if len(arrays) == 3 and val_table is not None else None
            specs.append(dict(features=name, target=target, train_x=arrays[0], train_y=train_y, test_x=arrays[-1],
                              test_y=test_y, val_x=val_x, val_y=val_y if val_x is not None else None,
                              pixels=name == "pixels", groups=groups, n_boot=n_boot, seed=seed, on=tested_on))
    fitted = iter(evaluate_probes(specs))  # every probe's paths in one pool; in the order of specs
    rows, result = [], {}
    for target in targets:
        if target not in labels:
            result[target] = {name: None for name in (*features, "majority")}
            continue
        result[target] = {}
        for name in features:
            probe = next(fitted)
            result[target][name] = probe.summary()
            rows.append(_csv_row(probe, trained_on, tested_on))
        floor = majority_probe(target, *labels[target], groups=groups, n_boot=n_boot, seed=seed, on=tested_on)
        result[target]["majority"] = floor.summary()
        rows.append(_csv_row(floor, trained_on, tested_on))
    pd.DataFrame(rows).to_csv(Path(out) / "probe.csv", index=False, float_format="%.4f")
    return result
