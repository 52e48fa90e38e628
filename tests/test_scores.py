"""Scores: clustering score, UMAP scores, classifier/kNN top-k, retrieval AP, each against a slow plain loop."""
import math
import statistics

import chex
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from cytoself_jax.analysis import scores
from cytoself_jax.analysis.atlas import compute_umap, fit_umap, place_on_umap
from cytoself_jax.analysis.common import AnalysisInputError


def blobs(rng, n_classes=5, per_class=40, dim=3, separation=10.0, spread=1.0):
    centres = rng.normal(scale=separation, size=(n_classes, dim))
    points = np.concatenate([c + rng.normal(scale=spread, size=(per_class, dim)) for c in centres])
    labels = np.repeat([f"class{j}" for j in range(n_classes)], per_class)
    return points, labels


def slow_clustering_score(points, labels, exclude):
    """The documented formula, written with Python lists and the statistics module."""
    def centre(rows):
        return [statistics.median(r[d] for r in rows) for d in range(len(rows[0]))]

    def radius(rows):
        c = centre(rows)
        return statistics.median(math.sqrt(sum((r[d] - c[d]) ** 2 for d in range(len(c)))) for r in rows)

    classes = {}
    for p, lab in zip(points.tolist(), labels):
        if lab not in exclude:
            classes.setdefault(lab, []).append(p)
    centres = [centre(rows) for rows in classes.values()]
    return radius(centres) / statistics.median(radius(rows) for rows in classes.values())


def test_clustering_score_matches_slow_loop_and_skips_excluded():
    rng = np.random.default_rng(0)
    points, labels = blobs(rng, n_classes=6, per_class=31, dim=3)
    labels = labels.astype(object)
    labels[::7] = "others"
    labels[3::11] = None  # unannotated -> '' -> excluded
    labels[5::13] = "mixed"
    got = scores.clustering_score(points, labels)
    want = slow_clustering_score(points, ["" if l is None else l for l in labels], {"others", "mixed", ""})
    assert got == pytest.approx(want, rel=1e-12)
    # The excluded points must not matter: moving them far away changes nothing.
    moved = points.copy()
    moved[np.isin(labels, ["others", "mixed"])] += 1e3
    assert scores.clustering_score(moved, labels) == pytest.approx(got, rel=1e-12)
    # ...unless nothing is excluded.
    assert scores.clustering_score(moved, labels, exclude=()) != pytest.approx(got, rel=1e-3)


def test_clustering_score_invariances():
    rng = np.random.default_rng(1)
    points, labels = blobs(rng, n_classes=4, per_class=25, dim=2)
    base = scores.clustering_score(points, labels)
    assert scores.clustering_score(points + np.array([123.0, -45.0]), labels) == pytest.approx(base, rel=1e-9)
    assert scores.clustering_score(points * 3.7, labels) == pytest.approx(base, rel=1e-9)
    perm = rng.permutation(len(points))
    assert scores.clustering_score(points[perm], labels[perm]) == pytest.approx(base, rel=1e-12)


def test_clustering_score_separated_beats_overlapping():
    rng = np.random.default_rng(2)
    separated, labels = blobs(rng, separation=20.0, spread=1.0)
    overlapping, _ = blobs(rng, separation=0.0, spread=1.0)
    high, low = scores.clustering_score(separated, labels), scores.clustering_score(overlapping, labels)
    assert high > 5.0
    assert low < 0.5
    # Same points, shuffled labels: the structure is gone.
    assert scores.clustering_score(separated, rng.permutation(labels)) < 0.5


def test_clustering_score_errors():
    rng = np.random.default_rng(3)
    points, labels = blobs(rng, n_classes=2, per_class=5)
    with pytest.raises(AnalysisInputError, match=r"clustering_score: labels: expected at least 2 classes"):
        scores.clustering_score(points, np.where(labels == "class0", "others", labels))
    with pytest.raises(AnalysisInputError, match=r"clustering_score: labels: expected 10 labels"):
        scores.clustering_score(points, labels[:-1])
    with pytest.raises(AnalysisInputError, match=r"clustering_score: points: expected finite"):
        scores.clustering_score(np.where(points > 0, np.nan, points), labels)
    with pytest.raises(AnalysisInputError, match=r"median class radius is 0"):
        scores.clustering_score(np.repeat(points[:2], 5, axis=0), labels)


