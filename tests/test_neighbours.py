"""Protein profiles and nearest proteins on planted groups, against plain loops."""
import numpy as np
import pandas as pd
import pytest

from cytoself_jax.analysis import neighbours
from cytoself_jax.analysis.common import AnalysisInputError


def planted(rng, groups=3, per_group=4, crops=6, dim=8):
    """Proteins in `groups` groups sharing a direction; crops scattered around their protein's profile."""
    directions = rng.normal(size=(groups, dim)) * 3
    proteins, families, rows = [], [], []
    for g in range(groups):
        for p in range(per_group):
            profile = directions[g] + rng.normal(scale=0.5, size=dim)
            for _ in range(crops):
                rows.append(profile + rng.normal(scale=0.3, size=dim))
                proteins.append(f"G{g}P{p}")
                families.append(f"family{g}")
    return np.stack(rows), np.array(proteins), np.array(families)


def test_protein_profiles_and_families():
    rng = np.random.default_rng(0)
    x, proteins, families = planted(rng)
    names, profiles = neighbours.protein_profiles(x.reshape(len(x), 2, 4), proteins)  # (N, ...) is flattened
    assert list(names) == sorted(set(proteins))
    for name, row in zip(names, profiles):
        np.testing.assert_allclose(row, x[proteins == name].mean(0))
    families = families.astype(object)
    families[proteins == "G0P0"] = ["", None, "family9", "family0", "family9", ""]  # mode ignores missing ones
    families[proteins == "G1P1"] = None
    fam = neighbours.protein_families(proteins, families)
    assert fam["G0P0"] == "family9" and fam["G1P1"] == "" and fam["G2P3"] == "family2"
    assert set(fam) == set(proteins)


@pytest.mark.parametrize("metric", ["cosine", "pearson"])
def test_similarity_matrix_matches_loop(metric):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 5)) + 2.0
    sims = neighbours.similarity_matrix(x, metric)
    for i in range(7):
        for j in range(7):
            a, b = x[i], x[j]
            if metric == "pearson":
                want = np.corrcoef(a, b)[0, 1]
            else:
                want = a @ b / np.sqrt((a @ a) * (b @ b))
            assert sims[i, j] == pytest.approx(want, abs=1e-12)
    # Pearson ignores a per-protein offset, cosine does not.
    shifted = x.copy()
    shifted[0] += 10.0
    moved = neighbours.similarity_matrix(shifted, metric)[0, 1]
    if metric == "pearson":
        assert moved == pytest.approx(sims[0, 1], abs=1e-12)
    else:
        assert abs(moved - sims[0, 1]) > 1e-3
    with pytest.raises(AnalysisInputError, match=r"similarity_matrix: profiles: pearson similarity needs non-constant"):
        neighbours.similarity_matrix(np.ones((3, 4)), "pearson")


def test_nearest_proteins_on_planted_groups(tmp_path):
    rng = np.random.default_rng(2)
    x, proteins, families = planted(rng)
    names, profiles = neighbours.protein_profiles(x, proteins)
    fam = neighbours.protein_families(proteins, families)
    table = neighbours.nearest_proteins(profiles, names, n=5, families=fam)
    assert list(table.columns) == ["protein", "family", "rank", "neighbour", "similarity", "neighbour_family"]
    assert len(table) == 12 * 5
    sims = neighbours.similarity_matrix(profiles)
    for name, rows in table.groupby("protein"):
        assert list(rows["rank"]) == [1, 2, 3, 4, 5]
        assert name not in set(rows["neighbour"])
        assert np.all(np.diff(rows["similarity"].to_numpy()) <= 0)
        # Brute force: the 5 most similar other proteins.
        i = list(names).index(name)
        others = [j for j in np.argsort(-sims[i]) if j != i][:5]
        assert list(rows["neighbour"]) == list(names[others])
        # The 3 other members of the planted group come first.
        assert set(rows["neighbour"][:3]) == {n for n in names if n[:2] == name[:2] and n != name}
        assert (rows["family"] == fam[name]).all()
        assert list(rows["neighbour_family"]) == [fam[n] for n in rows["neighbour"]]
    table.to_csv(tmp_path / "neighbours.csv", index=False)
    back = pd.read_csv(tmp_path / "neighbours.csv")
    pd.testing.assert_frame_equal(back, table)


def test_nearest_proteins_ties_and_errors():
    profiles = np.array([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    table = neighbours.nearest_proteins(profiles, ["d", "c", "b", "a"], n=2)
    assert list(table.columns) == ["protein", "rank", "neighbour", "similarity"]
    # 'd' ties with 'c' and 'b' (similarity 1): the tie is broken by neighbour name.
    assert list(table[table.protein == "d"]["neighbour"]) == ["b", "c"]
    with pytest.raises(AnalysisInputError, match=r"nearest_proteins: n: expected 1 <= n < 4"):
        neighbours.nearest_proteins(profiles, list("dcba"), n=4)
    with pytest.raises(AnalysisInputError, match=r"nearest_proteins: names: expected one profile per protein"):
        neighbours.nearest_proteins(profiles, list("ddba"))
