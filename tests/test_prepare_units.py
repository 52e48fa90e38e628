"""prepare's pieces: reading and projecting fields, segmentation, signed distance, crops."""
import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from cytoself_jax.data.synthetic import draw_field
from cytoself_jax.prepare.crop import crop_nuclei
from cytoself_jax.imaging.distance import signed_distance
from cytoself_jax.prepare.io import FieldError, InputError, fields_from_pattern, fields_from_table, read_field
from cytoself_jax.prepare.segment import SegmentParams, crude_mask, refine_mask, segment_nuclei

# Synthetic nuclei are ~8-11 px in radius: the paper-scale defaults (for ~25 px radii) are scaled down.
SMALL = SegmentParams(sigma=2.0, laplace_sigma=2.0, closing_radius=4, min_nucleus_area=50)


def iou_matches(pred: np.ndarray, true: np.ndarray, threshold: float = 0.5) -> tuple[int, int, int]:
    """(matched pairs with IoU > threshold, predicted objects, true objects); IoU > 0.5 makes matches one-to-one."""
    _, pred = np.unique(pred, return_inverse=True)
    _, true = np.unique(true, return_inverse=True)
    pred, true = pred.reshape(-1).astype(np.int64), true.reshape(-1).astype(np.int64)
    n_p, n_t = pred.max() + 1, true.max() + 1
    inter = np.bincount(pred * n_t + true, minlength=n_p * n_t).reshape(n_p, n_t)
    union = inter.sum(1)[:, None] + inter.sum(0)[None, :] - inter
    iou = (inter / union)[1:, 1:]
    return int((iou > threshold).sum()), n_p - 1, n_t - 1


# ------------------------------------------------------------------------------------------------ reading
def test_read_field_projects_z_and_follows_metadata_axes(tmp_path):
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 1000, (4, 3, 20, 24)).astype(np.uint16)  # Z, C, Y, X
    tifffile.imwrite(tmp_path / "f.ome.tif", stack, metadata={"axes": "ZCYX"})
    field = read_field(tmp_path / "f.ome.tif", protein_channel=2, nucleus_channel=0)
    assert field.axes == "ZCYX"
    np.testing.assert_array_equal(field.protein, stack[:, 2].max(axis=0))
    np.testing.assert_array_equal(field.nucleus, stack[:, 0].max(axis=0))
    # The same data channels-last in an NPY (no metadata) needs --axes; the result is identical.
    np.save(tmp_path / "f.npy", np.transpose(stack, (2, 3, 0, 1)))  # Y, X, Z, C
    same = read_field(tmp_path / "f.npy", 2, 0, axes="YXZC")
    np.testing.assert_array_equal(same.protein, field.protein)
    np.testing.assert_array_equal(same.nucleus, field.nucleus)


def test_read_field_defaults_and_errors(tmp_path):
    image = np.arange(2 * 10 * 12, dtype=np.float32).reshape(2, 10, 12)
    tifffile.imwrite(tmp_path / "plain.tif", image)  # no axes metadata: 3 dims -> CYX
    field = read_field(tmp_path / "plain.tif", 1, 0)
    assert field.axes == "CYX"
    np.testing.assert_array_equal(field.protein, image[1])
    with pytest.raises(FieldError, match=r"plain.tif: nucleus channel: index 2 but the field has 2 channel"):
        read_field(tmp_path / "plain.tif", 0, 2)
    with pytest.raises(FieldError, match=r"axes: 'ZYX' .*must name C"):
        read_field(tmp_path / "plain.tif", 0, 1, axes="ZYX")
    np.save(tmp_path / "movie.npy", np.stack([image, image]))
    with pytest.raises(FieldError, match=r"movie.npy: axes: axis T has length 2"):
        read_field(tmp_path / "movie.npy", 0, 1, axes="TCYX")
    (tmp_path / "cut.tif").write_bytes((tmp_path / "plain.tif").read_bytes()[:200])
    with pytest.raises(FieldError, match=r"cut.tif: file: unreadable TIF"):
        read_field(tmp_path / "cut.tif", 0, 1)
    with pytest.raises(FieldError, match=r"missing.npy: file: not found"):
        read_field(tmp_path / "missing.npy", 0, 1)


