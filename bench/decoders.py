"""The cost of each decoder, paired: parameters, FLOPs per image and CPU/GPU training images/s of one config with
config.model.decoder = 'paper' and 'pytorch_reference', timed in alternating rounds in one process.

FLOPs per image come from XLA's cost analysis of the compiled programs: the training step (forward, backward and
Adam), the training forward pass alone, and the embedding pass (encoders and quantizers; the decoders take no
part in it, so it is the same for both). Prints a table and writes JSON.

python bench/decoders.py --config configs/full.py --batch 16 --steps 2 --rounds 3 --out bench/results/decoders_full_cpu.json
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
from cytoself_jax.training.state import build_model

DECODERS = ("paper", "pytorch_reference")


def _per_image(compiled, batch: int) -> float | None:
    flops = benchlib.flops_of(compiled)
    return flops / batch if flops else None


def _forward_and_embed_flops(config, shape, num_classes: int, batch: int) -> tuple[float | None, float | None]:
    """FLOPs per image of the training-mode forward pass and of the embedding pass, on one device."""
    model = build_model(config, shape, num_classes)
    state = train_step.init_state(model, config, shape, jax.random.PRNGKey(0))
    variables = {"params": state.params, **state.model_state}
    images = jnp.zeros((batch, *shape), jnp.float32)

    def forward(variables, images):
        return model.apply(variables, images, train=True, rngs={"dropout": jax.random.PRNGKey(0)},
                           mutable=list(state.model_state))

    def embed(variables, images):
        return model.apply(variables, images, method=model.embed)

    out = []
    for fn in (forward, embed):
        out.append(_per_image(jax.jit(fn).lower(variables, images).compile(), batch))
    return out[0], out[1]


def run(config_path: str, overrides: Sequence[str], *, batch: int, steps: int, warmup: int, rounds: int,
        dtype: str | None) -> dict[str, Any]:
    """Measure both decoders of the config at `batch` on the first device; the JSON record."""
    devices = jax.devices()[:1]
    rows, runners = {}, {}
    for decoder in DECODERS:
        config = benchlib.set_dtype(benchlib.load_config(config_path, [*overrides, f"model.decoder={decoder}"]), dtype)
        shape, num_classes = benchlib.input_shape(config, None, None)
        runners[decoder] = train_step.make_runner(config, shape, num_classes, batch, devices)
        forward, embed = _forward_and_embed_flops(config, shape, num_classes, batch)
        params = runners[decoder].state.params
        rows[decoder] = {
            "decoder": decoder,
            "params": sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)),
            "decoder_params": sum(int(np.prod(p.shape)) for k in ("decoder_local", "decoder_global")
                                  for p in jax.tree.leaves(params[k])),
            "train_step_gflop_per_image": _per_image(runners[decoder].compiled, batch) / 1e9,
            "forward_gflop_per_image": forward / 1e9 if forward else None,
            "embed_gflop_per_image": embed / 1e9 if embed else None,
            "compile_s": runners[decoder].compile_s,
            "images_per_s_rounds": [],
        }
    # Alternate the two in rounds so that a change of machine load falls on both alike.
    for r in range(rounds):
        for decoder in DECODERS:
            times = benchlib.time_calls(runners[decoder], steps, warmup if r == 0 else 0, f"{decoder} round {r + 1}")
            rows[decoder]["images_per_s_rounds"].append(batch / statistics.median(times))
    for row in rows.values():
        row["images_per_s"] = statistics.median(row["images_per_s_rounds"])
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
        "speedup_paper_over_reference": rows["paper"]["images_per_s"] / rows["pytorch_reference"]["images_per_s"],
        **benchlib.environment(devices),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/full.py")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per decoder and round")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    parser.add_argument("--out", default=None)
    benchlib.add_set_arg(parser)
    args = parser.parse_args(argv)
    benchlib.check_steps(args.steps, args.warmup)
    result = run(args.config, args.overrides, batch=args.batch, steps=args.steps, warmup=args.warmup,
                 rounds=args.rounds, dtype=args.dtype)
    columns = ["decoder", "params", "decoder params", "train step GFLOP/image", "forward GFLOP/image",
               "embed GFLOP/image", "images/s (median of rounds)", "images/s per round"]
    benchlib.print_table(f"decoders of {args.config}, batch {args.batch}, {result['dtype']}", columns, [
        [r["decoder"], r["params"], r["decoder_params"], r["train_step_gflop_per_image"], r["forward_gflop_per_image"],
         r["embed_gflop_per_image"], r["images_per_s"], " ".join(f"{v:.3g}" for v in r["images_per_s_rounds"])]
        for r in result["rows"]])
    print(f"paper / reference training speed: {result['speedup_paper_over_reference']:.1f}x")
    benchlib.write_json(result, args.out)
    return result


if __name__ == "__main__":
    benchlib.run_cli(main)
