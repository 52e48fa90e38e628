"""Where a CPU training step's time goes, per kind of op and per model part: ours from XLA's profiler and, with
--torch-python, the PyTorch reference's from torch.profiler, on the same model (as bench/vs_pytorch.py builds it).

Ours: the compiled step of train_step.py, traced for --steps steps (jax.profiler, a Perfetto trace); each op
the CPU runtime executed is an HLO instruction of the compiled program, whose opcode, window and source
metadata (flax module path, forward or `transpose(jvp(...))` = backward) say what it is. Times are op
durations summed over devices, per step: with several CPU devices running side by side they add up to more than
the step's wall time. The reference: torch.profiler's self CPU time per aten op, per step. Shares of each side's
total are what compare; the kinds below are the finest both sides can name (PyTorch's convolution_backward is
the input and the kernel gradient together).

python bench/profile_step.py --config configs/demo.py --batch 32 --same-as-reference \
    --torch-python /work/torchref-venv/bin/python --reference-src /work/torchref/src --out bench/results/profile_demo_cpu.json
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

import jax

import benchlib
import train_step
import vs_pytorch

BENCH = Path(__file__).resolve().parent
PARTS = ("encoder_local", "encoder_global", "vq_local", "vq_global", "decoder_local", "decoder_global",
         "heads_local", "heads_global")
KINDS = ("conv forward", "conv input gradient", "conv kernel gradient", "matmul", "batchnorm", "activation",
         "upsampling", "layout copies", "all-reduce (between devices)", "optimizer", "other")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?\b([a-z][a-z0-9\-]*)\(")
_COMPUTATION = re.compile(r"^%?([\w.\-]+) .*\{$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_WINDOW = re.compile(r"window=\{size=(\d+)x(\d+)")


def hlo_instructions(hlo_text: str) -> dict[str, dict[str, str]]:
    """Instructions of a compiled HLO module's text: name -> {opcode, op_name, window, calls, shape}. A fusion
    that computes a convolution or a dot (XLA's CPU backend fuses them with their neighbours, e.g. YNNPACK
    fusions) takes that opcode and window; a fusion without op_name metadata takes its fused computation's."""
    inner: dict[str, dict[str, str]] = collections.defaultdict(dict)
    instructions: dict[str, dict[str, str]] = {}
    computation = None
    for line in hlo_text.splitlines():
        if not line.startswith(" ") and (m := _COMPUTATION.match(line.replace("ENTRY ", ""))):
            computation = m.group(1)
            continue
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        op_name = (_OP_NAME.search(line) or [None, ""])[1]
        window = _WINDOW.search(line)
        info = {"opcode": m.group(2), "op_name": op_name, "calls": (_CALLS.search(line) or [None, ""])[1],
                "window": f"{window[1]}x{window[2]}" if window else "", "shape": line.split(" = ")[1].split(" ")[0]}
        instructions[m.group(1)] = info
        if computation:
            seen = inner[computation]
            if op_name.startswith("jit(") and "op_name" not in seen:
                seen["op_name"] = op_name
            if info["opcode"] in ("convolution", "dot") and "opcode" not in seen:
                seen.update(opcode=info["opcode"], window=info["window"])
    for info in instructions.values():
        seen = inner.get(info["calls"], {}) if info["opcode"] == "fusion" else {}
        if not info["op_name"].startswith("jit(") and "op_name" in seen:
            info["op_name"] = seen["op_name"]
        if "opcode" in seen:
            info.update(opcode=seen["opcode"], window=seen["window"])
    return instructions


def classify(info: dict[str, str]) -> tuple[str, str, str]:
    """(part, direction, kind) of one HLO instruction from its opcode, window and op_name metadata."""
    op_name, opcode = info["op_name"], info["opcode"]
    part = next((p for p in PARTS if f"/{p}/" in op_name or op_name.endswith(f"/{p}")), None)
    backward = "transpose(" in op_name
    if part is None:
        part = "losses" if "jvp(" in op_name else "optimizer + other"
    if "/kernel_gradient/" in op_name:  # cytoself_jax.models.dense_conv's, a convolution or a matrix product
        return part, "backward", "conv kernel gradient"
    if opcode == "convolution":
        # autodiff writes each kernel gradient as a convolution whose window is the whole feature map, and XLA
        # keeps no source metadata on it: its model part is unknown
        if not op_name.startswith("jit("):
            return "conv kernel gradients (part unknown)", "backward", "conv kernel gradient"
        return part, "backward" if backward else "forward", "conv input gradient" if backward else "conv forward"
    direction = "backward" if backward else "forward"
    if part == "optimizer + other":
        return part, "update", "all-reduce (between devices)" if opcode == "all-reduce" else "optimizer"
    if opcode == "all-reduce":
        kind = "all-reduce (between devices)"
    elif opcode == "dot":
        kind = "matmul"
    elif "/bn/" in op_name:
        kind = "batchnorm"
    elif "silu" in op_name or "sigmoid" in op_name or "relu" in op_name:
        kind = "activation"
    elif "_resize" in op_name:
        kind = "upsampling"
    elif opcode in ("copy", "transpose") or info["calls"].startswith(("transpose", "copy")):
        kind = "layout copies"
    else:
        kind = "other"
    return part, direction, kind


