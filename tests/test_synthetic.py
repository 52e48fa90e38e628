"""Tests of the synthetic cell generator and the synthetic crop store."""
import chex
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from cytoself_jax.data import synthetic as S
from cytoself_jax.data.store import open_store
from cytoself_jax.make_synthetic import main as make_synthetic_main

SMALL = dict(proteins=3, crops_per_protein=6, fields_per_protein=3, size=32, progress=False)


def _protein(family: str, k: int = 0) -> S.ProteinSpec:
    return S.draw_protein(np.random.default_rng([101, k]), family)


# ----------------------------------------------------------------------------------------------- geometry
def test_outline_polar_matches_direct_trig_formula():
    outline = S.draw_cell(np.random.default_rng(5), (40.0, 37.0), 20.0).outline
    rows, cols = np.mgrid[0:80, 0:80].astype(np.float64)
    rho, dist = outline.polar(rows, cols)
    # Slow reference: explicit angle and cosines.
    dy, dx = rows - outline.centre[0], cols - outline.centre[1]
    u = dx * np.cos(outline.angle) + dy * np.sin(outline.angle)
    v = -dx * np.sin(outline.angle) + dy * np.cos(outline.angle)
    theta = np.arctan2(v, u)
    m = 1 + sum(a * np.cos(k * (theta - ph)) for k, (a, ph) in enumerate(zip(outline.amplitudes, outline.phases), 2))
    expected = np.hypot(u / outline.aspect, v * outline.aspect) / (outline.radius * m)
    chex.assert_trees_all_close(rho, expected, rtol=1e-10, atol=1e-12)
    chex.assert_trees_all_close(dist, np.hypot(dy, dx), rtol=1e-12)
    # boundary() is where polar() says rho == 1.
    angles = np.linspace(0, 2 * np.pi, 37)
    r = outline.boundary(angles)
    rho_b, _ = outline.polar(outline.centre[0] + r * np.sin(angles), outline.centre[1] + r * np.cos(angles))
    chex.assert_trees_all_close(rho_b, np.ones_like(rho_b), atol=1e-10)


def test_nucleus_inside_its_cell():
    for k in range(30):
        cell = S.draw_cell(np.random.default_rng(k), (50.0, 50.0), 20.0)
        angles = np.linspace(0, 2 * np.pi, 90, endpoint=False)
        r = cell.nucleus.boundary(angles)
        row, col = cell.nucleus.centre
        rho, _ = cell.outline.polar(row + r * np.sin(angles), col + r * np.cos(angles))
        assert rho.max() < 1.0, f"cell {k}: nucleus pokes out of the cell (rho {rho.max():.2f})"


# ----------------------------------------------------------------------------------------------- crops
def test_draw_crop_shapes_and_determinism():
    protein = _protein("vesicles")
    a = S.draw_crop(np.random.default_rng(7), protein, 40)
    b = S.draw_crop(np.random.default_rng(7), protein, 40)
    c = S.draw_crop(np.random.default_rng(8), protein, 40)
    chex.assert_shape([a.protein, a.nucleus, a.nucleus_labels, a.cell_labels], (40, 40))
    chex.assert_type([a.protein, a.nucleus], np.float32)
    for name in ("protein", "nucleus", "nucleus_labels", "cell_labels", "centres"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.protein, c.protein)
    channels = S.crop_channels(a)
    chex.assert_shape(channels, (40, 40, 3))
    chex.assert_type(channels, np.float32)
    assert np.isfinite(channels).all()


def test_distance_channel_positive_exactly_inside_nuclei():
    for k, family in enumerate(S.FAMILY_NAMES):
        crop = S.draw_crop(np.random.default_rng(k), _protein(family), 48)
        distance = S.crop_channels(crop)[..., 2]
        nuclei = crop.nucleus_labels > 0
        assert nuclei[24 - 3:24 + 3, 24 - 3:24 + 3].all(), "the crop is centred on a nucleus"
        np.testing.assert_array_equal(distance > 0, nuclei)
        assert distance.min() <= -1 and (distance[~nuclei] <= -1).all()
        # The stain is bright where the distance is positive.
        assert crop.nucleus[nuclei].mean() > 3 * (crop.nucleus[~nuclei].mean() - S.CAMERA_OFFSET) + S.CAMERA_OFFSET


