"""GradMix on models this project did not shape: our train step and the public API against eq. 8
written out naively, for a Linen CNN with its own names, a Linen model with a shared submodule
and an NNX model; under jax.vmap over two models and on 4 fake devices."""

import os

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _reference import naive_mixed_loss, reference_grads
from flax import nnx

from gradmix_jax import attribution, augment, losses, mixing, taps
from gradmix_jax.training.train_step import StepConfig, init_state, make_grad_fn, make_train_step

HERE = os.path.dirname(os.path.abspath(__file__))
N, SIZE = 8, 12
AUG = augment.AugmentParams.digits((SIZE, SIZE))


class Stage(nn.Module):
    features: int
    strides: int

    @nn.compact
    def __call__(self, x, train):
        x = nn.Conv(self.features, (3, 3), strides=self.strides)(x)
        return nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))


class Backbone(nn.Module):
    @nn.compact
    def __call__(self, x, train):
        x = Stage(6, 1, name="stem")(x, train)
        x = Stage(8, 2, name="stage1")(x, train)
        return Stage(12, 2, name="stage2")(x, train)


class Embedder(nn.Module):
    """A user's encoder: (z, aux) as the train step's contract asks, its own names and nesting."""

    num_classes: int = 0

    @nn.compact
    def __call__(self, x, train: bool = True):
        h = Backbone(name="backbone")(x, train).mean(axis=(1, 2))
        z = nn.Dense(8, name="head")(h)
        aux = {"features": h}
        if self.num_classes:
            aux["logits"] = nn.Dense(self.num_classes, name="classifier")(h)
        return z / jnp.linalg.norm(z, axis=-1, keepdims=True), aux


class SharedEmbedder(nn.Module):
    """One conv instance applied twice (a shared submodule), no BatchNorm."""

    def setup(self):
        self.conv_in = nn.Conv(6, (3, 3))
        self.shared = nn.Conv(6, (3, 3))
        self.conv_out = nn.Conv(8, (3, 3), strides=2)
        self.head = nn.Dense(8)

    def __call__(self, x, train: bool = True):
        x = nn.relu(self.conv_in(x))
        x = nn.relu(self.shared(nn.relu(self.shared(x))))
        h = nn.relu(self.conv_out(x)).mean(axis=(1, 2))
        z = self.head(h)
        return z / jnp.linalg.norm(z, axis=-1, keepdims=True), {"features": h}


def _batch():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, (N, SIZE, SIZE, 1), dtype=np.uint8))
    return x, jnp.asarray(np.arange(N) % 3, jnp.int32)


def _flat(tree):
    return jax.flatten_util.ravel_pytree(tree)[0]


def _close(got, want):
    g, w = _flat(got), _flat(want)
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-5 * float(jnp.abs(w).max()))


CASES = {
    "linen-cnn": (Embedder, ("backbone/stage1", "backbone/stage2")),
    "linen-shared": (SharedEmbedder, ("conv_in", "conv_out")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_train_step_equals_naive_eq8(case):
    """make_train_step (SGD, so the update is -lr * grad) against jax.grad of eq. 8 written out."""
    cls, layers = CASES[case]
    model = cls()
    cfg = StepConfig(method="gradmix", layers=layers, temperature=0.2)
    tx = optax.sgd(0.5)
    state = init_state(model, tx, jax.random.key(0), (SIZE, SIZE, 1))
    assert (state.batch_stats == {}) == (cls is SharedEmbedder)
    x, y = _batch()
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), 0)
    want = reference_grads(model, state, x, y, key, cfg, AUG)
    grads, _, metrics = jax.jit(make_grad_fn(model, AUG, cfg))(state, x, y, key)
    _close(grads, want)
    assert 0 < float(metrics["masked_fraction"]) < 0.5 and int(metrics["fallback_boxes"]) == 0
    new, _ = jax.jit(make_train_step(model, tx, AUG, cfg))(state, x, y, jnp.arange(N))
    _close(jax.tree.map(lambda a, b: (a - b) / -0.5, new.params, state.params), want)


def test_shared_submodule_tap_is_refused_by_the_step():
    model = SharedEmbedder()
    cfg = StepConfig(method="gradmix", layers=("shared",))
    state = init_state(model, optax.sgd(0.1), jax.random.key(0), (SIZE, SIZE, 1))
    x, y = _batch()
    with pytest.raises(ValueError, match=r"tap 'shared' \(path 'shared'\) ran 2 times"):
        make_grad_fn(model, AUG, cfg)(state, x, y, jax.random.key(1))


