"""The grain input pipeline: normalization, augmentation, determinism, eval coverage, workers, sharding."""
import chex
import numpy as np
import pandas as pd
import pytest

from cytoself_jax.data.pipeline import make_dataset, normalize_crop, pixel_variance, steps_per_epoch
from cytoself_jax.data.store import StoreError, write_store

CHANNELS = ["protein", "nucleus", "distance"]
N = 37


def _reference_normalize(crop: np.ndarray, channels) -> np.ndarray:
    """Plain per-channel loop in float64."""
    out = np.zeros(crop.shape, np.float64)
    for c, name in enumerate(channels):
        x = crop[..., c].astype(np.float64)
        if name == "distance":
            m = np.abs(x).max()
            out[..., c] = x / m if m > 0 else 0.0
        else:
            lo, hi = x.min(), x.max()
            out[..., c] = (x - lo) / (hi - lo) if hi > lo else 0.0
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    images = np.empty((N, 6, 6, 3), np.float32)
    images[..., 0] = rng.random((N, 6, 6)) * 1000 + 50         # protein: raw intensities
    images[..., 1] = rng.integers(0, 4000, (N, 6, 6))           # nucleus
    images[..., 2] = rng.normal(0, 7, (N, 6, 6))                # signed distance
    images[3, :, :, 1] = 17.0                                   # a constant channel
    table = pd.DataFrame({"protein": [f"P{i % 4}" for i in range(N)], "fov": [f"P{i % 4}/{i % 3}" for i in range(N)]})
    return write_store(tmp_path_factory.mktemp("pipe") / "s", images, table, CHANNELS)


def _batches(store, indices=None, **kwargs):
    kwargs = {"channels": ["protein", "distance"], "batch_size": 8, "train": True, "seed": 0, "epoch": 0,
              "num_workers": 0, **kwargs}
    return list(make_dataset(store, np.arange(N) if indices is None else indices, **kwargs))


def _eight(image: np.ndarray) -> list[np.ndarray]:
    """The dihedral group of an (H, W, C) image, straight from numpy."""
    rotations = [np.rot90(image, r, axes=(0, 1)) for r in range(4)]
    return rotations + [np.flip(r, axis=1) for r in rotations]


def test_normalize_matches_numpy_reference(store):
    for row in range(N):
        crop = np.asarray(store.images[row])
        got = normalize_crop(crop, CHANNELS)
        chex.assert_type(got, np.float32)
        chex.assert_trees_all_close(got, _reference_normalize(crop, CHANNELS).astype(np.float32), atol=1e-6)
        assert got[..., 0].min() == 0.0 and got[..., 0].max() == 1.0
        assert -1.0 <= got[..., 2].min() and got[..., 2].max() <= 1.0 and np.abs(got[..., 2]).max() == 1.0
    assert (normalize_crop(np.asarray(store.images[3]), CHANNELS)[..., 1] == 0).all()
    assert (normalize_crop(np.zeros((4, 4, 1), np.uint16), ["distance"]) == 0).all()


def test_pixel_variance_is_np_var_of_the_normalized_crops(store):
    """The reconstruction losses' divisor: np.var over every normalized pixel of every channel of the rows asked
    (the channel order asked, not the store's), and of a seeded subsample of max_crops rows when there are more."""
    raw = np.asarray(store.images)
    rows = np.arange(0, N, 2)
    channels = ["distance", "protein"]
    picked = raw[rows][..., [CHANNELS.index(c) for c in channels]]
    expected = np.var(np.stack([_reference_normalize(crop, channels) for crop in picked]))
    variance, crops = pixel_variance(store, rows, channels)
    assert crops == len(rows)
    np.testing.assert_allclose(variance, expected, rtol=1e-6)
    assert not np.isclose(variance, np.var(np.stack([_reference_normalize(c, CHANNELS) for c in raw[rows]])))

    sub_variance, sub_crops = pixel_variance(store, np.arange(N), CHANNELS, max_crops=5, seed=3)
    chosen = np.sort(np.random.default_rng(3).choice(np.arange(N), 5, replace=False))
    assert sub_crops == 5
    np.testing.assert_allclose(sub_variance, np.var(np.stack([_reference_normalize(c, CHANNELS)
                                                             for c in raw[chosen]])), rtol=1e-6)
    with pytest.raises(ValueError, match="no crops"):
        pixel_variance(store, np.arange(0), CHANNELS)


def test_eval_batches_cover_every_index_once_unaugmented(store):
    indices = np.array([30, 2, 5, 7, 11, 13, 17, 19, 23, 29, 31, 36, 0])
    dataset = make_dataset(store, indices, channels=["protein", "distance"], batch_size=4, train=False)
    batches = list(dataset)
    assert len(dataset) == len(batches) == 4 and dataset.num_examples == 13
    assert [len(b["index"]) for b in batches] == [4, 4, 4, 1]  # partial last batch kept
    got_index = np.concatenate([b["index"] for b in batches])
    np.testing.assert_array_equal(got_index, indices)  # eval keeps the order asked
    for b in batches:
        chex.assert_type([b["image"], b["label"], b["index"]], [np.float32, np.int32, np.int32])
        chex.assert_shape(b["image"], (len(b["index"]), 6, 6, 2))
        np.testing.assert_array_equal(b["label"], store.protein_ids[b["index"]])
        for image, row in zip(b["image"], b["index"]):
            expected = _reference_normalize(np.asarray(store.images[row])[..., [0, 2]], ["protein", "distance"])
            chex.assert_trees_all_close(image, expected.astype(np.float32), atol=1e-6)


