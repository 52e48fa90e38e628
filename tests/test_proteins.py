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


def fake_eval_context(tmp_path, x, table):
    """The pieces of an EvalContext that embeddings_h5ad and the provenance read, for crops x (N, 2, 2, d)."""
    from types import SimpleNamespace

    from cytoself_jax.analysis.options import EvalOptions

    n = len(x)
    rng = np.random.default_rng(0)

    class Outputs(SimpleNamespace):
        def __len__(self):
            return n

    outputs = Outputs(index=np.arange(n) * 2, global_vectors=x, local_histograms=rng.integers(0, 5, (n, 8)),
                      local_indices=rng.integers(0, 8, (n, 4, 4, 1)), global_indices=rng.integers(0, 8, (n, 2, 2, 1)))
    spec = SimpleNamespace(local_shape=(4, 4, 8), global_shape=x.shape[1:], vq_local=SimpleNamespace(num_codes=8),
                           vq_global=SimpleNamespace(num_codes=8))
    run = SimpleNamespace(model=SimpleNamespace(spec=spec), proteins=sorted(set(table["protein"])), run_dir=tmp_path,
                          step=42, checkpoint="best")
    xy = rng.normal(size=(n, 2)).astype(np.float32)
    return SimpleNamespace(
        outputs=outputs, run=run, store=list(range(2 * n)), store_path=tmp_path / "store", out=tmp_path,
        splits={"test": np.arange(n) * 2, "train": np.arange(n) * 2 + 1}, rows=np.arange(n) * 2, table=table,
        proteins=table["protein"].to_numpy(), families=table["family"].to_numpy(), class_ids=np.zeros(n, int),
        channels=("protein", "nucleus"), options=EvalOptions(umap_seeds=1), vectors=x.reshape(n, -1),
        atlas_xy=lambda: xy, umap_rows=lambda: np.arange(n),
        umap_kwargs=lambda: {"n_neighbors": 15, "min_dist": 0.1, "metric": "euclidean"},
        atlas_seed=0)


def test_h5ad_files_work_with_scanpy_as_documented(tmp_path):
    """Both h5ad files loaded as a scanpy user would, and the README's calls run on them."""
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    from cytoself_jax.analysis.colours import UNANNOTATED_GREY, family_colours
    from cytoself_jax.analysis.evaluators import embeddings_h5ad
    from cytoself_jax.analysis.h5ad import store_rows

    x, table = planted(np.random.default_rng(2), families=4, per_family=5, crops=6, dim=8)
    table.loc[table["family"] == "fam3", "family"] = ""  # an unannotated family
    table["fov"] = [f"{p}/f{i % 2}" for i, p in enumerate(table["protein"])]
    ctx = fake_eval_context(tmp_path, x.reshape(len(x), 2, 2, 2), table)
    embeddings_h5ad.evaluate(ctx)
    proteins.protein_atlas(tmp_path, x, table, n_neighbors=5, provenance={"run": "r", "checkpoint_step": 42})
    colours = family_colours(table["family"])
    for name in ("embeddings.h5ad", "proteins.h5ad"):
        adata = anndata.read_h5ad(tmp_path / name)
        assert adata.obs_names.is_unique and "index" not in adata.obs
        np.testing.assert_array_equal(adata.obsm["X_cytoself"], adata.X)
        families = list(adata.obs["family"].cat.categories)
        assert families == ["fam0", "fam1", "fam2", "unannotated"]  # legend order, as atlas.png and atlas.html
        assert list(adata.uns["family_colors"]) == [colours[f] for f in families]
        assert adata.uns["family_colors"][-1] == UNANNOTATED_GREY
        assert list(adata.uns["family_colors"]).count(UNANNOTATED_GREY) == 1
        assert int(adata.uns["provenance"]["checkpoint_step"]) == 42 and "params" in adata.uns["umap"]
        sc.pp.neighbors(adata, use_rep="X_cytoself", metric="cosine", n_neighbors=5)
        sc.tl.umap(adata, random_state=0)
        sc.pl.umap(adata, color="family", show=False, return_fig=True).savefig(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 5000
    crops = anndata.read_h5ad(tmp_path / "embeddings.h5ad")
    np.testing.assert_array_equal(store_rows(crops), np.arange(len(x)) * 2)
    assert list(crops.var.columns) == ["y", "x", "feature"] and crops.n_vars == 8
    assert set(crops.obs["split"]) == {"test"} and crops.uns["provenance"]["umap_seed"] == 0
    # proteins.h5ad works with scanpy's defaults too: its PCA is there (fewer proteins than 50 components).
    prot = anndata.read_h5ad(tmp_path / "proteins.h5ad")
    assert prot.obsm["X_pca"].shape == (20, 7)
    sc.pp.neighbors(prot, n_neighbors=5)
    assert len(prot.uns["leiden_colors"]) == prot.obs["leiden"].nunique()
