"""Shared pieces of the benchmarks: config loading, the model under test, timing, cost and memory readings,
device facts, and the printed table + JSON record every benchmark ends with.

The benchmarks are scripts (`python bench/<name>.py ...`); they import this module as `benchlib` because the
script's folder is first on sys.path.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import flax
import jax
import ml_collections
import numpy as np

from cytoself_jax.config import apply_overrides
from cytoself_jax.memory import peak_rss_bytes
from cytoself_jax.models import ModelConfigError

# The hardware limit used for "fraction of peak": the dense bf16 matrix rate measured on an H100 SXM
# (~790 TFLOP/s; bench/README.md, "fraction of peak"). It is the card's limit whatever the compute dtype, so fp32 runs are
# measured against it too. The H200 has the same compute die. Elsewhere the peak is unknown (null) unless given.
PEAK_TFLOPS = {"H100": 790.0, "H200": 790.0}
# Memory bandwidth (TB/s, spec sheets: H100 SXM HBM3, H200 HBM3e), for the memory-bound limit of light programs.
PEAK_TBS = {"H100": 3.35, "H200": 4.8}
# The paper's OpenCell model: 100x100 crops, 1311 proteins (the paper's OpenCell data); used when the config draws no data.
PAPER_SIZE, PAPER_CLASSES = 100, 1311


class BenchError(ValueError):
    """A benchmark option or config that cannot be run, with the option named."""


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The ConfigDict returned by get_config() of an experiment config file (configs/*.py), with `--set`
    overrides ('dotted.field=value') applied."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"{path}: --config: expected an experiment config file (configs/*.py), not found")
    spec = importlib.util.spec_from_file_location(f"bench_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise BenchError(f"{path}: get_config: expected the config file to define get_config()")
    try:
        return apply_overrides(module.get_config(), overrides)
    except ValueError as e:
        raise BenchError(f"{path}: {e}") from None


def run_cli(main: Callable[[], Any]) -> None:
    """Run a benchmark's main(); a bad option or config is one line on stderr (exit status 2), not a traceback."""
    try:
        main()
    except (BenchError, ModelConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def add_set_arg(parser: argparse.ArgumentParser) -> None:
    """--set FIELD=VALUE ...: config overrides, e.g. --set model.remat_decoders=True."""
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="config overrides, e.g. model.remat_decoders=True")


def input_shape(config: ml_collections.ConfigDict, size: int | None, num_classes: int | None) -> tuple[tuple[int, int, int], int]:
    """((H, W, C), num_classes) of the random inputs: the config's synthetic data when it draws some, else the
    paper's 100x100 crops of 1311 proteins; C is the number of config.data.channels. Options override."""
    syn = config.data.synthetic
    draws = syn.proteins > 0
    size = size or (syn.size if draws else PAPER_SIZE)
    num_classes = num_classes or (syn.proteins if draws else PAPER_CLASSES)
    if size < 8 or num_classes < 1:
        raise BenchError(f"--size, --num-classes: expected size >= 8 and num_classes >= 1, got {size}, {num_classes}")
    return (size, size, len(config.data.channels)), num_classes


def set_dtype(config: ml_collections.ConfigDict, dtype: str | None) -> ml_collections.ConfigDict:
    """The config with config.model.dtype set to dtype (float32 or bfloat16) when given."""
    if dtype is not None:
        if dtype not in ("float32", "bfloat16"):
            raise BenchError(f"--dtype: expected float32 or bfloat16, got {dtype!r}")
        config.model.dtype = dtype
    return config


def random_batch(rng: np.random.Generator, batch: int, shape: tuple[int, int, int], num_classes: int) -> dict:
    """A host batch like the pipeline's: image float32 (B,H,W,C) in [0,1], label int32 (B,), index int32 (B,)."""
    return {
        "image": rng.random((batch, *shape), dtype=np.float32),
        "label": rng.integers(0, num_classes, batch).astype(np.int32),
        "index": np.arange(batch, dtype=np.int32),
    }