def test_umap_clustering_scores_planted_clusters():
    rng = np.random.default_rng(4)
    x, labels = blobs(rng, n_classes=4, per_class=60, dim=16, separation=6.0)
    labels = labels.astype(object)
    labels[::10] = "others"
    values, coords = scores.umap_clustering_scores(x, labels, seeds=(0, 1))
    chex.assert_shape(values, (2,))
    assert len(coords) == 2
    chex.assert_shape(coords[0], (240, 2))
    assert np.all(values > 3.0), values  # well-separated blobs stay separate in UMAP
    for v, xy in zip(values, coords):
        assert v == pytest.approx(scores.clustering_score(xy, labels))
    # Same seed, same map (reproducible); the scores sit on the coordinates, not on the labels alone.
    np.testing.assert_allclose(compute_umap(x, seed=0), coords[0], rtol=0, atol=1e-5)
    assert scores.clustering_score(coords[0], rng.permutation(labels)) < 1.0



def test_crops_placed_on_a_fitted_umap_land_in_their_cluster():
    # eval's atlas above --umap_max_crops: the UMAP is fit on a subsample and the other crops are placed by its
    # transform; a placed point must land among the fitted points of its own cluster, in chunks or not.
    rng = np.random.default_rng(7)
    x, labels = blobs(rng, n_classes=4, per_class=60, dim=16, separation=6.0)
    fit = np.sort(rng.choice(len(x), size=120, replace=False))
    rest = np.setdiff1d(np.arange(len(x)), fit)
    reducer, fitted = fit_umap(x[fit], seed=0)
    np.testing.assert_allclose(fitted, compute_umap(x[fit], seed=0), rtol=0, atol=1e-5)
    for chunk in (1000, 25):
        placed = place_on_umap(reducer, x[rest], chunk=chunk)
        chex.assert_shape(placed, (len(rest), 2))
        chex.assert_type(placed, np.float32)
        nearest = np.argmin(((placed[:, None, :] - fitted[None, :, :]) ** 2).sum(-1), axis=1)
        agree = np.mean(labels[fit][nearest] == labels[rest])
        assert agree >= 0.95, (chunk, agree)
    chex.assert_shape(place_on_umap(reducer, x[:0]), (0, 2))

def slow_topk(score_rows, labels, k):
    hits = 0
    for row, y in zip(score_rows, labels):
        if y < 0:
            continue
        better_or_equal = sum(1 for c, s in enumerate(row) if c != y and s >= row[y])
        hits += better_or_equal < k
    return hits / len(labels)


def test_classifier_topk_matches_loop_and_counts_ties_against():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(64, 12))
    labels = rng.integers(0, 12, 64)
    labels[:3] = -1
    top1, top5 = scores.classifier_topk(logits, labels)
    assert top1 == pytest.approx(slow_topk(logits, labels, 1))
    assert top5 == pytest.approx(slow_topk(logits, labels, 5))
    assert top1 == pytest.approx(np.mean(np.argmax(logits[3:], 1) == labels[3:]) * 61 / 64)
    # All scores equal: no class is ahead of another, and a tie never counts as a hit.
    assert scores.classifier_topk(np.zeros((5, 10)), np.arange(5), k=(1, 5, 10)) == (0.0, 0.0, 1.0)
    with pytest.raises(AnalysisInputError, match=r"classifier_topk: labels: expected values in \[0, 12\)"):
        scores.classifier_topk(logits, labels + 12)


