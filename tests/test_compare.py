"""Comparing trainings (analysis/compare.py, bench/compare_runs.py): the between-training statistics against hand
computations and brute force, and the per-training records of evaluated runs."""

import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config

from cytoself_jax.analysis import compare
from cytoself_jax.analysis.records import Score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import compare_runs  # noqa: E402


def test_mean_interval_is_the_t_interval_of_the_mean():
    s = compare.mean_interval([1.0, 2.0, 3.0, 4.0, 5.0, None])
    sd = math.sqrt(2.5)
    half = 2.7764451051977987 * sd / math.sqrt(5)  # t(0.975, 4 degrees of freedom)
    assert s["n"] == 5 and s["mean"] == pytest.approx(3.0) and s["sd"] == pytest.approx(sd)
    assert (s["low"], s["high"]) == (pytest.approx(3 - half), pytest.approx(3 + half))
    assert compare.mean_interval([0.4])["sd"] is None and compare.mean_interval([])["mean"] is None


def test_mean_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    covered = [(lambda s: s["low"] <= 1.0 <= s["high"])(compare.mean_interval(rng.normal(1.0, 2.0, 5).tolist()))
               for _ in range(2000)]
    assert 0.93 <= np.mean(covered) <= 0.97


def test_welch_p_matches_the_formula():
    from scipy import stats

    a, b = np.array([1.0, 2.0, 4.0, 3.5]), np.array([3.0, 5.0, 6.5, 4.0, 7.0])
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    assert compare.welch_p(a, b) == pytest.approx(2 * stats.t.sf(abs(t), dof))
    assert compare.welch_p([1.0], [2.0, 3.0]) is None


