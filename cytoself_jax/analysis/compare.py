"""Comparing trainings: one record per training (its scores with their intervals, seed, epochs, code), and per
group of trainings n, mean, the between-training sd and a 95% confidence interval of the mean, with Welch's t-test
and an exact permutation test between two groups, and their spreads compared (the ratio of between-training sds,
with the F-test and the Brown-Forsythe test). A difference between groups is reported with its p-value, never as
"better" on means alone.

The unit here is the training: scores of one training are one observation, whatever their own intervals (those
measure the sampling of fields of view within one training; the between-training sd measures what a new training
would give).
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from cytoself_jax.analysis.records import scores_from_metrics
from cytoself_jax.jsonio import read_json_lines


def training_record(run_dir: str | Path, eval_dir: str = "test") -> dict:
    """One training's row: run, seed, split fold, held-out proteins, epochs run, best (chosen) epoch and its stop
    reason, the code that evaluated it, and per score key its value, interval and sd; and as 'training.*' scores
    (no interval) the epochs run, the chosen epoch and the validation dead codes and perplexity of each codebook
    at that epoch. Reads RUN/config.json,
    RUN/metrics.jsonl and RUN/eval/<eval_dir>/metrics.json."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    metrics = json.loads((run_dir / "eval" / eval_dir / "metrics.json").read_text())
    epochs = [r for r in read_json_lines(run_dir / "metrics.jsonl") if r.get("kind") == "epoch"] \
        if (run_dir / "metrics.jsonl").is_file() else []
    last = epochs[-1] if epochs else {}
    code = metrics.get("run", {}).get("code") or {}
    row = {"run": str(run_dir), "seed": config.get("seed"), "split_fold": config.get("data", {}).get("split_fold", 0),
           "heldout_proteins": " ".join(metrics.get("run", {}).get("heldout_proteins", [])),
           "epochs_run": len({r["epoch"] for r in epochs}), "chosen_epoch": last.get("best_epoch"),
           "max_epochs": config.get("train", {}).get("max_epochs"), "step": metrics.get("run", {}).get("step"),
           "source_sha256": code.get("source_sha256", "")[:12], "eval_dir": eval_dir}
    for s in scores_from_metrics(metrics):
        row[s.key] = s.value
        row[f"{s.key} low"], row[f"{s.key} high"] = s.low, s.high
        if s.sd is not None:
            row[f"{s.key} sd"] = s.sd
    # How the training converged, summarized per group like the scores (one value per training, no interval of
    # its own): its length, the chosen (best) epoch, and the codebooks' validation health at that epoch
    chosen = next((r for r in epochs if r["epoch"] + 1 == last.get("best_epoch")), {})
    convergence = {"epochs_run": row["epochs_run"], "chosen_epoch": row["chosen_epoch"],
                   **{f"{k}_{level}": chosen.get(f"val_{k}_{level}") for k in ("dead_codes", "perplexity")
                      for level in ("local", "global")}}
    for key, value in convergence.items():
        row[f"training.{key}"] = value
        row[f"training.{key} low"] = row[f"training.{key} high"] = None
    return row


def score_keys(rows: Iterable[Mapping]) -> list[str]:
    """The score keys present in training rows (columns with a ' low' partner), in first-seen order."""
    keys: dict[str, None] = {}
    for r in rows:
        for k in r:
            if k.endswith(" low"):
                keys[k[:-4]] = None
    return list(keys)


def mean_interval(values: Sequence[float], level: float = 0.95) -> dict:
    """n, mean, sd (ddof=1) and the t-interval of the mean of independent trainings' values (None and NaN
    entries dropped); sd and interval None for n < 2."""
    from scipy import stats

    v = _values(values)
    n = len(v)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "low": None, "high": None}
    if n == 1:
        return {"n": 1, "mean": float(v[0]), "sd": None, "low": None, "high": None}
    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": float(v.mean()), "sd": sd, "low": float(v.mean() - half), "high": float(v.mean() + half)}


def _values(group: Sequence[float]) -> np.ndarray:
    """A group's values without the missing ones (None or NaN: a score a training could not compute)."""
    return np.asarray([x for x in group if x is not None and not math.isnan(x)], float)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of Welch's t-test (unequal variances) between two groups of trainings; None when a group
    has fewer than 2 values or both have no spread."""
    from scipy import stats

    a, b = _values(a), _values(b)
    if len(a) < 2 or len(b) < 2 or (a.std() == 0 and b.std() == 0):
        return None
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def f_test_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of the F-test of equal variances between two groups of trainings (assumes normal values:
    sensitive to an outlying training); None when a group has fewer than 2 values or no spread."""
    from scipy import stats

    a, b = _values(a), _values(b)
    if len(a) < 2 or len(b) < 2 or a.std() == 0 or b.std() == 0:
        return None
    f, dof = a.var(ddof=1) / b.var(ddof=1), (len(a) - 1, len(b) - 1)
    return float(min(1.0, 2 * min(stats.f.cdf(f, *dof), stats.f.sf(f, *dof))))  # sf: exact for tiny p


def brown_forsythe_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """p-value of the Brown-Forsythe test of equal spreads (Levene's test on absolute deviations from each group's
    median: robust to one outlying training, weaker than the F-test at n = 5); None when a group has fewer than 3
    values (with 2, both deviations from the median are equal: no spread within to test against) or the deviations
    have no spread within the groups."""
    from scipy import stats

    a, b = _values(a), _values(b)
    if len(a) < 3 or len(b) < 3:
        return None
    deviations = [np.abs(g - np.median(g)) for g in (a, b)]
    if all(np.ptp(d) == 0 for d in deviations):
        return None
    return float(stats.levene(a, b, center="median").pvalue)