def test_knn_accuracy_matches_brute_force():
    rng = np.random.default_rng(6)
    train, train_labels = blobs(rng, n_classes=8, per_class=20, dim=5, separation=2.0, spread=1.0)
    test = train[::2] + rng.normal(scale=1.0, size=train[::2].shape)
    test_labels = train_labels[::2].copy()
    test_labels[:4] = "unseen"  # not in the train labels: always a miss
    k = 7
    classes = sorted(set(train_labels))
    hits1 = hits5 = 0
    for x, y in zip(test, test_labels):
        nearest = np.argsort(np.linalg.norm(train - x, axis=1))[:k]
        votes = {c: 0 for c in classes}
        for i in nearest:
            votes[train_labels[i]] += 1
        if y in votes:
            ahead = sum(1 for c in classes if c != y and votes[c] >= votes[y])
            hits1 += ahead < 1
            hits5 += ahead < 5
    top1, top5 = scores.knn_accuracy(train, train_labels, test, test_labels, k=k, batch_size=13)
    assert top1 == pytest.approx(hits1 / len(test))
    assert top5 == pytest.approx(hits5 / len(test))
    assert 0.2 < top1 < top5 < 1.0  # the planted data is neither trivial nor hopeless
    with pytest.raises(AnalysisInputError, match=r"knn_accuracy: test_emb: expected 5 features"):
        scores.knn_accuracy(train, train_labels, test[:, :3], test_labels)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_average_precision_matches_sklearn_per_query(metric):
    rng = np.random.default_rng(7)
    x, labels = blobs(rng, n_classes=5, per_class=12, dim=6, separation=1.0, spread=1.0)
    labels = labels.astype(object)
    labels[-1] = "singleton"  # no positive -> NaN
    ap = scores.average_precision(x, labels, metric=metric, block_rows=17)
    if metric == "cosine":
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        sims = unit @ unit.T
    else:
        sims = -np.linalg.norm(x[:, None] - x[None], axis=-1)
    for i in range(len(x)):
        others = np.arange(len(x)) != i
        positive = labels[others] == labels[i]
        if positive.any():
            assert ap[i] == pytest.approx(average_precision_score(positive, sims[i, others]), abs=1e-12)
        else:
            assert np.isnan(ap[i])
    # float32 embeddings give the same answer to float32 precision.
    np.testing.assert_allclose(scores.average_precision(x.astype(np.float32), labels, metric), ap, atol=1e-5)
    per_label = [np.mean(ap[labels == lab]) for lab in np.unique(labels) if lab != "singleton"]
    assert scores.mean_average_precision(x, labels, metric) == pytest.approx(np.mean(per_label))


def test_average_precision_hand_example_and_ties():
    # Query 0 ranks: row 1 (positive, sim .9), row 2 (negative, .5), row 3 (positive, .1): AP = (1/1 + 2/3) / 2.
    x = np.array([[1.0, 0.0], [0.9, np.sqrt(1 - 0.81)], [0.5, np.sqrt(0.75)], [0.1, np.sqrt(0.99)]])
    ap = scores.average_precision(x, ["a", "a", "b", "a"])
    assert ap[0] == pytest.approx((1 + 2 / 3) / 2)
    # Collapsed embeddings (all rows equal) score the fraction of positives, as sklearn does, not 1.
    labels = np.array(list("aabbbccccd"))
    ap = scores.average_precision(np.ones((10, 3)), labels)
    for i in range(9):
        assert ap[i] == pytest.approx((np.sum(labels == labels[i]) - 1) / 9)
    with pytest.raises(AnalysisInputError, match=r"average_precision: embeddings: cosine needs non-zero rows"):
        scores.average_precision(np.zeros((3, 2)), ["a", "a", "b"])
    with pytest.raises(AnalysisInputError, match=r"average_precision: metric: expected one of"):
        scores.average_precision(x, list("aaba"), metric="manhattan")


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_average_precision_exact_duplicates_score_chance(metric, dtype):
    # A collapsed codebook gives identical vectors: every query's ranking is one tie, so AP = positives / others
    # exactly, and mAP is the chance level eval reports beside it. Rounding in the matrix product used to split
    # the tie (300 such vectors scored 0.048 against chance 0.030).
    rng = np.random.default_rng(3)
    x = np.tile(rng.normal(size=(1, 257)).astype(dtype) * 3.7, (300, 1))
    labels = rng.integers(0, 30, 300).astype(str)
    ap = scores.average_precision(x, labels, metric=metric, block_rows=64, progress=False)
    counts = {lab: np.sum(labels == lab) for lab in labels}
    expected = np.array([(counts[lab] - 1) / 299 for lab in labels])
    np.testing.assert_allclose(ap, expected, rtol=1e-12)
    names, n = np.unique(labels, return_counts=True)
    chance = np.mean((n[n >= 2] - 1) / 299)
    assert scores.mean_average_precision(x, labels, metric, progress=False) == pytest.approx(chance, rel=1e-12)


def _sklearn_ap_per_query(sims: np.ndarray, labels: np.ndarray) -> np.ndarray:
    out = np.full(len(labels), np.nan)
    for i in range(len(labels)):
        others = np.arange(len(labels)) != i
        positive = labels[others] == labels[i]
        if positive.any():
            out[i] = average_precision_score(positive, sims[i, others])
    return out


