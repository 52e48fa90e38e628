"""Training on a CPU: one XLA CPU device per core, so that the data-parallel step keeps every core busy.

XLA runs one CPU program on one device, and a small model's convolutions leave cores idle between and within ops.
Split into d host devices, the mesh gives each its share of the batch and they run side by side (BatchNorm's
statistics and the gradients are still over the whole batch: the same step, summed in another order). Measured
on the 2-core development machine, `configs/demo.py`, batch 32: 26 images/s with one device, 33.8 with two
(`bench/README.md`, "Against the PyTorch reference"). Without effect on a GPU run (it adds host devices only).
"""

from __future__ import annotations

import os

_FLAG = "--xla_force_host_platform_device_count"
# Beyond this, per-device batches get too small to pay for the gradient all-reduce (not measured above 2 cores).
MAX_DEVICES = 8


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def split_cpu_for(batch_size: int) -> int:
    """Before the first JAX call: unless XLA_FLAGS already sets the host device count, make the CPU d devices,
    d the largest divisor of batch_size up to min(usable_cores(), MAX_DEVICES), so that every device gets an
    equal share of each batch. Returns the CPU device count in force (1 when nothing was set)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if _FLAG in flags:
        return int(flags.split(_FLAG + "=", 1)[1].split()[0]) if _FLAG + "=" in flags else 1
    most = min(usable_cores(), MAX_DEVICES)
    devices = max(d for d in range(1, most + 1) if batch_size % d == 0)
    if devices > 1:
        os.environ["XLA_FLAGS"] = f"{flags} {_FLAG}={devices}".strip()
    return devices
