"""The crop store: round trip, validation messages, atomic writes, pixel checks."""
import json
import pickle

import numpy as np
import pandas as pd
import pytest

from cytoself_jax.data.pixels import check_pixels
from cytoself_jax.data.store import StoreError, create_store, open_store, write_store

CHANNELS = ["protein", "fiducial"]


def _table(n: int) -> pd.DataFrame:
    proteins = np.array(["B", "A", "C"])[np.arange(n) % 3]
    return pd.DataFrame({"protein": proteins, "fov": [f"{p}/{i % 2}" for i, p in enumerate(proteins)],
                         "family": ["x"] * n})


def _images(n: int = 6, dtype=np.float32) -> np.ndarray:
    return (np.random.default_rng(0).random((n, 8, 6, 2)) * 200).astype(dtype)


@pytest.fixture
def store_path(tmp_path):
    write_store(tmp_path / "s", _images(), _table(6), CHANNELS)
    return tmp_path / "s"


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float16, np.float32])
def test_round_trip(tmp_path, dtype):
    images = _images(dtype=dtype)
    store = write_store(tmp_path / "s", images, _table(6), CHANNELS)
    assert isinstance(store.images, np.memmap)
    np.testing.assert_array_equal(store.images, images)
    assert store.images.dtype == dtype
    assert len(store) == 6 and store.image_shape == (8, 6, 2) and store.channels == ("protein", "fiducial")
    assert store.proteins == ("A", "B", "C")
    np.testing.assert_array_equal(store.protein_ids, np.array([1, 0, 2, 1, 0, 2], np.int32))
    assert store.protein_ids.dtype == np.int32
    assert list(store.table.columns) == ["protein", "fov", "family", "source"]
    assert (store.table["source"] == "").all() and (store.table["family"] == "x").all()
    assert store.channel_indices(["fiducial", "protein"]) == (1, 0)
    meta = json.loads((tmp_path / "s" / "store.json").read_text())
    assert meta == {"format": "cytoself-jax-crops", "version": 1, "channels": CHANNELS, "shape": [6, 8, 6, 2],
                    "dtype": np.dtype(dtype).name}
    again = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(again.images, images)
    assert isinstance(again.images, np.memmap)


def test_pickle_does_not_copy_pixels(tmp_path):
    images = np.zeros((50, 32, 32, 2), np.float32)
    images[:, 0, 0, 0] = 1
    store = write_store(tmp_path / "s", images, _table(50), CHANNELS)
    assert len(pickle.dumps(store)) < images.nbytes // 20


def test_protein_names_that_look_like_missing_values_survive(tmp_path):
    table = pd.DataFrame({"protein": ["NA", "NULL"], "fov": ["NA/1", "NULL/1"]})
    store = write_store(tmp_path / "s", _images(2), table, CHANNELS)
    assert store.proteins == ("NA", "NULL")


def test_writer_fills_memmap_and_moves_into_place(tmp_path):
    writer = create_store(tmp_path / "s", 4, (8, 6, 2), CHANNELS, "uint16")
    assert not (tmp_path / "s").exists()  # nothing at the final path until finalize
    for i in range(4):
        writer.images[i] = i
    store = writer.finalize(_table(4))
    assert [p.name for p in tmp_path.iterdir()] == ["s"]
    np.testing.assert_array_equal(store.images[:, 0, 0, 0], [0, 1, 2, 3])


def test_crash_leaves_no_store(tmp_path):
    with pytest.raises(RuntimeError):
        with create_store(tmp_path / "s", 4, (8, 6, 2), CHANNELS, "float32") as writer:
            writer.images[0] = 1
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_refuses_overwrite_unless_asked(store_path):
    with pytest.raises(StoreError, match="already exists; pass overwrite=True"):
        write_store(store_path, _images(3), _table(3), CHANNELS)
    assert len(open_store(store_path)) == 6
    store = write_store(store_path, _images(3), _table(3), CHANNELS, overwrite=True)
    assert len(store) == 3
    assert [p.name for p in store_path.parent.iterdir()] == ["s"]


