"""prepare end to end: a folder of synthetic fields (2D, a 3D stack, NPY, bad files) -> crop store + QC report."""
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage

from cytoself_jax.data.store import open_store
from cytoself_jax.data.synthetic import draw_field
from cytoself_jax.prepare import run as prepare_run
from cytoself_jax.prepare.__main__ import main
from cytoself_jax.prepare.io import fields_from_pattern
from cytoself_jax.prepare.run import PrepareError, PrepareSettings, prepare, work_file
from cytoself_jax.prepare.scale import ScaleSettings
from cytoself_jax.prepare.segment import SegmentParams

CROP = 48
# Sizes tuned to the synthetic nuclei (~22 px across) at the fields' own scale: rescaling is tested in
# test_prepare_scale.py.
SETTINGS = PrepareSettings(protein_channel=0, nucleus_channel=1, crop_size=CROP,
                           segment=SegmentParams(sigma=2.0, laplace_sigma=2.0, closing_radius=4, min_nucleus_area=50),
                           scale=ScaleSettings(rescale=False))
GOOD = ("P1/f0", "P1/f1", "P2/stack", "P2/npy", "P3/f0")


def _as_stack(fov, depth: int = 3) -> np.ndarray:
    """(Z, C, Y, X) stack whose max over Z is the field: slice k keeps the field only in the Voronoi cells of the
    nuclei with label % depth == k (the field's minimum elsewhere), so a wrong projection loses 2/3 of nuclei."""
    _, (rows, cols) = ndimage.distance_transform_edt(fov.nucleus_labels == 0, return_indices=True)
    owner = fov.nucleus_labels[rows, cols] % depth
    field = np.stack([fov.protein, fov.nucleus])
    return np.stack([np.where(owner == k, field, field.min(axis=(1, 2), keepdims=True)) for k in range(depth)])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """INPUT folder and the true FieldOfView of every good field (fov id -> FieldOfView)."""
    root = tmp_path_factory.mktemp("fields")
    truth = {}
    for k, fov_id in enumerate(GOOD):
        truth[fov_id] = draw_field(np.random.default_rng(10 + k), (256, 256), 8, family="mitochondria")
    for name in ("P1", "P2", "P3"):
        (root / name).mkdir()
    as_cyx = {f: np.stack([truth[f].protein, truth[f].nucleus]).astype(np.uint16) for f in GOOD}
    tifffile.imwrite(root / "P1/f0.tif", as_cyx["P1/f0"])
    tifffile.imwrite(root / "P1/f1.tif", as_cyx["P1/f1"])
    tifffile.imwrite(root / "P2/stack.ome.tif", _as_stack(truth["P2/stack"]).astype(np.uint16),
                     metadata={"axes": "ZCYX"})
    np.save(root / "P2/npy.npy", np.stack([truth["P2/npy"].protein, truth["P2/npy"].nucleus]))
    tifffile.imwrite(root / "P3/f0.tif", as_cyx["P3/f0"])
    # Bad inputs: truncated TIFF, a single-channel field (no channel 1), a field of pure camera noise, a stray file.
    (root / "P3/truncated.tif").write_bytes((root / "P1/f0.tif").read_bytes()[:4000])
    tifffile.imwrite(root / "P3/onechannel.tif", as_cyx["P3/f0"][:1])
    noise = np.random.default_rng(0).poisson(130.0, (2, 256, 256)).astype(np.uint16)
    tifffile.imwrite(root / "P3/empty.tif", noise)
    tifffile.imwrite(root / "stray.tif", noise)
    return root, truth


@pytest.fixture(scope="module")
def prepared(dataset, tmp_path_factory):
    """One run over the whole folder in a pool of 2 worker processes."""
    root, _ = dataset
    out = tmp_path_factory.mktemp("out")
    specs, problems = fields_from_pattern(root)
    families = {"P1": "mitochondria", "P2": "mitochondria"}
    result = prepare(specs, out, SETTINGS, families=families, problems=problems, workers=2, montage_crops=8,
                     progress=False)
    return out, result, specs