def _pattern_stats(crop: S.FieldOfView) -> dict:
    """Statistics of the protein channel relative to the central cell (label 1)."""
    p = crop.protein - S.CAMERA_OFFSET
    cell, nuc = crop.cell_labels == 1, crop.nucleus_labels == 1
    cyto = cell & ~nuc
    depth = ndimage.distance_transform_edt(cell)
    outside_nucleus = ndimage.distance_transform_edt(~nuc)
    smooth = np.where(cell, ndimage.gaussian_filter(p, 1.0), -np.inf)
    brightest = np.unravel_index(np.argmax(smooth), p.shape)
    top_r, top_c = np.nonzero(smooth >= np.percentile(smooth[cell], 97))
    nuc_radius = np.sqrt(nuc.sum() / np.pi)
    core = nuc & (ndimage.distance_transform_edt(nuc) > 1.5)
    rim, interior = cell & (depth <= 2), cyto & (depth > 4)
    low, high = np.median(smooth[cell]), smooth[cell].max()
    peaks = (smooth == ndimage.maximum_filter(smooth, 3)) & cell & (smooth > low + 0.3 * (high - low))
    return {
        "nucleus/cytoplasm": p[nuc].mean() / p[cyto].mean(),
        "rim/interior": p[rim].mean() / p[interior].mean(),
        "bright interior/rim": np.percentile(smooth[interior], 95) / smooth[rim].mean(),
        "envelope/interior": p[cyto & (outside_nucleus <= 3)].mean() / p[interior].mean(),
        "correlation with stain in nucleus": np.corrcoef(p[core], crop.nucleus[core])[0, 1],
        "max in nucleus": bool(nuc[brightest]),
        "bright peaks": int(peaks.sum()),
        "max distance from nucleus": outside_nucleus[brightest] / nuc_radius,
        "bright pixels off-centre": np.hypot(top_r.mean() - crop.centres[0, 0],
                                             top_c.mean() - crop.centres[0, 1]) / nuc_radius,
    }


FAMILY_CHECKS = {  # family -> (statistic, comparison, threshold), each must hold on every crop drawn
    "nucleus": [("nucleus/cytoplasm", ">", 2.0), ("max in nucleus", "==", True)],
    "nucleolus": [("max in nucleus", "==", True), ("nucleus/cytoplasm", ">", 2.0),
                  ("correlation with stain in nucleus", "<", 0.0)],  # nucleoli are DNA-poor
    "cytosol": [("nucleus/cytoplasm", "<", 0.8), ("max in nucleus", "==", False)],
    "vesicles": [("nucleus/cytoplasm", "<", 0.8), ("max in nucleus", "==", False), ("bright peaks", ">", 3)],
    "mitochondria": [("nucleus/cytoplasm", "<", 0.9), ("max in nucleus", "==", False)],
    "membrane": [("rim/interior", ">", 1.5), ("max in nucleus", "==", False)],
    "er": [("envelope/interior", ">", 1.15), ("max distance from nucleus", "<", 0.35), ("max in nucleus", "==", False)],
    "golgi": [("bright pixels off-centre", ">", 0.85), ("max distance from nucleus", "<", 0.7),
              ("max in nucleus", "==", False)],
    "nuclear_speckles": [("max in nucleus", "==", True), ("nucleus/cytoplasm", ">", 2.0)],
    "centrosome": [("bright pixels off-centre", ">", 0.9), ("max distance from nucleus", "<", 0.6),
                   ("max in nucleus", "==", False), ("bright peaks", "<", 3)],
    "actin": [("rim/interior", ">", 1.0), ("bright interior/rim", ">", 0.7), ("max in nucleus", "==", False)],
}


@pytest.mark.parametrize("family", S.FAMILY_NAMES)
def test_protein_pattern_matches_family(family):
    assert set(FAMILY_CHECKS) == set(S.FAMILY_NAMES)
    ops = {">": np.greater, "<": np.less, "==": np.equal}
    for k in range(8):
        stats = _pattern_stats(S.draw_crop(np.random.default_rng([2, k]), _protein(family, k), 64))
        for name, op, threshold in FAMILY_CHECKS[family]:
            assert ops[op](stats[name], threshold), f"{family} crop {k}: {name} = {stats[name]} not {op} {threshold}"


