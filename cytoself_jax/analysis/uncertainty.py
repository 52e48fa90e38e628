"""Uncertainty of a score: a cluster bootstrap over fields of view (the interval a records.Score carries).

Crops of one field of view share the field's illumination, focus and cells' state, so they are not independent:
a bootstrap over crops treats 100 crops of one field as 100 observations and gives intervals far too narrow. The
field of view is the unit of independence, so whole fields are resampled with replacement (cluster bootstrap,
Davison & Hinkley 1997, section 3.8), the statistic is recomputed on each resample's crops, and the interval is the
percentile interval of the replicates.

Stratification. Fields are nested in proteins (one tagged protein per field), and eval's test split holds about
one field per protein (demo: 40 fields of 40 proteins). Resampling fields *within* each protein would then redraw
the same field every time and give a zero-width interval, hiding the dominant source of variation: which proteins
(and fields) happened to be imaged. So by default fields are resampled over the whole set, and a protein may be
absent from a replicate or appear twice; scores averaged over proteins (per-protein mAP) are then averaged over the
proteins present, an estimate of the same quantity (the average over proteins like these). ``strata`` resamples
fields within coarser classes instead (each class keeps its number of fields): use it for statistics that need
every class present (macro-F1 or the clustering score over localization families, with strata = family).
Bootstrapping pairwise statistics (retrieval) by duplicating rows would make a duplicated crop its own perfect
match; compute such scores per query on all rows once and bootstrap their mean (bootstrap_mean_ci).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable

import numpy as np
import scipy.sparse

from cytoself_jax.analysis.common import as_labels, fail


@dataclasses.dataclass(frozen=True)
class Interval:
    """A statistic and its bootstrap percentile interval: value (the statistic on all rows), low and high (the
    interval at `level`), n_boot (replicates with a finite value), n_groups (fields of view, or other units)."""

    value: float
    low: float
    high: float
    n_boot: int
    n_groups: int
    level: float = 0.95


def _group_index(groups, n: int, where: str) -> tuple[np.ndarray, int]:
    labels = as_labels(groups, n, where, "groups")
    inverse = np.unique(labels, return_inverse=True)[1]
    count = int(inverse.max(initial=-1)) + 1
    if count < 2:
        raise fail(where, "groups", f"expected rows of at least 2 groups (fields of view) to resample, found {count}")
    return inverse, count


def _strata_of_groups(strata, group: np.ndarray, n_groups: int, where: str) -> np.ndarray:
    """Stratum index (G,) of each group; all rows of a group must share their stratum."""
    if strata is None:
        return np.zeros(n_groups, np.int64)
    labels = np.unique(as_labels(strata, len(group), where, "strata"), return_inverse=True)[1]
    of_group = np.full(n_groups, -1, np.int64)
    of_group[group] = labels
    if np.any(of_group[group] != labels):
        bad = int(group[np.flatnonzero(of_group[group] != labels)[0]])
        raise fail(where, "strata", f"expected one stratum per group (all rows of a field of view in one stratum), "
                   f"group #{bad} has rows in several")
    return of_group


def _check(n_boot: int, level: float, where: str) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise fail(where, "n_boot", f"expected a positive integer, got {n_boot!r}")
    if not 0 < level < 1:
        raise fail(where, "level", f"expected a coverage in (0, 1), got {level!r}")


def _draw_counts(rng: np.random.Generator, stratum: np.ndarray, n_boot: int) -> np.ndarray:
    """(n_boot, G) int: how often each group is drawn when each stratum's groups are resampled with replacement,
    as many draws as the stratum has groups."""
    counts = np.zeros((n_boot, len(stratum)), np.int64)
    for s in np.unique(stratum):
        members = np.flatnonzero(stratum == s)
        picks = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
        np.add.at(counts, (np.arange(n_boot)[:, None], picks), 1)
    return counts


def _interval(value: float, replicates: np.ndarray, n_groups: int, level: float) -> Interval:
    finite = replicates[np.isfinite(replicates)]
    if len(finite) == 0:
        return Interval(float(value), math.nan, math.nan, 0, n_groups, level)
    low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(value), float(low), float(high), int(len(finite)), n_groups, level)


def bootstrap_ci(statistic: Callable[[np.ndarray], float], groups, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95, strata=None) -> Interval:
    """Cluster bootstrap interval of ``statistic(rows)`` over groups (N,) (fields of view): each replicate draws
    groups with replacement (within ``strata`` (N,) when given) and calls statistic with the int64 row positions of
    the drawn groups' rows, a group drawn twice giving its rows twice. value = statistic(all rows). A replicate
    whose statistic raises ValueError or is not finite (a class missing) is left out of the interval (n_boot counts
    the others). For means of per-row values use bootstrap_mean_ci: the same draws, without a Python call each.
    """
    where = "bootstrap_ci"
    _check(n_boot, level, where)
    group, n_groups = _group_index(groups, np.size(groups), where)
    stratum = _strata_of_groups(strata, group, n_groups, where)
    order = np.argsort(group, kind="stable")
    counts = _draw_counts(np.random.default_rng(seed), stratum, n_boot)
    replicates = np.full(n_boot, np.nan)
    for b in range(n_boot):
        rows = np.repeat(order, counts[b][group[order]])  # each drawn group's rows, as often as it was drawn
        try:
            replicates[b] = float(statistic(rows))
        except ValueError:  # e.g. a resample without two classes: no value, as a NaN
            pass
    return _interval(float(statistic(np.arange(len(group)))), replicates, n_groups, level)


def bootstrap_mean_ci(values, groups, by=None, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                      strata=None) -> Interval:
    """Cluster bootstrap interval of the mean of per-row values (N,) (NaN rows skipped, e.g. queries without
    positives), groups (N,) the fields of view. With ``by`` (N,) labels the statistic is the mean over labels
    present of each label's mean (mean_average_precision's macro average when values are APs and by the labels).
    Same draws as bootstrap_ci with the same seed and strata, vectorized: (replicates, G) draw counts times the
    (G, labels) sparse sums; memory ~16 * n_boot * G bytes. value = the statistic on all rows.
    """
    where = "bootstrap_mean_ci"
    _check(n_boot, level, where)
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise fail(where, "values", f"expected one value per row (N,), got shape {values.shape}")
    group, n_groups = _group_index(groups, len(values), where)
    stratum = _strata_of_groups(strata, group, n_groups, where)
    label = np.zeros(len(values), np.int64) if by is None else np.unique(
        as_labels(by, len(values), where, "by"), return_inverse=True)[1]
    valid = np.isfinite(values)
    if not valid.any():
        raise fail(where, "values", "expected at least one finite value")
    shape = (n_groups, int(label.max()) + 1)
    # Per group and label: the sum of values and the number of rows with a value.
    sums = scipy.sparse.csr_matrix((values[valid], (group[valid], label[valid])), shape=shape)
    counts = scipy.sparse.csr_matrix((np.ones(int(valid.sum())), (group[valid], label[valid])), shape=shape)

    def statistic(weights: np.ndarray) -> np.ndarray:  # (B, G) group weights -> (B,)
        s, c = (np.asarray((m.T @ weights.T).T) for m in (sums, counts))
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a replicate without any value: NaN, left out
            return np.nanmean(np.where(c > 0, s / c, np.nan), axis=1)

    draws = _draw_counts(np.random.default_rng(seed), stratum, n_boot)  # the draws of bootstrap_ci
    return _interval(statistic(np.ones((1, n_groups)))[0], statistic(draws.astype(np.float64)), n_groups, level)
