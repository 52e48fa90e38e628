"""Importing folders of per-cell crop files into a store."""
import json
import re

import numpy as np
import pandas as pd
import pytest
import skimage.io
import tifffile

from cytoself_jax.data.importers import CropImportError, import_crops
from cytoself_jax.data.store import open_store
from cytoself_jax.import_crops import main
from cytoself_jax.imaging.nucleus import crude_mask

CHANNELS = {"gfp": "protein", "dapi": "nucleus"}
RNG = np.random.default_rng(0)


def _write(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, image)
    elif path.suffix == ".png":
        skimage.io.imsave(path, image, check_contrast=False)
    else:
        tifffile.imwrite(path, image)


def _folder(root, ext=".tif", dtype=np.uint16, cells=None, size=(12, 10)):
    """root/<protein>/<fov>_<cell>_<channel><ext>; returns {(protein, fov, cell, channel): image}."""
    cells = cells or [("P1", "f1", "1"), ("P1", "f1", "2"), ("P1", "f2", "10"), ("P2", "f1", "1")]
    images = {}
    for protein, fov, cell in cells:
        for channel in CHANNELS:
            image = (RNG.random(size) * 200 + 1).astype(dtype)
            images[protein, fov, cell, channel] = image
            _write(root / protein / f"{fov}_{cell}_{channel}{ext}", image)
    return images


@pytest.mark.parametrize("ext, dtype, expected", [(".tif", np.uint16, np.uint16), (".png", np.uint8, np.uint8),
                                                  (".npy", np.float64, np.float32), (".tif", np.int16, np.float32)])
def test_import_formats_and_dtypes(tmp_path, ext, dtype, expected):
    images = _folder(tmp_path / "src", ext, dtype)
    store = import_crops(tmp_path / "src", tmp_path / "out", CHANNELS, progress=False)
    assert store.images.dtype == expected
    assert store.channels == ("protein", "nucleus") and store.image_shape == (12, 10, 2)
    # Natural order: f2's cell 10 after f1's cells 1 and 2.
    assert list(store.table["fov"]) == ["P1/f1", "P1/f1", "P1/f2", "P2/f1"]
    assert list(store.table["source"]) == ["P1/f1_1_gfp" + ext, "P1/f1_2_gfp" + ext, "P1/f2_10_gfp" + ext,
                                           "P2/f1_1_gfp" + ext]
    assert (store.table["family"] == "").all()
    for i, key in enumerate([("P1", "f1", "1"), ("P1", "f1", "2"), ("P1", "f2", "10"), ("P2", "f1", "1")]):
        np.testing.assert_array_equal(store.images[i, :, :, 0], images[(*key, "gfp")].astype(expected))
        np.testing.assert_array_equal(store.images[i, :, :, 1], images[(*key, "dapi")].astype(expected))


def test_mixed_integer_and_float_inputs_give_float32(tmp_path):
    _folder(tmp_path / "src", ".tif", np.uint8, cells=[("P1", "f1", "1")])
    _folder(tmp_path / "src", ".tif", np.float32, cells=[("P2", "f1", "1")])
    assert import_crops(tmp_path / "src", tmp_path / "out", CHANNELS, progress=False).images.dtype == np.float32


def test_protein_from_pattern_and_channel_order_and_ignored_channels(tmp_path):
    src = tmp_path / "src"
    gfp, rfp = RNG.random((8, 8)).astype(np.float32), RNG.random((8, 8)).astype(np.float32)
    _write(src / "ABC_3_7_gfp.npy", gfp)
    _write(src / "ABC_3_7_rfp.npy", rfp)
    _write(src / "ABC_3_7_bf.npy", rfp)         # a channel not asked for: ignored
    (src / "notes.txt").write_text("not a crop")  # not matching the pattern: ignored
    store = import_crops(src, tmp_path / "out", {"rfp": "fiducial", "gfp": "protein"},
                         pattern=r"(?P<protein>[^_]+)_(?P<fov>\d+)_(?P<cell>\d+)_(?P<channel>\w+)\.npy", progress=False)
    assert store.channels == ("fiducial", "protein") and len(store) == 1
    assert store.table.loc[0, "protein"] == "ABC" and store.table.loc[0, "fov"] == "ABC/3"
    np.testing.assert_array_equal(store.images[0, :, :, 0], rfp)
    np.testing.assert_array_equal(store.images[0, :, :, 1], gfp)