def test_average_precision_ties_between_distinct_vectors_match_sklearn():
    # Quantized embeddings tie without being equal: rows built from a few code vectors are often at exactly the
    # same distance from a query. Integer entries make the reference similarities exact, so sklearn sees the
    # true ties; ours computes them in floats and must find the same ones.
    rng = np.random.default_rng(5)
    codebook = rng.integers(-3, 4, size=(3, 5))
    x = codebook[rng.integers(0, 3, size=(60, 4))].reshape(60, -1).astype(np.float64)
    x[:, 0] += 11  # no zero rows (cosine) and off-centre entries
    labels = rng.integers(0, 4, 60).astype(str)
    exact_sq_dist = ((x[:, None].astype(np.int64) - x[None].astype(np.int64)) ** 2).sum(-1)
    np.testing.assert_allclose(scores.average_precision(x, labels, "euclidean", block_rows=7, progress=False),
                               _sklearn_ap_per_query(-exact_sq_dist, labels), rtol=1e-12)
    # Cosine: permutations of one integer vector share a norm, so cosine ties are exactly dot-product ties.
    base = np.array([5, 3, 3, 1, 1, 1, 0, 0])
    xp = np.stack([rng.permutation(base) for _ in range(60)]).astype(np.float64)
    exact_dots = xp.astype(np.int64) @ xp.T.astype(np.int64)
    np.testing.assert_allclose(scores.average_precision(xp, labels, "cosine", progress=False),
                               _sklearn_ap_per_query(exact_dots, labels), rtol=1e-12)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_average_precision_equals_copairs(metric):
    # copairs (the image-profiling community's mAP library) on the same inputs: per query AP and per label mAP.
    # Tie-free inputs only: copairs 0.5 ranks tied positives before tied negatives (so identical vectors score 1);
    # ours follows sklearn there (see the two tests above), which is why we keep our own implementation.
    import pandas as pd
    from copairs.map import average_precision as copairs_ap

    rng = np.random.default_rng(11)
    x, labels = blobs(rng, n_classes=6, per_class=15, dim=8, separation=1.0, spread=1.0)
    meta = pd.DataFrame({"label": labels})
    theirs = copairs_ap(meta, x, pos_sameby=["label"], pos_diffby=[], neg_sameby=[], neg_diffby=["label"],
                        distance=metric, progress_bar=False)
    ours = scores.average_precision(x, labels, metric=metric, progress=False)
    np.testing.assert_allclose(ours, theirs["average_precision"].to_numpy(), rtol=1e-6)
    per_label = theirs.groupby("label")["average_precision"].mean().mean()
    assert scores.mean_average_precision(x, labels, metric, progress=False) == pytest.approx(per_label, rel=1e-6)


def test_progress_bars_can_be_switched_off(capsys):
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(40, 3)), np.repeat(["a", "b"], 20)
    for progress in (True, False):
        scores.mean_average_precision(x, labels, progress=progress)
        scores.knn_accuracy(x, labels, x, labels, k=3, progress=progress)
        err = capsys.readouterr().err
        assert ("average precision" in err and "kNN" in err) if progress else err == ""


def _slow_field_aware_ap(sims: np.ndarray, labels: np.ndarray, fovs: np.ndarray) -> np.ndarray:
    """Per query: candidates are the other rows except those of its label in its field; sklearn's AP over them."""
    out = np.full(len(labels), np.nan)
    for i in range(len(labels)):
        candidates = (np.arange(len(labels)) != i) & ~((labels == labels[i]) & (fovs == fovs[i]))
        positive = labels[candidates] == labels[i]
        if positive.any():
            out[i] = average_precision_score(positive, sims[i, candidates])
    return out


def _integer_rows(rng, n=48):
    """Rows from a few integer vectors (so similarities tie exactly), labels and fields crossing labels."""
    codebook = rng.integers(-3, 4, size=(4, 6))
    x = codebook[rng.integers(0, 4, size=(n, 3))].sum(axis=1)
    labels = np.array([f"p{i % 4}" for i in range(n)])
    fovs = np.array([f"f{(i // 4) % 3}" for i in range(n)])  # 3 fields, each holding every label
    return x, labels, fovs


