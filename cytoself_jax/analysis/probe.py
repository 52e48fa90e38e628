"""Linear probes: how well a linear classifier reads localization (or protein identity) off an embedding.

The standard evaluation of DINO4Cells and SubCell: logistic regression trained on the train split's embeddings,
scored on the held-out split (macro-F1 and balanced accuracy, so small classes count as much as large ones).
Beside it the same probe on PCA of the pixels, the baseline a learned embedding must beat to be worth training
(bench/pixel_baseline.py uses the same pixel features and pipeline).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cytoself_jax.analysis.common import as_labels, as_matrix, fail
from cytoself_jax.analysis.scores import NON_CLASSES

PIXEL_COMPONENTS = 50  # principal components of the pixel baseline


def protein_pixels(store, rows: Sequence[int] | None = None) -> np.ndarray:
    """(N, H*W) float32 protein-channel pixels of the store's crops `rows` (all by default), normalized as the
    model sees them (before augmentation)."""
    from cytoself_jax.data.pipeline import normalize_crop

    c = store.channel_indices(("protein",))[0]
    rows = range(len(store)) if rows is None else rows
    return np.stack([normalize_crop(store.images[int(i)][..., c:c + 1], ("protein",)).ravel() for i in rows])


def pixel_pipeline(components: int = PIXEL_COMPONENTS, seed: int = 0):
    """The pixel baseline: standardize pixels, PCA to `components`, logistic regression."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), PCA(components, random_state=seed), LogisticRegression(max_iter=2000))


def embedding_pipeline():
    """The linear probe on an embedding: standardize features, logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))


def probe_scores(pipeline, train_x, train_labels, test_x, test_labels) -> dict:
    """Fit `pipeline` on (train_x (N, d), train_labels (N,)) and score it on the test rows whose label occurs in
    training (a classifier cannot name a class it never saw; the others are counted in 'test_unseen').

    Returns macro_f1, balanced_accuracy, accuracy (fractions), classes, train, test, test_unseen.
    """
    from sklearn.metrics import balanced_accuracy_score, f1_score

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
    truth = test_labels[seen]
    return {"macro_f1": float(f1_score(truth, predicted, labels=classes, average="macro", zero_division=0)),
            "balanced_accuracy": float(balanced_accuracy_score(truth, predicted)),
            "accuracy": float(np.mean(truth == predicted)), "classes": int(len(classes)),
            "train": int(len(train_x)), "test": int(seen.sum()), "test_unseen": int((~seen).sum())}


def run_probes(out: Path, features: dict[str, tuple[np.ndarray, np.ndarray]], train_table: pd.DataFrame,
               test_table: pd.DataFrame, targets: Sequence[str] = ("family", "protein"), seed: int = 0) -> dict:
    """The probe evaluator: for each target column (family: annotated rows only; protein) and each feature set
    (name -> (train (N, d), test (M, d)); 'pixels' gets the PCA pipeline, any other the embedding one), fit on
    train, score on test; writes out/probe.csv and returns {target: {features: scores or None}}.
    """
    rows, result = [], {}
    for target in targets:
        train_y = train_table[target].fillna("").astype(str).to_numpy()
        test_y = test_table[target].fillna("").astype(str).to_numpy()
        keep_train = ~np.isin(train_y, NON_CLASSES) if target == "family" else np.ones(len(train_y), bool)
        keep_test = ~np.isin(test_y, NON_CLASSES) if target == "family" else np.ones(len(test_y), bool)
        result[target] = {}
        for name, (train_x, test_x) in features.items():
            if len(np.unique(train_y[keep_train])) < 2 or not np.isin(test_y[keep_test], train_y[keep_train]).any():
                result[target][name] = None
                continue
            components = min(PIXEL_COMPONENTS, int(keep_train.sum()) - 1, train_x.shape[1])
            pipeline = pixel_pipeline(components, seed) if name == "pixels" else embedding_pipeline()
            scores = probe_scores(pipeline, train_x[keep_train], train_y[keep_train], test_x[keep_test],
                                  test_y[keep_test])
            if name == "pixels":
                scores["pca_components"] = components
            result[target][name] = scores
            rows.append({"target": target, "features": name, **scores})
    pd.DataFrame(rows).to_csv(Path(out) / "probe.csv", index=False, float_format="%.4f")
    return result
