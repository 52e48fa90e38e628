"""Training-step throughput: the jitted, donated, data-parallel step of training/step.py on random inputs.

Builds the model and train state of an experiment config as train.py does, places them on a 1-D mesh of all
devices (batch split, state replicated), compiles once, runs warm-up steps, then times `--steps` steps (each
waited for) and reports the median: images/s, FLOPs per image from XLA's cost analysis, the fraction of the
hardware limit, peak memory. Prints a table and writes JSON.

python bench/train_step.py --config configs/full.py --batch 256 --dtype bfloat16 --out bench/results/train_full_bf16.json
python bench/train_step.py --config configs/demo.py --batch 32 --steps 20
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

import benchlib
from cytoself_jax import mesh as mesh_lib
from cytoself_jax.models import build_model
from cytoself_jax.train_state import TrainState, create_train_state
from cytoself_jax.training.step import make_train_step


@dataclasses.dataclass
class StepRunner:
    """A compiled train step with its state (donated, so replaced on each call) and a device-resident batch."""

    compiled: Any
    state: TrainState
    batch: dict
    key: jax.Array
    compile_s: float

    def __call__(self) -> dict[str, jax.Array]:
        """One training step, waited for; returns its metrics."""
        self.state, metrics = self.compiled(self.state, self.batch, self.key)
        jax.block_until_ready((self.state, metrics))
        return metrics


# create_train_state jitted (model, image shape and learning rate static): initialising op by op is slower than
# compiling the initialisation, and one compiled program serves every call for the same model.
_init_state = jax.jit(create_train_state, static_argnums=(0, 1, 2))


def init_state(model, config: ml_collections.ConfigDict, image_shape: tuple[int, int, int], key: jax.Array) -> TrainState:
    """The train state create_train_state makes for `model` (config's learning rate), computed by one program."""
    return _init_state(model, tuple(image_shape), float(config.train.learning_rate), key)


def make_runner(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int], num_classes: int, batch: int,
                devices: Sequence[jax.Device] | None = None, seed: int = 0) -> StepRunner:
    """Model, train state and compiled step of `config` for a random batch of `batch` images of image_shape
    (H, W, C) over `devices` (default all). The same seed gives the same state and batch on any devices."""
    mesh = mesh_lib.make_mesh(devices)
    benchlib.check_divisible(batch, mesh.devices.size)
    model = build_model(config, image_shape, num_classes)
    init_key, step_key = jax.random.split(jax.random.PRNGKey(seed))
    state = mesh_lib.replicate(init_state(model, config, image_shape, init_key), mesh)
    host_batch = benchlib.random_batch(np.random.default_rng(seed), batch, image_shape, num_classes)
    device_batch = mesh_lib.shard_batch(host_batch, mesh)
    key = mesh_lib.replicate(step_key, mesh)
    start = time.perf_counter()
    # the loss's variance constant does not change the work: the random batch's own stands in for a dataset's
    variance = float(np.var(host_batch["image"]))
    compiled = make_train_step(model, config.loss, mesh, variance).lower(state, device_batch, key).compile()
    return StepRunner(compiled, state, device_batch, key, time.perf_counter() - start)


def run(config: ml_collections.ConfigDict, *, batch: int, steps: int = 20, warmup: int = 2, size: int | None = None,
        num_classes: int | None = None, peak_tflops: float | None = None, devices: Sequence[jax.Device] | None = None,
        label: str = "") -> dict[str, Any]:
    """Measure the train step of `config` (its model.dtype as set) at global batch `batch`; the JSON record."""
    benchlib.check_steps(steps, warmup)
    devices = list(devices or jax.devices())
    shape, num_classes = benchlib.input_shape(config, size, num_classes)
    runner = make_runner(config, shape, num_classes, batch, devices)
    cpu_times: list[float] = []
    times = benchlib.time_calls(runner, steps, warmup, desc=f"train step {label}".strip(), cpu_times=cpu_times)
    record = benchlib.timing_record("train_step", label, config, shape, num_classes, batch, warmup, times,
                                    runner.compile_s, runner.compiled, devices, peak_tflops)
    record["step_cpu_s"] = cpu_times
    record["num_params"] = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(runner.state.params))
    return record


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchlib.add_model_args(parser, None, "global batch (default: config.train.batch_size)")
    args = parser.parse_args(argv)
    config = benchlib.set_dtype(benchlib.load_config(args.config, args.overrides), args.dtype)
    batch = args.batch or config.train.batch_size
    return benchlib.run_and_report("train_step", "train step", run, config, batch, args)


if __name__ == "__main__":
    benchlib.run_cli(main)