def test_store_has_the_channels_and_table(prepared):
    out, result, _ = prepared
    store = open_store(out / "store")
    assert store.channels == ("protein", "nucleus", "distance")
    assert store.image_shape == (CROP, CROP, 3) and store.images.dtype == np.float32
    assert len(store) == len(result.store) == sum(s.crops for s in result.summaries) > 20
    assert set(store.table["fov"]) == set(GOOD)
    assert set(store.table["protein"]) == {"P1", "P2", "P3"}
    assert set(store.table.loc[store.table.protein == "P1", "family"]) == {"mitochondria"}
    assert set(store.table.loc[store.table.protein == "P3", "family"]) == {""}
    assert store.table.loc[store.table.fov == "P2/stack", "source"].iloc[0].endswith("P2/stack.ome.tif")


def test_crops_are_centred_on_true_nuclei_and_match_the_field(prepared, dataset):
    out, _, _ = prepared
    _, truth = dataset
    store = open_store(out / "store")
    half = CROP // 2
    for fov_id, fov in truth.items():
        rows = np.flatnonzero(store.table["fov"].to_numpy() == fov_id)
        centres = store.table.loc[rows, ["row", "col"]].to_numpy(dtype=float)
        # Every nucleus whose crop fits inside the field is cropped (recall), each crop sits on a true nucleus.
        fits = ((fov.centres >= half + 2) & (fov.centres <= 256 - half - 2)).all(axis=1)
        dist = np.linalg.norm(centres[:, None] - fov.centres[None], axis=-1)
        assert (dist.min(axis=1) <= 3.0).all(), f"{fov_id}: crop centre far from every nucleus"
        assert (dist[:, fits].min(axis=0) <= 3.0).all(), f"{fov_id}: a nucleus with room for a crop was missed"
        # Edge crops are dropped: every crop lies inside the field.
        assert ((centres >= half) & (centres + CROP - half <= 256)).all()
        for i, (r, c) in zip(rows, centres.astype(int)):
            crop = store.images[i]
            np.testing.assert_allclose(crop[..., 1], fov.nucleus[r - half:r + half, c - half:c + half], atol=1.0)  # uint16 files
            inside = fov.nucleus_labels[r - half:r + half, c - half:c + half] > 0
            distance = crop[..., 2]
            assert distance[half, half] > 0  # the centre is inside its nucleus
            assert ((distance > 0) == inside).mean() >= 0.95  # positive inside the true mask, negative outside


def test_qc_reports_bad_fields_and_rejections(prepared):
    out, result, _ = prepared
    qc = out / "qc"
    fields = pd.read_csv(qc / "fields.csv", keep_default_na=False).set_index("fov")
    assert fields.loc["P3/truncated", "status"] == "error"
    assert "truncated.tif: file: unreadable TIF" in fields.loc["P3/truncated", "error"]
    assert "nucleus channel: index 1 but the field has 1 channel" in fields.loc["P3/onechannel", "error"]
    assert fields.loc["P3/empty", "status"] == "no_nuclei" and fields.loc["P3/empty", "crops"] == 0
    assert (fields.loc[list(GOOD), "status"] == "ok").all()
    assert fields.loc[list(GOOD), "rejected_edge"].sum() > 0  # 48 px crops in 256 px fields: some must go
    errors = pd.read_csv(qc / "errors.csv", keep_default_na=False)
    assert {Path(s).name for s in errors["source"]} == {"truncated.tif", "onechannel.tif", "stray.tif"}
    rejected = pd.read_csv(qc / "rejected.csv")
    assert (rejected.groupby("fov").size() >= 1).all() and set(rejected["reason"]) <= {"edge", "too_small", "dim"}
    assert len(rejected[rejected.reason == "edge"]) == fields["rejected_edge"].sum()
    proteins = pd.read_csv(qc / "proteins.csv").set_index("protein")
    assert proteins["crops"].sum() == len(result.store) and proteins.loc["P3", "fields"] == 4
    montages = sorted(p.name for p in (qc / "montage").glob("*.png"))
    assert montages == ["P1.png", "P2.png", "P3.png"]


def test_the_3d_stack_is_max_projected(prepared, dataset):
    _, result, _ = prepared
    _, truth = dataset
    summary = {s.fov_id: s for s in result.summaries}["P2/stack"]
    assert summary.nuclei == len(truth["P2/stack"].centres)  # all 8 nuclei, spread over 3 z slices


