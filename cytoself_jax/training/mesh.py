"""Devices and shardings for data parallelism: a 1-D mesh over every device, batch split along 'data'."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
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
