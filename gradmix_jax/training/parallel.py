"""Data parallelism: one ("data",) mesh over every device; params replicated, batch sharded.

Under ``jax.jit`` with these shardings the contrastive similarity matrices and BatchNorm statistics
cover the global batch (XLA inserts the collectives), so 1 and 8 devices compute the same step.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh(devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Sharded over devices along ``axis`` (the batch axis), replicated along the others."""
    return NamedSharding(mesh, P(*([None] * axis), "data"))


def cluster_process_count() -> int:
    """Processes the environment says this job has (SLURM, Cloud TPU pod slice); 1 if none."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return int(os.environ["SLURM_NTASKS"])
    hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    return max(len(hosts), 1)


def maybe_initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """``jax.distributed.initialize`` when more than one process runs; a no-op otherwise.

    Explicit arguments (``--coordinator_address`` etc.) win; without them JAX auto-detects the
    cluster (Cloud TPU, SLURM) when the environment shows several processes.
    """
    if coordinator_address is not None or (num_processes or 1) > 1 or cluster_process_count() > 1:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )


def process_rows(batch_size: int) -> tuple[int, int]:
    """(rows per process, this process's first row) of a global batch of ``batch_size``: process
    ``p`` holds rows ``[p * rows, (p + 1) * rows)``."""
    rows = batch_size // jax.process_count()
    return rows, jax.process_index() * rows


def from_process_rows(local: np.ndarray, sharding: NamedSharding, global_shape) -> jax.Array:
    """The global array whose ``process_rows`` block along the sharded axis is each process's
    ``local`` (``jax.make_array_from_process_local_data``; one process: ``local`` itself)."""
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    return jax.make_array_from_process_local_data(sharding, local, tuple(global_shape))


def global_batch_array(host_array: np.ndarray, sharding: NamedSharding, axis: int = 0) -> jax.Array:
    """A global array from a host array that every process computes identically (e.g. the
    epoch's batch indices): each process hands over only its own block along ``axis`` (the
    batch axis)."""
    rows, first = process_rows(host_array.shape[axis])
    local = np.take(host_array, np.arange(first, first + rows), axis=axis)
    return from_process_rows(local, sharding, host_array.shape)


def replicate(host_array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A replicated global array from a host array every process holds in full."""
    if jax.process_count() == 1:
        return jax.device_put(host_array, sharding)
    return jax.make_array_from_process_local_data(sharding, host_array, host_array.shape)


def to_host(array: jax.Array) -> np.ndarray:
    """The whole (global) array as NumPy on every process."""
    if jax.process_count() == 1:
        return np.asarray(array)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))