def permutation_p(a: Sequence[float], b: Sequence[float], max_exact: int = 20_000, seed: int = 0) -> float | None:
    """Two-sided permutation p-value of the difference of means: exact over all relabellings when there are at most
    `max_exact` of them (e.g. 5 vs 5: 252), else 20,000 random ones (+1 smoothed). None when a group is empty."""
    a, b = _values(a), _values(b)
    if len(a) == 0 or len(b) == 0:
        return None
    pooled, n = np.concatenate([a, b]), len(a)
    observed = abs(a.mean() - b.mean())
    total = math.comb(len(pooled), n)
    if total <= max_exact:
        diffs = [abs(pooled[list(c)].mean() - np.delete(pooled, list(c)).mean())
                 for c in itertools.combinations(range(len(pooled)), n)]
        return float(np.mean(np.asarray(diffs) >= observed - 1e-12))
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(max_exact):
        p = rng.permutation(pooled)
        hits += abs(p[:n].mean() - p[n:].mean()) >= observed - 1e-12
    return float((hits + 1) / (max_exact + 1))


def sign_flip_p(differences: Sequence[float], max_exact: int = 20_000, seed: int = 0) -> float | None:
    """Two-sided p-value of a mean paired difference by flipping signs: exact over all 2^n flips when there are at
    most `max_exact` of them (5 trainings: 32, so p >= 1/16), else 20,000 random flips (+1 smoothed). None when
    empty."""
    d = _values(differences)
    if len(d) == 0:
        return None
    observed = abs(d.mean())
    if 2 ** len(d) <= max_exact:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(max_exact, len(d)))
    hits = int(np.sum(np.abs((signs * d).mean(axis=1)) >= observed - 1e-12))
    return float(hits / len(signs)) if 2 ** len(d) <= max_exact else float((hits + 1) / (max_exact + 1))


def paired_table(rows: Sequence[Mapping], pairs: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """Two scores of the same trainings (e.g. the probe on the embedding against the probe on pixels): per pair,
    n trainings with both, each mean, the mean paired difference with its sd and 95% t-interval, the paired
    t-test's and the exact sign-flip test's two-sided p-values."""
    from scipy import stats

    out = []
    for a, b in pairs:
        both = [(r[a], r[b]) for r in rows if r.get(a) is not None and r.get(b) is not None
                and not (pd.isna(r[a]) or pd.isna(r[b]))]
        diffs = [x - y for x, y in both]
        summary = mean_interval(diffs)
        t_p = (float(stats.ttest_1samp(diffs, 0.0).pvalue) if len(diffs) >= 2 and np.std(diffs) > 0 else None)
        out.append({"first": a, "second": b, "n": summary["n"],
                    "first_mean": float(np.mean([x for x, _ in both])) if both else None,
                    "second_mean": float(np.mean([y for _, y in both])) if both else None,
                    "difference": summary["mean"], "difference_sd": summary["sd"], "difference_low": summary["low"],
                    "difference_high": summary["high"], "paired_t_p": t_p, "sign_flip_p": sign_flip_p(diffs)})
    return pd.DataFrame(out)


def group_table(groups: Mapping[str, Sequence[Mapping]], keys: Sequence[str] | None = None) -> pd.DataFrame:
    """Per group and score: n trainings, mean, between-training sd, 95% CI of the mean (long format, one row per
    (group, score))."""
    keys = list(keys or score_keys(r for rows in groups.values() for r in rows))
    out = []
    for name, rows in groups.items():
        for key in keys:
            out.append({"group": name, "score": key, **mean_interval([r.get(key) for r in rows])})
    return pd.DataFrame(out)


def difference_table(groups: Mapping[str, Sequence[Mapping]], first: str, second: str,
                     keys: Sequence[str] | None = None) -> pd.DataFrame:
    """Per score, the two groups' means, their difference and Welch's and the permutation test's p-values; their
    between-training sds, the ratio first / second and the F-test's and Brown-Forsythe test's p-values of equal
    spread."""
    keys = list(keys or score_keys(r for rows in groups.values() for r in rows))
    out = []
    for key in keys:
        a = [r.get(key) for r in groups[first]]
        b = [r.get(key) for r in groups[second]]
        sa, sb = mean_interval(a), mean_interval(b)
        ma, mb = sa["mean"], sb["mean"]
        out.append({"score": key, first: ma, second: mb,
                    "difference": None if ma is None or mb is None else ma - mb,
                    "welch_p": welch_p(a, b), "permutation_p": permutation_p(a, b),
                    f"{first} sd": sa["sd"], f"{second} sd": sb["sd"],
                    "sd_ratio": sa["sd"] / sb["sd"] if sa["sd"] is not None and sb["sd"] else None,
                    "f_test_p": f_test_p(a, b), "brown_forsythe_p": brown_forsythe_p(a, b)})
    return pd.DataFrame(out)


def format_cell(summary: Mapping, digits: int = 3) -> str:
    """'0.412 +- 0.031 [0.374, 0.450] (n=5)': mean, between-training sd, 95% CI of the mean, trainings."""
    if summary["mean"] is None:
        return "n/a"
    text = f"{summary['mean']:.{digits}g}"
    if summary["sd"] is not None:
        text += f" +- {summary['sd']:.2g} [{summary['low']:.{digits}g}, {summary['high']:.{digits}g}]"
    return text + f" (n={summary['n']})"