def test_families(tmp_path):
    _folder(tmp_path / "src")
    pd.DataFrame({"gene": ["P1", "P3"], "loc": ["nucleolus", "er"]}).to_csv(tmp_path / "fam.csv", index=False)
    with pytest.warns(UserWarning, match=r"1 protein\(s\) have no family"):
        store = import_crops(tmp_path / "src", tmp_path / "out", CHANNELS, families=tmp_path / "fam.csv",
                             family_protein_column="gene", family_column="loc", progress=False)
    assert list(store.table["family"]) == ["nucleolus"] * 3 + [""]
    with pytest.raises(ValueError, match=r"fam.csv: family: column missing \(set --families-column\)"):
        import_crops(tmp_path / "src", tmp_path / "out2", CHANNELS, families=tmp_path / "fam.csv",
                     family_protein_column="gene", progress=False)


def _expect_error(tmp_path, match, **kwargs):
    with pytest.raises(CropImportError, match=match) as info:
        import_crops(tmp_path / "src", tmp_path / "out", kwargs.pop("channels", CHANNELS), progress=False, **kwargs)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no temporary directory left behind


def test_error_missing_channel_file(tmp_path):
    _folder(tmp_path / "src")
    (tmp_path / "src" / "P1" / "f2_10_dapi.tif").unlink()
    _expect_error(tmp_path, r"P1/f2_10_gfp.tif: channel: the cell's 'dapi' file is missing")


def test_error_mixed_sizes(tmp_path):
    _folder(tmp_path / "src")
    _write(tmp_path / "src" / "P2" / "f1_1_dapi.tif", np.ones((12, 11), np.uint16))
    _expect_error(tmp_path, r"P2/f1_1_dapi.tif: shape: expected 12x10 like .*P1/f1_1_gfp.tif, found 12x11")


def test_error_unreadable_file(tmp_path):
    _folder(tmp_path / "src")
    (tmp_path / "src" / "P1" / "f1_2_gfp.tif").write_bytes(b"not a tiff")
    _expect_error(tmp_path, r"P1/f1_2_gfp.tif: file: unreadable")


def test_error_no_files_matched(tmp_path):
    _folder(tmp_path / "src")
    _expect_error(tmp_path, r"src: --pattern: no file name matches", pattern=r"(?P<fov>x)(?P<cell>y)(?P<channel>z)")
    _expect_error(tmp_path, r"--channel: no matched file has a channel in \['GFP'\]; file names give channels "
                            r"\['dapi', 'gfp'\]", channels={"GFP": "protein"})
    _expect_error(tmp_path, r"--pattern: expected named groups fov, cell and channel", pattern=r"(?P<fov>.*)")


def test_error_nan_pixels_name_the_file(tmp_path):
    _folder(tmp_path / "src", ".npy", np.float32)
    bad = RNG.random((12, 10)).astype(np.float32)
    bad[3, 4] = np.nan
    _write(tmp_path / "src" / "P1" / "f1_2_dapi.npy", bad)
    _expect_error(tmp_path, r"P1/f1_2_dapi.npy: pixels: expected finite values, found NaN")


def test_error_blank_protein_crop(tmp_path):
    _folder(tmp_path / "src", ".npy", np.float32)
    _write(tmp_path / "src" / "P2" / "f1_1_gfp.npy", np.zeros((12, 10), np.float32))
    _expect_error(tmp_path, r"P2/f1_1_gfp.npy: pixels: expected a protein image, found a constant \(blank\) crop")