def test_resume_skips_finished_fields_and_survives_an_interrupt(dataset, tmp_path, monkeypatch):
    root, _ = dataset
    specs = [s for s in fields_from_pattern(root)[0] if s.fov_id in GOOD]
    calls = []
    compute = prepare_run.compute_field

    def interrupted(spec, settings):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(spec.fov_id)
        return compute(spec, settings)

    monkeypatch.setattr(prepare_run, "compute_field", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(specs, tmp_path, SETTINGS, workers=1, progress=False)
    finished = sorted(tmp_path.joinpath("work").glob("*.npz"))
    assert len(finished) == 3 and not (tmp_path / "store").exists()
    mtimes = {p: p.stat().st_mtime_ns for p in finished}
    monkeypatch.setattr(prepare_run, "compute_field", compute)
    result = prepare(specs, tmp_path, SETTINGS, workers=1, montage_crops=0, progress=False)
    assert result.counts["resumed"] == 3 and result.counts["ok"] == len(GOOD)
    assert {p: p.stat().st_mtime_ns for p in finished} == mtimes  # finished fields were not redone
    again = prepare(specs, tmp_path, SETTINGS, workers=1, montage_crops=0, progress=False)
    assert again.counts["resumed"] == len(GOOD)
    np.testing.assert_array_equal(np.asarray(again.store.images), np.asarray(result.store.images))


def test_results_match_the_pool_run_and_settings_are_guarded(prepared, tmp_path):
    out, result, specs = prepared
    good = [s for s in specs if s.fov_id in GOOD]
    serial = prepare(good, tmp_path, SETTINGS, workers=1, montage_crops=0, progress=False)
    np.testing.assert_array_equal(np.asarray(serial.store.images), np.asarray(result.store.images))
    with pytest.raises(PrepareError, match=r"settings.json: settings: .*crop_size differ"):
        prepare(good, tmp_path, PrepareSettings(0, 1, crop_size=64, segment=SETTINGS.segment, scale=SETTINGS.scale),
                progress=False)


def test_no_crop_at_all_fails_in_one_line_and_keeps_the_old_store(prepared, tmp_path):
    _, _, specs = prepared
    good = [s for s in specs if s.fov_id == "P1/f0"]
    bad = [s for s in specs if s.fov_id in ("P3/truncated", "P3/empty")]
    first = prepare(good, tmp_path, SETTINGS, montage_crops=0, progress=False)
    with pytest.raises(PrepareError, match=r"no field yielded a crop \(2 fields: 1 errors, 1 no nucleus found\)") as err:
        prepare(bad, tmp_path, SETTINGS, montage_crops=0, progress=False)
    assert "\n" not in str(err.value)
    assert len(open_store(tmp_path / "store")) == len(first.store)  # what was written before is still there
    assert pd.read_csv(tmp_path / "qc/fields.csv")["status"].tolist() == ["no_nuclei", "error"]


def test_command_line(dataset, tmp_path, capsys):
    root, _ = dataset
    families = tmp_path / "families.csv"
    families.write_text("protein,family\nP1,mitochondria\n")
    table = tmp_path / "fields.csv"
    table.write_text("path,protein,fov\nP1/f0.tif,P1,a\nP3/truncated.tif,P3,b\n")
    args = [str(root), str(tmp_path / "out"), "--protein-channel", "0", "--nucleus-channel", "1", "--crop-size",
            str(CROP), "--sigma", "2", "--laplace-sigma", "2", "--closing-radius", "4", "--min-nucleus-area", "50",
            "--workers", "1", "--montage-crops", "4", "--no-rescale"]
    assert main(args + ["--table", str(table), "--families", str(families)]) == 0
    captured = capsys.readouterr()
    assert "crops of 1 proteins" in captured.out and "1 errors" in captured.out
    assert "warning: " in captured.err and "truncated.tif" in captured.err
    store = open_store(tmp_path / "out/store")
    assert set(store.table["fov"]) == {"P1/a"} and set(store.table["family"]) == {"mitochondria"}
    assert main(args + ["--pattern", r"(?P<protein>\w+)"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --pattern: expected named groups")
    assert main(args + ["--closing-radius", "2"]) == 2
    assert "closing_radius: expected >= 4" in capsys.readouterr().err
    assert os.path.isdir(tmp_path / "out/qc")