def test_field_aware_average_precision_matches_slow_reference_with_ties():
    rng = np.random.default_rng(21)
    x, labels, fovs = _integer_rows(rng)
    exact_sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    ours = scores.average_precision(x.astype(float), labels, "euclidean", exclude_same=fovs, progress=False)
    np.testing.assert_allclose(ours, _slow_field_aware_ap(-exact_sq, labels, fovs), rtol=1e-12)
    xp = np.stack([rng.permutation([5, 3, 3, 1, 1, 1, 0, 0]) for _ in range(48)])
    ours = scores.average_precision(xp.astype(float), labels, "cosine", exclude_same=fovs, block_rows=7,
                                    progress=False)
    np.testing.assert_allclose(ours, _slow_field_aware_ap(xp @ xp.T, labels, fovs), rtol=1e-12)
    # a label imaged in one field only has no positive
    single = np.where(labels == "p0", "only", fovs)
    ours = scores.average_precision(x.astype(float), labels, "euclidean", exclude_same=single, progress=False)
    assert np.isnan(ours[labels == "p0"]).all() and np.isfinite(ours[labels != "p0"]).all()


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_field_aware_average_precision_equals_copairs(metric):
    """copairs with pos_sameby=label, pos_diffby=fov, neg_diffby=label, on tie-free data: same APs, same counts."""
    import pandas as pd
    from copairs.map import average_precision as copairs_ap

    rng = np.random.default_rng(12)
    x, labels = blobs(rng, n_classes=5, per_class=12, dim=8, separation=1.0, spread=1.0)
    fovs = np.array([f"{lab}/{i % 3}" if i % 5 else f"shared{i % 2}" for i, lab in enumerate(labels)])
    meta = pd.DataFrame({"label": labels, "fov": fovs})
    theirs = copairs_ap(meta, x, pos_sameby=["label"], pos_diffby=["fov"], neg_sameby=[], neg_diffby=["label"],
                        distance=metric, progress_bar=False)
    ours = scores.average_precision(x, labels, metric=metric, exclude_same=fovs, progress=False)
    np.testing.assert_allclose(ours, theirs["average_precision"].to_numpy(), rtol=1e-6)
    n_pos, n_total = scores.retrieval_counts(labels, fovs)
    np.testing.assert_array_equal(n_pos, theirs["n_pos_pairs"].to_numpy())
    np.testing.assert_array_equal(n_total[n_pos > 0], theirs["n_total_pairs"].to_numpy()[n_pos > 0])
    per_label = theirs.groupby("label")["average_precision"].mean().mean()
    assert scores.mean_average_precision(x, labels, metric, progress=False, exclude_same=fovs) == \
        pytest.approx(per_label, rel=1e-6)


def test_field_aware_map_does_not_reward_recognizing_the_field():
    """Each field adds a strong offset and proteins differ little: same-field positives make plain mAP high,
    positives from other fields only bring it near chance."""
    rng = np.random.default_rng(3)
    proteins = np.repeat([f"P{i}" for i in range(8)], 30)
    fovs = np.array([f"{p}/{(i // 10) % 3}" for i, p in enumerate(proteins)])  # 3 fields of 10 crops per protein
    field_offset = {f: rng.normal(scale=5.0, size=16) for f in np.unique(fovs)}
    x = np.stack([field_offset[f] for f in fovs]) + rng.normal(size=(len(fovs), 16))
    plain = scores.mean_average_precision(x, proteins, progress=False)
    aware = scores.mean_average_precision(x, proteins, progress=False, exclude_same=fovs)
    chance = scores.macro_mean(scores.chance_average_precision(proteins, fovs), proteins)
    assert plain > 0.3 and aware < chance + 0.1, (plain, aware, chance)


def test_retrieval_counts_and_chance_against_enumeration():
    import itertools

    labels = np.array(["a", "a", "a", "b", "b", "c"])
    fovs = np.array(["x", "x", "y", "z", "w", "v"])
    n_pos, n_total = scores.retrieval_counts(labels, fovs)
    np.testing.assert_array_equal(n_pos, [1, 1, 2, 1, 1, 0])
    np.testing.assert_array_equal(n_total, [4, 4, 5, 5, 5, 5])
    n_pos, n_total = scores.retrieval_counts(labels)
    np.testing.assert_array_equal(n_pos, [2, 2, 2, 1, 1, 0]) and np.testing.assert_array_equal(n_total, [5] * 6)

    def expected(m, t):  # every placement of m positives among t ranks, equally likely
        aps = [np.mean([(k + 1) / (r + 1) for k, r in enumerate(ranks)])
               for ranks in itertools.combinations(range(t), m)]
        return np.mean(aps)

    chance = scores.chance_average_precision(labels, fovs)
    np.testing.assert_allclose(chance[:5], [expected(1, 4), expected(1, 4), expected(2, 5), expected(1, 5),
                                            expected(1, 5)], rtol=1e-9)
    assert np.isnan(chance[5])
    assert scores.macro_mean([1.0, 0.0, np.nan, 0.5], ["a", "a", "b", "c"]) == pytest.approx(0.5)


