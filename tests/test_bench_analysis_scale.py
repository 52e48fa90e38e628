"""bench/analysis_scale.py's pure parts: the store it draws from a source store, the dihedral copies, the growth
exponents. (The commands it times are the embed command's and eval.py's, tested elsewhere.)"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import analysis_scale  # noqa: E402
import benchlib  # noqa: E402
from cytoself_jax.data.store import open_store, write_store  # noqa: E402


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """12 distinct 6x6 two-channel crops: proteins A, B, C (families x, y, x), 4 crops each."""
    rng = np.random.default_rng(1)
    table = pd.DataFrame({"protein": np.repeat(["A", "B", "C"], 4), "fov": [f"f{i // 2}" for i in range(12)],
                          "family": np.repeat(["x", "y", "x"], 4)})
    path = tmp_path_factory.mktemp("scale") / "source"
    write_store(path, rng.random((12, 6, 6, 2)).astype(np.float32), table, ("protein", "nucleus"))
    return path


def test_dihedral_codes_are_the_eight_symmetries():
    image = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    turned = analysis_scale.dihedral(np.repeat(image, 8, 0), np.arange(8))
    assert np.array_equal(turned[1, ..., 0], np.rot90(image[0, ..., 0]))
    assert np.array_equal(turned[4, ..., 0], image[0, :, ::-1, 0])
    assert np.array_equal(turned[6, ..., 0], np.rot90(image[0, ..., 0], 2)[:, ::-1])
    assert len({t.tobytes() for t in turned}) == 8


def test_store_of_n_crops_from_the_source(source, tmp_path):
    src = open_store(source)
    store, _, reused = analysis_scale.build_store(source, tmp_path / "s", 50, 7, fov_crops=3, seed=0, chunk=8,
                                                  progress=False)
    assert not reused and len(store) == 50 and store.channels == src.channels
    again = open_store(tmp_path / "s")  # opens on its own: valid table, shape, dtype
    t = again.table
    assert sorted(t["protein"].unique()) == ["A-0", "A-1", "A-2", "B-0", "B-1", "C-0", "C-1"]
    assert t.groupby("protein").size().tolist() == [8, 7, 7, 7, 7, 7, 7]  # balanced: 50 = 7 * 7 + 1
    assert (t["family"] == t["protein"].str[0].map({"A": "x", "B": "y", "C": "x"})).all()
    assert t.groupby("fov")["protein"].nunique().max() == 1 and t.groupby("fov").size().max() == 3
    codes = set()
    for i, (row, code) in enumerate(t["source"].str.split(":", expand=True).astype(int).to_numpy()):
        assert src.table["protein"][row] == t["protein"][i].split("-")[0]
        expected = analysis_scale.dihedral(np.asarray(src.images[row:row + 1]), np.array([code]))[0]
        assert np.array_equal(again.images[i], expected)
        codes.add(code)
    assert codes == set(range(8))
    # the same parameters: reused; others: our store replaced; a folder we did not build: refused
    assert analysis_scale.build_store(source, tmp_path / "s", 50, 7, fov_crops=3, progress=False)[2]
    store, _, reused = analysis_scale.build_store(source, tmp_path / "s", 20, 2, fov_crops=3, progress=False)
    assert not reused and len(store) == 20 and len(store.proteins) == 2
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("keep")
    with pytest.raises(benchlib.BenchError, match="not built by this benchmark"):
        analysis_scale.build_store(source, tmp_path / "theirs", 20, 2, progress=False)
    assert (tmp_path / "theirs" / "notes.txt").read_text() == "keep"
    assert json.loads((tmp_path / "s" / "store.json").read_text())["analysis_scale"]["crops"] == 20


def test_plan_refuses_more_proteins_than_crops(source):
    with pytest.raises(benchlib.BenchError, match="--proteins"):
        analysis_scale.plan(open_store(source).table, 5, 6, 20, 0)


def test_non_square_crops_turn_by_half_turns_only(source):
    _, codes, _ = analysis_scale.plan(open_store(source).table, 400, 3, 20, 0, square=False)
    assert set(codes) == {0, 2, 4, 6}


def test_growth_exponents_by_hand():
    got = analysis_scale.growth_exponents([10, 100, 1000], [1.0, 10.0, 1000.0])
    assert got["pairs"] == pytest.approx([1.0, 2.0])
    # least squares of log t on log N: x = (1, 2, 3) ln 10, y = (0, 1, 3) ln 10 -> slope 3 / 2
    assert got["fit"] == pytest.approx(1.5)
    assert analysis_scale.growth_exponents([10, 100, 1000], [2.0, None, 0.0]) == {"pairs": [None, None], "fit": None}
    got = analysis_scale.growth_exponents([300, 1200, 4800], [0.0, 2.0, 4.0])
    assert got["pairs"][0] is None and got["pairs"][1] == pytest.approx(0.5)
    assert got["fit"] == pytest.approx(math.log(2) / math.log(4))


def test_an_output_folder_it_did_not_write_is_refused(source, tmp_path):
    import argparse

    analysis_scale.build_store(source, tmp_path / "store-50", 50, 3, progress=False)
    (tmp_path / "embed-50").mkdir()
    args = argparse.Namespace(work=str(tmp_path), ckpt="run", embed_args="", eval_args="", reuse=True)
    with pytest.raises(benchlib.BenchError, match="not written by this benchmark"):
        analysis_scale.measure("embed", args, 50, tmp_path / "store-50")