def check_divisible(batch: int, devices: int) -> None:
    if batch < 1 or batch % devices:
        raise BenchError(f"--batch: expected a positive multiple of the {devices} devices in use, got {batch}")


def cost_of(compiled) -> dict[str, float | None]:
    """{'flops', 'bytes'}: FLOPs and bytes of memory accessed by one call of a compiled program, from XLA's
    cost analysis (None where unavailable). For a program partitioned over devices it is one device's share."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        cost = None
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
        cost = cost[0] if cost else None
    cost = cost or {}
    value = lambda key: float(cost[key]) if cost.get(key, 0) > 0 else None  # noqa: E731
    return {"flops": value("flops"), "bytes": value("bytes accessed")}


def flops_of(compiled) -> float | None:
    """FLOPs of one call of a compiled program (one device's share), None where unknown."""
    return cost_of(compiled)["flops"]


def memory_analysis(compiled) -> dict[str, int] | None:
    """Bytes XLA planned for one call: arguments, outputs, temporaries (None where unavailable)."""
    try:
        m = compiled.memory_analysis()
    except Exception:
        return None
    if m is None:
        return None
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes")
    return {f: int(getattr(m, f)) for f in fields if hasattr(m, f)}


def peak_memory(devices: Sequence[jax.Device]) -> tuple[int, str]:
    """(bytes, source): the largest peak_bytes_in_use of the devices' allocators (GPU/TPU), else the process's
    peak resident set size (CPU, where device memory is host memory)."""
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in devices]
    peaks = [p for p in peaks if p]
    if peaks:
        return int(max(peaks)), "device peak_bytes_in_use (max over devices)"
    return peak_rss_bytes(), "process peak RSS"


def _device_peak(device: jax.Device, table: dict[str, float]) -> float | None:
    for name, value in table.items():
        if device.platform == "gpu" and name in device.device_kind:
            return value
    return None


def default_peak_tflops(device: jax.Device) -> float | None:
    """The hardware limit (TFLOP/s) for a device kind we have a measured rate for, else None."""
    return _device_peak(device, PEAK_TFLOPS)


def default_peak_tbs(device: jax.Device) -> float | None:
    """The memory bandwidth (TB/s) of a device kind we know, else None."""
    return _device_peak(device, PEAK_TBS)


def time_calls(fn: Callable[[], Any], steps: int, warmup: int, desc: str,
               cpu_times: list[float] | None = None) -> list[float]:
    """Wall seconds of `steps` calls of fn after `warmup` untimed ones; fn must block until its work is done.
    cpu_times, when given, receives the process's CPU seconds (all threads) of each call: on a shared machine
    they vary less than wall times."""
    from tqdm.auto import tqdm

    for _ in range(warmup):
        fn()
    times = []
    for _ in tqdm(range(steps), desc=desc, unit="step", leave=False):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        if cpu_times is not None:
            cpu_times.append(time.process_time() - cpu)
    return times


def throughput(times: Sequence[float], items_per_call: int) -> dict[str, float]:
    """Median/min/max seconds per call and items/s at the median."""
    median = statistics.median(times)
    return {"median_s": median, "min_s": min(times), "max_s": max(times), "per_s": items_per_call / median}


def compute_fraction(flops_per_item: float | None, items_per_s: float, peak_tflops: float | None,
                     bytes_per_item: float | None = None, peak_tbs: float | None = None) -> dict[str, Any]:
    """Achieved TFLOP/s, the peak it is compared with and the fraction; the items/s at that peak (compute
    limit), at the memory bandwidth (memory limit, when bytes and bandwidth are known) and the fraction of the
    lower of the two (the roofline limit)."""
    achieved = flops_per_item * items_per_s / 1e12 if flops_per_item else None
    compute_limit = peak_tflops * 1e12 / flops_per_item if flops_per_item and peak_tflops else None
    memory_limit = peak_tbs * 1e12 / bytes_per_item if bytes_per_item and peak_tbs else None
    limits = [x for x in (compute_limit, memory_limit) if x]
    return {
        "achieved_tflops": achieved,
        "peak_tflops": peak_tflops,
        "fraction_of_peak": achieved / peak_tflops if achieved is not None and peak_tflops else None,
        "limit_per_s": compute_limit,
        "memory_limit_per_s": memory_limit,
        "fraction_of_roofline": items_per_s / min(limits) if limits else None,
    }


