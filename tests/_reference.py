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


def naive_clean_anchor_loss(
    z_clean, z_positive, masked, temperature, base_temperature, loss_weight
):
    """The authors' mixed term, per anchor a (2N of them, view 1 rows then view 2 rows):
    -(T / T_base) * (p_a·z_pos[pos(a)] / T - max_b p_a·z_pos[b] / T
                     - log sum_{b != a} exp(p_a·z_clean[b] / T - max_b p_a·z_clean[b] / T)),
    pos(a) = the other view of a's sample; mean over the anchors of a sample, weighted, averaged.
    """
    n = z_clean.shape[0] // 2
    s_neg = z_clean @ z_clean.T / temperature
    s_pos = z_clean @ z_positive.T / temperature
    m_neg = jax.lax.stop_gradient(s_neg.max(axis=1))
    m_pos = jax.lax.stop_gradient(s_pos.max(axis=1))
    rows = jnp.arange(2 * n)
    pos = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
    exp = jnp.exp(s_neg - m_neg[:, None]) * (1.0 - jnp.eye(2 * n))
    log_prob = s_pos[rows, pos] - m_pos - jnp.log(exp.sum(axis=1))
    per_anchor = -(temperature / base_temperature) * log_prob
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
        rows = slice(None) if cfg.map_views == "both" else slice(0, n)
        maps = [
            attribution.layercam(record[paths[layer]][rows], g[paths[layer]][rows], cfg.cam_relu)
            for layer in cfg.layers
        ]
        heat = attribution.aggregate_maps(maps, v1.shape[1:3], cfg.normalize, cfg.normalize_at)
        mixed, frac = mixing.gradmix(
            mix_key,
            v1,
            heat[:n],
            cfg.ratio_range,
            cfg.ratio_of,
            cfg.fill,
            cfg.placement,
            cfg.ratio_per,
            box_size=cfg.box_size,
            noise_channels=cfg.noise_channels,
            area=cfg.weight_area,
        )
    else:
        fn = mixing.cutmix if cfg.method == "cutmix" else mixing.mixup
        mixed, lam, _ = fn(mix_key, v1, cfg.alpha)
        frac = 1.0 - lam

    base = cfg.base_temperature or cfg.temperature

    def mix(z, zm, z2):
        if cfg.mixed_loss == "clean_anchors":
            z_pos = jnp.concatenate([zm, z2])
            return naive_clean_anchor_loss(z, z_pos, frac, cfg.temperature, base, cfg.loss_weight)
        scale = cfg.temperature / base
        return scale * naive_mixed_loss(zm, z2, frac, cfg.temperature, cfg.loss_weight)

    def total(p):
        z, new = apply_train(model, p, bs, views)
        clean = contrastive_terms(z, y, cfg)[0]
        if cfg.exact:
            zz, _ = apply_train(model, p, new.get("batch_stats", bs), jnp.concatenate([mixed, v2]))
            loss = mix(z, zz[:n], zz[n:])
        else:
            zm, _ = apply_train(model, p, new.get("batch_stats", bs), mixed)
            loss = mix(z, zm, z[n:])
        return clean + cfg.simclr_weight * loss

    return jax.grad(total)(params)
