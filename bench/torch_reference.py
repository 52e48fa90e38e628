"""Training-step time of the PyTorch reference cytoself (CytoselfFull) on the CPU, for bench/vs_pytorch.py.

Runs in a SEPARATE virtualenv with CPU torch and the reference's code (never a dependency of this project; see
bench/README.md, "Against the PyTorch reference", for how that environment is made). One step is what the
reference's CytoselfFullTrainer.run_one_batch does with zero_grad, backward and optimize: forward, every loss
(reconstruction / variance, decoder2's reconstruction, both VQ losses, both classifier cross-entropies),
backward, Adam. The model is built from a JSON spec written by vs_pytorch.py from our config, so both sides
build the same architecture. Prints one JSON line.

/path/to/torch-venv/bin/python bench/torch_reference.py --spec spec.json --reference-src DIR --batch 32 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def build(spec: dict):
    """CytoselfFull of the reference at the sizes of `spec` (see vs_pytorch.torch_spec)."""
    from cytoself_torch_ref import CytoselfFull

    return CytoselfFull(
        emb_shapes=[tuple(s) for s in spec["emb_shapes"]],
        vq_args=[dict(v) for v in spec["vq_args"]],
        num_class=spec["num_class"],
        input_shape=tuple(spec["input_shape"]),
        encoder_args=[{"blocks_args": [dict(b) for b in blocks], "stochastic_depth_prob": spec["drop_path_rate"]}
                      for blocks in spec["encoder_blocks"]],
        decoder_args=[{"num_residual_layers": spec["residual_units"]} for _ in spec["emb_shapes"]],
        fc_args={"num_layers": 2, "num_features": spec["head_hidden"], "dropout_rate": spec["head_dropout"]},
    )


def profile(step, steps: int) -> dict:
    """Self CPU milliseconds per step of each aten op over `steps` steps (torch.profiler); the optimizer's own
    ops are gathered under "optimizer"."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    out: dict[str, float] = {}
    for event in prof.events():
        parent, in_optimizer = event, False
        while parent is not None and not in_optimizer:
            in_optimizer = parent.name.startswith("Optimizer.step")
            parent = parent.cpu_parent
        key = "optimizer" if in_optimizer else event.name
        out[key] = out.get(key, 0.0) + event.self_cpu_time_total / 1e3 / steps
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", required=True, help="JSON model spec written by vs_pytorch.py")
    p.add_argument("--reference-src", required=True, help="folder holding cytoself_torch_ref.py")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile", action="store_true",
                   help="instead of timing, record torch.profiler's self CPU ms per aten op and step")
    args = p.parse_args(argv)
    sys.path.insert(0, args.reference_src)
    import torch

    from cytoself_torch_ref import full_loss

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = json.load(open(args.spec))
    start = time.perf_counter()
    model = build(spec)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=4e-4)
    c, h, w = spec["input_shape"]
    images = torch.rand(args.batch, c, h, w)
    labels = torch.randint(0, spec["num_class"], (args.batch,))
    variance = float(images.var())

    def step() -> float:
        optimizer.zero_grad()
        loss = full_loss(model, model(images), images, labels, variance)
        loss.backward()
        optimizer.step()
        return loss.item()  # as the trainer does: waits for the step

    first = step()
    setup_s = time.perf_counter() - start  # construction + first step (the reference's "warm-up")
    for _ in range(args.warmup):
        step()
    if args.profile:
        print(json.dumps({"side": "pytorch_reference", "steps": args.steps, "self_cpu_ms_per_step": profile(step, args.steps)}))
        return {}
    times, cpu_times = [], []
    for _ in range(args.steps):
        t, cpu = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - cpu)
    median = statistics.median(times)
    result = {"side": "pytorch_reference", "torch_version": torch.__version__, "threads": torch.get_num_threads(),
              "batch": args.batch, "num_params": sum(p.numel() for p in model.parameters()),
              "images_per_s": args.batch / median, "step_s": {"median": median, "min": min(times), "max": max(times)},
              "step_times_s": times, "step_cpu_s": cpu_times, "first_step_s": setup_s, "first_loss": first}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
