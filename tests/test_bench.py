"""The benchmarks in bench/ run end to end on a tiny config and write the JSON records they promise."""

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import benchlib  # noqa: E402
import embed  # noqa: E402
import input_pipeline  # noqa: E402
import scaling  # noqa: E402
import train_step  # noqa: E402

TINY = ["--size", "32", "--num-classes", "4"]
TIMING_KEYS = {"images_per_s", "step_s", "compile_s", "flops_per_image", "achieved_tflops", "peak_tflops",
               "fraction_of_peak", "limit_images_per_s", "peak_memory_bytes", "device", "jax_version", "config",
               "command", "load_average"}


@pytest.fixture(scope="module")
def tiny_config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "tiny.py"
    path.write_text("from conftest import tiny_config\n\n\ndef get_config():\n    return tiny_config('unused', 'unused')\n")
    return path


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_train_step(tiny_config_file, tmp_path):
    out = tmp_path / "train.json"
    result = train_step.main(["--config", str(tiny_config_file), "--batch", "8", "--steps", "2", "--warmup", "0",
                              "--peak-tflops", "2.0", "--out", str(out), *TINY])
    saved = _load(out)
    assert TIMING_KEYS | {"num_params"} <= saved.keys()
    assert saved["images_per_s"] == pytest.approx(8 / saved["step_s"]["median_s"])
    assert saved["images_per_s"] > 0 and saved["flops_per_image"] > 0 and saved["peak_memory_bytes"] > 0
    assert saved["fraction_of_peak"] == pytest.approx(saved["achieved_tflops"] / 2.0)
    assert saved["limit_images_per_s"] == pytest.approx(2.0e12 / saved["flops_per_image"])
    assert saved["config"]["image_shape"] == [32, 32, 2] and saved["config"]["num_classes"] == 4
    assert saved["device"]["count"] == 8 and len(saved["step_times_s"]) == 2
    assert result["num_params"] == saved["num_params"] > 0


def test_embed_bfloat16(tiny_config_file, tmp_path):
    out = tmp_path / "embed.json"
    embed.main(["--config", str(tiny_config_file), "--batch", "16", "--steps", "1", "--warmup", "0",
                "--dtype", "bfloat16", "--out", str(out), *TINY])
    saved = _load(out)
    assert TIMING_KEYS <= saved.keys()
    assert saved["images_per_s"] > 0 and saved["flops_per_image"] > 0
    assert saved["config"]["dtype"] == "bfloat16" and saved["config"]["model"]["dtype"] == "bfloat16"
    assert saved["fraction_of_peak"] is None  # no known peak for a CPU


def test_scaling_same_loss_on_1_and_8_devices(tiny_config_file, tmp_path):
    # The 8-device step is test_train_step's program (compiled once thanks to the session's compilation cache).
    out = tmp_path / "scaling.json"
    scaling.main(["--config", str(tiny_config_file), "--batch", "8", "--devices", "1", "8", "16", "--check-steps", "2",
                  "--steps", "1", "--out", str(out), *TINY])
    saved = _load(out)
    assert [r["devices"] for r in saved["results"]] == [1, 8] and saved["skipped_device_counts"] == [16]
    one, eight = saved["results"]
    assert len(one["losses"]) == 2 and one["losses"][0] != one["losses"][1]  # the first step changed the params
    assert saved["max_abs_loss_diff"] < 1e-4
    assert min(r["images_per_s_per_device"] for r in saved["results"]) > 0
    # Per-image FLOPs do not depend on how the batch is split (the cost analysis is per device).
    assert eight["flops_per_image"] == pytest.approx(one["flops_per_image"], rel=0.05)


def test_input_pipeline(tiny_store_path, tmp_path):
    out = tmp_path / "pipeline.json"
    input_pipeline.main(["--store", str(tiny_store_path), "--batch", "16", "--batches", "3", "--workers", "0",
                         "--out", str(out)])
    saved = _load(out)
    (row,) = saved["results"]
    assert row["num_workers"] == 0 and row["batches"] == 3 and row["crops"] == 48  # the 96-crop store, 3 batches
    assert row["crops_per_s"] > 0 and row["first_batch_s"] > 0
    assert saved["store"]["shape"] == [96, 32, 32, 3] and saved["channels"] == ["protein", "distance"]


def test_bad_options_name_the_option(tiny_config_file, tmp_path):
    with pytest.raises(benchlib.BenchError, match="--batch: expected a positive multiple of the 8 devices"):
        train_step.main(["--config", str(tiny_config_file), "--batch", "12", *TINY])
    with pytest.raises(benchlib.BenchError, match="--config: expected an experiment config file"):
        embed.main(["--config", str(tmp_path / "missing.py")])
