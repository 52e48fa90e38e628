"""Training memory without a GPU: the activations autodiff keeps for the backward pass, per image, by dtype.

Traces (never runs) the training loss of the config's model and reads the residuals of its vector-Jacobian
product (the arrays jax.vjp keeps for the backward pass) at batches 1 and 2: their difference is the per-image
cost, the rest is batch-independent (e.g. parameters cast to the compute dtype). Adds the train state (float32
parameters + Adam's two moments) to predict the memory of a step at `--batch` before XLA's fusion, which lowers it
somewhat (on CPU, full config, batch 16: XLA planned 6.9 GiB (float32) and 6.4 GiB (bfloat16) of temporaries
against 9.1 and 6.2 GiB of residuals predicted here). It counts what autodiff keeps, not the intermediates a
rematerialized (jax.checkpoint) segment recomputes during its backward pass, so under remat it underestimates.
Seconds on a CPU.

python bench/activation_memory.py --config configs/full.py --batch 256 --out bench/results/activation_memory_full.json
"""

from __future__ import annotations

import argparse
import collections
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import benchlib
from cytoself_jax.training.losses import loss_terms, total_loss
from cytoself_jax.models import build_model


def residual_bytes(config: ml_collections.ConfigDict, image_shape: Sequence[int], num_classes: int,
                   batch: int) -> dict[str, int]:
    """Bytes by dtype of the residuals of the training loss's VJP wrt the parameters for `batch` images (the
    parameters themselves left out), and under "params" the parameters' bytes."""
    model = build_model(config, tuple(image_shape), num_classes)
    key = jax.random.PRNGKey(0)
    variables = jax.eval_shape(lambda k: model.init({"params": k, "dropout": k}, jnp.zeros((2, *image_shape)),
                                                    train=False), key)
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}

    def residuals(params, state, images, labels):
        def loss(p):
            out, _ = model.apply({"params": p, **state}, images, train=True, rngs={"dropout": key},
                                 mutable=list(state))
            return total_loss(loss_terms(out, images, labels), config.loss)

        return jax.tree.leaves(jax.vjp(loss, params)[1])  # the VJP closure's leaves are what it keeps

    jaxpr = jax.make_jaxpr(residuals)(params, state, jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32),
                                      jax.ShapeDtypeStruct((batch,), jnp.int32)).jaxpr
    inputs = {id(v) for v in jaxpr.invars}
    by_dtype: collections.Counter = collections.Counter()
    for var in jaxpr.outvars:
        if id(var) in inputs:  # a parameter kept as it is: already counted in the train state
            continue
        by_dtype[str(var.aval.dtype)] += int(np.prod(var.aval.shape)) * var.aval.dtype.itemsize
    by_dtype["params"] = sum(int(np.prod(p.shape)) * p.dtype.itemsize for p in jax.tree.leaves(params))
    return dict(by_dtype)


def run(config: ml_collections.ConfigDict, *, batch: int, size: int | None = None, num_classes: int | None = None,
        label: str = "") -> dict[str, Any]:
    """Per-image and batch-independent residual bytes of `config`'s training step, and the prediction at batch."""
    if batch < 1:
        raise benchlib.BenchError(f"--batch: expected a positive batch, got {batch}")
    shape, num_classes = benchlib.input_shape(config, size, num_classes)
    one, two = (residual_bytes(config, shape, num_classes, b) for b in (1, 2))
    param_bytes = one.pop("params")
    two.pop("params")
    dtypes = sorted(set(one) | set(two))
    per_image = {d: two.get(d, 0) - one.get(d, 0) for d in dtypes}
    fixed = {d: one.get(d, 0) - per_image[d] for d in dtypes}
    train_state = 3 * param_bytes  # float32 parameters and Adam's first and second moments
    predicted = batch * sum(per_image.values()) + sum(fixed.values()) + train_state
    return {
        "benchmark": "activation_memory", "label": label, "dtype": config.model.dtype, "batch": batch,
        "image_shape": list(shape), "num_classes": num_classes,
        "residual_bytes_per_image": per_image, "residual_bytes_fixed": fixed, "param_bytes": param_bytes,
        "train_state_bytes": train_state, "predicted_step_bytes": predicted,
        **benchlib.environment(jax.devices()),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="experiment config file, e.g. configs/full.py")
    p.add_argument("--batch", type=int, default=256, help="global batch of the prediction (on one device)")
    p.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=("float32", "bfloat16"),
                   help="compute dtypes to trace")
    p.add_argument("--size", type=int, default=None, help="crop size (default: the config's synthetic size, else 100)")
    p.add_argument("--num-classes", type=int, default=None, help="proteins (default: the config's, else 1311)")
    benchlib.add_set_arg(p)
    p.add_argument("--out", default=None, help="JSON file to write (a list, one record per dtype)")
    args = p.parse_args(argv)
    results = [run(benchlib.set_dtype(benchlib.load_config(args.config, args.overrides), d), batch=args.batch, size=args.size,
                   num_classes=args.num_classes, label=args.config) for d in args.dtype]
    mib, gib = 2**20, 2**30
    rows = [[r["dtype"], *(r["residual_bytes_per_image"].get(d, 0) / mib for d in ("float32", "bfloat16")),
             sum(r["residual_bytes_fixed"].values()) / mib, r["train_state_bytes"] / gib, r["batch"],
             r["predicted_step_bytes"] / gib] for r in results]
    benchlib.print_table(f"activation memory: {args.config}", ["dtype", "float32 MiB/image", "bfloat16 MiB/image",
                         "batch-independent MiB", "train state GiB", "batch", "predicted GiB"], rows)
    benchlib.write_json(results, args.out)
    return results


if __name__ == "__main__":
    benchlib.run_cli(main)
