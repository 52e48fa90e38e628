"""Unseen proteins placed among seen ones: family by kNN transfer (crop and protein level), nearest known proteins."""
import numpy as np
import pytest

from cytoself_jax.analysis import transfer
from cytoself_jax.analysis.common import AnalysisInputError


def _at(angles_deg):
    a = np.deg2rad(np.asarray(angles_deg, float))
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def _crops(profiles: np.ndarray, names, per: int = 2):
    """Crops p + e and p - e around each profile p, so each protein's mean embedding is exactly p."""
    e = np.resize([0.01, -0.02], profiles.shape[1])
    x = np.concatenate([np.stack([p + e, p - e]) for p in profiles])
    return x, np.repeat(np.asarray(names), per)


def test_crop_transfer_matches_a_brute_force_vote():
    rng = np.random.default_rng(0)
    seen_x = np.concatenate([rng.normal(3, 1, (30, 4)), rng.normal(-3, 1, (30, 4))])
    seen_f = np.repeat(["nucleus", "er"], 30)
    unseen_x = np.concatenate([rng.normal(3, 1.5, (10, 4)), rng.normal(-3, 1.5, (10, 4)), rng.normal(0, 1, (3, 4))])
    unseen_f = np.array(["nucleus"] * 10 + ["er"] * 10 + ["golgi", "golgi", "others"])  # golgi: no seen family
    fovs = np.array([f"u{i // 5}" for i in range(len(unseen_f))])
    s = transfer.crop_family_transfer(seen_x, seen_f, unseen_x, unseen_f, unseen_groups=fovs, k=5, n_boot=200)
    # brute force: the 5 nearest seen crops' majority (a tie is a miss), 'others' left out
    hits = []
    for x, f in zip(unseen_x[:22], unseen_f[:22]):
        near = seen_f[np.argsort(((seen_x - x) ** 2).sum(1), kind="stable")[:5]]
        values, counts = np.unique(near, return_counts=True)
        hits.append(counts.max() > np.sort(counts)[-2] if len(counts) > 1 else True)
        hits[-1] = bool(hits[-1] and values[np.argmax(counts)] == f)
    hits = np.array(hits, float)
    assert s["top1_accuracy"].value == pytest.approx(hits.mean())
    per_family = [hits[unseen_f[:22] == f].mean() for f in ("er", "golgi", "nucleus")]
    assert s["balanced_accuracy"].value == pytest.approx(np.mean(per_family))
    assert per_family[1] == 0 and s["top1_accuracy"].chance == 0.5
    assert s["top1_accuracy"].n == 22 and s["top1_accuracy"].groups == 5
    assert s["top1_accuracy"].low <= s["top1_accuracy"].value <= s["top1_accuracy"].high


def test_protein_transfer_votes_of_nearest_profiles_and_ties():
    seen_names = ["A0", "A1", "A2", "B0", "B1", "B2"]
    seen_x, seen_p = _crops(_at([0, 10, 20, 90, 80, 70]), seen_names)
    seen_f = np.repeat(["nucleus"] * 3 + ["er"] * 3, 2)
    unseen_x, unseen_p = _crops(_at([5, 85, 45]), ["U_near_A", "U_near_B", "U_between"])
    unseen_f = np.repeat(["nucleus", "nucleus", "er"], 2)
    table, s = transfer.protein_family_transfer(seen_x, seen_p, seen_f, unseen_x, unseen_p, unseen_f, k=2,
                                                n_boot=100)
    table = table.set_index("protein")
    assert table.loc["U_near_A", "predicted"] == "nucleus" and table.loc["U_near_A", "hit"]
    assert table.loc["U_near_B", "predicted"] == "er" and not table.loc["U_near_B", "hit"]
    # 45 degrees: A2 (20) and B2 (70) are equally near: one vote each, a tie, never a hit
    assert table.loc["U_between", "predicted"] == "er|nucleus" and not table.loc["U_between", "hit"]
    assert table.loc["U_near_A", "votes"] == "nucleus:2"
    assert s["top1_accuracy"].value == pytest.approx(1 / 3) and s["top1_accuracy"].interval.endswith("over proteins")
    assert s["balanced_accuracy"].value == pytest.approx((0.5 + 0.0) / 2)  # nucleus 1 of 2, er 0 of 1
    assert s["top1_accuracy"].groups == 3


def test_nearest_known_proteins_match_a_cosine_ranking():
    rng = np.random.default_rng(2)
    seen_profiles, unseen_profiles = rng.normal(size=(6, 5)), rng.normal(size=(2, 5))
    seen_names, unseen_names = [f"S{i}" for i in range(6)], ["U0", "U1"]
    seen_x, seen_p = _crops(seen_profiles, seen_names)
    unseen_x, unseen_p = _crops(unseen_profiles, unseen_names)
    families = {"S0": "er", "U0": "nucleus"}
    table = transfer.nearest_known_proteins(seen_x, seen_p, unseen_x, unseen_p, n=3, families=families)
    for u, name in enumerate(unseen_names):
        cos = seen_profiles @ unseen_profiles[u] / (np.linalg.norm(seen_profiles, axis=1)
                                                    * np.linalg.norm(unseen_profiles[u]))
        mine = table[table["protein"] == name]
        assert mine["neighbour"].tolist() == [seen_names[i] for i in np.argsort(-cos)[:3]]
        np.testing.assert_allclose(mine["similarity"], np.sort(cos)[::-1][:3], rtol=1e-10)
        assert mine["rank"].tolist() == [1, 2, 3]
    assert set(table.loc[table["protein"] == "U0", "family"]) == {"nucleus"}
    assert table.loc[table["neighbour"] == "S0", "neighbour_family"].eq("er").all()
    with pytest.raises(AnalysisInputError, match="expected proteins the model did not see, found seen ones: "
                                                 r"\['S1'\]"):
        transfer.nearest_known_proteins(seen_x, seen_p, seen_x[2:4], seen_p[2:4])
    with pytest.raises(AnalysisInputError, match=r"n: expected 1 <= n <= 6"):
        transfer.nearest_known_proteins(seen_x, seen_p, unseen_x, unseen_p, n=7)