def test_unknown_family_is_a_clear_error():
    with pytest.raises(S.SyntheticError, match="family: expected one of nucleus, nucleolus"):
        S.draw_protein(np.random.default_rng(0), "lysosome")


# ----------------------------------------------------------------------------------------------- fields of view
def test_draw_field_centres_are_label_centroids():
    fov = S.draw_field(np.random.default_rng(3), (160, 200), 6, family="mitochondria", cell_radius=18.0)
    chex.assert_shape([fov.protein, fov.nucleus, fov.nucleus_labels, fov.cell_labels], (160, 200))
    chex.assert_shape(fov.centres, (6, 2))
    assert fov.nucleus_labels.dtype == np.int32
    assert set(np.unique(fov.nucleus_labels)) == set(range(7))
    centroids = np.array(ndimage.center_of_mass(np.ones_like(fov.nucleus_labels), fov.nucleus_labels, range(1, 7)))
    chex.assert_trees_all_close(centroids, fov.centres, atol=0.5)
    # Nuclei are whole: none touches the field edge; every nucleus lies inside its own cell.
    edge = np.concatenate([fov.nucleus_labels[[0, -1]].ravel(), fov.nucleus_labels[:, [0, -1]].ravel()])
    assert (edge == 0).all()
    inside = fov.nucleus_labels > 0
    np.testing.assert_array_equal(fov.cell_labels[inside], fov.nucleus_labels[inside])


def test_draw_field_too_many_cells_is_a_clear_error():
    with pytest.raises(S.SyntheticError, match="n_cells: only .* fit in a 64x64 field, asked for 40"):
        S.draw_field(np.random.default_rng(0), (64, 64), 40, family="er", cell_radius=15.0)


# ----------------------------------------------------------------------------------------------- proteins
def test_default_proteins_cover_every_family_twice_with_neutral_names():
    proteins = S.make_proteins(40, seed=0)
    families = [p.family for p in proteins]
    assert len(S.FAMILY_NAMES) >= 8
    for family in S.FAMILY_NAMES:
        assert families.count(family) >= 2, family
    names = [p.name for p in proteins]
    assert names[:2] == ["SYN001", "SYN002"] and len(set(names)) == 40
    assert not any(f.split("_")[0] in n.lower() for n in names for f in S.FAMILY_NAMES)
    # Proteins of a family differ in their parameters, and depend only on (seed, index).
    assert proteins[0].params != proteins[len(S.FAMILY_NAMES)].params
    assert S.make_proteins(5, seed=0) == proteins[:5]
    assert S.make_proteins(5, seed=1) != proteins[:5]


# ----------------------------------------------------------------------------------------------- the store
def test_store_table_shapes_and_determinism(tmp_path):
    store = S.write_synthetic_store(tmp_path / "a", seed=4, **SMALL)
    again = S.write_synthetic_store(tmp_path / "b", seed=4, **SMALL)
    other = S.write_synthetic_store(tmp_path / "c", seed=5, **SMALL)
    opened = open_store(tmp_path / "a")
    assert opened.channels == ("protein", "nucleus", "distance")
    chex.assert_shape(opened.images, (18, 32, 32, 3))
    assert opened.images.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(store.images), np.asarray(again.images))
    assert not np.array_equal(np.asarray(store.images), np.asarray(other.images))
    table = opened.table
    assert list(table["protein"][:7]) == ["SYN001"] * 6 + ["SYN002"]
    assert list(table["fov"][:6]) == ["SYN001/1"] * 2 + ["SYN001/2"] * 2 + ["SYN001/3"] * 2
    assert list(table["family"][::6]) == list(S.FAMILY_NAMES[:3])
    assert set(table["source"]) == {"synthetic seed=4"}
    assert opened.proteins == ("SYN001", "SYN002", "SYN003")
    # A crop written to the store is the crop drawn on its own from its own generator.
    crop = S.crop_channels(S.draw_crop(S.crop_rng(4, 1, 3), S.make_proteins(2, 4)[1], 32,
                                       S.draw_acquisition(S.field_rng(4, 1, 1))))
    np.testing.assert_array_equal(np.asarray(opened.images[6 + 3]), crop)


