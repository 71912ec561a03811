"""Run as a script with XLA_FLAGS=--xla_force_host_platform_device_count=8 (see test_multidevice.py).

Trains 3 GradMix steps of a tiny ResNet on a 1-, 4- and 8-device mesh from the same state and
batches, and evaluates the contrastive losses with ``axis_name`` under jax.pmap and jax.shard_map
against the single-device loss of the global batch; prints everything as JSON.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from gradmix_jax import augment, losses
from gradmix_jax.models import create_model
from gradmix_jax.training import parallel
from gradmix_jax.training.train_step import StepConfig, init_state, make_optimizer, make_train_step


def losses_on(devices, method, objective="supcon_ssl"):
    mesh = parallel.make_mesh(devices)
    repl, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    model = create_model("resnet18", width=4, feature_dim=8)
    tx, schedule = make_optimizer(1e-3, 1e-4, 10)
    aug = augment.AugmentParams.digits((8, 8))
    cfg = StepConfig(method=method, objective=objective, moco_queue_size=40)
    state = jax.jit(lambda k: init_state(model, tx, k, (8, 8, 1), cfg), out_shardings=repl)(
        jax.random.key(0)
    )
    step = jax.jit(
        make_train_step(model, tx, aug, cfg, schedule),
        in_shardings=(repl, repl, repl, sharded),
        out_shardings=(repl, repl),
        donate_argnums=(0,),
    )
    rng = np.random.default_rng(0)
    images = jax.device_put(rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8), repl)
    labels = jax.device_put(rng.integers(0, 3, (64,)).astype(np.int32), repl)
    out = []
    for i in range(3):
        idx = jax.device_put(np.arange(16 * i, 16 * i + 16, dtype=np.int32), sharded)
        state, m = step(state, images, labels, idx)
        out.append(float(m["loss"]))
    if objective == "moco":  # the replicated queue holds the same keys on every mesh
        out.append(float(jnp.sum(state.moco.queue * jnp.arange(1, 41)[:, None])))
    return out


def axis_name_losses():
    """SupCon/SimCLR values and feature gradients: global single-device vs pmap vs shard_map."""
    rng = np.random.default_rng(1)
    f = rng.normal(size=(16, 2, 6)).astype(np.float32)
    f /= np.linalg.norm(f, axis=-1, keepdims=True)
    y = rng.integers(0, 3, 16).astype(np.int32)

    def supcon(f, y, axis_name=None):
        return losses.supcon_loss(f, y, temperature=0.1, axis_name=axis_name)

    def simclr(f, axis_name=None):
        return losses.simclr_loss(f, temperature=0.1, axis_name=axis_name)

    out = {"supcon_global": float(supcon(f, y)), "simclr_global": float(simclr(f))}
    fp, yp = f.reshape(4, 4, 2, 6), y.reshape(4, 4)
    out["supcon_pmap"] = np.asarray(
        jax.pmap(
            functools.partial(supcon, axis_name="d"), axis_name="d", devices=jax.devices()[:4]
        )(fp, yp)
    ).tolist()
    out["simclr_pmap"] = np.asarray(
        jax.pmap(
            functools.partial(simclr, axis_name="d"), axis_name="d", devices=jax.devices()[:4]
        )(fp)
    ).tolist()
    mesh = jax.make_mesh((8,), ("d",))
    smap = jax.shard_map(
        functools.partial(supcon, axis_name="d"),
        mesh=mesh,
        in_specs=(P("d"), P("d")),
        out_specs=P(),
    )
    fs, ys = (jax.device_put(a, jax.sharding.NamedSharding(mesh, P("d"))) for a in (f, y))
    out["supcon_shard_map"] = float(jax.jit(smap)(fs, ys))
    # Gradients: d(global loss)/d(features) equals the shard_map gradient of the pmean'd loss.
    out["grad_global"] = np.asarray(jax.grad(supcon)(f, y)).ravel().tolist()
    out["grad_shard_map"] = np.asarray(jax.jit(jax.grad(smap))(fs, ys)).ravel().tolist()
    return out


if __name__ == "__main__":
    assert jax.device_count() == 8, jax.devices()
    devices = jax.devices()
    result = {m: {n: losses_on(devices[:n], m) for n in (1, 4, 8)} for m in ("gradmix",)}
    result["moco"] = {n: losses_on(devices[:n], "none", "moco") for n in (1, 4, 8)}
    result["axis_name"] = axis_name_losses()
    print(json.dumps(result))
