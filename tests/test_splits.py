"""Splits by field of view."""
import numpy as np
import pandas as pd
import pytest

from cytoself_jax.data.splits import SplitError, split_by_field


def _table(fields_per_protein: dict[str, int], seed: int = 0, min_cells: int = 5, max_cells: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for protein, n_fields in fields_per_protein.items():
        for f in range(n_fields):
            rows += [(protein, f"{protein}/{f}")] * int(rng.integers(min_cells, max_cells))
    table = pd.DataFrame(rows, columns=["protein", "fov"])
    return table.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # rows in no particular order


def _check_partition(table: pd.DataFrame, splits: dict) -> None:
    assert set(splits) == {"train", "val", "test"}
    for idx in splits.values():
        assert idx.dtype == np.int64
        assert np.all(np.diff(idx) > 0)  # sorted, no duplicates
    everything = np.concatenate(list(splits.values()))
    np.testing.assert_array_equal(np.sort(everything), np.arange(len(table)))  # every crop exactly once
    fields = {name: set(table["fov"].to_numpy()[idx]) for name, idx in splits.items()}
    assert not fields["train"] & fields["val"] and not fields["train"] & fields["test"] \
        and not fields["val"] & fields["test"]
    assert set(table["protein"].to_numpy()[splits["train"]]) == set(table["protein"])


def test_yeast_like_four_fields_give_two_one_one():
    table = _table({p: 4 for p in ["AAC1", "AAC3", "AAH1", "AAP1", "AAR2"]})
    splits = split_by_field(table)
    _check_partition(table, splits)
    for protein in table["protein"].unique():
        part = {s: table.loc[splits[s]] for s in ("train", "val", "test")}
        n_fields = [part[s].loc[part[s]["protein"] == protein, "fov"].nunique() for s in ("train", "val", "test")]
        assert n_fields == [2, 1, 1], (protein, n_fields)


def test_fractions_roughly_met_with_many_fields():
    table = _table({f"P{i}": 40 for i in range(20)}, min_cells=20, max_cells=40)
    splits = split_by_field(table, fractions=(0.8, 0.1, 0.1), seed=3)
    _check_partition(table, splits)
    share = np.array([len(splits[s]) for s in ("train", "val", "test")]) / len(table)
    np.testing.assert_allclose(share, [0.8, 0.1, 0.1], atol=0.02)
    for protein, rows in table.groupby("protein").groups.items():  # also per protein
        per = np.array([np.isin(rows, splits[s]).sum() for s in ("train", "val", "test")]) / len(rows)
        np.testing.assert_allclose(per, [0.8, 0.1, 0.1], atol=0.06)


def test_other_fractions_and_zero_test():
    table = _table({f"P{i}": 30 for i in range(5)})
    splits = split_by_field(table, fractions=(0.6, 0.4, 0.0))
    _check_partition(table, splits)
    assert len(splits["test"]) == 0
    assert 0.3 < len(splits["val"]) / len(table) < 0.5


def test_deterministic_by_seed_and_independent_of_row_order():
    table = _table({f"P{i}": 6 for i in range(8)})
    a = split_by_field(table, seed=1)
    b = split_by_field(table, seed=1)
    for s in a:
        np.testing.assert_array_equal(a[s], b[s])
    c = split_by_field(table, seed=2)
    assert any(not np.array_equal(a[s], c[s]) for s in a)
    # Same crops, rows permuted: every field lands in the same split.
    perm = np.random.default_rng(0).permutation(len(table))
    shuffled = table.iloc[perm].reset_index(drop=True)
    d = split_by_field(shuffled, seed=1)
    for s in a:
        assert set(table["fov"].to_numpy()[a[s]]) == set(shuffled["fov"].to_numpy()[d[s]])


def test_two_fields_keep_protein_in_train():
    table = _table({"A": 2, "B": 5})
    splits = split_by_field(table)
    _check_partition(table, splits)


def test_single_field_protein():
    table = _table({"A": 4, "LONELY": 1})
    with pytest.raises(SplitError, match="protein 'LONELY' has all its .* crops in one field of view"):
        split_by_field(table)
    with pytest.warns(UserWarning, match="single field of view go to train only"):
        splits = split_by_field(table, allow_single_field=True)
    _check_partition(table, splits)
    lonely = np.flatnonzero(table["protein"] == "LONELY")
    assert np.isin(lonely, splits["train"]).all()


def test_bad_arguments():
    table = _table({"A": 4})
    with pytest.raises(SplitError, match="fractions: expected three non-negative numbers"):
        split_by_field(table, fractions=(0.5, 0.1, 0.1))
    with pytest.raises(SplitError, match="fov: required column missing"):
        split_by_field(table.drop(columns="fov"))