def test_fields_carry_a_batch_effect():
    # The per-crop background level varies more between fields than within one.
    protein = _protein("cytosol")
    crops = S.draw_protein_crops(protein, 0, 0, 40, crops_per_protein=40, fields_per_protein=4, size=32, seed=0)
    background = np.percentile(crops[..., 0].reshape(40, -1), 5, axis=1).reshape(4, 10)
    assert background.mean(axis=1).std() > 2 * background.std(axis=1).mean() / np.sqrt(10)


def test_workers_give_the_same_store(tmp_path):
    one = S.write_synthetic_store(tmp_path / "one", seed=2, **SMALL)
    two = S.write_synthetic_store(tmp_path / "two", seed=2, workers=2, **SMALL)
    np.testing.assert_array_equal(np.asarray(one.images), np.asarray(two.images))


def test_float16_store_is_close_to_float32(tmp_path):
    full = S.write_synthetic_store(tmp_path / "f32", seed=1, **SMALL)
    half = S.write_synthetic_store(tmp_path / "f16", seed=1, dtype="float16", **SMALL)
    assert half.images.dtype == np.float16
    a, b = np.asarray(full.images, np.float64), np.asarray(half.images, np.float64)
    assert a[..., :2].max() < 20000  # far from float16's 65504
    # Rounding is far below the shot noise (sqrt of the counts above the camera offset).
    shot = np.sqrt(np.maximum(a[..., :2] - S.CAMERA_OFFSET, 1.0))
    assert (np.abs(a[..., :2] - b[..., :2]) < 0.1 * shot + 0.1).all()
    chex.assert_trees_all_close(b[..., 2], a[..., 2], atol=0.05)


@pytest.mark.parametrize("kwargs, message", [
    (dict(proteins=0), "proteins: expected an integer >= 1, got 0"),
    (dict(crops_per_protein=2, fields_per_protein=3), "fields_per_protein: expected at most crops_per_protein"),
    (dict(size=8), "size: expected an integer >= 16"),
    (dict(dtype="uint8"), "dtype: expected 'float32' or 'float16'"),
])
def test_bad_arguments_are_clear_errors(tmp_path, kwargs, message):
    with pytest.raises(S.SyntheticError, match=message):
        S.write_synthetic_store(tmp_path / "x", **{**SMALL, **kwargs})
    assert not (tmp_path / "x").exists()


def test_cli_writes_store_and_montage(tmp_path, capsys):
    out, png = tmp_path / "store", tmp_path / "montage.png"
    rc = make_synthetic_main([str(out), "--proteins", "4", "--crops-per-protein", "4", "--fields-per-protein", "2",
                              "--size", "32", "--seed", "3", "--montage", str(png)])
    assert rc == 0
    store = open_store(out)
    assert len(store) == 16 and store.image_shape == (32, 32, 3)
    assert set(store.table["source"]) == {"synthetic seed=3"}
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[0] > 100
    # An existing store is refused with a one-line error and exit code 2, not a traceback.
    assert make_synthetic_main([str(out), "--proteins", "4"]) == 2
    assert "already exists" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- learnability
def _profile_features(crops: np.ndarray) -> np.ndarray:
    """Rotation-invariant features: mean normalized protein intensity per band of the distance channel, a few
    intensity percentiles and a texture (mean |Laplacian|)."""
    edges = np.array([-16, -12, -9, -6, -4, -2, -1, 0.5, 2, 4, 6])
    features = []
    for crop in crops:
        prot, distance = crop[..., 0].astype(np.float64), crop[..., 2]
        prot = (prot - prot.min()) / (prot.max() - prot.min())
        band = np.digitize(distance.ravel(), edges)
        counts = np.maximum(np.bincount(band, minlength=len(edges) + 1), 1)
        profile = np.bincount(band, prot.ravel(), len(edges) + 1) / counts
        laplacian = np.abs(ndimage.laplace(prot)).mean()
        features.append(np.concatenate([profile, np.percentile(prot, [50, 90, 99]), [laplacian]]))
    return np.array(features)


