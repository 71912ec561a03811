"""Run as a script with XLA_FLAGS=--xla_force_host_platform_device_count=4 (test_multidevice.py
runs it).

One GradMix step (docs/gradmix_in_your_model.md, "Several devices") of a Linen CNN whose BatchNorm
normalises over ``axis_name='batch'``, on the same global batch of 8 samples three ways:

* ``one``: ``jax.pmap`` over 1 device x 8 samples (the reference: every collective is trivial);
* ``pmap``: ``jax.pmap`` over 4 devices x 2 samples (what the docs show);
* ``shard_map``: ``jax.shard_map`` (default ``check_vma=True``) over a 4-device mesh, 2 samples
  each.

``mixing.gradmix`` draws its ratios and its fill permutation for the batch it is given, so 4 x 2
and 1 x 8 cannot draw the same boxes from one key. The draws are made here instead, once for the
global batch, and the step calls ``mixing.gradmix_apply`` (``gradmix``'s deterministic core) with
each device's rows of them: the ratios and fallback centres per sample, and a fill permutation
within each device's 2 rows (the fill image comes from the device's own rows, as ``gradmix``'s
would); the 1-device run gets the same permutation in global indices.

Prints, as JSON, for each run a flat {name: values in global sample order}: the tap activations
and tap gradients of both views, the heat maps, mixed images and masked fractions, the loss on
every device, the parameter gradients (as returned per device, ``pmean``-ed and ``psum``-ed), the
BatchNorm statistics (as returned per device and ``pmean``-ed).
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gradmix_jax import attribution, losses, mixing, taps

DEVICES, PER_DEVICE, SIZE = 4, 2, 8
BATCH = DEVICES * PER_DEVICE
TAPS = ("block1", "block2")


class Block(nn.Module):
    features: int
    train: bool = True

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.features, (3, 3), strides=2, use_bias=False)(x)
        return nn.relu(nn.BatchNorm(use_running_average=not self.train, axis_name="batch")(x))


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        x = Block(8, train, name="block1")(x)
        x = Block(16, train, name="block2")(x)
        z = nn.Dense(16, name="proj")(x.mean(axis=(1, 2)))
        return z / jnp.linalg.norm(z, axis=-1, keepdims=True)


model = CNN()


def simclr(z):
    n = z.shape[0] // 2
    return losses.simclr_loss(jnp.stack([z[:n], z[n:]], 1), temperature=0.1, axis_name="batch")


def device_step(params, batch_stats, v1, v2, ratios, perm, centers):
    """The docs' per-device step, the GradMix draws given (``gradmix_apply``), no optimizer."""
    n = v1.shape[0]

    def forward(p, stats, x):
        return model.apply({"params": p, "batch_stats": stats}, x, mutable=["batch_stats"])

    z, vjp_fn, acts, new = taps.vjp(
        lambda p: forward(p, batch_stats, jnp.concatenate([v1, v2])),
        params,
        taps=TAPS,
        has_aux=True,
    )
    loss, g_z = jax.value_and_grad(simclr)(z)
    _, g_taps = vjp_fn(g_z)
    a1, g1 = jax.tree.map(lambda a: a[:n], (acts, g_taps))
    heat = attribution.tap_maps(a1, g1, v1.shape[1:3])
    mixed, masked = mixing.gradmix_apply(v1, heat, ratios, perm=perm, fallback_centers=centers)

    def mixed_term(p, z2):
        z_mixed, new_m = forward(p, new["batch_stats"], mixed)
        l_mix = losses.mixed_view_loss(z_mixed, z2, masked, temperature=0.1, axis_name="batch")
        return l_mix, new_m

    (l_mix, new), (g_mix, g_z2) = jax.value_and_grad(mixed_term, (0, 1), has_aux=True)(
        params, z[n:]
    )
    (g_params, _) = vjp_fn(g_z.at[n:].add(g_z2))
    grads = jax.tree.map(jnp.add, g_params, g_mix)
    per_sample = {
        "heat": heat,
        "mixed": mixed,
        "masked": masked,
        **{f"act_v1/{k}": a[:n] for k, a in acts.items()},
        **{f"act_v2/{k}": a[n:] for k, a in acts.items()},
        **{f"tap_grad_v1/{k}": g[:n] for k, g in g_taps.items()},
        **{f"tap_grad_v2/{k}": g[n:] for k, g in g_taps.items()},
    }
    reduced = {
        "grads_pmean": jax.lax.pmean(grads, "batch"),
        "grads_psum": jax.lax.psum(grads, "batch"),
        "batch_stats_pmean": jax.lax.pmean(new["batch_stats"], "batch"),
    }
    # What each device returns before any reduction.
    per_device = {"loss": loss + l_mix, "grads": grads, "batch_stats": new["batch_stats"]}
    return per_sample, reduced, per_device


