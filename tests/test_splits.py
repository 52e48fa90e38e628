"""Splits by field of view, split folds, and proteins held out of training."""
import json

import ml_collections
import numpy as np
import pandas as pd
import pytest

from cytoself_jax.config import apply_overrides, paper_config
from cytoself_jax.data.splits import (SplitError, choose_heldout_proteins, class_ids, split_by_field,
                                      splits_for_config)


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
    with pytest.raises(SplitError, match=r"fold: expected an integer >= 0 \(config.data.split_fold\), found -1"):
        split_by_field(table, fold=-1)


def _fields(table: pd.DataFrame, splits: dict, name: str) -> list[str]:
    return sorted(set(table["fov"].to_numpy()[splits[name]]))


def test_defaults_reproduce_the_splits_made_before_folds_and_held_out_proteins():
    """Val and test fields of this table as split_by_field gave them before split_fold and heldout_proteins existed
    (commit 29254c8): runs trained then are evaluated on the same crops now."""
    table = _table({f"P{i}": n for i, n in enumerate([3, 4, 5, 6, 7, 9])}, seed=5)
    expected_val = ["P0/0", "P1/0", "P2/0", "P3/4", "P4/5", "P5/5"]
    expected_test = ["P0/2", "P1/3", "P2/2", "P3/1", "P4/3", "P5/6"]
    for splits in (split_by_field(table, seed=0), split_by_field(table, seed=0, fold=0),
                   splits_for_config(table, paper_config()).splits):
        _check_partition(table, splits)
        assert _fields(table, splits, "val") == expected_val
        assert _fields(table, splits, "test") == expected_test
    run = splits_for_config(table, paper_config())
    assert run.heldout_proteins == () and len(run.heldout_rows) == 0
    assert run.trained_proteins == tuple(f"P{i}" for i in range(6))


def test_folds_make_each_of_four_fields_the_test_field_once():
    """Yeast: 4 fields per protein, (0.8, 0.1, 0.1): folds 0..3 rotate each field through test (and val)."""
    table = _table({p: 4 for p in ["AAC1", "AAC3", "AAH1", "AAP1", "AAR2"]}, seed=2)
    tests, vals = {}, {}
    for fold in range(4):
        splits = split_by_field(table, fold=fold)
        _check_partition(table, splits)
        for protein in table["protein"].unique():
            mine = table["protein"].to_numpy() == protein
            part = [sorted(set(table["fov"].to_numpy()[np.intersect1d(splits[s], np.flatnonzero(mine))]))
                    for s in ("train", "val", "test")]
            assert [len(f) for f in part] == [2, 1, 1], (fold, protein, part)
            tests.setdefault(protein, []).extend(part[2])
            vals.setdefault(protein, []).extend(part[1])
    for protein in tests:
        assert sorted(tests[protein]) == [f"{protein}/{f}" for f in range(4)], tests[protein]
        assert sorted(vals[protein]) == [f"{protein}/{f}" for f in range(4)], vals[protein]
    # folds wrap around: fold 4 is fold 0 for 4 fields
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(split_by_field(table, fold=4)[s], split_by_field(table, fold=0)[s])


def test_heldout_fraction_is_seeded_order_free_and_nested():
    names = [f"Y{i:03d}" for i in range(40)]
    a = choose_heldout_proteins(names, 0.2, seed=0)
    assert len(a) == 8 and a == sorted(a) and set(a) <= set(names)
    assert choose_heldout_proteins(names[::-1] * 3, 0.2, seed=0) == a  # order and repeats do not matter
    assert choose_heldout_proteins(names, 0.2, seed=1) != a
    assert set(choose_heldout_proteins(names, 0.1, seed=0)) < set(a)  # a larger fraction holds out a superset
    # adding a protein changes the choice by at most that protein and the one it displaces
    more = choose_heldout_proteins(names + ["NEW"], 0.2, seed=0)
    assert len(set(more) - set(a) - {"NEW"}) == 0 and len(set(a) - set(more)) <= 1
    assert choose_heldout_proteins(names, 0.0) == [] and choose_heldout_proteins(names, ()) == []
    assert len(choose_heldout_proteins(names, 0.001)) == 1  # a positive fraction holds out at least one protein
    assert choose_heldout_proteins(names, ("Y005", "Y001", "Y005")) == ["Y001", "Y005"]
    # the same proteins in any order of the seeded draw: a slow reference (sort by the per-protein key)
    keys = {p: np.random.default_rng([0, __import__("zlib").crc32(p.encode())]).random() for p in names}
    assert a == sorted(sorted(names, key=keys.get)[:8])