def test_families_and_proteins_are_learnable():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_fam, n = len(S.FAMILY_NAMES), 20
    proteins = S.make_proteins(2 * n_fam, seed=3)  # proteins i and i + n_fam share a family
    x = np.concatenate([_profile_features(S.draw_protein_crops(p, i, 0, n, crops_per_protein=n, fields_per_protein=2,
                                                               size=48, seed=3)) for i, p in enumerate(proteins)])
    family = np.repeat([p.family for p in proteins], n)
    protein = np.repeat(np.arange(2 * n_fam), n)

    # Family from one protein of each family generalizes to the other protein: far above chance (1/11).
    train = protein < n_fam
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[train], family[train])
    family_accuracy = (clf.predict(x[~train]) == family[~train]).mean()

    # Proteins themselves are distinguishable (held-out crops), and mistakes stay inside the family.
    first_half = np.tile(np.arange(n) < n // 2, 2 * n_fam)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(x[first_half], protein[first_half])
    predicted, truth = clf.predict(x[~first_half]), protein[~first_half]
    wrong = predicted != truth
    same_family = (family[predicted[wrong] * n] == family[truth[wrong] * n]).mean()
    summary = f"family accuracy {family_accuracy:.2f}, protein accuracy {1 - wrong.mean():.2f}, " \
              f"errors within the family {same_family:.2f}"
    assert family_accuracy > 4 / n_fam, summary
    assert 1 - wrong.mean() > 0.5, summary
    assert same_family > 0.25, summary  # chance would be 1/21


def test_complexes_share_their_family_pattern_and_are_listed_beside_the_store(tmp_path):
    plain = S.make_proteins(40, seed=0)
    with_complexes = S.make_proteins(40, seed=0, complexes=4)
    members = S.complex_members(40, 4)
    assert members[0] == [0, 11, 22] and members[3] == [3, 14, 25]  # 3 proteins of one family each
    in_complex = {i for m in members for i in m}
    for c, m in enumerate(members):
        assert len({with_complexes[i].family for i in m}) == 1
        assert all(with_complexes[i].params == with_complexes[m[0]].params for i in m)  # the shared sub-pattern
        assert with_complexes[m[0]].params != plain[m[0]].params
        assert len({with_complexes[i].brightness for i in m}) == 3  # their own expression level
    # Proteins outside complexes are the proteins of before (complexes=0 changes nothing).
    assert [with_complexes[i] for i in range(40) if i not in in_complex] == \
        [plain[i] for i in range(40) if i not in in_complex]
    store = S.write_synthetic_store(tmp_path / "s", proteins=23, crops_per_protein=2, fields_per_protein=1,
                                    size=32, progress=False, complexes=1)
    table = pd.read_csv(tmp_path / "s_complexes.csv")
    assert S.complexes_csv_path(tmp_path / "s") == tmp_path / "s_complexes.csv"
    assert table.to_dict("list") == {"protein": ["SYN001", "SYN012", "SYN023"], "complex": ["CPLX1"] * 3}
    assert set(store.table["source"]) == {"synthetic seed=0 complexes=1"}
    assert not S.complexes_csv_path(tmp_path / "plain").exists()
    with pytest.raises(S.SyntheticError, match=r"synthetic: complexes: 2 complexes of 3 proteins of one family need "
                                               r"more than 23 proteins"):
        S.make_proteins(23, seed=0, complexes=2)


def test_training_draws_the_configs_complexes(tmp_path):
    from cytoself_jax.config import paper_config
    from cytoself_jax.training.loop import ensure_dataset

    data = paper_config().data
    data.path = str(tmp_path / "syn")
    data.synthetic.update(proteins=23, crops_per_protein=1, fields_per_protein=1, size=32, complexes=1,
                          path=str(tmp_path / "syn"))  # drawn only into its own folder (issue 12)
    store = ensure_dataset(data)
    assert len(store) == 23 and (tmp_path / "syn_complexes.csv").is_file()
    assert pd.read_csv(tmp_path / "syn_complexes.csv")["protein"].tolist() == ["SYN001", "SYN012", "SYN023"]