def _flat(tree):
    """One float list per name: per-sample leaves keep their order; pytrees are concatenated."""
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)]).tolist()


def draws(key):
    """The GradMix draws for the global batch: ratios, fill permutation within each device's
    rows (local indices and global ones), fallback centres."""
    k_ratio, k_perm, k_center = jax.random.split(key, 3)
    ratios = mixing.sample_ratios(k_ratio, BATCH)
    local = jax.vmap(lambda k: jax.random.permutation(k, PER_DEVICE))(
        jax.random.split(k_perm, DEVICES)
    ).reshape(BATCH)
    global_perm = local + PER_DEVICE * (jnp.arange(BATCH) // PER_DEVICE)
    flat = jax.random.randint(k_center, (BATCH,), 0, SIZE * SIZE)
    centers = jnp.stack([flat // SIZE, flat % SIZE], axis=1).astype(jnp.int32)
    return ratios, local.astype(jnp.int32), global_perm.astype(jnp.int32), centers


def run_pmap(devices, params, batch_stats, batch):
    """``device_step`` under ``jax.pmap`` over ``devices``, the batch as [devices, rows, ...]."""
    d = len(devices)
    step = jax.pmap(
        device_step,
        axis_name="batch",
        in_axes=(None, None, 0, 0, 0, 0, 0),
        out_axes=(0, None, 0),
        devices=devices,
    )
    per_sample, reduced, per_device = step(
        params, batch_stats, *(x.reshape(d, BATCH // d, *x.shape[1:]) for x in batch)
    )
    per_sample = jax.tree.map(lambda x: x.reshape(BATCH, *x.shape[2:]), per_sample)
    return per_sample, reduced, per_device


def run_shard_map(devices, params, batch_stats, batch):
    """``device_step`` under ``jax.shard_map`` over a mesh of ``devices``, the batch sharded."""
    mesh = jax.sharding.Mesh(np.array(devices), ("batch",))
    step = jax.jit(
        jax.shard_map(
            device_step,
            mesh=mesh,
            in_specs=(P(), P(), *[P("batch")] * 5),
            # The parameter gradients and statistics are mesh-invariant (replicated) here:
            # see the test for what that means for pmean / psum.
            out_specs=(P("batch"), P(), {"loss": P(), "grads": P(), "batch_stats": P()}),
        )
    )
    batch = [jax.device_put(x, NamedSharding(mesh, P("batch"))) for x in batch]
    per_sample, reduced, per_device = step(params, batch_stats, *batch)
    # Invariant outputs have one value: give them the [devices] axis pmap's have.
    per_device = jax.tree.map(lambda x: jnp.broadcast_to(x, (len(devices), *x.shape)), per_device)
    return per_sample, reduced, per_device


def summarise(per_sample, reduced, per_device):
    out = {k: _flat(v) for k, v in per_sample.items()}
    out.update({k: _flat(v) for k, v in reduced.items()})
    out["loss"] = np.asarray(per_device["loss"]).tolist()  # one value per device
    for name in ("grads", "batch_stats"):  # [devices, n] as each device returned them
        leaves = jax.tree.leaves(per_device[name])
        out[f"{name}_per_device"] = np.concatenate(
            [np.asarray(x).reshape(x.shape[0], -1) for x in leaves], axis=1
        ).tolist()
    return out


def main():
    assert jax.device_count() >= DEVICES, jax.devices()
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    v1 = jax.random.uniform(k1, (BATCH, SIZE, SIZE, 1))
    v2 = jnp.clip(v1 + 0.1 * jax.random.normal(k2, v1.shape), 0, 1)
    variables = model.init(k3, v1, train=False)  # running averages: no 'batch' axis needed
    params, batch_stats = variables["params"], variables["batch_stats"]
    ratios, local_perm, global_perm, centers = draws(k4)
    devices = jax.devices()
    local = (v1, v2, ratios, local_perm, centers)  # the fill permutation in device rows
    runs = {
        "one": run_pmap(devices[:1], params, batch_stats, (v1, v2, ratios, global_perm, centers)),
        "pmap": run_pmap(devices[:DEVICES], params, batch_stats, local),
        "shard_map": run_shard_map(devices[:DEVICES], params, batch_stats, local),
    }
    result = {name: summarise(*out) for name, out in runs.items()}
    result["devices"] = jax.device_count()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
