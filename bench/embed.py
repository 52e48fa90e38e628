"""Embedding throughput: the model's `embed` path (encoders and quantizers, no decoders or heads), data-parallel.

Random images of the config's shape, split over a 1-D mesh of all devices with the variables replicated, jitted
once; the median of `--steps` waited-for calls gives images/s. Also reports FLOPs per image (XLA cost analysis),
the fraction of the hardware limit and peak memory. Prints a table and writes JSON.

python bench/embed.py --config configs/full.py --batch 1024 --dtype bfloat16 --out bench/results/embed_full_bf16.json
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

import benchlib
import train_step
from cytoself_jax import mesh as mesh_lib
from cytoself_jax.models import build_model


def run(config: ml_collections.ConfigDict, *, batch: int, steps: int = 20, warmup: int = 2, size: int | None = None,
        num_classes: int | None = None, peak_tflops: float | None = None, devices: Sequence[jax.Device] | None = None,
        label: str = "") -> dict[str, Any]:
    """Measure model.embed of `config` (its model.dtype as set) on batches of `batch` images; the JSON record."""
    benchlib.check_steps(steps, warmup)
    devices = list(devices or jax.devices())
    mesh = mesh_lib.make_mesh(devices)
    benchlib.check_divisible(batch, len(devices))
    shape, num_classes = benchlib.input_shape(config, size, num_classes)
    model = build_model(config, shape, num_classes)
    state = train_step.init_state(model, config, shape, jax.random.PRNGKey(0))
    variables = mesh_lib.replicate({"params": state.params, **state.model_state}, mesh)
    host_images = benchlib.random_batch(np.random.default_rng(0), batch, shape, num_classes)["image"]
    images = mesh_lib.shard_batch({"image": host_images}, mesh)["image"]

    def embed(variables, images):
        vq_local, vq_global = model.apply(variables, images, method=model.embed)
        # What an embedding pass keeps: both levels' code indices and the global quantized vectors.
        return vq_global.quantized, vq_global.indices, vq_local.indices

    jitted = jax.jit(embed, in_shardings=(mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)),
                     out_shardings=mesh_lib.batch_sharding(mesh))
    start = time.perf_counter()
    compiled = jitted.lower(variables, images).compile()
    compile_s = time.perf_counter() - start
    times = benchlib.time_calls(lambda: jax.block_until_ready(compiled(variables, images)), steps, warmup,
                                desc=f"embed {label}".strip())
    return benchlib.timing_record("embed", label, config, shape, num_classes, batch, warmup, times, compile_s,
                                  compiled, devices, peak_tflops)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchlib.add_model_args(parser, 1024, "global batch")
    args = parser.parse_args(argv)
    config = benchlib.set_dtype(benchlib.load_config(args.config, args.overrides), args.dtype)
    batch = args.batch
    return benchlib.run_and_report("embed", "embed", run, config, batch, args)


if __name__ == "__main__":
    benchlib.run_cli(main)
