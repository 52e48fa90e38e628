"""Cluster bootstrap intervals over fields of view, and the Score record built from one."""
import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest

from cytoself_jax.analysis.common import AnalysisInputError
from cytoself_jax.analysis.scores import average_precision, mean_average_precision
from cytoself_jax.analysis.records import Score
from cytoself_jax.analysis.uncertainty import Interval, bootstrap_ci, bootstrap_mean_ci


def _clustered(rng, n_groups=40, mean=3.0, between=1.0, within=1.0):
    """Rows of n_groups fields of 2..12 crops: field effect N(0, between), crop noise N(0, within)."""
    sizes = rng.integers(2, 13, n_groups)
    groups = np.repeat(np.arange(n_groups), sizes)
    values = mean + rng.normal(0, between, n_groups)[groups] + rng.normal(0, within, len(groups))
    return values, groups


def test_cluster_bootstrap_covers_the_true_mean_and_a_crop_bootstrap_does_not():
    """200 simulated data sets of clustered crops with known mean 3: the 95% interval over fields covers 3 in
    ~95% of them; resampling crops as if independent covers it far less often (intervals too narrow)."""
    rng = np.random.default_rng(0)
    by_field, by_crop = [], []
    for i in range(200):
        values, groups = _clustered(rng)
        a = bootstrap_mean_ci(values, groups, n_boot=400, seed=i)
        b = bootstrap_mean_ci(values, np.arange(len(values)), n_boot=400, seed=i)
        assert a.value == pytest.approx(values.mean()) and a.n_groups == 40 and a.n_boot == 400
        by_field.append(a.low <= 3.0 <= a.high)
        by_crop.append(b.low <= 3.0 <= b.high)
    # 0.905 here; 0.931 over 1000 data sets: percentile intervals over 40 fields undercover a little (their spread
    # uses 1/G, not 1/(G-1), and normal rather than t quantiles); a 200-set estimate has a standard error of 0.015.
    assert 0.88 <= np.mean(by_field) <= 0.99, np.mean(by_field)
    assert np.mean(by_crop) < 0.85, np.mean(by_crop)


def test_generic_and_fast_paths_draw_the_same_replicates():
    rng = np.random.default_rng(1)
    values, groups = _clustered(rng, n_groups=12)
    labels = np.array(["a", "b", "c"])[rng.integers(0, 3, len(values))]
    values[::7] = np.nan  # queries without positives: skipped

    def macro(rows):  # slow reference: mean over labels present of each label's mean
        frame = pd.DataFrame({"v": values[rows], "l": labels[rows]}).dropna()
        return frame.groupby("l")["v"].mean().mean()

    slow = bootstrap_ci(macro, groups, n_boot=200, seed=5)
    fast = bootstrap_mean_ci(values, groups, by=labels, n_boot=200, seed=5)
    assert slow.value == pytest.approx(macro(np.arange(len(values))))
    for field in ("value", "low", "high"):
        assert getattr(fast, field) == pytest.approx(getattr(slow, field), rel=1e-12), field
    assert fast.n_boot == slow.n_boot == 200
    assert fast.low < fast.value < fast.high


def test_point_estimate_of_per_query_aps_is_mean_average_precision():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 5))
    labels = np.repeat(["p0", "p1", "p2", "p3"], 15)
    fovs = np.array([f"{p}/{i % 3}" for i, p in enumerate(labels)])
    ap = average_precision(x, labels, progress=False)
    ci = bootstrap_mean_ci(ap, fovs, by=labels, n_boot=100)
    assert ci.value == pytest.approx(mean_average_precision(x, labels, progress=False))
    assert ci.n_groups == 12


def test_strata_keep_each_stratum_s_number_of_groups():
    strata = np.array(["A"] * 3 + ["B"] * 7)
    groups = np.arange(10)  # one row per group
    in_a = bootstrap_ci(lambda rows: np.sum(strata[rows] == "A"), groups, n_boot=200, strata=strata)
    assert (in_a.low, in_a.high, in_a.value) == (3, 3, 3)
    free = bootstrap_ci(lambda rows: np.sum(strata[rows] == "A"), groups, n_boot=200)
    assert free.low < 3 < free.high
    # the fast path draws the same way
    fast = bootstrap_mean_ci((strata == "A").astype(float), groups, n_boot=200, strata=strata)
    assert fast.low == fast.high == pytest.approx(0.3)


def test_replicates_without_a_value_are_left_out():
    groups = np.arange(6)

    def needs_group_zero(rows):
        if 0 not in rows:
            raise ValueError("no class 0")
        return float(len(rows))

    ci = bootstrap_ci(needs_group_zero, groups, n_boot=300, seed=0)
    # P(group 0 not drawn in 6 draws) = (5/6)^6 ~ 0.33
    assert 150 < ci.n_boot < 250 and ci.value == 6.0


def test_bad_input_is_one_line():
    with pytest.raises(AnalysisInputError, match="^bootstrap_mean_ci: groups: expected rows of at least 2 groups"):
        bootstrap_mean_ci([1.0, 2.0], ["f", "f"])
    with pytest.raises(AnalysisInputError, match="^bootstrap_ci: strata: expected one stratum per group"):
        bootstrap_ci(len, ["f", "f", "g"], strata=["A", "B", "B"])
    with pytest.raises(AnalysisInputError, match="n_boot: expected a positive integer"):
        bootstrap_mean_ci([1.0, 2.0], ["f", "g"], n_boot=0)
    with pytest.raises(AnalysisInputError, match=r"level: expected a coverage in \(0, 1\)"):
        bootstrap_mean_ci([1.0, 2.0], ["f", "g"], level=95)
    with pytest.raises(AnalysisInputError, match="groups: expected 2 labels"):
        bootstrap_mean_ci([1.0, 2.0], ["f"])


def test_score_from_an_interval_carries_its_bounds_groups_and_unit():
    ci = Interval(value=0.41234, low=0.37, high=0.455, n_boot=1000, n_groups=40)
    score = Score.from_interval("retrieval.map_protein", "mAP", ci, basis="test split, global embedding",
                                chance=0.025, n=400)
    record = score.to_json()
    assert record["value"] == 0.41234 and (record["low"], record["high"]) == (0.37, 0.455)
    assert record["groups"] == 40 and record["n"] == 400 and record["chance"] == 0.025
    assert record["interval"] == "95% CI, bootstrap over fields of view"
    assert score.value_text() == "0.412 [0.370, 0.455]"
    assert score.meaning_text() == ("test split, global embedding; chance 0.025; n = 400 in 40 fields; "
                                    "[95% CI, bootstrap over fields of view]")
    empty = Score.from_interval("x", "x", Interval(0.5, math.nan, math.nan, 0, 1), unit="proteins")
    assert json.loads(json.dumps(empty.to_json()))["low"] is None and empty.value_text() == "0.500"
    assert empty.interval == "95% CI, bootstrap over proteins"
    by_protein = Score.from_interval("p", "p", Interval(0.6, 0.4, 0.8, 1000, 8), unit="proteins", n=8)
    assert by_protein.meaning_text() == "n = 8; [95% CI, bootstrap over proteins]"  # n counts the proteins
    with pytest.raises(dataclasses.FrozenInstanceError):
        score.value = 1.0