def profile_ours(config, shape, num_classes: int, batch: int, steps: int, warmup: int = 2) -> dict[str, Any]:
    """Per-op durations of our compiled train step (microseconds summed over `steps` steps and all devices),
    grouped by (part, direction, kind); plus the step's wall seconds outside the profiler."""
    runner = train_step.make_runner(config, shape, num_classes, batch)
    instructions = hlo_instructions(runner.compiled.as_text())
    times = benchlib.time_calls(runner, steps, warmup, desc="train step (unprofiled)")
    with tempfile.TemporaryDirectory(prefix="profile-step-") as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(steps):
                runner()
        trace_path = glob.glob(f"{tmp}/**/perfetto_trace.json.gz", recursive=True)
        if not trace_path:
            raise benchlib.BenchError(f"{tmp}: jax.profiler wrote no perfetto_trace.json.gz")
        trace = json.load(gzip.open(trace_path[0]))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    groups: collections.Counter = collections.Counter()
    per_op: collections.Counter = collections.Counter()
    for e in events:
        info = instructions.get(e.get("name", "")) if e.get("ph") == "X" else None
        if info is None:
            continue
        if info["opcode"] in ("parameter", "tuple", "get-tuple-element", "bitcast", "constant"):
            continue
        groups[classify(info)] += e.get("dur", 0.0) / steps
        per_op[e["name"]] += e.get("dur", 0.0) / steps
    return {"step_wall_s_median": sorted(times)[len(times) // 2], "devices": jax.device_count(),
            "op_us_per_step": [{"part": p, "direction": d, "kind": k, "us": us}
                               for (p, d, k), us in sorted(groups.items(), key=lambda kv: -kv[1])],
            "top_ops": [{"op": name, "us": us, "shape": instructions[name]["shape"],
                         "window": instructions[name]["window"], "source": instructions[name]["op_name"],
                         **dict(zip(("part", "direction", "kind"), classify(instructions[name])))}
                        for name, us in per_op.most_common(30)]}


def torch_kind(op: str) -> str:
    """The KINDS entry of an aten op (self CPU time of the reference's step)."""
    if op in ("optimizer",) or op.startswith("Optimizer.step"):
        return "optimizer"
    if "convolution_backward" in op:
        return "conv input + kernel gradient"
    if "convolution" in op:
        return "conv forward"
    if "batch_norm" in op:
        return "batchnorm"
    if any(a in op for a in ("silu", "sigmoid", "relu")):
        return "activation"
    if "upsample" in op:
        return "upsampling"
    if any(op.endswith(m) for m in ("::mm", "::addmm", "::bmm", "::matmul", "::linear", "::cdist")):
        return "matmul"
    if any(c in op for c in ("copy_", "contiguous", "permute", "transpose", "clone", "cat")):
        return "layout copies"
    return "other"


def kind_table(ours: dict[str, Any], theirs: dict[str, Any] | None) -> list[list[Any]]:
    """Rows (kind, ours ms/step, ours share, reference ms/step, reference share); our two conv gradients are
    summed into PyTorch's one convolution_backward row, and also shown apart."""
    ours_kind: collections.Counter = collections.Counter()
    for row in ours["op_us_per_step"]:
        ours_kind[row["kind"]] += row["us"] / 1e3
    theirs_kind: collections.Counter = collections.Counter()
    for op, ms in (theirs or {}).get("self_cpu_ms_per_step", {}).items():
        theirs_kind[torch_kind(op)] += ms
    ours_kind["conv input + kernel gradient"] = ours_kind["conv input gradient"] + ours_kind["conv kernel gradient"]
    total_ours, total_theirs = sum(v for k, v in ours_kind.items() if k != "conv input + kernel gradient"), \
        sum(theirs_kind.values())
    kinds = ["conv forward", "conv input + kernel gradient", "conv input gradient", "conv kernel gradient",
             *[k for k in KINDS if not k.startswith("conv")]]
    rows = []
    for k in kinds:
        t = theirs_kind.get(k) if theirs else None
        rows.append([k, ours_kind.get(k, 0.0), ours_kind.get(k, 0.0) / total_ours,
                     t, (t / total_theirs) if t is not None and total_theirs else None])
    rows.append(["total", total_ours, 1.0, total_theirs if theirs else None, 1.0 if theirs else None])
    return rows


def part_table(ours: dict[str, Any]) -> list[list[Any]]:
    """Rows (part, forward ms, backward ms, of which conv kernel gradient ms, share) of our step."""
    by_part: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for row in ours["op_us_per_step"]:
        by_part[row["part"]][row["direction"]] += row["us"] / 1e3
        if row["kind"] == "conv kernel gradient":
            by_part[row["part"]]["kernel"] += row["us"] / 1e3
    total = sum(sum(c[d] for d in ("forward", "backward", "update")) for c in by_part.values())
    rows = []
    for part, c in sorted(by_part.items(), key=lambda kv: -sum(kv[1][d] for d in ("forward", "backward", "update"))):
        own = c["forward"] + c["backward"] + c["update"]
        rows.append([part, c["forward"], c["backward"] + c["update"], c["kernel"], own / total])
    return rows


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchlib.add_model_args(p, 32, "global batch", peak=False)
    p.set_defaults(steps=5)
    p.add_argument("--same-as-reference", action="store_true",
                   help="build the PyTorch reference's architecture (as bench/vs_pytorch.py does)")
    p.add_argument("--torch-python", default=None, help="python of the virtualenv holding CPU torch")
    p.add_argument("--reference-src", default=None, help="folder holding cytoself_torch_ref.py")
    args = p.parse_args(argv)
    benchlib.check_steps(args.steps, args.warmup)
    if args.torch_python and not (args.reference_src and args.same_as_reference):
        raise benchlib.BenchError("--torch-python: needs --reference-src and --same-as-reference (the same model)")
    config = benchlib.set_dtype(benchlib.load_config(args.config, args.overrides), args.dtype)
    shape, num_classes = benchlib.input_shape(config, args.size, args.num_classes)
    overrides = list(args.overrides)
    if args.same_as_reference:
        overrides += vs_pytorch.same_model_overrides(config, shape, num_classes)
        config = benchlib.set_dtype(benchlib.load_config(args.config, overrides), args.dtype)
    ours = profile_ours(config, shape, num_classes, args.batch, args.steps, args.warmup)
    theirs = None
    if args.torch_python:
        with tempfile.TemporaryDirectory(prefix="profile-step-") as tmp:
            spec = Path(tmp) / "spec.json"
            spec.write_text(json.dumps(vs_pytorch.torch_spec(config, shape, num_classes)))
            out = vs_pytorch._run([args.torch_python, str(BENCH / "torch_reference.py"), "--spec", str(spec),
                                   "--reference-src", args.reference_src, "--batch", str(args.batch),
                                   "--steps", str(args.steps), "--profile"],
                                  {**os.environ, "CUDA_VISIBLE_DEVICES": ""})
            theirs = json.loads(out.splitlines()[-1])
    kinds, parts = kind_table(ours, theirs), part_table(ours)
    benchlib.print_table(f"CPU step time per kind of op: {args.config}, batch {args.batch}, float32 (ours: op time "
                         f"summed over {ours['devices']} device(s))",
                         ["kind", "ours ms/step", "ours share", "reference ms/step", "reference share"], kinds)
    benchlib.print_table("ours per model part", ["part", "forward ms", "backward + update ms",
                                                 "of which conv kernel gradient ms", "share"], parts)
    result = {"benchmark": "profile_step", "config": args.config, "batch": args.batch, "overrides": overrides,
              "ours": ours, "reference": theirs, "kinds": kinds, "parts": parts,
              "load_average": os.getloadavg()[0], **benchlib.environment(jax.devices())}
    benchlib.write_json(result, args.out)
    return result


if __name__ == "__main__":
    benchlib.run_cli(main)
