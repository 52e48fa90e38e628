"""README.md of output folders: every column of the CSVs the evaluators write is described."""
import numpy as np
import pandas as pd

from cytoself_jax.analysis import neighbours
from cytoself_jax.analysis.output_readme import describe_folder
from cytoself_jax.analysis.probe import _csv_row, majority_probe


def test_every_csv_column_described(tmp_path):
    rng = np.random.default_rng(0)
    names = np.array([f"P{i}" for i in range(5)])
    near = neighbours.nearest_proteins(rng.normal(size=(5, 4)), names, n=2, families={"P0": "er"})
    near.to_csv(tmp_path / "neighbours.csv", index=False)
    y = np.array(["a", "b"] * 10)
    floor = majority_probe("family", y, y, groups=np.arange(20).astype(str), n_boot=10, seed=0, on="test split")
    pd.DataFrame([_csv_row(floor, "train split", "test split")]).to_csv(tmp_path / "probe.csv", index=False)
    pd.DataFrame({"protein": ["P0"], "family": ["er"], "crops": [3], "code_0": [1.5]}).to_csv(
        tmp_path / "protein_profiles.csv", index=False)
    (tmp_path / "atlas.html").write_text("<html></html>")
    text, undescribed = describe_folder(tmp_path)
    assert undescribed == []
    assert "| `similarity` | cosine similarity" in text and "| `code_0` | feature spectrum" in text
    assert "| `macro_f1_ci_low` |" in text and "`atlas.html`" in text and "embeddings.h5ad" not in text
    pd.DataFrame({"protein": ["P0"], "surprise": [1]}).to_csv(tmp_path / "neighbours.csv", index=False)
    text, undescribed = describe_folder(tmp_path)
    assert undescribed == ["neighbours.csv: surprise"] and "| `surprise` | (not described) |" in text
