"""Complexes: tightness statistics against a slow loop, the permutation null, the CSV reader's errors, outputs."""
import numpy as np
import pandas as pd
import pytest

from cytoself_jax.analysis import complexes
from cytoself_jax.analysis.common import AnalysisInputError


def slow_fraction_and_similarity(profiles, members):
    unit = profiles / np.linalg.norm(profiles, axis=1, keepdims=True)
    sim = unit @ unit.T
    m, fractions, sims = len(members), [], []
    for i in members:
        others = sorted((j for j in range(len(profiles)) if j != i), key=lambda j: -sim[i, j])
        fractions.append(len(set(others[: m - 1]) & (set(members) - {i})) / (m - 1))
        sims += [sim[i, j] for j in members if j != i]
    return np.mean(fractions), np.mean(sims)


def test_complex_tightness_matches_slow_loop_and_finds_planted_complexes():
    rng = np.random.default_rng(0)
    profiles = rng.normal(size=(40, 6))
    profiles[[3, 7, 21]] = profiles[3] + rng.normal(scale=0.05, size=(3, 6))  # a tight complex
    names = [f"P{i}" for i in range(40)]
    table = pd.DataFrame({"protein": ["P3", "P7", "P21", "P1", "P2", "P30", "P5", "NOPE", "ALSO_NOPE"],
                          "complex": ["tight"] * 3 + ["random"] * 3 + ["half"] * 2 + ["absent"]})
    rows = complexes.complex_tightness(profiles, names, table, permutations=999, seed=1)
    out = rows.set_index("complex")
    for name, members in (("tight", [3, 7, 21]), ("random", [1, 2, 30])):
        frac, sim = slow_fraction_and_similarity(profiles, members)
        assert out.loc[name, "neighbour_fraction"] == pytest.approx(frac)
        assert out.loc[name, "mean_similarity"] == pytest.approx(sim)
    assert out.loc["tight", "neighbour_fraction"] == 1.0 and out.loc["tight", "p_value"] == pytest.approx(1 / 1000)
    assert out.loc["random", "p_value"] > 0.05
    # the null of a random set of 3: each subunit's 2 nearest of 39 proteins hold the other 2 subunits by chance
    assert out.loc["tight", "null_fraction"] == pytest.approx(2 / 39, abs=0.015)
    assert out.loc["half", "present"] == 1 and out.loc["half", "missing"] == "NOPE"
    assert np.isnan(out.loc["half", "p_value"]) and np.isnan(out.loc["absent", "q_value"])
    assert list(rows["complex"]) == ["absent", "half", "random", "tight"]


def test_read_complexes_errors(tmp_path):
    good = tmp_path / "c.csv"
    good.write_text("protein,complex,source\n A ,X,paper\nB,X,\nB,X,dup\n,Y,\n")
    assert complexes.read_complexes(good).to_dict("list") == {"protein": ["A", "B"], "complex": ["X", "X"]}
    with pytest.raises(AnalysisInputError, match=r"missing\.csv: complexes file not found"):
        complexes.read_complexes(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("gene,group\nA,X\n")
    with pytest.raises(AnalysisInputError, match=r"bad\.csv: columns: expected protein and complex, missing"):
        complexes.read_complexes(bad)


def test_evaluate_complexes_writes_table_and_figure(tmp_path):
    import anndata

    rng = np.random.default_rng(2)
    adata = anndata.AnnData(X=rng.normal(size=(12, 4)).astype(np.float32),
                            obs=pd.DataFrame(index=[f"P{i}" for i in range(12)]))
    adata.obsm["X_umap"] = rng.normal(size=(12, 2))
    csv = tmp_path / "c.csv"
    pd.DataFrame({"protein": ["P0", "P1", "P2", "P5"], "complex": ["A", "A", "B", "B"]}).to_csv(csv, index=False)
    summary = complexes.evaluate_complexes(tmp_path, adata, csv, permutations=99)
    assert summary["complexes"] == 2 and summary["scored"] == 2 and summary["permutations"] == 99
    assert list(pd.read_csv(tmp_path / "complexes.csv")["complex"]) == ["A", "B"]
    assert (tmp_path / "complexes.png").stat().st_size > 10_000
    pd.DataFrame({"protein": ["Q1", "Q2"], "complex": ["A", "A"]}).to_csv(csv, index=False)
    with pytest.raises(AnalysisInputError, match=r"c\.csv: protein: none of its 2 proteins is among the evaluated"):
        complexes.evaluate_complexes(tmp_path, adata, csv)