def test_f_test_p_matches_the_formula_and_is_symmetric():
    from scipy import stats

    a, b = np.array([1.0, 2.0, 4.0, 3.5]), np.array([3.0, 5.0, 6.5, 4.0, 7.0, 9.0])
    f = a.var(ddof=1) / b.var(ddof=1)
    expected = 2 * min(stats.f.cdf(f, 3, 5), stats.f.sf(f, 3, 5))
    assert compare.f_test_p(a, b) == pytest.approx(expected)
    assert compare.f_test_p(b, a) == pytest.approx(expected)  # the ratio's direction does not change the test
    assert compare.f_test_p([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert compare.f_test_p([1.0, 1.0], [2.0, 3.0]) is None and compare.f_test_p([1.0], [2.0, 3.0]) is None
    # a tiny p is computed from the upper tail, not as 1 - cdf
    wide, narrow = np.linspace(0, 100, 30), np.linspace(0, 1, 30)
    assert 0 < compare.f_test_p(wide, narrow) == pytest.approx(2 * stats.f.sf(np.var(wide) / np.var(narrow), 29, 29))


def test_brown_forsythe_p_is_anova_on_absolute_deviations_from_medians():
    from scipy import stats

    a, b = np.array([0.50, 0.52, 0.55, 0.49, 0.90]), np.array([0.20, 0.60, 0.45, 0.75, 0.30])
    # the slow reference: a one-way ANOVA F on |x - median of its group|, by hand
    za, zb = np.abs(a - np.median(a)), np.abs(b - np.median(b))
    z, grand = np.concatenate([za, zb]), np.concatenate([za, zb]).mean()
    between = len(za) * (za.mean() - grand) ** 2 + len(zb) * (zb.mean() - grand) ** 2
    within = ((za - za.mean()) ** 2).sum() + ((zb - zb.mean()) ** 2).sum()
    f = between / (within / (len(z) - 2))
    assert compare.brown_forsythe_p(a, b) == pytest.approx(stats.f.sf(f, 1, len(z) - 2))
    # one outlying training widens the sd (the F-test sees a difference) but not the median deviations
    tight, spread = [0.50, 0.51, 0.52, 0.50, 0.51, 0.95], [0.45, 0.55, 0.48, 0.52, 0.50, 0.53]
    assert compare.f_test_p(tight, spread) < 0.01 and compare.brown_forsythe_p(tight, spread) > 0.3
    # fewer than 3 values left in a group (None and NaN dropped): nothing to test; with 2 the deviations from the
    # median are equal, and levene would say p = 0
    assert compare.brown_forsythe_p([1.0, 3.0, None, float("nan")], [0.0, 4.0, 2.0]) is None
    assert compare.brown_forsythe_p([1.0, 1.0, 1.0], [2.0, 2.0, 2.0]) is None  # no spread at all


def test_difference_table_reports_both_spreads_and_their_ratio():
    rows = {"x": [{"s": v} for v in (1.0, 2.0, 3.0)], "y": [{"s": v} for v in (1.0, 5.0, 9.0, None)]}
    d = compare.difference_table(rows, "x", "y", ["s"]).iloc[0]
    assert d["x sd"] == pytest.approx(1.0) and d["y sd"] == pytest.approx(4.0)
    assert d["sd_ratio"] == pytest.approx(0.25)
    assert d["f_test_p"] == pytest.approx(compare.f_test_p([1.0, 2.0, 3.0], [1.0, 5.0, 9.0]))
    assert d["brown_forsythe_p"] == pytest.approx(compare.brown_forsythe_p([1.0, 2.0, 3.0], [1.0, 5.0, 9.0]))


def test_permutation_p_is_exact_over_all_relabellings():
    a, b = [1.0, 2.0, 3.0], [10.0, 11.0, 12.0]
    assert compare.permutation_p(a, b) == pytest.approx(2 / 20)  # only the observed split and its mirror
    a, b = [1.0, 5.0, 2.0], [4.0, 3.0]
    pooled = np.array(a + b)
    observed = abs(np.mean(a) - np.mean(b))
    brute = [abs(pooled[list(c)].mean() - np.delete(pooled, list(c)).mean()) >= observed - 1e-12
             for c in itertools.combinations(range(5), 3)]
    assert compare.permutation_p(a, b) == pytest.approx(np.mean(brute))


def test_sign_flip_p_is_exact_over_all_flips():
    d = [0.3, 0.1, 0.2, 0.25, 0.15]
    assert compare.sign_flip_p(d) == pytest.approx(2 / 32)  # all positive: only the observed signs and their mirror
    d = [0.3, -0.1, 0.2, 0.05]
    observed = abs(np.mean(d))
    brute = [abs(np.mean(np.multiply(signs, d))) >= observed - 1e-12
             for signs in itertools.product((1, -1), repeat=4)]
    assert compare.sign_flip_p(d) == pytest.approx(np.mean(brute))
    assert compare.sign_flip_p([]) is None


def test_paired_table_takes_differences_within_each_training():
    from scipy import stats

    rows = [{"emb": 0.6, "pix": 0.5}, {"emb": 0.7, "pix": 0.55}, {"emb": 0.5, "pix": 0.52}, {"emb": 0.65, "pix": None}]
    t = compare.paired_table(rows, [("emb", "pix")]).iloc[0]
    d = [0.1, 0.15, -0.02]  # the training without a pixel score is left out of both means
    assert t["n"] == 3 and t["difference"] == pytest.approx(np.mean(d))
    assert t["first_mean"] == pytest.approx(0.6) and t["second_mean"] == pytest.approx(np.mean([0.5, 0.55, 0.52]))
    assert t["difference_sd"] == pytest.approx(np.std(d, ddof=1))
    assert t["paired_t_p"] == pytest.approx(stats.ttest_rel([0.6, 0.7, 0.5], [0.5, 0.55, 0.52]).pvalue)
    assert t["sign_flip_p"] == pytest.approx(compare.sign_flip_p(d))


def _evaluated_run(root: Path, seed: int, scores: dict[str, float], epochs: int, best: int,
                   eval_dir: str = "test") -> Path:
    root.mkdir(parents=True)
    config = tiny_config(root, root)
    config.seed = seed
    (root / "config.json").write_text(config.to_json())
    (root / "metrics.jsonl").write_text("".join(
        json.dumps({"kind": "epoch", "epoch": e, "best_epoch": best, "val_dead_codes_local": 100 - e}) + "\n"
        for e in range(epochs)))
    records = {k: Score(k, k, v, low=v - 0.1, high=v + 0.1).to_json() for k, v in scores.items()}
    (root / "eval" / eval_dir).mkdir(parents=True)
    (root / "eval" / eval_dir / "metrics.json").write_text(json.dumps(
        {"scores": records, "run": {"heldout_proteins": ["P9"], "step": 10,
                                    "code": {"source_sha256": "abcdef0123456789"}}}))
    return root


def test_compare_runs_writes_one_record_per_training_and_the_group_statistics(tmp_path):
    a = [_evaluated_run(tmp_path / f"a{s}", s, {"knn.top1": 0.2 + 0.1 * s}, epochs=6, best=4) for s in range(3)]
    b = [_evaluated_run(tmp_path / f"b{s}", s, {"knn.top1": 0.6 + 0.1 * s}, epochs=5, best=5) for s in range(3)]
    out = tmp_path / "docs" / "cmp"
    table = compare_runs.main(["--group", "first", *map(str, a), "--group", "second", *map(str, b),
                               "--out", str(out)])
    assert len(table) == 6 and list(table["seed"]) == [0, 1, 2, 0, 1, 2]
    assert list(table["epochs_run"]) == [6, 6, 6, 5, 5, 5] and list(table["chosen_epoch"]) == [4, 4, 4, 5, 5, 5]
    # the codebook health of the chosen (1-based) epoch, summarized like a score
    assert list(table["training.dead_codes_local"]) == [97, 97, 97, 96, 96, 96]
    assert table["heldout_proteins"].eq("P9").all() and table["source_sha256"].eq("abcdef012345").all()
    np.testing.assert_allclose(table["knn.top1 low"], table["knn.top1"] - 0.1)
    records = json.loads(Path(f"{out}_trainings.json").read_text())
    assert [r["run"] for r in records] == [str(r) for r in a + b]
    summary = pd.read_csv(out.with_suffix(".csv"))
    first = summary[summary["group"] == "first"].iloc[0]
    assert first["n"] == 3 and first["mean"] == pytest.approx(0.3) and first["sd"] == pytest.approx(0.1)
    diff = pd.read_csv(f"{out}_difference.csv").iloc[0]
    assert diff["difference"] == pytest.approx(-0.4) and diff["permutation_p"] == pytest.approx(0.1)
    assert "Welch p" in out.with_suffix(".md").read_text()
    epochs = summary[(summary["group"] == "second") & (summary["score"] == "training.epochs_run")].iloc[0]
    assert epochs["n"] == 3 and epochs["mean"] == 5 and epochs["sd"] == 0


def test_compare_runs_reads_a_group_back_from_committed_records(tmp_path):
    a = [_evaluated_run(tmp_path / f"a{s}", s, {"knn.top1": 0.2 + 0.1 * s}, epochs=6, best=4) for s in range(3)]
    b = [_evaluated_run(tmp_path / f"b{s}", s, {"knn.top1": 0.6 + 0.1 * s}, epochs=5, best=5) for s in range(3)]
    first = tmp_path / "first"
    compare_runs.main(["--group", "old", *map(str, a), "--out", str(first)])
    records = Path(f"{first}_trainings.json")
    # the run folders of 'old' are gone; the records stand in for them, in the order given (first - second)
    for run in a:
        (run / "eval" / "test" / "metrics.json").unlink()
    out = tmp_path / "again"
    table = compare_runs.main(["--records", "default", str(records), "old", "--group", "new", *map(str, b),
                               "--out", str(out)])
    assert list(table["group"]) == ["default"] * 3 + ["new"] * 3
    np.testing.assert_allclose(table["knn.top1"], [0.2, 0.3, 0.4, 0.6, 0.7, 0.8])
    assert list(table["epochs_run"])[:3] == [6, 6, 6]
    diff = pd.read_csv(f"{out}_difference.csv").iloc[0]
    assert diff["difference"] == pytest.approx(-0.4)
    with pytest.raises(SystemExit, match="no training of group 'missing'"):
        compare_runs.main(["--records", "x", str(records), "missing"])
    # records of another eval folder are not mixed in silently, and a group name means one group
    with pytest.raises(SystemExit, match=r"field 'eval_dir': group 'old' was evaluated in \['test'\], not 'test-latest'"):
        compare_runs.main(["--eval-dir", "test-latest", "--records", "x", str(records), "old"])
    # ... unless asked for (a fixed budget's last epoch against trainings to early stop): the table says so
    mixed = tmp_path / "mixed"
    latest = [_evaluated_run(tmp_path / f"l{s}", s, {"knn.top1": 0.1 * s}, epochs=5, best=5, eval_dir="test-latest")
              for s in range(3)]
    compare_runs.main(["--eval-dir", "test-latest", "--any-eval-dir", "--records", "x", str(records), "old",
                       "--group", "budget", *map(str, latest), "--out", str(mixed)])
    assert "Evaluated in different folders: x: test; budget: test-latest." in mixed.with_suffix(".md").read_text()
    assert pd.read_csv(f"{mixed}_difference.csv").iloc[0]["difference"] == pytest.approx(0.2)
    for argv in (["--records", "new", str(records), "old", "--group", "new", *map(str, b)], []):
        with pytest.raises(SystemExit) as stopped:
            compare_runs.main(argv)
        assert stopped.value.code == 2  # argparse's usage error, with its one line on stderr


def test_compare_runs_pairs_two_scores_within_each_training(tmp_path):
    runs = [_evaluated_run(tmp_path / f"r{s}", s, {"probe.embedding": 0.5 + 0.1 * s, "probe.pixels": 0.4 + 0.1 * s},
                           epochs=3, best=3) for s in range(4)]
    out = tmp_path / "cmp"
    compare_runs.main(["--group", "g", *map(str, runs), "--paired", "probe.embedding", "probe.pixels",
                       "--out", str(out)])
    paired = pd.read_csv(f"{out}_paired.csv").iloc[0]
    # the same +0.1 in every training: no spread, the sign-flip test's smallest p for 4 trainings
    assert paired["group"] == "g" and paired["n"] == 4 and paired["difference"] == pytest.approx(0.1)
    assert paired["sign_flip_p"] == pytest.approx(2 / 16)
    assert "Paired within each training" in out.with_suffix(".md").read_text()


def test_pairwise_differences_cover_every_pair_of_groups(tmp_path):
    import pairwise_differences

    table = pd.DataFrame({"variant": ["a"] * 3 + ["b"] * 3 + ["c"] * 3,
                          "score": [1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 2.0, 2.5, 3.5]})
    (tmp_path / "t.csv").write_text(table.to_csv(index=False))
    out = pairwise_differences.main([str(tmp_path / "t.csv"), "--by", "variant", "--scores", "score",
                                     "--out", str(tmp_path / "d")])
    assert [(r["first"], r["second"]) for r in out.to_dict("records")] == [("a", "b"), ("a", "c"), ("b", "c")]
    ab = out.iloc[0]
    assert ab["difference"] == pytest.approx(-9.0) and ab["permutation_p"] == pytest.approx(2 / 20)
    assert ab["welch_p"] == pytest.approx(compare.welch_p([1.0, 2.0, 3.0], [10.0, 11.0, 12.0]))
    assert len(pd.read_csv(tmp_path / "d.csv")) == 3
    with pytest.raises(SystemExit, match=r"t.csv: columns \['nope'\] missing"):
        pairwise_differences.main([str(tmp_path / "t.csv"), "--by", "variant", "--scores", "nope"])
