"""Run as a script with XLA_FLAGS=--xla_force_host_platform_device_count=8 (see test_multidevice.py).

Trains 3 GradMix steps of a tiny ResNet on a 1-, 4- and 8-device mesh from the same state and
batches, and prints the losses of each as JSON.
"""

import json

import jax
import numpy as np

from gradmix_jax import augment, parallel
from gradmix_jax.models import create_model
from gradmix_jax.train_step import StepConfig, init_state, make_optimizer, make_train_step


def losses_on(devices, method):
    mesh = parallel.make_mesh(devices)
    repl, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    model = create_model("resnet18", width=4, feature_dim=8)
    tx, schedule = make_optimizer(1e-3, 1e-4, 10)
    aug = augment.AugmentParams.digits((8, 8))
    state = jax.jit(lambda k: init_state(model, tx, k, (8, 8, 1)), out_shardings=repl)(jax.random.key(0))
    step = jax.jit(make_train_step(model, tx, aug, StepConfig(method=method), schedule),
                   in_shardings=(repl, repl, repl, sharded), out_shardings=(repl, repl),
                   donate_argnums=(0,))
    rng = np.random.default_rng(0)
    images = jax.device_put(rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8), repl)
    labels = jax.device_put(rng.integers(0, 3, (64,)).astype(np.int32), repl)
    out = []
    for i in range(3):
        idx = jax.device_put(np.arange(16 * i, 16 * i + 16, dtype=np.int32), sharded)
        state, m = step(state, images, labels, idx)
        out.append(float(m["loss"]))
    return out


if __name__ == "__main__":
    assert jax.device_count() == 8, jax.devices()
    devices = jax.devices()
    print(json.dumps({m: {n: losses_on(devices[:n], m) for n in (1, 4, 8)}
                      for m in ("gradmix",)}))