def test_ce_objective_reads_the_users_logits():
    model = Embedder(num_classes=3)
    cfg = StepConfig(objective="ce_ssl", method="gradmix", layers=("backbone/stage2",))
    state = init_state(model, optax.sgd(0.1), jax.random.key(0), (SIZE, SIZE, 1))
    x, y = _batch()
    _, _, metrics = jax.jit(make_grad_fn(model, AUG, cfg))(state, x, y, jax.random.key(1))
    assert np.isfinite(float(metrics["ce"])) and float(metrics["ce"]) > 0


def test_vmap_over_two_models_equals_each_alone():
    model = Embedder()
    cfg = StepConfig(method="gradmix", layers=("backbone/stage1", "backbone/stage2"))
    tx = optax.sgd(0.1)
    states = [init_state(model, tx, jax.random.key(s), (SIZE, SIZE, 1)) for s in (0, 1)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *states)
    x, y = _batch()
    key = jax.random.key(4)
    grad_fn = make_grad_fn(model, AUG, cfg)
    both, _, _ = jax.jit(jax.vmap(grad_fn, in_axes=(0, None, None, None)))(stacked, x, y, key)
    for i, state in enumerate(states):
        alone, _, _ = jax.jit(grad_fn)(state, x, y, key)
        _close(jax.tree.map(lambda a, i=i: a[i], both), alone)


@pytest.mark.slow
def test_four_fake_devices_equal_one(run_on_fake_devices):
    result = run_on_fake_devices("foreign_multidevice_check.py", 4)
    assert result["devices"] == 4
    assert result["max_rel_diff"] < 1e-4, result


# --------------------------------------------------------------------------- NNX


class NnxEmbedder(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.blocks = nnx.List(
            [nnx.Conv(1, 6, (3, 3), rngs=rngs), nnx.Conv(6, 8, (3, 3), strides=2, rngs=rngs)]
        )
        self.norm = nnx.BatchNorm(8, momentum=0.9, rngs=rngs)
        self.head = nnx.Linear(8, 8, rngs=rngs)

    def __call__(self, x, offsets=None):
        # ``offsets`` is the test's own reference tap: added after each block, by hand.
        for i, block in enumerate(self.blocks):
            y = block(x)
            x = nnx.relu(y if offsets is None else y + offsets[i])
        z = self.head(nnx.relu(self.norm(x)).mean(axis=(1, 2)))
        return z / jnp.linalg.norm(z, axis=-1, keepdims=True)


def _simclr(z):
    n = z.shape[0] // 2
    return losses.simclr_loss(jnp.stack([z[:n], z[n:]], axis=1), temperature=0.2)


def _nnx_public_step(model, v1, v2, key):
    """The README's NNX step, returning the gradient instead of applying it."""
    n = v1.shape[0]
    z, vjp_fn, acts = taps.vjp(
        lambda m: m(jnp.concatenate([v1, v2])), model, taps=("blocks/0", "blocks/1")
    )
    _, g_z = jax.value_and_grad(_simclr)(z)
    _, g_taps = vjp_fn(g_z)
    a1, g1 = jax.tree.map(lambda a: a[:n], (acts, g_taps))
    heat = attribution.tap_maps(a1, g1, v1.shape[1:3])
    mixed, masked = mixing.gradmix(key, v1, heat)

    def mixed_term(m, z2):
        return losses.mixed_view_loss(m(mixed), z2, masked, temperature=0.2)

    _, (g_mix, g_z2) = nnx.value_and_grad(mixed_term, argnums=(0, 1))(model, z[n:])
    (g_model, _) = vjp_fn(g_z.at[n:].add(g_z2))
    return jax.tree.map(jnp.add, g_model, g_mix), mixed, heat


def _nnx_naive(model, v1, v2, key):
    """Eq. 8 by hand: offsets after each block for the maps, then nnx.grad of the total."""
    n = v1.shape[0]
    views = jnp.concatenate([v1, v2])
    probe = nnx.clone(model)
    acts = []
    x = views
    for block in probe.blocks:  # activations (the blocks' outputs), computed step by step
        acts.append(block(x))
        x = nnx.relu(acts[-1])
    zeros = [jnp.zeros_like(a) for a in acts]
    g = jax.grad(lambda o: _simclr(nnx.clone(model)(views, o)))(zeros)
    maps = [np.maximum((np.maximum(gi, 0) * a).sum(-1), 0)[:n] for a, gi in zip(acts, g)]
    heat = attribution.aggregate_maps([jnp.asarray(m) for m in maps], v1.shape[1:3])
    mixed, masked = mixing.gradmix(key, v1, heat)

    def total(m):
        z = m(views)
        zm = m(mixed)
        return _simclr(z) + naive_mixed_loss(zm, z[n:], masked, 0.2)

    return nnx.grad(total)(nnx.clone(model)), mixed, heat


def test_nnx_public_step_equals_naive_eq8():
    model = NnxEmbedder(nnx.Rngs(0))
    x, _ = _batch()
    v1, v2 = augment.two_views(jax.random.key(2), x, AUG)
    key = jax.random.key(3)
    want, want_mixed, want_heat = _nnx_naive(model, v1, v2, key)
    got, mixed, heat = nnx.jit(_nnx_public_step)(model, v1, v2, key)
    np.testing.assert_allclose(heat, want_heat, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mixed, want_mixed, atol=1e-5)  # same boxes; jit vs eager resize
    _close(got, want)
    # Outside the boxes the mixed view is view 1, pixel for pixel.
    changed = np.any(np.asarray(mixed) != np.asarray(v1), axis=-1)
    assert changed.any() and not changed.all()


def test_nnx_step_under_vmap_over_two_models():
    models = [NnxEmbedder(nnx.Rngs(s)) for s in (0, 1)]
    x, _ = _batch()
    v1, v2 = augment.two_views(jax.random.key(2), x, AUG)
    key = jax.random.key(3)
    graphdef, state0 = nnx.split(models[0])
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), state0, nnx.split(models[1])[1])

    def per_model(state):
        return _nnx_public_step(nnx.merge(graphdef, state), v1, v2, key)[0]

    both = jax.jit(jax.vmap(per_model))(stacked)
    for i, model in enumerate(models):
        _close(jax.tree.map(lambda a, i=i: a[i], both), _nnx_public_step(model, v1, v2, key)[0])


