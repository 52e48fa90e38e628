"""Protein-level atlas: profiles, graph, UMAP, Leiden communities and dendrogram in proteins.h5ad."""
import anndata
import numpy as np
import pandas as pd

from cytoself_jax.analysis import proteins


def planted(rng, families=4, per_family=6, crops=8, dim=12):
    """Crops of families x per_family proteins; a family's proteins scatter tightly around the family's centre."""
    centres = rng.normal(scale=6.0, size=(families, dim))
    rows, x = [], []
    for f in range(families):
        for p in range(per_family):
            centre = centres[f] + rng.normal(scale=0.3, size=dim)
            for _ in range(crops):
                rows.append((f"F{f}P{p}", f"fam{f}"))
                x.append(centre + rng.normal(scale=0.5, size=dim))
    return np.array(x, np.float32), pd.DataFrame(rows, columns=["protein", "family"])


def test_protein_atlas_recovers_planted_families(tmp_path):
    x, table = planted(np.random.default_rng(0))
    metrics, adata = proteins.protein_atlas(tmp_path, x, table, n_neighbors=5)
    assert metrics["proteins"] == 24 and metrics["n_neighbors"] == 5
    assert metrics["adjusted_rand_family"] > 0.9  # communities = the planted families
    saved = anndata.read_h5ad(tmp_path / "proteins.h5ad")
    assert list(saved.obs_names) == sorted(set(table["protein"]))
    np.testing.assert_allclose(saved.X[0], x[table["protein"].to_numpy() == saved.obs_names[0]].mean(0), rtol=1e-5)
    assert saved.obsm["X_umap"].shape == (24, 2) and saved.obs["crops"].tolist() == [8] * 24
    assert saved.obs["family"][saved.obs_names == "F2P3"].item() == "fam2"
    linkage = saved.uns["dendrogram_protein"]["linkage"]
    assert linkage.shape == (23, 4)
    # The last merge joins families: its height (1 - correlation) exceeds every within-family merge.
    assert linkage[-1, 2] > linkage[: 24 - 4, 2].max()
    for name in ("proteins_atlas.png", "proteins_dendrogram.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_protein_atlas_needs_a_few_proteins(tmp_path):
    x, table = planted(np.random.default_rng(1), families=1, per_family=3)
    assert proteins.protein_atlas(tmp_path, x, table) == (None, None)
    assert not (tmp_path / "proteins.h5ad").exists()
