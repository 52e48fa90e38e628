"""Devices and shardings for data parallelism: a 1-D mesh over every device, batch split along 'data'."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named 'data' over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split across the mesh, other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device (parameters, optimizer state)."""
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh, field: str = "config.train.batch_size") -> None:
    """Raise a clear error when the global batch cannot be split evenly over the devices."""
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(f"{field}: must be a multiple of the {n} devices in use, got {batch_size}")


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host numpy batch (this process's share) -> global arrays split along 'data' on the mesh."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a pytree on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


# Long enough for one process to compile a full-size step on a busy CPU while the others wait.
_BARRIER_TIMEOUT_S = 3600


def wait_for_all_processes(name: str) -> None:
    """Multi-process runs: block until every process reaches the barrier `name` (unique per call site and use).

    This is the coordination service's barrier (a key-value wait with a long timeout), not a device collective:
    JAX's CPU collectives (gloo) give up when the processes arrive more than 30 s apart, as they do after one
    of them compiled or wrote files for longer. A no-op in a single process."""
    if jax.process_count() > 1:
        ocp.multihost.get_barrier_sync_fn()(key=name, timeout_ms=_BARRIER_TIMEOUT_S * 1000)


def compiled_together(step: Callable, name: str) -> Callable:
    """`step` (a jitted function of fixed input shapes) for a multi-process run: on the first call it is compiled
    ahead, then every process waits for the others (wait_for_all_processes) before running it, so that the
    processes reach its collectives together; later calls run the compiled program. Single process: `step`."""
    if jax.process_count() == 1:
        return step
    compiled = None

    def run(*args):
        nonlocal compiled
        if compiled is None:
            compiled = step.lower(*args).compile()
            wait_for_all_processes(f"compiled {name}")
        return compiled(*args)

    return run