def test_bad_table_on_write(tmp_path):
    with pytest.raises(StoreError, match=r"crops.csv: rows: expected 6 rows .* found 5"):
        write_store(tmp_path / "s", _images(), _table(5), CHANNELS)
    bad = _table(6)
    bad.loc[3, "fov"] = ""
    with pytest.raises(StoreError, match="crops.csv: fov: expected a non-empty value in every row, row 3 is empty"):
        write_store(tmp_path / "s", _images(), bad, CHANNELS)
    with pytest.raises(StoreError, match="channels: expected a 'protein' channel"):
        write_store(tmp_path / "s", _images(), _table(6), ["gfp", "rfp"])
    with pytest.raises(StoreError, match="dtype: expected one of"):
        write_store(tmp_path / "s", _images().astype(np.int32), _table(6), CHANNELS)
    assert list(tmp_path.iterdir()) == []


def _edit_meta(path, **changes):
    meta = json.loads((path / "store.json").read_text())
    meta.update(changes)
    (path / "store.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("break_it, message", [
    (lambda p: (p / "crops.npy").unlink(), r"crops.npy: file: missing"),
    (lambda p: (p / "store.json").unlink(), r"store.json: file: missing"),
    (lambda p: _edit_meta(p, shape=[7, 8, 6, 2]), r"crops.npy: shape: expected \[7, 8, 6, 2\] .* found \[6, 8, 6, 2\]"),
    (lambda p: _edit_meta(p, shape=[0, 8, 6, 2]), r"store.json: shape: expected at least one crop, found N=0"),
    (lambda p: _edit_meta(p, channels=["protein"]), r"store.json: channels: expected 2 names .* found 1"),
    (lambda p: _edit_meta(p, dtype="int64"), r"store.json: dtype: expected one of .* found 'int64'"),
    (lambda p: _edit_meta(p, dtype="uint8"), r"crops.npy: dtype: expected uint8 .* found float32"),
    (lambda p: _edit_meta(p, format="other"), r"store.json: format: expected 'cytoself-jax-crops'"),
    (lambda p: (p / "store.json").write_text("{"), r"store.json: json: unreadable"),
    (lambda p: _table(5).to_csv(p / "crops.csv", index=False), r"crops.csv: rows: expected 6 rows .* found 5"),
    (lambda p: _table(6).drop(columns="protein").to_csv(p / "crops.csv", index=False),
     r"crops.csv: protein: required column missing"),
    (lambda p: _table(6).assign(protein=["A", "B", "", "A", "B", "C"]).to_csv(p / "crops.csv", index=False),
     r"crops.csv: protein: expected a non-empty value in every row, row 2 is empty"),
])
def test_open_validates(store_path, break_it, message):
    break_it(store_path)
    with pytest.raises(StoreError, match=message) as info:
        open_store(store_path)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_open_missing_dir(tmp_path):
    with pytest.raises(StoreError, match="store: expected a crop store directory, found nothing"):
        open_store(tmp_path / "nope")


def test_channel_indices_names_the_missing_channel(store_path):
    with pytest.raises(StoreError, match=r"store.json: channels: config asks for 'distance' but the store has "
                                         r"\['protein', 'fiducial'\]"):
        open_store(store_path).channel_indices(["protein", "distance"])


def test_check_pixels_finds_nan_inf_and_constant_protein(tmp_path):
    images = _images(10)
    images[2, 3, 3, 1] = np.nan   # NaN in the fiducial channel
    images[5, 0, 0, 0] = np.inf
    images[7, :, :, 0] = 4.0      # constant protein channel
    images[8, :, :, 1] = 0.0      # constant fiducial is fine
    store = write_store(tmp_path / "s", images, _table(10), CHANNELS)
    for chunk in (1, 3, 100):
        bad = check_pixels(store, chunk=chunk)
        assert bad.dtype == np.int64
        np.testing.assert_array_equal(bad, [2, 5, 7])


def test_check_pixels_integer_store(tmp_path):
    images = _images(4, np.uint8)
    images[1, :, :, 0] = 0
    np.testing.assert_array_equal(check_pixels(write_store(tmp_path / "s", images, _table(4), CHANNELS)), [1])
