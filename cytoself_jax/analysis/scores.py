"""Scores of an embedding: the paper's clustering score (on UMAPs), kNN and classifier top-k accuracy, and
retrieval mean average precision. numpy in, floats out."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from cytoself_jax.analysis.common import as_labels, as_matrix, check_choice, fail

# Labels that are not a localization class: left out of the clustering score (the paper drops 'others'/mixed).
NON_CLASSES = ("others", "mixed", "")


def clustering_score(points, labels, exclude: Sequence[str] = NON_CLASSES) -> float:
    """The paper's clustering score of points (N, d) with ground-truth class labels (N,); unitless.

    Methods, "Clustering score": Gamma = sigma*({mu*(C_j)}_j) / mu*({sigma*(C_j)}_j), with mu* the robust mean
    (median) and sigma* the robust standard deviation computed with medians. For sets of vectors we take:

        mu*(C)    = coordinate-wise median of the points of C                (a point in R^d)
        sigma*(X) = median over x in X of ||x - mu*(X)||_2                   (median distance to the median)
        Gamma     = sigma*({mu*(C_j)}_j) / median_j sigma*(C_j)

    i.e. the spread of the class centres divided by the typical class radius, both measured the same way, so
    any consistency constant (e.g. 1.4826 for a Gaussian) cancels. Gamma is invariant to translating or
    uniformly scaling all points. Classes in `exclude` are left out (the points still shape a UMAP beforehand).
    The PyTorch reference (cytoself/analysis/utils/cluster_score.py) uses the same class centre and radius but a
    plain np.std of all centre coordinates pooled over axes in the numerator, which is neither robust nor
    translation invariant; we follow the paper's text instead, so values differ from it by a modest factor.
    """
    where = "clustering_score"
    points = as_matrix(points, where, "points")
    labels = as_labels(labels, len(points), where, "labels")
    keep = ~np.isin(labels, list(exclude))
    names, inverse = np.unique(labels[keep], return_inverse=True)
    if len(names) < 2:
        raise fail(where, "labels", f"expected at least 2 classes outside {list(exclude)}, found {list(names)}")
    kept = points[keep]
    centres = np.stack([np.median(kept[inverse == j], axis=0) for j in range(len(names))])
    radii = np.array([_median_radius(kept[inverse == j], centres[j]) for j in range(len(names))])
    typical_radius = np.median(radii)
    if typical_radius == 0:
        raise fail(where, "points", "the median class radius is 0 (classes of single or identical points); "
                   "need classes with distinct points")
    return float(_median_radius(centres, np.median(centres, axis=0)) / typical_radius)


def _median_radius(points: np.ndarray, centre: np.ndarray) -> float:
    return float(np.median(np.linalg.norm(points - centre, axis=1)))


def umap_clustering_scores(
    embeddings,
    labels,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "euclidean",
    exclude: Sequence[str] = NON_CLASSES,
    progress: bool = True,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Clustering score of one 2-D UMAP per seed of embeddings (N, ...) (flattened per row), all N points embedded.

    Defaults are umap-learn's (the paper's). Returns (scores (len(seeds),) float64, UMAP coordinates (N, 2) per
    seed); report scores.mean() +- scores.std(ddof=1); the paper shows the UMAP of the best score.
    """
    from cytoself_jax.analysis.atlas import compute_umap

    embeddings = as_matrix(embeddings, "umap_clustering_scores", "embeddings", flatten=True, min_rows=3)
    labels = as_labels(labels, len(embeddings), "umap_clustering_scores", "labels")
    scores, coords = [], []
    for seed in tqdm(list(seeds), desc="UMAP clustering scores", unit="umap", disable=not progress):
        xy = compute_umap(embeddings, seed=seed, n_neighbors=n_neighbors, min_dist=min_dist, metric=metric)
        scores.append(clustering_score(xy, labels, exclude))
        coords.append(xy)
    return np.asarray(scores), coords


def classifier_topk(logits, labels, k: Sequence[int] = (1, 5)) -> tuple[float, ...]:
    """Top-k accuracy of class scores (N, C) (logits or probabilities) for integer labels (N,) in [0, C).

    Ties count against the prediction: a sample is a top-k hit when fewer than k other classes score >= its
    true class (so equal scores, e.g. a kNN vote of 0 for many classes, never make a hit by luck).
    A label of -1 (a class the scorer does not know) is always a miss. Returns one fraction per k.
    """
    ranks = classifier_ranks(logits, labels)
    return tuple(float(np.mean(ranks < kk)) for kk in k)


