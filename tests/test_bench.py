"""The benchmarks in bench/ run end to end on a tiny config and write the JSON records they promise."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import activation_memory  # noqa: E402
import benchlib  # noqa: E402
import breakdown  # noqa: E402
import embed  # noqa: E402
import input_pipeline  # noqa: E402
import profile_step  # noqa: E402
import scaling  # noqa: E402
import startup  # noqa: E402
import suite_table  # noqa: E402
import train_step  # noqa: E402
import vs_pytorch  # noqa: E402
from cytoself_jax.models import build_model  # noqa: E402

TINY = ["--size", "32", "--num-classes", "4"]
TIMING_KEYS = {"images_per_s", "step_s", "compile_s", "flops_per_image", "achieved_tflops", "peak_tflops",
               "fraction_of_peak", "limit_images_per_s", "bytes_accessed_per_image", "fraction_of_roofline",
               "peak_memory_bytes", "device", "jax_version", "config",
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
    # Per-image FLOPs barely depend on how the batch is split (the cost analysis is per device): the replicated work
    # (the Adam update of every parameter) is done once per device, which at one crop per device and the paper's
    # light decoders is ~6% of this tiny model's step.
    assert eight["flops_per_image"] == pytest.approx(one["flops_per_image"], rel=0.1)


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


def test_out_of_memory_is_a_result_not_a_crash(tiny_config_file, tmp_path, monkeypatch, capsys):
    def too_big(*args, **kwargs):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 41.2GiB.")

    monkeypatch.setattr(train_step, "run", too_big)
    out = tmp_path / "oom.json"
    train_step.main(["--config", str(tiny_config_file), "--batch", "256", "--out", str(out)])
    saved = _load(out)
    assert saved["error"] == "out of memory" and saved["images_per_s"] is None and saved["config"]["batch"] == 256
    assert "| out of memory |" in capsys.readouterr().out

    def other_failure(*args, **kwargs):
        raise jax.errors.JaxRuntimeError("INTERNAL: something else")

    monkeypatch.setattr(train_step, "run", other_failure)
    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
        train_step.main(["--config", str(tiny_config_file), "--batch", "256"])


def test_breakdown_records_every_part_with_its_input_shape(tiny_config_file):
    config = benchlib.load_config(tiny_config_file)
    shape, classes = benchlib.input_shape(config, 32, 4)
    model = build_model(config, shape, classes)
    variables = jax.eval_shape(lambda k: model.init({"params": k, "dropout": k}, jax.numpy.zeros((2, *shape)),
                                                    train=False), jax.random.PRNGKey(0))
    parts = {p.name: p for p in breakdown.record_parts(model, variables, shape, batch=4)}
    assert set(parts) == set(variables["params"])  # every direct submodule, heads included
    spec = model.spec
    assert parts["encoder_local"].inputs[0].shape == (4, 32, 32, 2)
    assert parts["vq_local"].inputs[0].shape == (4, *spec.local_sizes[-1], spec.vq_local.width)
    assert parts["decoder_local"].inputs[0].shape == (4, *spec.local_sizes[-1], spec.vq_local.width + spec.vq_global.width)
    assert parts["heads_global"].inputs[0].shape == (4, int(np.prod(spec.global_shape)))
    assert all(p.static == [True] for p in parts.values())  # train=True, as in the training step


def test_breakdown_measures_one_part(tiny_config_file):
    config = benchlib.load_config(tiny_config_file)
    shape, classes = benchlib.input_shape(config, 32, 4)
    model = build_model(config, shape, classes)
    state = train_step.init_state(model, config, shape, jax.random.PRNGKey(0))
    variables = {"params": state.params, **state.model_state}
    (head,) = [p for p in breakdown.record_parts(model, variables, shape, batch=4) if p.name == "heads_global"]
    row = breakdown.measure_part(head, variables, steps=1, warmup=0, rng=np.random.default_rng(0))
    hidden, features = config.model.head_hidden, head.inputs[0].shape[1]
    # At least the two matrix products of the head per image, 2 FLOPs per multiply-add; backward about twice that.
    assert row["forward"]["flops_per_image"] >= 2 * (features * hidden + hidden * classes)
    assert row["forward_backward"]["flops_per_image"] > 2 * row["forward"]["flops_per_image"]
    assert row["num_params"] > features * hidden and row["forward_backward"]["median_s"] > 0


def test_compute_fraction_against_hand_arithmetic():
    # 500 GFLOP and 2 GB per image at 1,000 images/s on a 1,000 TFLOP/s, 4 TB/s device.
    f = benchlib.compute_fraction(500e9, 1000.0, 1000.0, 2e9, 4.0)
    assert f["achieved_tflops"] == pytest.approx(500.0) and f["fraction_of_peak"] == pytest.approx(0.5)
    assert f["limit_per_s"] == pytest.approx(2000.0) and f["memory_limit_per_s"] == pytest.approx(2000.0)
    assert f["fraction_of_roofline"] == pytest.approx(0.5)
    light = benchlib.compute_fraction(1e9, 1000.0, 1000.0, 1e9, 4.0)  # memory-bound: 4,000/s at 4 TB/s
    assert light["limit_per_s"] == pytest.approx(1e6) and light["fraction_of_roofline"] == pytest.approx(0.25)
    unknown = benchlib.compute_fraction(1e9, 10.0, None)
    assert unknown["achieved_tflops"] == pytest.approx(0.01)
    assert unknown["fraction_of_peak"] is None and unknown["fraction_of_roofline"] is None


def test_activation_memory_per_image_and_prediction(tiny_config_file, tmp_path):
    out = tmp_path / "memory.json"
    fp32, bf16 = activation_memory.main(["--config", str(tiny_config_file), "--batch", "64", "--out", str(out), *TINY])
    assert _load(out)[0]["predicted_step_bytes"] == fp32["predicted_step_bytes"]
    assert fp32["residual_bytes_per_image"]["float32"] > 32 * 32 * 2 * 4  # at least one image-sized map kept
    assert fp32["residual_bytes_per_image"].get("bfloat16", 0) == 0 and bf16["residual_bytes_per_image"]["bfloat16"] > 0
    for r in (fp32, bf16):
        expected = 64 * sum(r["residual_bytes_per_image"].values()) + sum(r["residual_bytes_fixed"].values())
        assert r["predicted_step_bytes"] == expected + 3 * r["param_bytes"]
    # The per-image cost measured from batches 1 and 2 predicts batch 3 exactly (residuals grow linearly).
    config = benchlib.load_config(tiny_config_file)
    three = activation_memory.residual_bytes(config, (32, 32, 2), 4, 3)
    three.pop("params")
    for dtype, n in three.items():
        assert n == fp32["residual_bytes_fixed"][dtype] + 3 * fp32["residual_bytes_per_image"][dtype]


def test_remat_decoders_keeps_fewer_activations(tiny_config_file):
    plain, remat = (activation_memory.main(["--config", str(tiny_config_file), "--batch", "8", "--dtype", "float32",
                                            *TINY, "--set", f"model.remat_decoders={on}"])[0] for on in (False, True))
    per_image = [sum(r["residual_bytes_per_image"].values()) for r in (plain, remat)]
    assert per_image[1] < 0.7 * per_image[0], per_image
    assert plain["param_bytes"] == remat["param_bytes"]


def test_a_bad_override_is_one_line(tiny_config_file):
    done = subprocess.run([sys.executable, str(BENCH / "activation_memory.py"), "--config", str(tiny_config_file),
                           "--set", "model.nope=1"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(BENCH.parent / "tests")})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {tiny_config_file}: --set model.nope=1: the config has no "
                                                "field 'model.nope'"]


def test_vs_pytorch_builds_the_reference_architecture_from_our_spec():
    config = benchlib.load_config(BENCH.parent / "configs" / "demo.py")
    shape, classes = benchlib.input_shape(config, None, None)
    overrides = vs_pytorch.same_model_overrides(config, shape, classes)
    # the reference halves its input width per block: decoder1 from 16 + 64 channels, decoder2 from 64
    assert overrides == ["model.decoder='pytorch_reference'", "model.decoder_local_features=(40, 20)",
                         "model.decoder_global_features=(32, 16)"]
    ours = benchlib.load_config(BENCH.parent / "configs" / "demo.py", overrides)
    spec = vs_pytorch.torch_spec(ours, shape, classes)
    assert spec["input_shape"] == [2, 48, 48] and spec["emb_shapes"] == [[12, 12], [2, 2]]
    assert spec["vq_args"][1] == {"embedding_dim": 16, "num_embeddings": 512, "channel_split": 4}
    stages = spec["encoder_blocks"][1]
    assert [b["input_channels"] for b in stages] == [24, 32, 48, 64]  # the stem's width, then each stage's output
    model = build_model(ours, shape, classes)  # the overrides make a valid reference-decoder model
    assert model.spec.decoder == "pytorch_reference"


def test_gpu_suite_table_lists_every_row_and_failures(tmp_path):
    record = {"benchmark": "train_step", "label": "configs/full.py", "images_per_s": 1234.5, "flops_per_image": 5e9,
              "fraction_of_peak": 0.5, "fraction_of_roofline": 0.6, "peak_memory_bytes": 3 * 2**30, "compile_s": 40.0,
              "device": {"kind": "NVIDIA H200", "count": 1},
              "config": {"dtype": "bfloat16", "batch": 256, "model": {"decoder": "paper", "remat_decoders": False}}}
    (tmp_path / "train.json").write_text(json.dumps(record))
    (tmp_path / "embed.log").write_text("compiling\nRESOURCE_EXHAUSTED: out of memory\n")
    result, text = suite_table.combine(tmp_path, ["train", "embed", "pipeline"])
    assert list(result["rows"]) == ["train", "embed", "pipeline"]
    assert result["rows"]["train"]["images_per_s"] == 1234.5
    assert result["rows"]["embed"] == {"error": "failed", "detail": "RESOURCE_EXHAUSTED: out of memory"}
    lines = text.strip().splitlines()
    assert "decoder=paper" in lines[3] and "1,234" in lines[3] and "| 3 |" in lines[3]  # GiB
    assert "FAILED: RESOURCE_EXHAUSTED" in lines[4] and "FAILED: not run" in lines[5]



def test_profile_step_names_each_op_of_the_step(tiny_config_file, tmp_path):
    out = tmp_path / "profile.json"
    result = profile_step.main(["--config", str(tiny_config_file), "--batch", "64", "--steps", "1", "--warmup", "0",
                                "--out", str(out), *TINY])
    saved = _load(out)
    rows = saved["ours"]["op_us_per_step"]
    kinds = {r["kind"] for r in rows}
    # 8 images per device: the tiny model's dense kernel gradients take dense_conv's named formulations
    assert {"conv forward", "conv input gradient", "conv kernel gradient", "batchnorm", "optimizer"} <= kinds
    assert {"decoder_local", "encoder_local", "losses"} <= {r["part"] for r in rows}
    assert all(r["us"] > 0 for r in rows) and saved["reference"] is None
    total = next(r for r in saved["kinds"] if r[0] == "total")
    assert total[1] == pytest.approx(sum(r["us"] for r in rows) / 1e3)
    assert sum(r[4] for r in saved["parts"]) == pytest.approx(1.0)
    assert result["ours"]["devices"] == 8


def test_profile_step_reads_kernel_gradients_and_fusions_from_hlo_text():
    hlo = """HloModule m
