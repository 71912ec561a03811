"""Independent references for the tests: written plainly, sharing no code with the library."""

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp


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
