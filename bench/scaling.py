"""Data-parallel scaling: the same global batch over 1, 2, 4, 8 devices gives the same losses; per-device speed.

For each device count, the train step of bench/train_step.py starts from the same state and batch (same seed)
on the first n devices; the losses of its first `--check-steps` steps are compared with the 1-device run (max
absolute difference: only the order of floating-point reductions differs), then `--steps` more steps are timed.
Without accelerators, XLA_FLAGS=--xla_force_host_platform_device_count=8 (set here before jax is imported,
unless XLA_FLAGS already sets a count) gives 8 virtual CPU devices sharing the host's cores: their per-device
throughput shows the partitioning overhead, not a speed-up. Prints a table and writes JSON.

python bench/scaling.py --config configs/demo.py --batch 32 --out bench/results/scaling_demo_cpu.json
"""

import os

# Must happen before jax is imported (benchlib imports it).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
from typing import Any, Sequence  # noqa: E402

import jax  # noqa: E402
import ml_collections  # noqa: E402

import benchlib  # noqa: E402
import train_step  # noqa: E402


def run(config: ml_collections.ConfigDict, *, batch: int, device_counts: Sequence[int] = (1, 2, 4, 8),
        check_steps: int = 2, steps: int = 5, size: int | None = None, num_classes: int | None = None,
        label: str = "") -> dict[str, Any]:
    """Run the train step at global batch `batch` on each device count; the JSON record."""
    if check_steps < 1 or steps < 1:
        raise benchlib.BenchError(f"--check-steps, --steps: expected >= 1, got {check_steps}, {steps}")
    available = jax.devices()
    counts = [n for n in device_counts if n <= len(available)]
    if not counts or any(n < 1 for n in device_counts):
        raise benchlib.BenchError(f"--devices: expected counts in 1..{len(available)} (devices available), "
                                  f"got {list(device_counts)}")
    shape, num_classes = benchlib.input_shape(config, size, num_classes)
    rows = []
    for n in counts:
        runner = train_step.make_runner(config, shape, num_classes, batch, available[:n], seed=0)
        losses = [float(runner()["loss"]) for _ in range(check_steps)]  # also the warm-up
        times = benchlib.time_calls(runner, steps, 0, desc=f"{n} devices")
        speed = benchlib.throughput(times, batch)
        flops = benchlib.flops_of(runner.compiled)
        rows.append({"devices": n, "per_device_batch": batch // n, "losses": losses, "compile_s": runner.compile_s,
                     "flops_per_image": flops * n / batch if flops else None,
                     "images_per_s": speed["per_s"], "images_per_s_per_device": speed["per_s"] / n,
                     "step_s": {k: speed[k] for k in ("median_s", "min_s", "max_s")}})
    reference = rows[0]["losses"]
    for row in rows:
        row["max_abs_loss_diff"] = max(abs(a - b) for a, b in zip(row["losses"], reference))
    return {
        "benchmark": "scaling",
        "label": label,
        "batch": batch,
        "image_shape": list(shape),
        "num_classes": num_classes,
        "dtype": config.model.dtype,
        "skipped_device_counts": [n for n in device_counts if n > len(available)],
        "results": rows,
        "max_abs_loss_diff": max(r["max_abs_loss_diff"] for r in rows),
        "peak_memory_bytes": benchlib.peak_memory(available)[0],
        **benchlib.environment(available),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo.py", help="experiment config file")
    p.add_argument("--batch", type=int, default=32, help="global batch, a multiple of every device count")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"), help="compute dtype")
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8], help="device counts")
    p.add_argument("--check-steps", type=int, default=2, help="steps whose losses are compared")
    p.add_argument("--steps", type=int, default=5, help="timed steps after them")
    p.add_argument("--size", type=int, default=None, help="crop size (default: the config's)")
    p.add_argument("--num-classes", type=int, default=None, help="proteins (default: the config's)")
    benchlib.add_set_arg(p)
    p.add_argument("--out", default=None, help="JSON file to write")
    args = p.parse_args(argv)
    config = benchlib.set_dtype(benchlib.load_config(args.config, args.overrides), args.dtype)
    result = run(config, batch=args.batch, device_counts=args.devices, check_steps=args.check_steps,
                 steps=args.steps, size=args.size, num_classes=args.num_classes, label=args.config)
    rows = [[r["devices"], result["batch"], r["per_device_batch"], r["images_per_s"], r["images_per_s_per_device"],
             r["losses"][0], r["max_abs_loss_diff"], r["compile_s"]] for r in result["results"]]
    title = (f"scaling: {args.config} {result['dtype']} on {result['device']['kind']}"
             + (f" (skipped {result['skipped_device_counts']}: not enough devices)" if result["skipped_device_counts"] else ""))
    benchlib.print_table(title, ["devices", "global batch", "per-device batch", "images/s", "images/s per device",
                                 "loss step 1", "max abs loss diff vs 1 device", "compile s"], rows)
    benchlib.write_json(result, args.out)
    return result


if __name__ == "__main__":
    benchlib.run_cli(main)
