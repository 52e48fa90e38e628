"""Splits that come out empty: the per-protein split sizes, training's warning (empty test) and refusal (empty
train or val) before any model is built."""
import logging

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_config
from cytoself_jax.data.splits import SplitError, check_split_sizes, split_by_field, split_sizes
from cytoself_jax.data.store import write_store
from cytoself_jax.training import loop


def _table(fields_per_protein: dict[str, int], crops_per_field: int = 4) -> pd.DataFrame:
    rows = [{"protein": p, "fov": f"{p}/{f}"} for p, n in fields_per_protein.items() for f in range(n)
            for _ in range(crops_per_field)]
    return pd.DataFrame(rows)


def test_split_sizes_per_protein_match_a_count():
    table = _table({"A": 2, "B": 5, "C": 1})
    splits = split_by_field(table, (0.6, 0.2, 0.2), allow_single_field=True)
    sizes = split_sizes(table, splits)
    assert list(sizes.index) == ["A", "B", "C"] and list(sizes["fields"]) == [2, 5, 1]
    for protein in "ABC":  # slow reference: count each protein's rows in each split
        for name, rows in splits.items():
            assert sizes.loc[protein, name] == int((table["protein"].to_numpy()[rows] == protein).sum())
    assert sizes.loc["C", ["train", "val", "test"]].tolist() == [4, 0, 0]


def test_two_fields_per_protein_warn_that_test_is_empty():
    table = _table({"A": 2, "B": 2})
    splits = split_by_field(table, (0.8, 0.1, 0.1))
    assert len(splits["test"]) == 0
    (message,) = check_split_sizes(table, splits, "s/crops.csv")
    assert message.startswith("s/crops.csv: fov: the test split is empty")
    assert "2 of 2 proteins have fewer than 3 fields" in message
    assert "A (2 fields: train 4, val 4, test 0)" in message and "--split val" in message
    assert check_split_sizes(_table({"A": 3}), split_by_field(_table({"A": 3}), (0.6, 0.2, 0.2)), "x") == []
    single = _table({"A": 1, "B": 1})
    with pytest.raises(SplitError, match=r"x: fov: the val split is empty: .*2 of 2 proteins have fewer than 3"):
        check_split_sizes(single, split_by_field(single, (0.8, 0.1, 0.1), allow_single_field=True), "x")


def test_training_warns_with_split_sizes_before_building_the_model(tmp_path, monkeypatch, caplog):
    rng = np.random.default_rng(0)
    table = _table({"P0": 2, "P1": 2})
    write_store(tmp_path / "store", rng.random((len(table), 32, 32, 3)).astype(np.float32), table,
                ("protein", "nucleus", "distance"))
    config = tiny_config(tmp_path / "run", tmp_path / "store")

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(loop, "build_model", stop)  # everything before the model is what this test is about
    with caplog.at_level(logging.WARNING, logger="cytoself_jax"), pytest.raises(Stop):
        loop.train(config, progress=False)
    warned = [r.getMessage() for r in caplog.records if "test split is empty" in r.getMessage()]
    assert len(warned) == 1 and "P0 (2 fields: train" in warned[0] and "P1 (2 fields" in warned[0]
    assert not (tmp_path / "run").exists()