def test_heldout_bad_values_are_one_line():
    names = ["A", "B", "C", "D"]
    with pytest.raises(SplitError, match=r"^crops.csv: protein: config.data.heldout_proteins names 1 protein\(s\) "
                                         r"not in the store: \['ZZZ'\] \(the store has 4 proteins"):
        choose_heldout_proteins(names, ("A", "ZZZ"), where="crops.csv")
    for bad in (1.0, -0.1, True, [1, 2]):
        with pytest.raises(SplitError, match="heldout_proteins: expected a fraction in \\[0, 1\\) or a list"):
            choose_heldout_proteins(names, bad)
    with pytest.raises(SplitError, match="found the string 'A'; write a list"):
        choose_heldout_proteins(names, "A")
    with pytest.raises(SplitError, match="leaves fewer than 2 to train on"):
        choose_heldout_proteins(names, 0.75)
    with pytest.raises(SplitError, match="leaves fewer than 2 to train on"):
        choose_heldout_proteins(names, ("A", "B", "C"))


def _config(**data) -> ml_collections.ConfigDict:
    c = paper_config()
    c.data.update(data)
    return c


def test_heldout_proteins_are_in_no_split_and_the_others_split_as_before():
    table = _table({f"P{i}": 5 for i in range(10)}, seed=3)
    proteins = table["protein"].to_numpy()
    run = splits_for_config(table, _config(heldout_proteins=0.3, heldout_seed=4), where="crops.csv")
    assert len(run.heldout_proteins) == 3
    assert run.heldout_proteins == tuple(choose_heldout_proteins(proteins, 0.3, seed=4))
    in_splits = np.concatenate(list(run.splits.values()))
    assert not set(proteins[in_splits]) & set(run.heldout_proteins)  # no leak into train, val or test
    for name in ("train", "val", "test"):
        assert set(proteins[run.splits[name]]) == set(proteins) - set(run.heldout_proteins), name
    np.testing.assert_array_equal(run.heldout_rows, np.flatnonzero(np.isin(proteins, run.heldout_proteins)))
    np.testing.assert_array_equal(np.sort(np.concatenate([in_splits, run.heldout_rows])), np.arange(len(table)))
    assert run.trained_proteins == tuple(sorted(set(proteins) - set(run.heldout_proteins)))
    # the proteins trained on keep exactly the fields they had in each split without held-out proteins
    everything = split_by_field(table)
    for name in ("train", "val", "test"):
        kept = everything[name][~np.isin(proteins[everything[name]], run.heldout_proteins)]
        np.testing.assert_array_equal(run.splits[name], kept)
    # a held-out protein imaged in one field only is no error: it is not split
    lonely = pd.concat([table, pd.DataFrame({"protein": ["SOLO"] * 3, "fov": ["SOLO/0"] * 3})], ignore_index=True)
    run = splits_for_config(lonely, _config(heldout_proteins=("SOLO",)))
    np.testing.assert_array_equal(run.heldout_rows, np.arange(len(table), len(table) + 3))
    with pytest.raises(SplitError, match="protein 'SOLO' has all its 3 crops in one field"):
        splits_for_config(lonely, _config())


def test_splits_for_config_reads_saved_configs_and_folds():
    table = _table({f"P{i}": 4 for i in range(6)}, seed=1)
    saved = json.loads(_config(heldout_proteins=("P1", "P4"), split_fold=2).to_json())
    run = splits_for_config(table, ml_collections.ConfigDict(saved))  # as eval reads config.json: a list
    assert run.heldout_proteins == ("P1", "P4")
    for name in ("train", "val", "test"):
        kept = split_by_field(table, fold=2)[name]
        np.testing.assert_array_equal(run.splits[name], kept[~np.isin(table["protein"].to_numpy()[kept], ["P1", "P4"])])
    # a config saved before split_fold and heldout_* existed: today's splits, nothing held out
    for field in ("split_fold", "heldout_proteins", "heldout_seed"):
        del saved["data"][field]
    old = splits_for_config(table, ml_collections.ConfigDict(saved))
    assert old.heldout_proteins == ()
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(old.splits[name], split_by_field(table)[name])


def test_heldout_proteins_set_from_the_command_line():
    from absl import flags
    from ml_collections import config_flags

    def parsed(*argv):
        values = flags.FlagValues()
        holder = config_flags.DEFINE_config_dict("config", paper_config(), flag_values=values,
                                                 sys_argv=["train.py", *argv])
        values(["train.py", *argv])
        return holder.value

    c = parsed("--config.data.heldout_proteins=('A', 'B')", "--config.data.split_fold=3")
    assert tuple(c.data.heldout_proteins) == ("A", "B") and c.data.split_fold == 3
    assert parsed("--config.data.heldout_proteins=0.25").data.heldout_proteins == 0.25
    c = apply_overrides(paper_config(), ["data.heldout_proteins=('A',)"])  # bench/ablation.py's --set
    assert c.data.heldout_proteins == ("A",)


def test_class_ids_index_the_trained_proteins():
    np.testing.assert_array_equal(class_ids(["B", "A", "C", "B"], ("A", "B")), np.array([1, 0, -1, 1], np.int32))
