"""The cost of each decoder, paired: parameters, FLOPs per image and CPU/GPU training images/s of one config with
config.model.decoder = 'paper' and 'pytorch_reference', timed in alternating rounds in one process.

FLOPs per image come from XLA's cost analysis of the lowered programs: the training step (forward, backward and
Adam), the training forward pass alone, and the embedding pass (encoders and quantizers; the decoders take no
part in it, so it is the same for both). --rounds 0 gives the costs alone, from shapes, in a minute on a CPU.
Prints a table and writes JSON.

python bench/decoders.py --config configs/full.py --rounds 0 --out bench/results/decoders_full_cost.json
python bench/decoders.py --config configs/full.py --batch 8 --steps 1 --rounds 2 --out bench/results/decoders_full_cpu.json
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import benchlib
import train_step
from cytoself_jax import mesh as mesh_lib
from cytoself_jax.models import build_model
from cytoself_jax.train_state import create_train_state
from cytoself_jax.training.step import make_train_step

DECODERS = ("paper", "pytorch_reference")


def _lowered_flops_per_image(fn, *args, batch: int) -> float | None:
    """FLOPs per image of fn(*args) from XLA's cost analysis of the lowered program (before optimization: no
    backend compile, seconds even for the full model on a CPU; convolutions and matmuls count the same)."""
    cost = jax.jit(fn).lower(*args).cost_analysis() or {}
    return float(cost["flops"]) / batch if cost.get("flops") else None


def cost(config, batch: int) -> dict[str, Any]:
    """Parameters and GFLOP per image of the training step (forward, backward, Adam), the training-mode forward pass
    and the embedding pass of `config`'s model, from shapes alone (nothing is computed)."""
    shape, num_classes = benchlib.input_shape(config, None, None)
    model = build_model(config, shape, num_classes)
    state = jax.eval_shape(lambda k: create_train_state(model, shape, 1e-3, k), jax.random.PRNGKey(0))
    variables = {"params": state.params, **state.model_state}
    images = jax.ShapeDtypeStruct((batch, *shape), jnp.float32)
    batch_in = {"image": images, "label": jax.ShapeDtypeStruct((batch,), jnp.int32),
                "index": jax.ShapeDtypeStruct((batch,), jnp.int32)}
    mesh = mesh_lib.make_mesh(jax.devices()[:1])
    key = jax.random.PRNGKey(0)

    def forward(variables, images):
        return model.apply(variables, images, train=True, rngs={"dropout": key}, mutable=list(state.model_state))

    def embed(variables, images):
        return model.apply(variables, images, method=model.embed)

    step = make_train_step(model, config.loss, mesh, 1.0)
    count = lambda tree: sum(int(np.prod(p.shape)) for p in jax.tree.leaves(tree))  # noqa: E731
    gflop = lambda v: v / 1e9 if v else None  # noqa: E731
    return {
        "params": count(state.params),
        "decoder_params": count([state.params[k] for k in ("decoder_local", "decoder_global")]),
        "train_step_gflop_per_image": gflop(_lowered_flops_per_image(step, state, batch_in, key, batch=batch)),
        "forward_gflop_per_image": gflop(_lowered_flops_per_image(forward, variables, images, batch=batch)),
        "embed_gflop_per_image": gflop(_lowered_flops_per_image(embed, variables, images, batch=batch)),
    }


def run(config_path: str, overrides: Sequence[str], *, batch: int, steps: int, warmup: int, rounds: int,
        dtype: str | None) -> dict[str, Any]:
    """Measure both decoders of the config at `batch` on the first device (rounds=0: costs only); the JSON record."""
    devices = jax.devices()[:1]
    rows, runners = {}, {}
    for decoder in DECODERS:
        config = benchlib.set_dtype(benchlib.load_config(config_path, [*overrides, f"model.decoder={decoder}"]), dtype)
        shape, num_classes = benchlib.input_shape(config, None, None)
        rows[decoder] = {"decoder": decoder, **cost(config, batch), "images_per_s_rounds": []}
        if rounds:
            runners[decoder] = train_step.make_runner(config, shape, num_classes, batch, devices)
            rows[decoder]["compile_s"] = runners[decoder].compile_s
    # Alternate the two in rounds so that a change of machine load falls on both alike.
    for r in range(rounds):
        for decoder in DECODERS:
            times = benchlib.time_calls(runners[decoder], steps, warmup if r == 0 else 0, f"{decoder} round {r + 1}")
            rows[decoder]["images_per_s_rounds"].append(batch / statistics.median(times))
    for row in rows.values():
        row["images_per_s"] = statistics.median(row["images_per_s_rounds"]) if rounds else None
    paper, reference = rows["paper"], rows["pytorch_reference"]
    return {
        "benchmark": "decoders",
        "config": config_path,
        "overrides": list(overrides),
        "dtype": dtype or "float32",
        "batch": batch,
        "steps_per_round": steps,
        "rounds": rounds,
        "image_shape": list(shape),
        "num_classes": num_classes,
        "rows": list(rows.values()),
        "train_flops_ratio_reference_over_paper": reference["train_step_gflop_per_image"]
        / paper["train_step_gflop_per_image"],
        "speedup_paper_over_reference": paper["images_per_s"] / reference["images_per_s"] if rounds else None,
        **benchlib.environment(devices),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/full.py")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per decoder and round")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds, alternating the decoders (0: costs only)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    parser.add_argument("--out", default=None)
    benchlib.add_set_arg(parser)
    args = parser.parse_args(argv)
    benchlib.check_steps(args.steps, args.warmup)
    if args.rounds < 0:
        raise benchlib.BenchError(f"--rounds: expected an integer >= 0, got {args.rounds}")
    result = run(args.config, args.overrides, batch=args.batch, steps=args.steps, warmup=args.warmup,
                 rounds=args.rounds, dtype=args.dtype)
    columns = ["decoder", "params", "decoder params", "train step GFLOP/image", "forward GFLOP/image",
               "embed GFLOP/image", "images/s (median of rounds)", "images/s per round"]
    benchlib.print_table(f"decoders of {args.config}, batch {args.batch}, {result['dtype']}", columns, [
        [r["decoder"], r["params"], r["decoder_params"], r["train_step_gflop_per_image"], r["forward_gflop_per_image"],
         r["embed_gflop_per_image"], r["images_per_s"], " ".join(f"{v:.3g}" for v in r["images_per_s_rounds"])]
        for r in result["rows"]])
    print(f"training FLOPs, reference / paper: {result['train_flops_ratio_reference_over_paper']:.1f}x")
    if result["speedup_paper_over_reference"]:
        print(f"training speed, paper / reference: {result['speedup_paper_over_reference']:.1f}x")
    benchlib.write_json(result, args.out)
    return result


if __name__ == "__main__":
    benchlib.run_cli(main)
