"""Our training step against the PyTorch reference's, same model, same CPU, runs alternated.

Our side is `train_step.py` on the config with model.decoder='pytorch_reference' and the decoder widths the
reference derives itself (it halves its input width after each block), so both sides build the same
architecture: the JSON spec handed to `torch_reference.py` (run by the reference's own virtualenv) comes from
our model's spec, and the parameter counts of both are in the record. Each round runs ours then theirs, each
in a fresh process; the table has every round, the median ratio and its range. The machine's load average is
recorded with each round (timings of a shared machine are noisy).

python bench/vs_pytorch.py --config configs/demo.py --batch 32 --rounds 3 \
    --torch-python /work/torchref-venv/bin/python --reference-src /work/torchref/src --out bench/results/vs_pytorch_demo_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import ml_collections

import benchlib
from cytoself_jax.models.cytoself import ModelSpec

BENCH = Path(__file__).resolve().parent


def reference_widths(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """decoder_local_features and decoder_global_features as the reference derives them: its input width
    (decoder1: local + global code widths; decoder2: the global width) halved after each block."""
    def halving(width: int, blocks: int) -> tuple[int, ...]:
        out = []
        for _ in range(blocks):
            width = max(width // 2, 1)
            out.append(width)
        return tuple(out)

    local_steps, global_steps = len(spec.local_sizes) - 1, len(spec.global_sizes) - 1
    return {"decoder_local_features": halving(spec.vq_local.width + spec.vq_global.width, local_steps),
            "decoder_global_features": halving(spec.vq_global.width, global_steps)[:-1]}


def same_model_overrides(config: ml_collections.ConfigDict, image_shape: Sequence[int], num_classes: int) -> list[str]:
    """--set overrides that turn `config` into the reference's architecture at its sizes."""
    spec = ModelSpec.from_config(config.model, tuple(image_shape), num_classes)  # sizes: whatever the decoder
    return ["model.decoder='pytorch_reference'", *(f"model.{k}={v!r}" for k, v in reference_widths(spec).items())]


def torch_spec(config: ml_collections.ConfigDict, image_shape: Sequence[int], num_classes: int) -> dict[str, Any]:
    """The reference CytoselfFull's constructor arguments for our model's sizes (channels first)."""
    spec = ModelSpec.from_config(config.model, tuple(image_shape), num_classes)

    def blocks(encoder) -> list[dict[str, int]]:
        width, out = encoder.stem_features, []
        for expand, kernel, stride, features, layers in encoder.stages:
            out.append({"expand_ratio": expand, "kernel": kernel, "stride": stride, "input_channels": width,
                        "out_channels": features, "num_layers": layers})
            width = features
        return out

    h, w, c = image_shape
    vq = lambda v: {"embedding_dim": v.code_dim, "num_embeddings": v.num_codes, "channel_split": v.num_splits}  # noqa: E731
    return {"input_shape": [c, h, w], "num_class": num_classes,
            "emb_shapes": [list(spec.local_sizes[-1]), list(spec.global_sizes[-1])],
            "vq_args": [vq(spec.vq_local), vq(spec.vq_global)],
            "encoder_blocks": [blocks(spec.encoder_local), blocks(spec.encoder_global)],
            "drop_path_rate": float(config.model.drop_path_rate), "residual_units": spec.residual_units,
            "head_hidden": int(config.model.head_hidden), "head_dropout": float(config.model.head_dropout)}


def _run(cmd: list[str], env: dict | None = None) -> str:
    """stdout of cmd; a failure is a one-line BenchError."""
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0:
        raise benchlib.BenchError(f"{Path(cmd[1]).name}: exit status {done.returncode}: "
                                  f"{(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return done.stdout


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo.py")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3, help="alternated pairs of runs (ours, then theirs)")
    p.add_argument("--torch-python", required=True, help="python of the virtualenv holding CPU torch")
    p.add_argument("--reference-src", required=True, help="folder holding cytoself_torch_ref.py")
    p.add_argument("--out", default=None)
    benchlib.add_set_arg(p)
    args = p.parse_args(argv)
    config = benchlib.load_config(args.config, args.overrides)
    shape, num_classes = benchlib.input_shape(config, None, None)
    overrides = [*args.overrides, *same_model_overrides(config, shape, num_classes)]
    ours_config = benchlib.load_config(args.config, overrides)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="vs-pytorch-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(torch_spec(ours_config, shape, num_classes)))
        for r in range(args.rounds):
            out = Path(tmp) / f"ours{r}.json"
            _run([sys.executable, str(BENCH / "train_step.py"), "--config", args.config, "--batch",
                       str(args.batch), "--steps", str(args.steps), "--out", str(out), "--set", *overrides])
            ours = json.loads(out.read_text())
            theirs = json.loads(_run([args.torch_python, str(BENCH / "torch_reference.py"), "--spec", str(spec_path),
                                "--reference-src", args.reference_src, "--batch", str(args.batch), "--steps",
                                      str(args.steps)], {**os.environ, "CUDA_VISIBLE_DEVICES": ""}).splitlines()[-1])
            rounds.append({"round": r, "ours_images_per_s": ours["images_per_s"],
                           "theirs_images_per_s": theirs["images_per_s"],
                           "ratio": ours["images_per_s"] / theirs["images_per_s"],
                           "ours_params": ours["num_params"], "theirs_params": theirs["num_params"],
                           "ours_compile_s": ours["compile_s"], "theirs_first_step_s": theirs["first_step_s"],
                           "ours_cpu_s_per_image": statistics.median(ours["step_cpu_s"]) / args.batch,
                           "theirs_cpu_s_per_image": statistics.median(theirs["step_cpu_s"]) / args.batch,
                           "load_average": os.getloadavg()[0], "ours": ours, "theirs": theirs})
            rounds[-1]["cpu_ratio"] = rounds[-1]["theirs_cpu_s_per_image"] / rounds[-1]["ours_cpu_s_per_image"]
    ratios = [r["ratio"] for r in rounds]
    result = {"benchmark": "vs_pytorch", "config": args.config, "batch": args.batch, "overrides": overrides,
              "rounds": rounds, "median_ratio": statistics.median(ratios), "min_ratio": min(ratios),
              "max_ratio": max(ratios), **benchlib.environment([])}
    result["median_cpu_ratio"] = statistics.median(r["cpu_ratio"] for r in rounds)
    rows = [[r["round"], r["ours_images_per_s"], r["theirs_images_per_s"], r["ratio"],
             1e3 * r["ours_cpu_s_per_image"], 1e3 * r["theirs_cpu_s_per_image"], r["cpu_ratio"], r["ours_params"],
             r["theirs_params"], r["ours_compile_s"], r["theirs_first_step_s"], r["load_average"]] for r in rounds]
    benchlib.print_table(f"ours vs the PyTorch reference: {args.config}, batch {args.batch}, float32, CPU "
                         f"(median ratio {result['median_ratio']:.2f}, range {min(ratios):.2f}-{max(ratios):.2f})",
                         ["round", "ours img/s", "reference img/s", "ours / reference", "ours CPU ms/img",
                          "reference CPU ms/img", "reference / ours CPU", "ours params",
                          "reference params", "ours compile s", "reference first step s", "load avg"], rows)
    benchlib.write_json(result, args.out)
    return result


if __name__ == "__main__":
    benchlib.run_cli(main)