def classifier_ranks(logits, labels) -> np.ndarray:
    """Per row of class scores (N, C), how many other classes score >= the true class (integer labels (N,) in
    [0, C), -1 for a class the scorer does not know: rank C, always a miss). Row i is a top-k hit when
    ranks[i] < k."""
    where = "classifier_topk"
    scores = as_matrix(logits, where, "logits")
    labels = np.asarray(labels)
    if labels.shape != (len(scores),) or not np.issubdtype(labels.dtype, np.integer):
        raise fail(where, "labels", f"expected {len(scores)} integer labels, got shape {labels.shape} "
                   f"dtype {labels.dtype}")
    if labels.min(initial=0) < -1 or labels.max(initial=0) >= scores.shape[1]:
        raise fail(where, "labels", f"expected values in [0, {scores.shape[1]}) (or -1 for unknown)")
    return _pessimistic_ranks(scores, labels)


def _pessimistic_ranks(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per row, how many other classes score >= the true class; len(row) for an unknown label (-1)."""
    known = labels >= 0
    true = scores[np.arange(len(scores)), np.where(known, labels, 0)]
    ranks = np.sum(scores >= true[:, None], axis=1) - 1
    return np.where(known, ranks, scores.shape[1])


def knn_accuracy(
    train_emb, train_labels, test_emb, test_labels, k: int = 10, metric: str = "euclidean",
    batch_size: int = 4096, progress: bool = True,
) -> tuple[float, float]:
    """Top-1 and top-5 accuracy of a k-nearest-neighbour vote: each test embedding (flattened) gets the labels of
    its k nearest train embeddings; classes are ranked by vote count (ties counted against, see classifier_topk).
    Test labels absent from the train labels are misses. Returns (top1, top5) fractions.
    """
    ranks = knn_ranks(train_emb, train_labels, test_emb, test_labels, k, metric, batch_size, progress)
    return float(np.mean(ranks < 1)), float(np.mean(ranks < 5))


def knn_ranks(
    train_emb, train_labels, test_emb, test_labels, k: int = 10, metric: str = "euclidean",
    batch_size: int = 4096, progress: bool = True,
) -> np.ndarray:
    """Per test row, the rank of its true label in the k-nearest-neighbour vote (see knn_accuracy): how many other
    classes got >= its votes; a label absent from the train labels ranks len(classes). Row i is a top-k hit when
    ranks[i] < k. Returns (N_test,) int."""
    from sklearn.neighbors import NearestNeighbors

    where = "knn_accuracy"
    train = as_matrix(train_emb, where, "train_emb", flatten=True)
    test = as_matrix(test_emb, where, "test_emb", flatten=True)
    if train.shape[1] != test.shape[1]:
        raise fail(where, "test_emb", f"expected {train.shape[1]} features like train_emb, got {test.shape[1]}")
    if not 1 <= k <= len(train):
        raise fail(where, "k", f"expected 1 <= k <= {len(train)} (train size), got {k}")
    classes, train_ids = np.unique(as_labels(train_labels, len(train), where, "train_labels"), return_inverse=True)
    test_labels = as_labels(test_labels, len(test), where, "test_labels")
    pos = np.searchsorted(classes, test_labels).clip(max=len(classes) - 1)
    test_ids = np.where(classes[pos] == test_labels, pos, -1)

    index = NearestNeighbors(n_neighbors=k, metric=metric).fit(train)
    ranks = []
    for start in tqdm(range(0, len(test), batch_size), desc="kNN", unit="batch", leave=False, disable=not progress):
        stop = min(start + batch_size, len(test))
        neighbours = index.kneighbors(test[start:stop], return_distance=False)
        votes = np.zeros((stop - start, len(classes)))
        np.add.at(votes, (np.arange(stop - start)[:, None], train_ids[neighbours]), 1.0)
        ranks.append(_pessimistic_ranks(votes, test_ids[start:stop]))
    return np.concatenate(ranks)


def average_precision(embeddings, labels, metric: str = "cosine", block_rows: int | None = None,
                      progress: bool = True) -> np.ndarray:
    """Retrieval average precision of each embedding (N, ...) (flattened) as a query against all others.

    Positives are the other rows with the same label, negatives all rows with another label; the rest of the
    data set is ranked by similarity (cosine, or minus Euclidean distance) and
    AP = (1/P) sum over positives p of precision at p (positives among the rows ranked at or above p / their number),
    the definition of the image-profiling tools (copairs, cytominer-eval); tests/test_scores.py checks it equal
    to copairs' on tie-free inputs. Ties are resolved as in sklearn.metrics.average_precision_score: rows with
    equal similarity form one group, and every positive in it gets the precision at the group's end, so identical
    (collapsed) embeddings score chance level, not 1 (copairs 0.5 puts tied positives first and scores them 1).
    Similarities are computed in float64 and values within TIE_TOLERANCE (relative to the scale of the data) of
    each other count as equal, so rounding in the matrix product never splits a tie. Queries with no positive get
    NaN. Returns (N,). Cost O(N^2 d) time in blocks of about 8M similarities and a float64 copy of the
    embeddings; for test sets beyond ~20k rows, subsample or use per-protein profiles.
    """
    where = "average_precision"
    check_choice(metric, ("cosine", "euclidean"), where, "metric")
    x = as_matrix(embeddings, where, "embeddings", flatten=True, min_rows=2).astype(np.float64)
    labels = np.unique(as_labels(labels, len(x), where, "labels"), return_inverse=True)[1]
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if np.any(norms == 0):
            raise fail(where, "embeddings", f"cosine needs non-zero rows; row {np.flatnonzero(norms == 0)[0]} is 0")
        x = x / norms
    sq = np.sum(x * x, axis=1)
    # Ranking by minus the squared distance is ranking by minus the distance, without sqrt amplifying rounding
    # near 0 (identical rows); both similarities are bounded by `scale`, so one relative tolerance fits both.
    scale = 1.0 if metric == "cosine" else max(4 * float(sq.max()), np.finfo(np.float64).tiny)
    n = len(x)
    block = block_rows or max(1, min(n, 2**23 // n))  # ~8M similarities per block: a few 64 MB temporaries
    out = np.full(n, np.nan)
    for start in tqdm(range(0, n, block), desc="average precision", unit="block", leave=False, disable=not progress):
        rows = np.arange(start, min(start + block, n))
        dots = x[rows] @ x.T
        sims = dots if metric == "cosine" else -(sq[rows, None] + sq[None] - 2 * dots)
        sims[np.arange(len(rows)), rows] = -np.inf  # the query itself ranks last and is never a positive
        positive = labels[None, :] == labels[rows, None]
        positive[np.arange(len(rows)), rows] = False
        out[rows] = _ap_rows(sims, positive, TIE_TOLERANCE * scale)
    return out


# Similarities closer than this (relative to their bound) are a tie: float64 products of equal vectors differ
# by ~1e-16 * d, genuinely different similarities almost never by less than 1e-9.
TIE_TOLERANCE = 1e-9


def _ap_rows(sims: np.ndarray, positive: np.ndarray, tolerance: float) -> np.ndarray:
    """AP per row of a similarity block (b, N) with a positive mask (b, N); NaN where a row has no positive.
    Neighbours in the sorted order closer than `tolerance` are tied (chained: a run of close values is one tie)."""
    b, n = sims.shape
    order = np.argsort(-sims, axis=1, kind="stable")
    s = np.take_along_axis(sims, order, axis=1)
    pos = np.take_along_axis(positive, order, axis=1)
    cum_pos = np.cumsum(pos, axis=1)
    # Each position's tie group ends at the next index whose successor has a clearly lower similarity.
    last = np.ones((b, n), bool)
    last[:, :-1] = s[:, :-1] - s[:, 1:] > tolerance  # the query's -inf, alone at the end, never ties
    end = np.where(last, np.arange(n), n - 1)
    end = np.minimum.accumulate(end[:, ::-1], axis=1)[:, ::-1]
    precision = np.take_along_axis(cum_pos, end, axis=1) / (end + 1)
    n_pos = cum_pos[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_pos > 0, np.sum(precision * pos, axis=1) / n_pos, np.nan)


def mean_average_precision(embeddings, labels, metric: str = "cosine", progress: bool = True) -> float:
    """Mean average precision: AP per query (see average_precision), averaged within each label (copairs'
    per-group mAP), then over labels, so large classes do not dominate. Queries without positives are skipped."""
    labels = as_labels(labels, len(np.asarray(embeddings)), "mean_average_precision", "labels")
    ap = average_precision(embeddings, labels, metric, progress=progress)
    valid = ~np.isnan(ap)
    if not np.any(valid):
        raise fail("mean_average_precision", "labels", "expected at least one label shared by two rows")
    inverse = np.unique(labels[valid], return_inverse=True)[1]
    per_label = np.bincount(inverse, weights=ap[valid]) / np.bincount(inverse)
    return float(np.mean(per_label))
