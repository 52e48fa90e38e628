"""Where the training step's work goes: FLOPs and time of each top-level part of the model, run alone.

One training forward pass records, for each direct submodule of CytoselfModel (encoders, quantizers, decoders,
classifier heads), its input shapes; each is then compiled alone on one device with its slice of the variables,
as forward only and as forward + backward (gradients wrt its parameters and its input, as in the real step), and
timed (median of `--steps` waited-for calls). FLOPs come from XLA's cost analysis. The sum over parts leaves out
the loss and the optimizer update, and XLA optimises across parts in the real step, so the shares are a guide
to what dominates, not an exact split. Prints a table and writes JSON.

python bench/breakdown.py --config configs/full.py --batch 4 --steps 2 --out bench/results/breakdown_full_fp32_cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import benchlib
import train_step
from cytoself_jax.models import build_model


@dataclasses.dataclass
class Part:
    """A direct submodule of the model, unbound, with its call's positional inputs."""

    name: str
    module: nn.Module
    inputs: list[jax.ShapeDtypeStruct]
    static: list[Any]  # non-array positional arguments (train flag), in order after the arrays


def record_parts(model: nn.Module, variables: dict, image_shape: Sequence[int], batch: int) -> list[Part]:
    """The direct submodules a training forward pass of `batch` images calls, in call order (first call each)."""
    parts: dict[str, Part] = {}

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and len(module.scope.path) == 1 and module.scope.path[0] not in parts:
            arrays = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args if hasattr(a, "shape")]
            static = [a for a in args if not hasattr(a, "shape")]
            if kwargs:
                raise benchlib.BenchError(f"breakdown: {module.scope.path[0]}: keyword arguments are not recorded")
            parts[module.scope.path[0]] = Part(module.scope.path[0], module.clone(parent=None), arrays, static)
        return next_fun(*args, **kwargs)

    images = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)
    collections = [c for c in variables if c != "params"]
    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=True, rngs={"dropout": jax.random.PRNGKey(0)},
                                                mutable=collections), variables, images)
    return list(parts.values())


def _float_sum(tree: Any) -> jax.Array:
    leaves = [jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return sum(leaves, jnp.zeros((), jnp.float32))


def measure_part(part: Part, variables: dict, steps: int, warmup: int, rng: np.random.Generator) -> dict[str, Any]:
    """Compile and time one part alone, forward and forward + backward."""
    own = {c: v[part.name] for c, v in variables.items() if part.name in v}
    params, state = own.get("params", {}), {c: v for c, v in own.items() if c != "params"}
    key = jax.random.PRNGKey(0)

    def forward(params, *xs):
        out, _ = part.module.apply({"params": params, **state}, *xs, *part.static, rngs={"dropout": key},
                                   mutable=list(state))
        return out

    def forward_backward(params, *xs):
        # Any scalar of the outputs: what matters is the cost of the vector-Jacobian product.
        floats = [i for i, x in enumerate(xs) if jnp.issubdtype(x.dtype, jnp.floating)]
        return jax.grad(lambda p, *xs: _float_sum(forward(p, *xs)), argnums=(0, *(1 + i for i in floats)))(params, *xs)

    xs = [jnp.asarray(rng.random(s.shape, dtype=np.float32), s.dtype) for s in part.inputs]
    batch = part.inputs[0].shape[0]
    result: dict[str, Any] = {"part": part.name, "module": type(part.module).__name__,
                              "input_shapes": [list(s.shape) for s in part.inputs],
                              "num_params": sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))}
    for name, fn in (("forward", forward), ("forward_backward", forward_backward)):
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(params, *xs).compile()
        compile_s = time.perf_counter() - start
        times = benchlib.time_calls(lambda: jax.block_until_ready(compiled(params, *xs)), steps, warmup,
                                    desc=f"{part.name} {name}")
        flops = benchlib.flops_of(compiled)
        result[name] = {"median_s": float(np.median(times)), "compile_s": compile_s,
                        "flops_per_image": flops / batch if flops else None}
    return result


def run(config: ml_collections.ConfigDict, *, batch: int, steps: int = 3, warmup: int = 1, size: int | None = None,
        num_classes: int | None = None, label: str = "") -> dict[str, Any]:
    """Per-part FLOPs and times of `config`'s model at `batch` images; the JSON record."""
    benchlib.check_steps(steps, warmup)
    shape, num_classes = benchlib.input_shape(config, size, num_classes)
    model = build_model(config, shape, num_classes)
    state = train_step.init_state(model, config, shape, jax.random.PRNGKey(0))
    variables = {"params": state.params, **state.model_state}
    parts = record_parts(model, variables, shape, batch)
    rng = np.random.default_rng(0)
    rows = [measure_part(p, variables, steps, warmup, rng) for p in parts]
    total_s = sum(r["forward_backward"]["median_s"] for r in rows)
    total_flops = sum(r["forward_backward"]["flops_per_image"] or 0.0 for r in rows)
    for r in rows:
        fb = r["forward_backward"]
        r["time_share"] = fb["median_s"] / total_s
        r["flops_share"] = (fb["flops_per_image"] or 0.0) / total_flops if total_flops else None
    device = jax.devices()[0]
    return {"benchmark": "breakdown", "label": label, "dtype": config.model.dtype, "batch": batch,
            "image_shape": list(shape), "num_classes": num_classes, "parts": rows,
            "sum_forward_backward_s": total_s, "sum_forward_backward_flops_per_image": total_flops,
            "peak_memory_bytes": benchlib.peak_memory([device])[0], **benchlib.environment([device])}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchlib.add_model_args(parser, 8, "images per call (one device)", peak=False)
    args = parser.parse_args(argv)
    config = benchlib.set_dtype(benchlib.load_config(args.config, args.overrides), args.dtype)
    result = run(config, batch=args.batch, steps=args.steps, warmup=args.warmup, size=args.size,
                 num_classes=args.num_classes, label=args.config)
    g = 1e9
    rows = [[r["part"], r["num_params"], (r["forward"]["flops_per_image"] or 0) / g,
             (r["forward_backward"]["flops_per_image"] or 0) / g, r["forward"]["median_s"] * 1e3,
             r["forward_backward"]["median_s"] * 1e3, r["time_share"], r["flops_share"]] for r in result["parts"]]
    benchlib.print_table(f"breakdown: {args.config} {result['dtype']} batch {args.batch} on {result['device']['kind']}",
                         ["part", "params", "fwd GFLOP/image", "fwd+bwd GFLOP/image", "fwd ms", "fwd+bwd ms",
                          "share of time", "share of FLOPs"], rows)
    benchlib.write_json(result, args.out)
    return result


if __name__ == "__main__":
    benchlib.run_cli(main)