def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values, written out."""
    order = np.argsort(p)
    m = len(p)
    q = np.empty(m)
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, p[i] * m / rank)
        q[i] = running
    return q


def test_map_significance_p_values_on_exact_nulls_and_bh_q_values():
    labels = np.array(["a", "a", "b", "b", "c"])
    fovs = np.array(["f1", "f2", "f3", "f4", "f5"])
    # ranked rows per query: 4 (everything but itself); one positive
    ap = np.array([1.0, 0.5, 1.0, 1.0, np.nan])
    table = scores.map_significance(ap, labels, fovs, null_size=4000, seed=1)
    assert table["label"].tolist() == ["a", "b"] and table["queries"].tolist() == [2, 2]
    np.testing.assert_allclose(table["map"], [0.75, 1.0])
    chance = scores.chance_average_precision(labels, fovs)
    np.testing.assert_allclose(table["chance"], [chance[:2].mean(), chance[2:4].mean()])
    # Null AP of one positive among 4 ranked rows: 1, 1/2, 1/3, 1/4 equally likely. copairs gives queries of one
    # label with the same (n_pos, n_total) the same null samples, so the label's null mAP is one query's null AP
    # (not the mean of two independent ones, which would exceed 0.75 with probability 1/16): P(> 0.75) = 1/4.
    assert table["p_value"][0] == pytest.approx(1 / 4, abs=0.025)
    assert table["p_value"][1] == pytest.approx(1 / 4001)
    np.testing.assert_allclose(table["q_value"], _bh(table["p_value"].to_numpy()))
    with pytest.raises(AnalysisInputError, match="compute ap with the same labels and exclude_same"):
        scores.map_significance(ap, labels, np.array(["f1", "f1", "f3", "f4", "f5"]))


def test_map_significance_finds_separated_labels_and_not_noise():
    rng = np.random.default_rng(4)
    x, labels = blobs(rng, n_classes=4, per_class=10, dim=5, separation=8.0)
    labels = labels.copy()
    noise = np.repeat(["n0", "n1"], 10)
    x = np.concatenate([x, rng.normal(size=(20, 5))])  # two labels drawn from one distribution
    labels = np.concatenate([labels, rng.permutation(noise)])
    fovs = np.array([f"{lab}/{i % 2}" for i, lab in enumerate(labels)])
    ap = scores.average_precision(x, labels, exclude_same=fovs, progress=False)
    table = scores.map_significance(ap, labels, fovs, null_size=2000).set_index("label")
    assert (table.loc[[f"class{j}" for j in range(4)], "q_value"] < 0.01).all()
    assert (table.loc[["n0", "n1"], "p_value"] > 0.01).all()


def test_profile_average_precision_is_map_on_protein_means():
    import pandas as pd

    rng = np.random.default_rng(5)
    proteins = np.repeat([f"P{i}" for i in range(7)], 6)
    families = np.array(["nucleus", "nucleus", "nucleus", "er", "er", "er", "others"])[
        np.repeat(np.arange(7), 6)]
    x = rng.normal(size=(42, 4)) + np.where(families == "er", 2.0, -2.0)[:, None]
    table = scores.profile_average_precision(x, proteins, families)
    assert table["protein"].tolist() == [f"P{i}" for i in range(6)]  # 'others' left out
    means = pd.DataFrame(x).groupby(proteins).mean().to_numpy()[:6]
    np.testing.assert_allclose(table["average_precision"],
                               scores.average_precision(means, families[::6][:6], progress=False))
    np.testing.assert_allclose(table["chance"], scores.chance_average_precision(families[::6][:6]))
    assert scores.macro_mean(table["average_precision"], table["family"]) == pytest.approx(
        scores.mean_average_precision(means, families[::6][:6], progress=False))


def test_umaps_fitted_in_worker_processes_are_those_fitted_here():
    # eval fits the clustering score's UMAPs (one per seed) side by side in worker processes
    from cytoself_jax.analysis.atlas import fit_umap_of_seed
    from cytoself_jax.analysis.parallel import in_processes

    x, _ = blobs(np.random.default_rng(9), n_classes=3, per_class=40, dim=8)
    kwargs = {"n_neighbors": 15, "min_dist": 0.1, "metric": "euclidean"}
    remote = in_processes(fit_umap_of_seed, [(x, seed, kwargs) for seed in (0, 1)])
    for seed, (model, xy) in zip((0, 1), remote):
        assert model is None
        np.testing.assert_array_equal(xy, compute_umap(x, seed=seed))
    assert not np.array_equal(remote[0][1], remote[1][1])
