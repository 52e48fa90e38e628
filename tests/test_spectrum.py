"""Feature spectra: per-protein means, code correlation and clustering on planted structure, pictures,
and the spectrum-peak helpers of feature interpretation."""
import numpy as np
import pytest
import scipy.cluster.hierarchy as sch
from matplotlib.image import imread
from scipy.spatial.distance import pdist

from cytoself_jax.analysis import interpret, spectrum
from cytoself_jax.analysis.common import AnalysisInputError


def test_protein_spectra_are_means_per_protein():
    rng = np.random.default_rng(1)
    hist = rng.integers(0, 5, size=(12, 6))
    proteins = np.array(list("bacbbacccaab"))
    names, spectra = spectrum.protein_spectra(hist, proteins)
    assert list(names) == ["a", "b", "c"]
    for name, row in zip(names, spectra):
        np.testing.assert_allclose(row, hist[proteins == name].mean(0))


def planted_spectra(rng, proteins=80, groups=3, per_group=10, unused=5):
    """Codes in `groups` blocks, each block's columns driven by one latent factor over proteins, plus unused codes
    (all-zero columns) interleaved. Returns spectra (P, K), the group of each code (-1 unused)."""
    group = np.concatenate([np.repeat(np.arange(groups), per_group), -np.ones(unused, int)])
    group = group[rng.permutation(len(group))]
    factors = rng.gamma(1.0, size=(proteins, groups))
    spectra = np.zeros((proteins, len(group)))
    for k, g in enumerate(group):
        if g >= 0:
            spectra[:, k] = factors[:, g] * rng.uniform(0.5, 2.0) + 0.2 * rng.random(proteins)
    return spectra, group


def test_code_correlation_matches_corrcoef_and_zeroes_unused():
    rng = np.random.default_rng(2)
    spectra, group = planted_spectra(rng)
    corr, used = spectrum.code_correlation(spectra)
    np.testing.assert_array_equal(used, group >= 0)
    u = np.flatnonzero(used)
    np.testing.assert_allclose(corr[np.ix_(u, u)], np.corrcoef(spectra[:, u].T), atol=1e-12)
    assert np.all(corr[~used] == 0) and np.all(corr[:, ~used] == 0)
    np.testing.assert_allclose(corr, corr.T)
    # A constant but non-zero column is as uninformative as an unused one.
    spectra[:, u[0]] = 3.0
    assert not spectrum.code_correlation(spectra)[1][u[0]]


def test_cluster_codes_recovers_planted_groups():
    rng = np.random.default_rng(3)
    spectra, group = planted_spectra(rng, groups=3, per_group=10, unused=5)
    corr, used = spectrum.code_correlation(spectra)
    clusters = spectrum.cluster_codes(corr, used, n_clusters=3)
    assert clusters.num_clusters == 3
    # Same partition as planted (up to names), unused codes labelled 0 and placed last, in index order.
    u = np.flatnonzero(used)
    pairs = set(zip(group[u], clusters.labels[u]))
    assert len(pairs) == 3 and len({g for g, _ in pairs}) == 3
    assert np.all(clusters.labels[~used] == 0)
    np.testing.assert_array_equal(clusters.order[len(u):], np.flatnonzero(~used))
    assert sorted(clusters.order) == list(range(len(group)))
    # Along the order, clusters are contiguous bands numbered 1, 2, 3 from the left.
    along = clusters.labels[clusters.order[: len(u)]]
    np.testing.assert_array_equal(np.unique(along, return_index=True)[0], [1, 2, 3])
    assert list(along[clusters.boundaries()]) == [1, 2, 3]
    assert np.all(np.diff(along) >= 0)
    # The tree is scipy's average linkage of the Euclidean distances between correlation rows of the used codes.
    np.testing.assert_allclose(clusters.linkage, sch.linkage(pdist(corr[np.ix_(u, u)]), "average"))
    np.testing.assert_array_equal(clusters.order[: len(u)], u[sch.leaves_list(clusters.linkage)])


def test_cluster_codes_errors():
    corr, used = spectrum.code_correlation(np.eye(4))
    with pytest.raises(AnalysisInputError, match=r"cluster_codes: n_clusters: expected 1 <= n_clusters <= 4"):
        spectrum.cluster_codes(corr, used, n_clusters=11)
    with pytest.raises(AnalysisInputError, match=r"cluster_codes: used: expected at least 2 used codes"):
        spectrum.cluster_codes(corr, np.array([True, False, False, False]))
    with pytest.raises(AnalysisInputError, match=r"cluster_codes: method: expected one of"):
        spectrum.cluster_codes(corr, used, n_clusters=2, method="upgma")


def test_roman():
    assert [spectrum.roman(i) for i in (1, 4, 9, 11, 14, 40)] == ["i", "iv", "ix", "xi", "xiv", "xl"]


def test_spectrum_pictures(tmp_path):
    rng = np.random.default_rng(4)
    spectra, _ = planted_spectra(rng, groups=4)
    corr, used = spectrum.code_correlation(spectra)
    clusters = spectrum.cluster_codes(corr, used, n_clusters=4)
    heat = spectrum.plot_code_correlation(corr, clusters, tmp_path / "heatmap.png")
    assert heat == [tmp_path / "heatmap.png"]
    bars = spectrum.plot_spectra(spectra[:2], ["P1", "P2"], clusters, tmp_path / "spectra")
    assert bars == [tmp_path / "spectra.png", tmp_path / "spectra.svg"]
    for path in heat + bars[:1]:
        image = imread(path)
        assert image.shape[0] > 300 and image.shape[1] > 300 and image.std() > 0.05
    one = spectrum.plot_spectra(spectra[0], ["P1"], clusters, tmp_path / "one.png", svg=False)
    assert one[0].stat().st_size > 1000
    with pytest.raises(AnalysisInputError, match=r"plot_spectra: spectra: expected \(2, 45\)"):
        spectrum.plot_spectra(spectra[:3], ["P1", "P2"], clusters, tmp_path / "bad.png")


def test_top_spectrum_codes_and_code_mask():
    s = np.array([0.0, 5.0, 1.0, 5.0, 0.0, 3.0])
    np.testing.assert_array_equal(interpret.top_spectrum_codes(s, 3), [1, 3, 5])
    np.testing.assert_array_equal(interpret.top_spectrum_codes(s, 10), [1, 3, 5, 2])  # zeros are no peaks
    with pytest.raises(AnalysisInputError, match=r"top_spectrum_codes: n: expected n >= 1"):
        interpret.top_spectrum_codes(s, 0)
    idx = np.array([[[1, 2], [3, 1]], [[0, 5], [5, 5]]])
    mask = interpret.code_mask(idx, interpret.top_spectrum_codes(s, 2))
    np.testing.assert_array_equal(mask, np.isin(idx, [1, 3]))
    assert mask.shape == idx.shape and mask.sum() == 3