%fused_computation.3 (p0: f32[4,8,8,2], p1: f32[8,8,2,6]) -> f32[4,3,3,6] {
  %c = f32[4,3,3,6]{3,2,1,0} convolution(%p0, %p1), window={size=8x8 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
}
%fused_computation.4 (p0: f32[2,8,8,6]) -> f32[2,8,8,6] {
  %m = f32[2,8,8,6]{3,2,1,0} multiply(%p0, %p0), metadata={op_name="jit(step)/jvp(M)/decoder_local/block0/conv1/bn/mul"}
}
ENTRY %main {
  %ynn_fusion.3 = f32[4,3,3,6]{3,2,1,0} fusion(%a, %b), kind=kCustom, calls=%fused_computation.3
  %fusion.4 = f32[2,8,8,6]{3,2,1,0} fusion(%a), kind=kLoop, calls=%fused_computation.4
  %conv.5 = f32[2,8,8,6]{3,2,1,0} convolution(%a, %b), window={size=3x3 pad=1_1x1_1}, metadata={op_name="jit(step)/transpose(jvp(M))/encoder_local/stem/conv/conv_general_dilated"}
}
"""
    ops = profile_step.hlo_instructions(hlo)
    assert profile_step.classify(ops["ynn_fusion.3"]) == ("conv kernel gradients (part unknown)", "backward",
                                                          "conv kernel gradient")
    assert profile_step.classify(ops["fusion.4"]) == ("decoder_local", "forward", "batchnorm")
    assert profile_step.classify(ops["conv.5"]) == ("encoder_local", "backward", "conv input gradient")
    assert profile_step.torch_kind("aten::convolution_backward") == "conv input + kernel gradient"
    assert profile_step.torch_kind("aten::mkldnn_convolution") == "conv forward"


def test_startup_times_the_first_step_from_its_metrics_record(tmp_path):
    """bench/startup.py: the first step is when a step record appears in metrics.jsonl, before the command ends."""
    metrics = tmp_path / "metrics.jsonl"
    writer = ("import sys, time; time.sleep(0.5); open(sys.argv[1], 'w').write('{\"kind\": \"epoch\"}\\n'); "
              "time.sleep(0.5); open(sys.argv[1], 'a').write('{\"kind\": \"step\"}\\n'); time.sleep(1.0)")
    total, first_step = startup._run([sys.executable, "-c", writer, str(metrics)], dict(os.environ), 60, metrics)
    assert 0.9 < first_step < total - 0.5
    with pytest.raises(benchlib.BenchError, match="exit status 3: boom"):
        startup._run([sys.executable, "-c", "print('boom'); raise SystemExit(3)"], dict(os.environ), 60)