def environment(devices: Sequence[jax.Device]) -> dict[str, Any]:
    """Where the numbers come from: device kind and count (None without devices), versions, host, the command
    line, the time."""
    d = devices[0] if devices else None
    return {
        "device": {"platform": d.platform, "kind": d.device_kind, "count": len(devices)} if d else None,
        "jax_version": jax.__version__,
        "jaxlib_version": getattr(jax.lib, "__version__", None) or _jaxlib_version(),
        "flax_version": flax.__version__,
        "python": platform.python_version(),
        "host": {"cpus": os.cpu_count(), "machine": platform.machine()},
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        # The development machine is shared: a load above its core count means the timings are pessimistic.
        "load_average": list(os.getloadavg()),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _jaxlib_version() -> str | None:
    try:
        import jaxlib

        return jaxlib.__version__
    except Exception:
        return None


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Print (and return) a markdown table."""
    lines = [f"\n{title}", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def write_json(result: dict, out: str | os.PathLike | None) -> None:
    """Write the result record to `out` (folders created) when given."""
    if out:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
        print(f"wrote {out}")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def gib(n: int | None) -> float | None:
    return None if n is None else n / 2**30


def add_model_args(parser: argparse.ArgumentParser, batch: int | None, batch_help: str, peak: bool = True) -> None:
    """The options shared by the model benchmarks (config, batch, dtype, steps, input shape, peak, output)."""
    parser.add_argument("--config", required=True, help="experiment config file, e.g. configs/full.py")
    parser.add_argument("--batch", type=int, default=batch, help=batch_help)
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                        help="compute dtype (default: the config's model.dtype); one per process, so peak memory "
                        "is its own")
    parser.add_argument("--steps", type=int, default=20, help="timed calls (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls after compiling")
    parser.add_argument("--size", type=int, default=None, help="crop size (default: the config's synthetic size, "
                        f"else {PAPER_SIZE})")
    parser.add_argument("--num-classes", type=int, default=None, help="proteins (default: the config's synthetic "
                        f"proteins, else {PAPER_CLASSES})")
    if peak:
        parser.add_argument("--peak-tflops", type=float, default=None, help="hardware limit in TFLOP/s (default: "
                            "790 on H100/H200, else none)")
    parser.add_argument("--out", default=None, help="JSON file to write")
    add_set_arg(parser)


def check_steps(steps: int, warmup: int) -> None:
    if steps < 1 or warmup < 0:
        raise BenchError(f"--steps, --warmup: expected steps >= 1 and warmup >= 0, got {steps}, {warmup}")


def timing_record(benchmark: str, label: str, config: ml_collections.ConfigDict, image_shape: Sequence[int],
                  num_classes: int, batch: int, warmup: int, times: Sequence[float], compile_s: float, compiled,
                  devices: Sequence[jax.Device], peak_tflops: float | None) -> dict[str, Any]:
    """The JSON record of a timed compiled program that processes `batch` images per call over `devices`:
    images/s (median call), FLOPs per image, fraction of the peak (given, else the device kind's), memory."""
    speed = throughput(times, batch)
    cost = cost_of(compiled)
    # The cost analysis of a partitioned program is one device's share: batch / devices images.
    per_image = {k: v * len(devices) / batch if v else None for k, v in cost.items()}
    peak = peak_tflops if peak_tflops is not None else default_peak_tflops(devices[0])
    frac = compute_fraction(per_image["flops"], speed["per_s"], peak, per_image["bytes"], default_peak_tbs(devices[0]))
    memory, memory_source = peak_memory(devices)
    return {
        "benchmark": benchmark,
        "label": label,
        "images_per_s": speed["per_s"],
        "images_per_s_per_device": speed["per_s"] / len(devices),
        "step_s": {k: speed[k] for k in ("median_s", "min_s", "max_s")},
        "step_times_s": list(times),
        "compile_s": compile_s,
        "flops_per_image": per_image["flops"],
        "bytes_accessed_per_image": per_image["bytes"],
        "achieved_tflops": frac["achieved_tflops"],
        "peak_tflops": frac["peak_tflops"],
        "fraction_of_peak": frac["fraction_of_peak"],
        "limit_images_per_s": frac["limit_per_s"],
        "peak_tbs": default_peak_tbs(devices[0]),
        "memory_limit_images_per_s": frac["memory_limit_per_s"],
        "fraction_of_roofline": frac["fraction_of_roofline"],
        "peak_memory_bytes": memory,
        "peak_memory_source": memory_source,
        "compiled_memory_bytes": memory_analysis(compiled),
        "config": {"dtype": config.model.dtype, "batch": batch, "image_shape": list(image_shape),
                   "num_classes": num_classes, "steps": len(times), "warmup": warmup,
                   "model": config.model.to_dict()},
        **environment(devices),
    }


def out_of_memory_record(benchmark: str, label: str, config: ml_collections.ConfigDict, batch: int,
                         error: Exception) -> dict[str, Any]:
    """The record of a run that did not fit in device memory: a result ("out of memory" in the table), not a crash."""
    return {"benchmark": benchmark, "label": label, "error": "out of memory", "detail": str(error).splitlines()[0],
            "images_per_s": None, "config": {"dtype": config.model.dtype, "batch": batch},
            **environment(jax.devices())}


def is_out_of_memory(error: Exception) -> bool:
    return isinstance(error, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(error)


TIMING_COLUMNS = ["config", "dtype", "batch", "device", "devices", "images/s", "call s (median)", "compile s",
                  "GFLOP/image", "MB accessed/image", "TFLOP/s", "fraction of peak", "fraction of roofline",
                  "peak memory GiB", "load avg"]


def timing_row(r: dict[str, Any]) -> list[Any]:
    """A TIMING_COLUMNS row of a timing_record (or of an out_of_memory_record)."""
    if r.get("error"):
        return [r["label"], r["config"]["dtype"], r["config"]["batch"], r["device"]["kind"], r["device"]["count"],
                r["error"], *["-"] * (len(TIMING_COLUMNS) - 6)]
    return [r["label"], r["config"]["dtype"], r["config"]["batch"], r["device"]["kind"], r["device"]["count"],
            r["images_per_s"], r["step_s"]["median_s"], r["compile_s"],
            r["flops_per_image"] / 1e9 if r["flops_per_image"] else None,
            r["bytes_accessed_per_image"] / 1e6 if r["bytes_accessed_per_image"] else None, r["achieved_tflops"],
            r["fraction_of_peak"], r["fraction_of_roofline"], gib(r["peak_memory_bytes"]), r["load_average"][0]]


def run_and_report(kind: str, title: str, run, config: ml_collections.ConfigDict, batch: int, args) -> dict:
    """Run a timing benchmark from its parsed arguments, turning an out-of-memory failure into a result
    record; print the table and write the JSON (args.out). Returns the record."""
    try:
        result = run(config, batch=batch, steps=args.steps, warmup=args.warmup, size=args.size,
                     num_classes=args.num_classes, peak_tflops=args.peak_tflops, label=args.config)
    except jax.errors.JaxRuntimeError as e:
        if not is_out_of_memory(e):
            raise
        result = out_of_memory_record(kind, args.config, config, batch, e)
    print_table(title, TIMING_COLUMNS, [timing_row(result)])
    write_json(result, args.out)
    return result