def test_linen_views_differ_from_the_images_only_inside_the_boxes():
    """The public API on the user's Linen CNN: maps from its taps, GradMix views, and the boxes
    the documented key splits give (gradmix's docstring)."""
    model = Embedder()
    x, _ = _batch()
    v1, v2 = augment.two_views(jax.random.key(2), x, AUG)
    variables = model.init(jax.random.key(0), v1, train=False)
    layers = ("backbone/stage1", "backbone/stage2")
    z, vjp_fn, acts = taps.vjp(
        lambda v: model.apply(v, jnp.concatenate([v1, v2]), train=False)[0], variables, taps=layers
    )
    _, g_taps = vjp_fn(jax.grad(_simclr)(z))
    a1, g1 = jax.tree.map(lambda a: a[:N], (acts, g_taps))
    heat = attribution.tap_maps(a1, g1, (SIZE, SIZE))
    key = jax.random.key(3)
    mixed, masked = jax.jit(mixing.gradmix)(key, v1, heat)
    assert not np.any(mixing.degenerate_maps(heat))
    ratios = mixing.sample_ratios(jax.random.split(key)[0], N)
    top, left, bh, bw = mixing.gradmix_boxes(heat, ratios)
    rows, cols = np.arange(SIZE)[:, None], np.arange(SIZE)[None, :]
    for i in range(N):
        t, lft, h, w = int(top[i]), int(left[i]), int(bh[i]), int(bw[i])
        box = (rows >= t) & (rows < t + h) & (cols >= lft) & (cols < lft + w)
        np.testing.assert_array_equal(np.asarray(mixed[i])[~box], np.asarray(v1[i])[~box])
        assert np.any(np.asarray(mixed[i])[box] != np.asarray(v1[i])[box])
        np.testing.assert_allclose(float(masked[i]), box.mean(), rtol=1e-6)
        # The box is centred on the map's maximum (shifted inside the image if needed).
        cy, cx = np.unravel_index(int(np.argmax(np.asarray(heat[i]))), (SIZE, SIZE))
        assert t <= cy < t + h and lft <= cx < lft + w


def test_attribution_analysis_on_the_users_model():
    """attribution_analysis maps of the user's Linen CNN at its own submodule paths."""
    from gradmix_jax import attribution_analysis as aa

    model = Embedder()
    images = jax.random.uniform(jax.random.key(0), (4, SIZE, SIZE, 1))
    variables = model.init(jax.random.key(1), images, train=False)
    layers = ("backbone/stage1", "backbone/stage2")
    acts, grads, _ = aa.tap_activations_and_gradients(model, variables, images, layers)
    assert {k: v.shape for k, v in acts.items()} == {
        "backbone/stage1": (4, 6, 6, 8),
        "backbone/stage2": (4, 3, 3, 12),
    }
    maps = aa.attribution_maps(model, variables, images, layers)
    want = attribution.tap_maps(acts, grads, (SIZE, SIZE))
    np.testing.assert_allclose(maps, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="matched no Linen submodule.*backbone/stage1"):
        aa.attribution_maps(model, variables, images, ("backbone/stage9",))