def test_train_batches_are_dihedral_transforms_and_all_eight_occur(store):
    seen = set()
    for epoch in range(4):
        batches = _batches(store, epoch=epoch)
        assert len(batches) == steps_per_epoch(N, 8) == 4  # remainder dropped
        for b in batches:
            chex.assert_shape(b["image"], (8, 6, 6, 2))
            np.testing.assert_array_equal(b["label"], store.protein_ids[b["index"]])
            for image, row in zip(b["image"], b["index"]):
                original = _reference_normalize(np.asarray(store.images[row])[..., [0, 2]], ["protein", "distance"])
                matches = [k for k, t in enumerate(_eight(original)) if np.allclose(image, t, atol=1e-6)]
                assert len(matches) == 1, (row, matches)  # random crops have no symmetry: exactly one transform
                seen.add(matches[0])
    assert seen == set(range(8))


def test_same_seed_and_epoch_give_same_batches(store):
    a, b = _batches(store, seed=5, epoch=2), _batches(store, seed=5, epoch=2)
    chex.assert_trees_all_equal(a, b)
    other_epoch = _batches(store, seed=5, epoch=3)
    other_seed = _batches(store, seed=6, epoch=2)
    order = np.concatenate([x["index"] for x in a])
    assert not np.array_equal(order, np.concatenate([x["index"] for x in other_epoch]))
    assert not np.array_equal(order, np.concatenate([x["index"] for x in other_seed]))
    assert len(set(order)) == len(order)  # no crop twice in an epoch


def test_worker_process_gives_same_batches(store):
    in_process = _batches(store, seed=1, epoch=1)
    with_worker = _batches(store, seed=1, epoch=1, num_workers=1, prefetch=2)
    chex.assert_trees_all_close(in_process, [{k: np.asarray(v) for k, v in b.items()} for b in with_worker])
    del with_worker  # release grain's shared-memory batches before the worker goes away


def test_shards_together_form_the_global_batches(store):
    unsharded = _batches(store, batch_size=8, seed=2, epoch=0)
    shards = [_batches(store, batch_size=4, seed=2, epoch=0, shard_index=h, shard_count=2) for h in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(unsharded) == 4
    for step, global_batch in enumerate(unsharded):
        parts = [s[step] for s in shards]
        # the hosts' pieces in host order are the global batch, order included (dropout masks follow positions)
        np.testing.assert_array_equal(np.concatenate([p["index"] for p in parts]), global_batch["index"])
        by_row = {int(r): img for p in parts for r, img in zip(p["index"], p["image"])}
        for r, img in zip(global_batch["index"], global_batch["image"]):
            np.testing.assert_array_equal(by_row[int(r)], img)  # same augmentation whatever the host count


def test_an_epoch_started_after_some_crops_continues_the_whole_epochs_batches(store):
    """start = crops already read (a run resumed mid-epoch): the remaining batches equal the whole epoch's, pixels
    and augmentation included, with worker processes, with two shards, and after a batch size change."""
    whole = _batches(store, seed=3, epoch=1)
    assert len(whole) == 4
    chex.assert_trees_all_equal(_batches(store, seed=3, epoch=1, start=16), whole[2:])
    with_worker = _batches(store, seed=3, epoch=1, start=8, num_workers=1, prefetch=2)
    chex.assert_trees_all_equal([{k: np.asarray(v) for k, v in b.items()} for b in with_worker], whole[1:])
    del with_worker
    shards = [_batches(store, batch_size=4, seed=3, epoch=1, start=24, shard_index=h, shard_count=2) for h in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([shards[0][0]["index"], shards[1][0]["index"]]), whole[3]["index"])
    # a resume with another batch size reads on from the same crop: the epoch's crops 8.. in order, 4 at a time
    smaller = _batches(store, batch_size=4, seed=3, epoch=1, start=8)
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in smaller])[:24],
                                  np.concatenate([b["image"] for b in whole[1:]]))
    with pytest.raises(ValueError, match=r"make_dataset: start: expected an integer >= 0"):
        make_dataset(store, np.arange(N), channels=["protein"], batch_size=4, train=True, start=-1)


def test_channel_and_argument_errors(store):
    with pytest.raises(StoreError, match=r"store.json: channels: config asks for 'fiducial' but the store has "
                                         r"\['protein', 'nucleus', 'distance'\]"):
        make_dataset(store, np.arange(N), channels=["protein", "fiducial"], batch_size=4, train=False)
    with pytest.raises(ValueError, match=r"config: data.channels: expected 'protein' first"):
        make_dataset(store, np.arange(N), channels=["nucleus", "protein"], batch_size=4, train=False)
    with pytest.raises(StoreError, match=r"indices: expected rows in \[0, 37\)"):
        make_dataset(store, np.array([0, 37]), channels=["protein"], batch_size=4, train=False)


def test_non_square_crops_cannot_be_augmented(tmp_path):
    table = pd.DataFrame({"protein": ["A", "B"], "fov": ["A/1", "B/1"]})
    store = write_store(tmp_path / "s", np.random.default_rng(0).random((2, 4, 6, 1)).astype(np.float32), table, ["protein"])
    assert len(_batches(store, np.arange(2), channels=["protein"], batch_size=2, train=False)) == 1
    with pytest.raises(ValueError, match=r"dihedral augmentation needs square crops, found 4x6"):
        make_dataset(store, np.arange(2), channels=["protein"], batch_size=2, train=True)


def test_steps_per_epoch():
    assert steps_per_epoch(37, 8) == 4 and steps_per_epoch(37, 8, drop_remainder=False) == 5
    assert steps_per_epoch(32, 8) == 4 and steps_per_epoch(32, 8, drop_remainder=False) == 4