def test_cli_one_line_error_and_refuses_overwrite(tmp_path, capsys):
    _folder(tmp_path / "src")
    args = [str(tmp_path / "src"), str(tmp_path / "out"), "--channel", "gfp=protein", "--channel", "dapi=nucleus",
            "--quiet"]
    assert main(args) == 0
    assert "4 crops of 12x10x2 (uint16)" in capsys.readouterr().out
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "already exists" in err and "\n" not in err
    assert main(args + ["--overwrite"]) == 0


def test_real_yeast_import(yeast_dir, tmp_path):
    """The exact one-line command in cytoself_jax/import_crops.py's docstring."""
    status = main([str(yeast_dir / "images"), str(tmp_path / "yeast"), "--channel", "gfp=protein",
                   "--channel", "rfp=fiducial",
                   "--pattern", r"(?P<protein>[^_]+)_(?P<fov>\d+)_rfp_(?P<cell>\d+)_(?P<channel>gfp|rfp)\.tif",
                   "--families", str(yeast_dir / "localization.csv"), "--quiet"])
    assert status == 0
    store = open_store(tmp_path / "yeast")
    assert len(store) == 1642 and store.image_shape == (64, 64, 2) and store.images.dtype == np.float32
    assert store.channels == ("protein", "fiducial")
    assert store.proteins == ("AAC1", "AAC3", "AAH1", "AAP1", "AAR2")
    assert store.table["protein"].value_counts().to_dict() == {"AAC3": 416, "AAC1": 366, "AAR2": 349, "AAP1": 308,
                                                               "AAH1": 203}
    assert store.table["fov"].nunique() == 20
    families = store.table.groupby("protein")["family"].first().to_dict()
    assert families == {"AAC1": "mitochondria", "AAC3": "mitochondria", "AAH1": "cytosol", "AAP1": "cytosol",
                        "AAR2": "cytosol"}
    # One crop checked against its source files.
    row = 100
    source = yeast_dir / "images" / store.table.loc[row, "source"]
    np.testing.assert_array_equal(store.images[row, :, :, 0], tifffile.imread(source))
    np.testing.assert_array_equal(store.images[row, :, :, 1],
                                  tifffile.imread(str(source).replace("_gfp.tif", "_rfp.tif")))


# ------------------------------------------------------------------------------------------------ layouts (issue 13)
def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _disk_cell(size=24, radius=6.0, centre=(12, 11)):
    """A nucleus image that is a bright disk on a dim background (its mask is the disk) and a protein image."""
    yy, xx = np.mgrid[:size, :size]
    disk = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2
    nucleus = (100 + 900 * disk + RNG.integers(0, 5, (size, size))).astype(np.uint16)
    protein = (RNG.random((size, size)) * 500 + 10).astype(np.uint16)
    return protein, nucleus, disk


def _brute_signed_distance(mask):
    """Slow reference: for each pixel the Euclidean distance to the nearest pixel of the other kind, + inside."""
    inside, outside = np.argwhere(mask), np.argwhere(~mask)
    out = np.empty(mask.shape)
    for r, c in np.ndindex(mask.shape):
        other = outside if mask[r, c] else inside
        d = np.sqrt(((other - (r, c)) ** 2).sum(1)).min()
        out[r, c] = d if mask[r, c] else -d
    return out


