"""Independent references for the tests: written plainly, sharing no code with the library."""

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp

from gradmix_jax import attribution, augment, mixing
from gradmix_jax.training.objectives import contrastive_terms


@contextlib.contextmanager
def add_at_paths(offsets, record=None):
    """Adds ``offsets['a/b']`` to the output of the Linen submodule at path a/b (its __call__).

    The outputs before the offset go to ``record`` (a dict), if given; an offset of None only
    records. Differentiating w.r.t. the offsets at zero gives d loss / d activation, the quantity
    ``gradmix_jax.taps`` returns.
    """

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name != "__call__":
            return out
        path = "/".join(context.module.path)
        if path in offsets:
            if record is not None:
                record[path] = out
            return out if offsets[path] is None else out + offsets[path]
        return out

    with nn.intercept_methods(interceptor):
        yield


def naive_mixed_loss(z_mixed, z_view2, masked, temperature, loss_weight="area"):
    """Eq. 8's mixed term: mean_i w_i * (l(mixed_i -> view2_i) + l(view2_i -> mixed_i)) / 2.

    ``l(a -> p)`` is NT-Xent: -log softmax of a's cosine similarities (/ temperature) to the 2N - 1
    other embeddings, at its positive p. Embeddings are L2-normalised.
    """
    n = z_mixed.shape[0]
    z = jnp.concatenate([z_mixed, z_view2])  # [2N, D]
    sims = z @ z.T / temperature
    sims = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, sims)
    log_p = jax.nn.log_softmax(sims, axis=1)
    pos = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
    per_anchor = -log_p[jnp.arange(2 * n), pos]  # [2N]
    per_sample = (per_anchor[:n] + per_anchor[n:]) / 2
    w = {"area": masked, "kept": 1 - masked, "one": jnp.ones_like(masked)}[loss_weight]
    return jnp.mean(jax.lax.stop_gradient(w) * per_sample)


def apply_train(model, params, batch_stats, images, offsets=None, record=None):
    variables = (
        {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
    )
    with add_at_paths(offsets or {}, record):
        (z, _), new = model.apply(variables, images, train=True, mutable=["batch_stats"])
    return z, new


def reference_grads(model, state, x, y, key, cfg, aug, paths=None):
    """Eq. 8 written the obvious way: a separate attribution pass, then jax.grad of the total.

    ``paths``: tap name -> submodule path (default: ``model.tap_paths``, else the names).
    """
    aug_key, mix_key = jax.random.split(key)
    v1, v2 = augment.two_views(aug_key, x, aug)
    n = v1.shape[0]
    views = jnp.concatenate([v1, v2])
    params, bs = state.params, state.batch_stats
    if cfg.method == "none":
        return jax.grad(
            lambda p: contrastive_terms(apply_train(model, p, bs, views)[0], y, cfg)[0]
        )(params)

    if cfg.method == "gradmix":
        paths = paths or getattr(model, "tap_paths", None) or {t: t for t in cfg.layers}
        record = {}
        apply_train(model, params, bs, views, {paths[layer]: None for layer in cfg.layers}, record)
        zeros = {paths[layer]: jnp.zeros_like(record[paths[layer]]) for layer in cfg.layers}

        def attr_loss(offsets):
            z, _ = apply_train(model, params, bs, views, offsets)
            loss, parts = contrastive_terms(z, y, cfg)
            return parts["simclr"] if cfg.attribution_loss == "simclr" else loss

        g = jax.grad(attr_loss)(zeros)
        maps = [
            attribution.layercam(record[paths[layer]][:n], g[paths[layer]][:n])
            for layer in cfg.layers
        ]
        heat = attribution.aggregate_maps(maps, v1.shape[1:3], cfg.normalize)
        mixed, frac = mixing.gradmix(
            mix_key, v1, heat, cfg.ratio_range, cfg.ratio_of, cfg.fill, cfg.placement, cfg.ratio_per
        )
    else:
        fn = mixing.cutmix if cfg.method == "cutmix" else mixing.mixup
        mixed, lam, _ = fn(mix_key, v1, cfg.alpha)
        frac = 1.0 - lam

    def mix(zm, z2):
        return naive_mixed_loss(zm, z2, frac, cfg.temperature, cfg.loss_weight)

    def total(p):
        z, new = apply_train(model, p, bs, views)
        clean = contrastive_terms(z, y, cfg)[0]
        if cfg.exact:
            zz, _ = apply_train(model, p, new.get("batch_stats", bs), jnp.concatenate([mixed, v2]))
            loss = mix(zz[:n], zz[n:])
        else:
            zm, _ = apply_train(model, p, new.get("batch_stats", bs), mixed)
            loss = mix(zm, z[n:])
        return clean + cfg.simclr_weight * loss

    return jax.grad(total)(params)
