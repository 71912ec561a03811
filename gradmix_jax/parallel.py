"""Data parallelism: one ("data",) mesh over every device; params replicated, batch sharded.

Under ``jax.jit`` with these shardings the contrastive similarity matrices and BatchNorm statistics
cover the global batch (XLA inserts the collectives), so 1 and 8 devices compute the same step.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Sharded over devices along ``axis`` (the batch axis), replicated along the others."""
    return NamedSharding(mesh, P(*([None] * axis), "data"))
