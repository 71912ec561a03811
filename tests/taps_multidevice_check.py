"""Run as a script with XLA_FLAGS=--xla_force_host_platform_device_count=4 (see test_taps.py).

taps.vjp inside jax.shard_map (batch split over mesh axis 'data') on the Linen Classifier and the
NNX Net of test_taps.py, train-mode BatchNorm (per-shard statistics), a per-shard summed loss;
and the same function run (jitted, on one device) on each shard's slice. Prints, as JSON, for
each case {group: {"shard_map": {leaf: values}, "per_slice": {leaf: values}}} with groups
``activations``, ``tap_grads``, ``param_grads`` (summed over slices) and, for NNX,
``batch_stats`` (the written-back statistics, psum'd / summed). Cases: ``linen`` and ``nnx``
(shard_map's default check_vma=True) and ``linen_check_vma_off``.
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_taps import (  # noqa: E402
    LINEN_TAPS,
    NNX_TAPS,
    _data,
    _linen_init,
    _linen_taps,
    _nnx_model,
    _nnx_taps,
)

N = 4


def shard(mesh, *arrays):
    return [jax.device_put(a, jax.sharding.NamedSharding(mesh, P("data"))) for a in arrays]


def _flat(tree, prefix):
    return {
        prefix + jax.tree_util.keystr(path): np.asarray(leaf).tolist()
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


GROUPS = ("activations", "tap_grads", "param_grads", "batch_stats")


def linen(mesh, x, y, check_vma=True):
    model, variables = _linen_init()

    def per_shard(variables, x, y):
        _, acts, tap_grads, param_grads, _ = _linen_taps(model, variables, x, y, train=True)
        return acts, tap_grads, param_grads

    def sharded(variables, x, y):
        acts, tap_grads, param_grads = per_shard(variables, x, y)
        # With check_vma, the cotangent of the replicated (mesh-invariant) parameters is already
        # summed over the shards (JAX's transpose of the implicit pvary); without it, psum here.
        return acts, tap_grads, param_grads if check_vma else jax.lax.psum(param_grads, "data")

    smap = jax.jit(
        jax.shard_map(
            sharded,
            mesh=mesh,
            in_specs=(P(), P("data"), P("data")),
            out_specs=(P("data"), P("data"), P()),
            check_vma=check_vma,
        )
    )
    got = smap(variables, *shard(mesh, x, y))
    one = jax.jit(per_shard)
    parts = [one(variables, xs, ys) for xs, ys in zip(jnp.split(x, N), jnp.split(y, N))]
    ref = (
        {k: jnp.concatenate([p[0][k] for p in parts]) for k in LINEN_TAPS},
        {k: jnp.concatenate([p[1][k] for p in parts]) for k in LINEN_TAPS},
        jax.tree.map(lambda *g: sum(g), *[p[2] for p in parts]),
    )
    return got, ref


def nnx_part(mesh, x, y):
    model = _nnx_model(train=True)
    graphdef, state = nnx.split(model)

    def per_shard(state, x, y):
        m = nnx.merge(graphdef, state)
        _, acts, tap_grads, grads = _nnx_taps(m, x, y)
        return (
            acts,
            tap_grads,
            nnx.to_pure_dict(grads),
            nnx.to_pure_dict(nnx.state(m, nnx.BatchStat)),
        )

    def sharded(state, x, y):
        acts, tap_grads, grads, stats = per_shard(state, x, y)
        return acts, tap_grads, grads, jax.lax.psum(stats, "data")  # grads: summed (see linen)

    smap = jax.jit(
        jax.shard_map(
            sharded,
            mesh=mesh,
            in_specs=(P(), P("data"), P("data")),
            out_specs=(P("data"), P("data"), P(), P()),
        )
    )
    got = smap(state, *shard(mesh, x, y))
    one = jax.jit(per_shard)
    parts = [one(state, xs, ys) for xs, ys in zip(jnp.split(x, N), jnp.split(y, N))]
    ref = (
        {k: jnp.concatenate([p[0][k] for p in parts]) for k in NNX_TAPS},
        {k: jnp.concatenate([p[1][k] for p in parts]) for k in NNX_TAPS},
        jax.tree.map(lambda *g: sum(g), *[p[2] for p in parts]),
        jax.tree.map(lambda *g: sum(g), *[p[3] for p in parts]),  # per-shard statistics, summed
    )
    return got, ref


def main():
    assert len(jax.devices()) >= N, jax.devices()
    mesh = jax.make_mesh((N,), ("data",))
    x, y = _data(batch=2 * N)
    result = {"devices": len(jax.devices())}
    cases = {
        "linen": linen,
        "linen_check_vma_off": lambda *a: linen(*a, check_vma=False),
        "nnx": nnx_part,
    }
    for kind, fn in cases.items():
        got, ref = fn(mesh, x, y)
        result[kind] = {
            group: {"shard_map": _flat(g, ""), "per_slice": _flat(r, "")}
            for group, g, r in zip(GROUPS, got, ref)
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
