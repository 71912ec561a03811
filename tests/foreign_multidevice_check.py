"""Run with XLA_FLAGS=--xla_force_host_platform_device_count=4 (test_foreign_models.py).

The GradMix gradient of a user's Linen model (not ours) through make_grad_fn, jitted over a
4-device mesh with the batch sharded, against the same function on one device; prints JSON.
"""

import json
import os
import sys

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from test_foreign_models import AUG, SIZE, Embedder  # noqa: E402

from gradmix_jax.training import parallel  # noqa: E402
from gradmix_jax.training.train_step import StepConfig, init_state, make_grad_fn  # noqa: E402


def main():
    model = Embedder()
    cfg = StepConfig(method="gradmix", layers=("backbone/stage1", "backbone/stage2"))
    state = init_state(model, optax.sgd(0.1), jax.random.key(0), (SIZE, SIZE, 1))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, SIZE, SIZE, 1), dtype=np.uint8)
    y = (np.arange(16) % 3).astype(np.int32)
    key = jax.random.key(5)
    grad_fn = make_grad_fn(model, AUG, cfg)
    one = jax.jit(grad_fn)(state, x, y, key)[0]
    mesh = parallel.make_mesh(jax.devices())
    repl, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    many = jax.jit(grad_fn, in_shardings=(repl, sharded, sharded, repl), out_shardings=repl)(
        jax.device_put(state, repl), x, y, key
    )[0]
    a = jax.flatten_util.ravel_pytree(one)[0]
    b = jax.flatten_util.ravel_pytree(many)[0]
    rel = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
    print(json.dumps({"devices": len(jax.devices()), "max_rel_diff": rel}))


if __name__ == "__main__":
    main()
