"""The paper-model measurements of bench/: the decoders' costs, the replay of model-selection rules, and the
side-by-side table of evaluated runs."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import decoders  # noqa: E402
import model_selection  # noqa: E402
from cytoself_jax.run import load_run_config  # noqa: E402
from cytoself_jax.models import build_model  # noqa: E402

CONFIG = Path(__file__).resolve().parent / "configs" / "tiny.py"


def test_decoder_costs_from_shapes_order_the_decoders_and_count_their_parameters():
    import benchlib

    rows = {}
    for decoder in decoders.DECODERS:
        config = benchlib.load_config(str(CONFIG), [f"model.decoder={decoder}", "data.synthetic.size=32"])
        rows[decoder] = decoders.cost(config, batch=4)
    for decoder, row in rows.items():
        assert 0 < row["embed_gflop_per_image"] < row["forward_gflop_per_image"] < row["train_step_gflop_per_image"]
        assert row["decoder_params"] < row["params"]
    # the embedding pass runs no decoder: the same work with either
    assert rows["paper"]["embed_gflop_per_image"] == pytest.approx(rows["pytorch_reference"]["embed_gflop_per_image"])
    # the decoder parameters are the model's own
    config = benchlib.load_config(str(CONFIG), ["model.decoder=paper", "data.synthetic.size=32"])
    shape, classes = benchlib.input_shape(config, None, None)
    import jax

    model = build_model(config, shape, classes)
    params = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)},
                                               np.zeros((2, *shape), np.float32), train=False))["params"]
    count = sum(int(np.prod(p.shape)) for k in ("decoder_local", "decoder_global") for p in jax.tree.leaves(params[k]))
    assert rows["paper"]["decoder_params"] == count


def _fake_run(root: Path, epochs: list[dict]) -> Path:
    """A run directory with the tiny config and the given per-epoch validation records."""
    root.mkdir(parents=True)
    config = tiny_config(root, root)
    config.train.update(plateau_patience=10, early_stop_patience=10, max_epochs=len(epochs))
    (root / "config.json").write_text(config.to_json())
    (root / "dataset.json").write_text(json.dumps({"proteins": ["a"], "channels": ["protein"]}))
    lines = [json.dumps({"kind": "epoch", "epoch": i, **{f"val_{k}": v for k, v in e.items()}}) for i, e in enumerate(epochs)]
    (root / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_model_selection_replay_follows_each_rule(tmp_path):
    """The total loss is lowest at epoch 1 (a collapsed codebook's tiny VQ terms); without the VQ terms epoch 4 is
    best. Each rule picks what the training loop's schedule would."""
    epochs = [
        {"loss": 2.0, "vq_local": 0.0, "vq_global": 0.0, "accuracy_global": 0.1, "perplexity_global": 2.0},
        {"loss": 3.0, "vq_local": 0.8, "vq_global": 0.9, "accuracy_global": 0.3, "perplexity_global": 40.0},
        {"loss": 2.8, "vq_local": 0.8, "vq_global": 0.9, "accuracy_global": 0.4, "perplexity_global": 50.0},
        {"loss": 2.5, "vq_local": 0.7, "vq_global": 0.9, "accuracy_global": 0.5, "perplexity_global": 60.0},
    ]
    run = _fake_run(tmp_path / "run", epochs)
    config, _ = load_run_config(run)
    records = model_selection.epoch_records(run)
    assert model_selection.replay(records, config, "loss", 1)["best_epoch"] == 1
    assert model_selection.replay(records, config, "loss", 3)["best_epoch"] == 4
    assert model_selection.replay(records, config, "loss_without_vq", 1)["best_epoch"] == 4
    result = model_selection.analyse([run], [1, 3])
    by_rule = {(r["monitor"], r["select_from_epoch"]): r for r in result["rules"]}
    assert by_rule[("loss", 1)]["collapsed_choices"] == 1  # perplexity 2 of a run maximum of 60
    assert by_rule[("loss", 1)]["accuracy_global_of_max"] == pytest.approx(0.1 / 0.5)
    assert by_rule[("loss_without_vq", 1)]["accuracy_global_of_max"] == pytest.approx(1.0)
