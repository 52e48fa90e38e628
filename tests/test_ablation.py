"""The ablation runner (bench/ablation.py): variant configs, the table's statistics, and a resumable tiny run."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config

from cytoself_jax.analysis import compare
from cytoself_jax.config import apply_overrides, paper_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import ablation  # noqa: E402


def test_overrides_reach_the_base_before_the_variant_switch(tmp_path):
    c = ablation.variant_config(str(REPO / "configs/demo.py"), "no_split", 2, tmp_path,
                                ["model.vq_global.code_dim=8", "train.max_epochs=3"])
    # no_split derives its one code from the overridden split codes: 4 splits x 8
    assert (c.model.vq_global.code_dim, c.model.vq_global.num_splits) == (32, 1)
    assert c.train.max_epochs == 3 and c.seed == 2
    assert c.workdir == str(tmp_path / "demo" / "no_split" / "seed2")


def test_a_variant_that_does_not_apply_says_why(tmp_path):
    with pytest.raises(ValueError, match="'no_distance' does not apply.*no 'distance' channel"):
        ablation.variant_config(str(REPO / "configs/yeast.py"), "no_distance", 0, tmp_path, [])


def test_overrides_check_field_and_type():
    c = apply_overrides(paper_config(), ["model.remat_decoders=True", "data.path=/some/store", "train.batch_size=8"])
    assert c.model.remat_decoders is True and c.data.path == "/some/store" and c.train.batch_size == 8
    with pytest.raises(ValueError, match="no field 'model.nope'"):
        apply_overrides(paper_config(), ["model.nope=1"])
    with pytest.raises(ValueError, match="expected FIELD=VALUE"):
        apply_overrides(paper_config(), ["model.remat_decoders"])
    with pytest.raises(ValueError, match="train.batch_size=big"):
        apply_overrides(paper_config(), ["train.batch_size=big"])


def test_the_row_gives_each_score_its_between_training_statistics():
    rows = [{"clustering.umap": 1.5, "knn.top1": 0.4}, {"clustering.umap": 4.5, "knn.top1": 0.6}]
    row = ablation.summarize("no_split", rows)
    umap = compare.mean_interval([1.5, 4.5])
    assert row["clustering.umap"] == compare.format_cell(umap) and row["clustering.umap"].endswith("(n=2)")
    assert row["clustering.umap"].startswith(f"{3.0:.3g} +- {np.std([1.5, 4.5], ddof=1):.2g} [")
    assert row["map.protein"] == "n/a" and row["trainings"] == 2 and row["paper Table 1"] == "12.1 +- 1.46"


def test_a_tiny_study_writes_its_table_and_is_not_redone(tmp_path, tiny_store_path):
    config_file = tmp_path / "tiny_study.py"
    config_file.write_text("from conftest import tiny_config\n\n\ndef base_config():\n"
                           f"    c = tiny_config('unused', {str(tiny_store_path)!r})\n"
                           "    c.train.max_epochs = 1  # a training of one epoch is a training for the study\n"
                           "    return c\n")
    argv = ["--config", str(config_file), "--variants", "full", "no_identification", "--seeds", "1",
            "--umap-seeds", "1", "--bootstrap", "100", "--root", str(tmp_path / "study"), "--quiet",
            "--evaluators", "identity", "clustering"]
    table = ablation.main(argv)
    out = tmp_path / "study" / "tiny_study"
    assert list(table["variant"]) == ["full", "no_identification"]
    assert pd.read_csv(out / "ablation.csv")["trainings"].tolist() == [1, 1]
    assert (out / "ablation_umaps.png").stat().st_size > 0
    md = (out / "ablation.md").read_text()
    assert "| full | 1 |" in md and "| no_identification | 1 |" in md
    # the variant really trained without heads: its metrics have no classifier accuracy
    metrics = [json.loads(p.read_text()) for p in sorted(out.glob("*/seed0/eval/test-latest/metrics.json"))]
    assert len(metrics) == 2 and table.loc[1, "classifier.global_top1"] == "n/a" != table.loc[0, "classifier.global_top1"]
    trainings = pd.read_csv(out / "ablation_trainings.csv")  # the evidence: one row per training
    assert list(trainings["variant"]) == ["full", "no_identification"] and trainings["seed"].eq(0).all()
    assert "full - no_identification:" in md
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "ablation" not in p.name}
    again = ablation.main(argv)
    pd.testing.assert_frame_equal(table, again)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing trained or evaluated again
