"""Scores of an embedding: the paper's clustering score (on UMAPs), kNN and classifier top-k accuracy, and
retrieval mean average precision (crop level, optionally with positives from other fields only; protein level;
per-label significance with copairs). numpy in, floats and tables out."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cytoself_jax.analysis.common import as_labels, as_matrix, check_choice, fail

# Labels that are not a localization class: left out of the clustering score (the paper drops 'others'/mixed).
NON_CLASSES = ("others", "mixed", "", "unannotated")  # "unannotated": how the h5ad files and atlases name ""


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
    return pessimistic_ranks(scores, labels)


def pessimistic_ranks(scores, labels, xp=np):
    """Per row of scores (N, C), how many other classes score >= the true class; C for an unknown label (-1).
    xp: numpy, or jax.numpy inside a jitted pass (the eval pass ranks on the device instead of keeping logits)."""
    known = labels >= 0
    true = xp.take_along_axis(scores, xp.where(known, labels, 0)[:, None], axis=1)
    ranks = xp.sum(scores >= true, axis=1) - 1
    return xp.where(known, ranks, scores.shape[1])


def knn_neighbour_labels(
    train_emb, train_labels, test_emb, k: int = 10, metric: str = "euclidean", batch_size: int = 4096,
    progress: bool = True, where: str = "knn_neighbour_labels",
) -> tuple[np.ndarray, np.ndarray]:
    """The labels of each test embedding's k nearest train embeddings (both flattened per row): (classes (C,) the
    sorted distinct train labels, ids (M, k) int64 index into classes, nearest first)."""
    from sklearn.neighbors import NearestNeighbors

    train = as_matrix(train_emb, where, "train_emb", flatten=True)
    test = as_matrix(test_emb, where, "test_emb", flatten=True)
    if train.shape[1] != test.shape[1]:
        raise fail(where, "test_emb", f"expected {train.shape[1]} features like train_emb, got {test.shape[1]}")
    if not 1 <= k <= len(train):
        raise fail(where, "k", f"expected 1 <= k <= {len(train)} (train size), got {k}")
    classes, train_ids = np.unique(as_labels(train_labels, len(train), where, "train_labels"), return_inverse=True)
    index = NearestNeighbors(n_neighbors=k, metric=metric).fit(train)
    ids = np.empty((len(test), k), np.int64)
    for start in tqdm(range(0, len(test), batch_size), desc="kNN", unit="batch", leave=False, disable=not progress):
        stop = min(start + batch_size, len(test))
        ids[start:stop] = train_ids[index.kneighbors(test[start:stop], return_distance=False)]
    return classes, ids


def knn_votes(ids: np.ndarray, num_classes: int) -> np.ndarray:
    """Vote counts (M, num_classes) float64 of neighbour class ids (M, k)."""
    votes = np.zeros((len(ids), num_classes))
    np.add.at(votes, (np.arange(len(ids))[:, None], ids), 1.0)
    return votes


def knn_ranks(
    train_emb, train_labels, test_emb, test_labels, k: int = 10, metric: str = "euclidean",
    batch_size: int = 4096, progress: bool = True, where: str = "knn_ranks",
) -> np.ndarray:
    """Per test row (M,), how many other classes get >= the votes of its true class among its k nearest train
    rows (0 = a top-1 hit; ties counted against, see classifier_topk); the number of classes for a test label
    absent from the train labels."""
    classes, ids = knn_neighbour_labels(train_emb, train_labels, test_emb, k, metric, batch_size, progress, where)
    test_labels = as_labels(test_labels, len(ids), where, "test_labels")
    pos = np.searchsorted(classes, test_labels).clip(max=len(classes) - 1)
    test_ids = np.where(classes[pos] == test_labels, pos, -1)
    return np.concatenate([pessimistic_ranks(knn_votes(ids[i:i + batch_size], len(classes)),
                                              test_ids[i:i + batch_size]) for i in range(0, len(ids), batch_size)])


def knn_accuracy(
    train_emb, train_labels, test_emb, test_labels, k: int = 10, metric: str = "euclidean",
    batch_size: int = 4096, progress: bool = True,
) -> tuple[float, float]:
    """Top-1 and top-5 accuracy of a k-nearest-neighbour vote: each test embedding (flattened) gets the labels of
    its k nearest train embeddings; classes are ranked by vote count (ties counted against, see classifier_topk).
    Test labels absent from the train labels are misses. Returns (top1, top5) fractions (knn_ranks per row).
    """
    ranks = knn_ranks(train_emb, train_labels, test_emb, test_labels, k, metric, batch_size, progress,
                      where="knn_accuracy")
    return float(np.mean(ranks < 1)), float(np.mean(ranks < 5))


def average_precision(embeddings, labels, metric: str = "cosine", block_rows: int | None = None,
                      progress: bool = True, exclude_same=None) -> np.ndarray:
    """Retrieval average precision of each embedding (N, ...) (flattened) as a query against all others.

    Positives are the other rows with the same label, negatives all rows with another label. With
    ``exclude_same`` (N,) (e.g. the field of view), rows sharing the query's label *and* its exclude_same value
    are neither positives nor negatives: positives come from other fields only, as image-based profiling scores
    replicates (copairs' pos_sameby=label, pos_diffby=fov, neg_diffby=label), so a score cannot be earned by
    recognizing the field rather than the protein. The rest of the data set is ranked by similarity (cosine, or
    minus Euclidean distance) and
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
    same = None if exclude_same is None else np.unique(as_labels(exclude_same, len(x), where, "exclude_same"),
                                                       return_inverse=True)[1]
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
        if same is not None:  # same label, same field: ranked last with the query, neither positive nor negative
            excluded = positive & (same[None, :] == same[rows, None])
            sims[excluded] = -np.inf
            positive &= ~excluded
        out[rows] = _ap_rows(sims, positive, TIE_TOLERANCE * scale)
    return out


def retrieval_counts(labels, exclude_same=None) -> tuple[np.ndarray, np.ndarray]:
    """(n_pos, n_total): int64 (N,) each, the positives and the ranked rows (positives + negatives) of each query
    as average_precision defines them (n_total = N - 1 without exclude_same)."""
    where = "retrieval_counts"
    labels = as_labels(labels, np.size(labels), where, "labels")
    label = np.unique(labels, return_inverse=True)[1]
    per_label = np.bincount(label)[label]
    if exclude_same is None:
        return per_label - 1, np.full(len(labels), len(labels) - 1, np.int64)
    same = np.unique(as_labels(exclude_same, len(labels), where, "exclude_same"), return_inverse=True)[1]
    pair = np.unique(np.stack([label, same], axis=1), axis=0, return_inverse=True)[1].ravel()
    per_pair = np.bincount(pair)[pair]  # the query and the rows it excludes
    return (per_label - per_pair).astype(np.int64), (len(labels) - per_pair).astype(np.int64)


def chance_average_precision(labels, exclude_same=None) -> np.ndarray:
    """Expected AP of each query (N,) under a random ranking (copairs' exact formula, which exceeds the fraction of
    positives for small lists); NaN where a query has no positive. Its macro_mean over labels is the chance level
    of mean_average_precision."""
    from copairs.map.normalization import expected_ap

    n_pos, n_total = retrieval_counts(labels, exclude_same)
    configs, inverse = np.unique(np.stack([n_pos, n_total], axis=1), axis=0, return_inverse=True)
    values = np.array([expected_ap(int(m), int(t - m)) if m > 0 else np.nan for m, t in configs])
    return values[inverse.ravel()]


def macro_mean(values, labels) -> float:
    """Mean over labels of each label's mean of the finite values (N,); labels without one are left out. NaN when
    no value is finite."""
    values = np.asarray(values, dtype=np.float64)
    labels = as_labels(labels, len(values), "macro_mean", "labels")
    valid = np.isfinite(values)
    if not valid.any():
        return float("nan")
    inverse = np.unique(labels[valid], return_inverse=True)[1]
    return float(np.mean(np.bincount(inverse, weights=values[valid]) / np.bincount(inverse)))


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
    with np.errstate(invalid="ignore"):  # -inf - -inf: the query and excluded rows, all ranked last, tie
        last[:, :-1] = s[:, :-1] - s[:, 1:] > tolerance
    end = np.where(last, np.arange(n), n - 1)
    end = np.minimum.accumulate(end[:, ::-1], axis=1)[:, ::-1]
    precision = np.take_along_axis(cum_pos, end, axis=1) / (end + 1)
    n_pos = cum_pos[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_pos > 0, np.sum(precision * pos, axis=1) / n_pos, np.nan)


def mean_average_precision(embeddings, labels, metric: str = "cosine", progress: bool = True,
                           exclude_same=None) -> float:
    """Mean average precision: AP per query (see average_precision, with exclude_same), averaged within each
    label (copairs' per-group mAP), then over labels (macro_mean), so large classes do not dominate. Queries
    without positives are skipped."""
    labels = as_labels(labels, len(np.asarray(embeddings)), "mean_average_precision", "labels")
    ap = average_precision(embeddings, labels, metric, progress=progress, exclude_same=exclude_same)
    if not np.any(np.isfinite(ap)):
        raise fail("mean_average_precision", "labels", "expected at least one label shared by two rows"
                   + (" in different fields (exclude_same)" if exclude_same is not None else ""))
    return macro_mean(ap, labels)


def map_significance(ap, labels, exclude_same=None, null_size: int = 10_000, seed: int = 0,
                     cache_dir: str | None = None, progress: bool = False) -> pd.DataFrame:
    """Per label: is its mAP above chance? ``ap`` (N,) from average_precision(..., exclude_same=exclude_same) on
    the same rows, labels (N,). copairs' own test (copairs.map.mean_average_precision): per query a null
    distribution of AP under random rankings of its n_pos positives among n_total rows (null_size samples), the
    label's null mAP the mean of its queries', p = (1 + #null mAP > observed) / (1 + null_size), and
    Benjamini-Hochberg q-values over the labels. Our tie-correct APs go in, so ties never pass as matches.
    copairs gives a label's queries with the same (n_pos, n_total) the same null samples, so its null mAP is as
    spread as one such query's AP, not narrowed by averaging independent queries: conservative p-values (tested).

    Returns a DataFrame sorted by label: label, map, chance (mean expected AP of its queries), p_value, q_value,
    queries (with a positive). Cost: one (null_size, n_total) permutation per distinct (n_pos, n_total); the null
    distributions are cached in ``cache_dir`` (default: a temporary folder, removed after).
    """
    import tempfile

    from copairs.map import mean_average_precision as copairs_map
    from copairs.map.normalization import normalize_ap

    where = "map_significance"
    ap = np.asarray(ap, dtype=np.float64)
    labels = as_labels(labels, len(ap), where, "labels")
    n_pos, n_total = retrieval_counts(labels, exclude_same)
    valid = np.isfinite(ap) & (n_pos > 0)
    if not valid.any():
        raise fail(where, "ap", "expected at least one query with a positive and a finite AP")
    if np.any(np.isfinite(ap) & (n_pos == 0)):
        raise fail(where, "exclude_same", "ap has values for queries without positives: compute ap with the same "
                   "labels and exclude_same")
    frame = pd.DataFrame({"label": labels[valid], "average_precision": ap[valid], "n_pos_pairs": n_pos[valid],
                          "n_total_pairs": n_total[valid],
                          "chance": chance_average_precision(labels, exclude_same)[valid]})
    frame["normalized_average_precision"] = normalize_ap(frame["average_precision"].to_numpy(),
                                                         frame["n_pos_pairs"].to_numpy(),
                                                         (frame["n_total_pairs"] - frame["n_pos_pairs"]).to_numpy())
    with tempfile.TemporaryDirectory(prefix="copairs-") as tmp:
        result = copairs_map(frame, sameby=["label"], null_size=null_size, threshold=0.05, seed=seed,
                             progress_bar=progress, cache_dir=cache_dir or tmp)
    stats = frame.groupby("label").agg(chance=("chance", "mean"), queries=("chance", "size"))
    out = result.set_index("label").join(stats)
    return pd.DataFrame({"label": out.index.to_numpy(), "map": out["mean_average_precision"].to_numpy(),
                         "chance": out["chance"].to_numpy(), "p_value": out["p_value"].to_numpy(),
                         "q_value": out["corrected_p_value"].to_numpy(), "queries": out["queries"].to_numpy()}
                        ).sort_values("label", kind="stable").reset_index(drop=True)


def profile_average_precision(embeddings, proteins, families, metric: str = "cosine") -> pd.DataFrame:
    """Family retrieval at protein level: each annotated protein's mean profile (neighbours.protein_profiles) as
    a query against the other annotated proteins' profiles, positives those of its family (the most frequent
    family of its crops; NON_CLASSES left out). embeddings (N, ...), proteins and families (N,) per crop.

    Returns one row per annotated protein: protein, family, average_precision (NaN when the family has no other
    protein), chance (chance_average_precision). The protein-level family mAP is macro_mean(average_precision,
    family); its interval bootstrap_mean_ci(average_precision, protein, by=family) (proteins as the unit).
    """
    from cytoself_jax.analysis.neighbours import protein_families, protein_profiles

    names, profiles = protein_profiles(embeddings, proteins)
    family_of = protein_families(proteins, families)
    family = np.array([family_of[p] for p in names], dtype=object).astype(str)
    keep = ~np.isin(family, list(NON_CLASSES))
    if keep.sum() < 2:
        raise fail("profile_average_precision", "families", f"expected at least 2 annotated proteins, found "
                   f"{int(keep.sum())}")
    return pd.DataFrame({"protein": names[keep], "family": family[keep],
                         "average_precision": average_precision(profiles[keep], family[keep], metric,
                                                                progress=False),
                         "chance": chance_average_precision(family[keep])})