def test_folder_per_field_symlinks_unmapped_tokens_and_derived_distance(tmp_path):
    """<protein>/<field>/cell<N>_<channel>.tif, one protein folder reached through a symlink, a 'mito' channel not
    mapped (counted in a warning), and the distance channel derived from the nucleus channel."""
    src, elsewhere = tmp_path / "src", tmp_path / "elsewhere"
    masks = {}
    for root, protein in ((src, "P1"), (elsewhere, "P2")):
        for field in ("fieldA", "fieldB"):
            for cell in (1, 2):
                gfp, dapi, disk = _disk_cell(centre=(10 + cell, 11 + (field == "fieldB")))
                masks[protein, field, str(cell)] = (gfp, dapi, disk)
                _write(root / protein / field / f"cell{cell}_gfp.tif", gfp)
                _write(root / protein / field / f"cell{cell}_dapi.tif", dapi)
                _write(root / protein / field / f"cell{cell}_mito.tif", gfp)
    (src / "P2").symlink_to(elsewhere / "P2", target_is_directory=True)
    (src / "P3").symlink_to(src, target_is_directory=True)  # a loop: each real folder is visited once
    pattern = r"(?P<protein>P\d)/(?P<fov>field\w)/cell(?P<cell>\d+)_(?P<channel>\w+)\.tif"
    with pytest.warns(UserWarning, match=r"8 matched files have a channel token with no --channel mapping, left "
                                         r"out: 'mito' \(8 files\)"):
        store = import_crops(src, tmp_path / "out", CHANNELS, pattern=pattern, derive_distance=True, progress=False)
    assert store.channels == ("protein", "nucleus", "distance") and store.images.dtype == np.float32
    assert list(store.table["fov"]) == ["P1/fieldA"] * 2 + ["P1/fieldB"] * 2 + ["P2/fieldA"] * 2 + ["P2/fieldB"] * 2
    assert store.table.loc[4, "source"] == "P2/fieldA/cell1_gfp.tif"
    meta = json.loads((store.path / "store.json").read_text())
    assert meta["derived"]["distance"]["from"] == "nucleus" and meta["derived"]["distance"]["crops_left_out"] == 0
    for row, key in enumerate(sorted(masks)):
        gfp, dapi, disk = masks[key]
        np.testing.assert_array_equal(store.images[row, :, :, 0], gfp)
        np.testing.assert_array_equal(store.images[row, :, :, 1], dapi)
        # The mask (Otsu threshold of a Gaussian low-pass: prepare's first step for crops) finds the disk.
        mask = crude_mask(dapi.astype(np.float64), 1.0, "otsu")
        assert (mask & disk).sum() / (mask | disk).sum() > 0.9
        np.testing.assert_allclose(store.images[row, :, :, 2], _brute_signed_distance(mask), rtol=1e-6)


def test_derived_distance_leaves_out_crops_without_a_nucleus(tmp_path):
    src = tmp_path / "src"
    for cell in range(3):
        gfp, dapi, _ = _disk_cell()
        if cell == 1:
            dapi = np.full_like(dapi, 100)  # no nucleus: a constant channel gives no mask
        _write(src / "P1" / f"f1_{cell}_gfp.tif", gfp)
        _write(src / "P1" / f"f1_{cell}_dapi.tif", dapi)
    with pytest.warns(UserWarning, match=r"1 of 3 crops have no usable nucleus mask and are left out, e.g. .*f1_1_dapi"):
        store = import_crops(src, tmp_path / "out", CHANNELS, derive_distance=True, progress=False)
    assert len(store) == 2 and list(store.table["source"]) == ["P1/f1_0_gfp.tif", "P1/f1_2_gfp.tif"]
    assert json.loads((store.path / "store.json").read_text())["derived"]["distance"]["crops_left_out"] == 1
    with pytest.raises(CropImportError, match=r"--derive-distance: expected a channel mapped to 'nucleus'"):
        import_crops(src, tmp_path / "out2", {"gfp": "protein", "dapi": "fiducial"}, derive_distance=True,
                     progress=False)