def test_read_field_zarr_when_installed(tmp_path):
    zarr = pytest.importorskip("zarr")
    stack = np.random.default_rng(1).integers(0, 50, (3, 2, 8, 9)).astype(np.uint16)
    array = zarr.open_array(str(tmp_path / "f.zarr"), mode="w", shape=stack.shape, dtype=stack.dtype)
    array[:] = stack
    field = read_field(tmp_path / "f.zarr", 0, 1)  # 4 dims, no metadata -> ZCYX
    np.testing.assert_array_equal(field.nucleus, stack[:, 1].max(axis=0))


def test_fields_from_pattern_and_table(tmp_path):
    for name in ("A/1.tif", "A/2.ome.tif", "B/x.npy", "stray.tif", "A/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    specs, problems = fields_from_pattern(tmp_path)
    assert [s.fov_id for s in specs] == ["A/1", "A/2", "B/x"]
    assert [Path(p).name for p, _ in problems] == ["stray.tif"]  # .txt is not a field file: ignored
    specs, _ = fields_from_pattern(tmp_path, r"(?P<protein>[AB])/(?P<fov>\w+)\.tif$")
    assert [s.fov_id for s in specs] == ["A/1"]
    with pytest.raises(InputError, match="named groups 'protein' and 'fov'"):
        fields_from_pattern(tmp_path, r"(?P<protein>\w+)")
    table = tmp_path / "fields.csv"
    table.write_text("path,protein,fov\nA/1.tif,P,1\nB/x.npy,P,1\n")
    with pytest.raises(InputError, match=r"x.npy: fov: id 'P/1' already used by .*1.tif"):
        fields_from_table(table, tmp_path)
    table.write_text("path,protein,fov\nA/1.tif,P,1\n")
    assert fields_from_table(table, tmp_path)[0].path == str(tmp_path / "A/1.tif")


# ------------------------------------------------------------------------------------------------ distance
def test_signed_distance_matches_brute_force():
    rng = np.random.default_rng(2)
    mask = ndimage.binary_opening(rng.uniform(size=(23, 19)) > 0.6)
    got = signed_distance(mask)
    # Slow reference: for each pixel, the nearest pixel of the other kind (Euclidean).
    coords = np.argwhere(np.ones_like(mask))
    inside, outside = np.argwhere(mask), np.argwhere(~mask)
    want = np.empty(mask.shape)
    for r, c in coords:
        other = outside if mask[r, c] else inside
        d = np.sqrt(((other - (r, c)) ** 2).sum(1)).min()
        want[r, c] = d if mask[r, c] else -d
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.dtype == np.float32 and (got[mask] >= 1).all() and (got[~mask] <= -1).all()
    with pytest.raises(ValueError, match="all outside"):
        signed_distance(np.zeros((4, 4), bool))


# ------------------------------------------------------------------------------------------------ crops
def test_crop_nuclei_cuts_field_windows_and_drops_edges():
    labels = np.zeros((60, 70), np.int32)
    labels[28:33, 30:35] = 1  # centroid (30, 32): fits
    labels[2:5, 40:43] = 2    # centroid (3, 41): a 20 px crop would start at row -7
    labels[50:53, 66:69] = 3  # centroid (51, 67): would end past col 70
    image = np.random.default_rng(3).normal(size=(60, 70, 2)).astype(np.float32)
    crops = crop_nuclei(image, labels, 20)
    assert crops.images.shape == (1, 20, 20, 2)
    assert (crops.rows[0], crops.cols[0], crops.areas[0]) == (30, 32, 25)
    np.testing.assert_array_equal(crops.images[0], image[20:40, 22:42])
    assert sorted((round(r), round(c), why) for r, c, _, why in crops.rejected) == [(3, 41, "edge"), (51, 67, "edge")]


# ------------------------------------------------------------------------------------------------ segmentation
def test_segmentation_finds_synthetic_nuclei():
    found = total = 0
    for seed in range(4):
        fov = draw_field(np.random.default_rng(seed), (256, 256), 8)
        seg = segment_nuclei(fov.nucleus, SMALL)
        matched, n_pred, n_true = iou_matches(seg.labels, fov.nucleus_labels)
        found, total = found + matched, total + n_true
        assert n_pred - matched <= 1, f"seed {seed}: {n_pred - matched} spurious nuclei"
    assert found / total >= 0.95, f"recall {found}/{total}"


def test_refinement_splits_touching_nuclei():
    """Two bright discs touching through a dimmer neck: Li's mask merges them, steps (i)-(v) cut the valley."""
    yy, xx = np.mgrid[:80, :100].astype(np.float64)
    discs = [(40, 34), (40, 62)]
    image = sum(np.exp(-(((yy - r) ** 2 + (xx - c) ** 2) / (2 * 9.0 ** 2)) ** 2) for r, c in discs) * 1000 + 100
    image += np.random.default_rng(4).normal(0, 3, image.shape)
    params = SegmentParams(sigma=1.0, laplace_sigma=2.0, closing_radius=4, min_nucleus_area=50)
    crude = crude_mask(image, params.sigma)
    assert ndimage.label(crude)[1] == 1, "test setup: the crude mask should merge the two nuclei"
    assert ndimage.label(refine_mask(image, crude, params))[1] == 2
    # The cut comes from step (v): with an (almost) empty minima mask, closing and step (iii) keep them merged.
    assert ndimage.label(refine_mask(image, crude, dataclasses.replace(params, minima_percentile=1e-6)))[1] == 1
    labels = segment_nuclei(image, params).labels
    assert labels.max() == 2 and labels[40, 34] != labels[40, 62] and labels[40, 34] > 0 and labels[40, 62] > 0


def test_segmentation_rejects_noise_and_empty_fields():
    noise = np.random.default_rng(5).poisson(130.0, (128, 128)).astype(np.float32)
    seg = segment_nuclei(noise, SMALL)
    assert seg.labels.max() == 0
    assert seg.rejected and {why for *_, why in seg.rejected} <= {"dim", "too_small"}
    with pytest.raises(FieldError, match="empty field"):
        segment_nuclei(np.full((32, 32), 7.0), SMALL)
    with pytest.raises(InputError, match="closing_radius: expected >= 4"):
        SegmentParams(closing_radius=3)


def _stardist_images() -> Path:
    """The folder of stardist's bundled test images, found without importing stardist (no TensorFlow)."""
    spec = importlib.util.find_spec("stardist")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("stardist (test extra) not installed: it ships the real nucleus image used here")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "images"


def test_segmentation_on_real_nuclei_dsb2018():
    """A real Hoechst-like image (2018 Data Science Bowl, 512x512, 125 annotated nuclei) shipped in stardist, with
    its manual label mask as reference. Measured with these parameters: recall 0.74, precision 0.89 at IoU > 0.5
    (the misses are mostly touching nuclei kept merged, which the paper's refinement does not always split);
    99% of predicted centres lie in an annotated nucleus."""
    folder = _stardist_images()
    image, truth = tifffile.imread(folder / "img2d.tif"), tifffile.imread(folder / "mask2d.tif")
    params = SegmentParams(sigma=2.0, laplace_sigma=2.0, closing_radius=4, minima_percentile=30,
                           max_hole_area=400, min_nucleus_area=50)
    labels = segment_nuclei(image, params).labels
    matched, n_pred, n_true = iou_matches(labels, truth)
    assert n_true == 125
    assert matched / n_true >= 0.70 and matched / n_pred >= 0.85, (matched, n_pred, n_true)
    centres = np.rint(ndimage.center_of_mass(labels > 0, labels, np.arange(1, n_pred + 1))).astype(int)
    assert (truth[centres[:, 0], centres[:, 1]] > 0).mean() >= 0.95