def test_table_of_files(tmp_path):
    images = _folder(tmp_path / "src", ".npy", np.float32)
    rows = [{"path": f"{p}/{f}_{c}_{ch}.npy", "protein": p, "fov": f, "cell": c, "channel": ch}
            for (p, f, c, ch) in images]
    pd.DataFrame(rows).to_csv(tmp_path / "files.csv", index=False)
    store = import_crops(tmp_path / "src", tmp_path / "out", CHANNELS, table=tmp_path / "files.csv", progress=False)
    assert list(store.table["fov"]) == ["P1/f1", "P1/f1", "P1/f2", "P2/f1"]
    np.testing.assert_array_equal(store.images[2, :, :, 1], images["P1", "f2", "10", "dapi"])
    pd.DataFrame(rows).drop(columns="cell").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(CropImportError, match=r"bad.csv: cell: column missing; expected columns"):
        import_crops(tmp_path / "src", tmp_path / "out2", CHANNELS, table=tmp_path / "bad.csv", progress=False)


def test_families_column_convention(tmp_path):
    _folder(tmp_path / "src")
    pd.DataFrame({"protein": ["P1", "P2"], "family": ["er", "golgi"]}).to_csv(tmp_path / "f.csv", index=False)
    store = import_crops(tmp_path / "src", tmp_path / "a", CHANNELS, families=tmp_path / "f.csv", progress=False)
    assert list(store.table["family"]) == ["er"] * 3 + ["golgi"]
    pd.DataFrame({"protein": ["P1", "P2"], "localization": ["er", "golgi"]}).to_csv(tmp_path / "l.csv", index=False)
    with pytest.warns(UserWarning, match=r"l.csv: reading families from column 'localization' \(the convention is "
                                         r"'family'\)"):
        store = import_crops(tmp_path / "src", tmp_path / "b", CHANNELS, families=tmp_path / "l.csv", progress=False)
    assert list(store.table["family"]) == ["er"] * 3 + ["golgi"]


def test_float64_files_convert_with_a_note(tmp_path):
    images = _folder(tmp_path / "src", ".npy", np.float64)
    with pytest.warns(UserWarning, match=r"dtype: converting float64 pixels to float32"):
        store = import_crops(tmp_path / "src", tmp_path / "out", CHANNELS, progress=False)
    np.testing.assert_array_equal(store.images[0, :, :, 0], images["P1", "f1", "1", "gfp"].astype(np.float32))


# ------------------------------------------------------------------------------------- --overwrite (issue 12)
def test_overwrite_never_deletes_the_source_or_a_folder_that_is_not_a_store(tmp_path, capsys):
    src = tmp_path / "data" / "src"
    _folder(src)
    mine = tmp_path / "my-images"
    mine.mkdir()
    (mine / "a.tif").write_bytes(b"precious")
    before, mine_before = _snapshot(tmp_path / "data"), _snapshot(mine)
    channel_args = ["--channel", "gfp=protein", "--channel", "dapi=nucleus", "--quiet", "--overwrite"]
    for out, message in ((src, "is the source folder"), (src.parent, "is the source folder .* or contains it"),
                         (mine, "exists and is not a crop store .* overwrite never replaces it")):
        assert main([str(src), str(out), *channel_args]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and re.search(message, err), err
    assert _snapshot(tmp_path / "data") == before and _snapshot(mine) == mine_before
    # A crop store is what --overwrite replaces.
    assert main([str(src), str(tmp_path / "store"), *channel_args]) == 0
    assert main([str(src), str(tmp_path / "store"), *channel_args]) == 0
    assert len(open_store(tmp_path / "store")) == 4 and _snapshot(tmp_path / "data") == before


def test_make_synthetic_overwrite_only_replaces_a_store(tmp_path, capsys):
    from cytoself_jax.make_synthetic import main as synthetic_main

    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "table.csv").write_text("keep me")
    assert synthetic_main([str(mine), "--proteins", "2", "--crops-per-protein", "2", "--fields-per-protein", "1",
                           "--size", "32", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is not a crop store" in err
    assert (mine / "table.csv").read_text() == "keep me" and len(list(mine.iterdir())) == 1
