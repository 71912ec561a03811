"""Objectives ce / ce_ssl / moco: golden losses, gradients vs a naive jax.grad, MoCo state updates."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from _reference import add_at_paths

from gradmix_jax import attribution, augment, losses, mixing
from gradmix_jax.models import create_model, resnet_tap_paths
from gradmix_jax.training.train_step import (
    StepConfig,
    clean_terms,
    init_state,
    make_grad_fn,
    make_optimizer,
    make_train_step,
)

N, SIZE = 8, 8
AUG = augment.AugmentParams.digits((SIZE, SIZE))


def _batch():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, (N, SIZE, SIZE, 1), dtype=np.uint8))
    y = jnp.asarray(np.array([0, 1, 2, 0, 1, 2, 0, 1], np.int32))
    return x, y


def _flat(tree):
    return jax.flatten_util.ravel_pytree(tree)[0]


def test_moco_loss_matches_numpy():
    rng = np.random.default_rng(1)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    q, k, queue = (
        unit(rng.normal(size=(5, 4))),
        unit(rng.normal(size=(5, 4))),
        unit(rng.normal(size=(7, 4))),
    )
    t = 0.07
    want = []
    for i in range(5):
        logits = np.concatenate([[q[i] @ k[i]], queue @ q[i]]) / t
        want.append(-logits[0] + np.log(np.exp(logits - logits.max()).sum()) + logits.max())
    got = jax.jit(losses.moco_loss, static_argnames="reduction")(q, k, queue, t, reduction="none")
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(losses.moco_loss(q, k, queue, t), np.mean(want), rtol=1e-5)
    with pytest.raises(ValueError, match="queue"):
        losses.moco_loss(q, k, queue[:, :3])


def _apply(model, params, batch_stats, images, offsets=None, record=None):
    variables = {"params": params, "batch_stats": batch_stats}
    with add_at_paths(offsets or {}, record):
        (z, aux), new = model.apply(variables, images, train=True, mutable=["batch_stats"])
    return z, aux, new


def _gradmix_view(model, params, bs, images, loss_of_z, key, cfg, n):
    """Reference attribution: a separate pass, jax.grad w.r.t. offsets added at the tap blocks."""
    paths = [resnet_tap_paths("resnet18")[layer] for layer in cfg.layers]
    acts = {}
    _apply(model, params, bs, images, dict.fromkeys(paths), acts)

    def attr(offsets):
        z, aux, _ = _apply(model, params, bs, images, offsets)
        return loss_of_z(z, aux)

    g = jax.grad(attr)({p: jnp.zeros_like(acts[p]) for p in paths})
    maps = [attribution.layercam(acts[p][:n], g[p][:n]) for p in paths]
    heat = attribution.aggregate_maps(maps, (SIZE, SIZE), cfg.normalize)
    return mixing.gradmix(
        key, images[:n], heat, cfg.ratio_range, cfg.ratio_of, cfg.fill, cfg.placement, cfg.ratio_per
    )


@pytest.mark.parametrize("objective", ["ce", "ce_ssl"])
def test_ce_objectives_gradmix_grads_match_reference(objective):
    """θ·CE(both views' logits) + λ·SimCLR (+ λ·mixed SimCLR term) vs jax.grad written plainly."""
    cfg = StepConfig(objective=objective, method="gradmix", supcon_weight=0.7, simclr_weight=1.3)
    model = create_model("resnet18", width=4, feature_dim=8, num_classes=3)
    tx, _ = make_optimizer(1e-3, 1e-4, 10)
    state = init_state(model, tx, jax.random.key(0), (SIZE, SIZE, 1))
    x, y = _batch()
    key = jax.random.key(5)
    grads, _, metrics = jax.jit(make_grad_fn(model, AUG, cfg))(state, x, y, key)

    aug_key, mix_key = jax.random.split(key)
    v1, v2 = augment.two_views(aug_key, x, AUG)
    views = jnp.concatenate([v1, v2])
    params, bs = state.params, state.batch_stats
    lam = 1.3 if objective == "ce_ssl" else 0.0

    def simclr(z):
        return losses.simclr_loss(jnp.stack([z[:N], z[N:]], 1), temperature=cfg.temperature)

    mixed, frac = _gradmix_view(model, params, bs, views, lambda z, aux: simclr(z), mix_key, cfg, N)

    def total(p):
        z, aux, new = _apply(model, p, bs, views)
        ce = jnp.mean(
            -jax.nn.log_softmax(aux["logits"])[jnp.arange(2 * N), jnp.concatenate([y, y])]
        )
        zm, _, _ = _apply(model, p, new["batch_stats"], mixed)
        per = losses.simclr_loss(
            jnp.stack([zm, z[N:]], 1), temperature=cfg.temperature, reduction="none"
        ).mean(1)
        return 0.7 * ce + lam * simclr(z) + 1.3 * jnp.mean(frac * per), ce

    (want_loss, want_ce), want = jax.value_and_grad(total, has_aux=True)(params)
    np.testing.assert_allclose(metrics["ce"], want_ce, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-5)
    g, w = _flat(grads), _flat(want)
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-5 * float(jnp.abs(w).max()))


def test_clean_terms_ce_needs_no_supcon():
    cfg = StepConfig(objective="ce")
    z = jax.random.normal(jax.random.key(0), (2 * N, 4))
    z = z / jnp.linalg.norm(z, axis=1, keepdims=True)
    logits = jax.random.normal(jax.random.key(1), (2 * N, 3))
    _, y = _batch()
    loss, parts = clean_terms({"z": z, "logits": logits}, y, cfg)
    assert set(parts) == {"ce", "simclr"}  # SimCLR is computed (attribution) but weighted 0
    np.testing.assert_allclose(loss, parts["ce"], rtol=1e-6)
    # label_smoothing reaches the CE term: ε = 0.2 against numpy's smoothed cross-entropy.
    smoothed, parts = clean_terms(
        {"z": z, "logits": logits}, y, StepConfig(objective="ce", label_smoothing=0.2)
    )
    logp = np.asarray(jax.nn.log_softmax(logits))
    yy = np.concatenate([np.asarray(y)] * 2)
    want = np.mean(0.8 * -logp[np.arange(len(yy)), yy] + 0.2 * -logp.mean(axis=1))
    np.testing.assert_allclose(float(smoothed), want, rtol=1e-5)


@pytest.fixture(scope="module")
def moco_setup():
    model = create_model("resnet18", width=4, feature_dim=8)
    tx, _ = make_optimizer(1e-2, 1e-3, 10)
    return model, tx


def test_moco_gradmix_grads_match_reference(moco_setup):
    """L = InfoNCE(q, k, queue) + mean(area · InfoNCE(q_mixed, k, queue)), App. G."""
    model, tx = moco_setup
    cfg = StepConfig(
        objective="moco", method="gradmix", moco_queue_size=12, moco_momentum=0.9, temperature=0.2
    )
    state = init_state(model, tx, jax.random.key(0), (SIZE, SIZE, 1), cfg)
    x, y = _batch()
    key = jax.random.key(7)
    grads, updates, metrics = jax.jit(make_grad_fn(model, AUG, cfg))(state, x, y, key)

    aug_key, mix_key = jax.random.split(key)
    v1, v2 = augment.two_views(aug_key, x, AUG)
    params, bs, moco = state.params, state.batch_stats, state.moco
    key_params = jax.tree.map(lambda k, q: 0.9 * k + 0.1 * q, moco.key_params, params)
    (k, _), _ = model.apply(
        {"params": key_params, "batch_stats": moco.key_batch_stats},
        v2,
        train=True,
        mutable=["batch_stats"],
    )

    def infonce(q):
        return losses.moco_loss(q, k, moco.queue, 0.2, reduction="none")

    mixed, frac = _gradmix_view(
        model, params, bs, v1, lambda z, aux: infonce(z).mean(), mix_key, cfg, N
    )

    def total(p):
        q, _, new = _apply(model, p, bs, v1)
        qm, _, _ = _apply(model, p, new["batch_stats"], mixed)
        return infonce(q).mean() + jnp.mean(frac * infonce(qm))

    want_loss, want = jax.value_and_grad(total)(params)
    np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-5)
    g, w = _flat(grads), _flat(want)
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-5 * float(jnp.abs(w).max()))
    np.testing.assert_allclose(updates["moco"].queue[:N], k, rtol=1e-4, atol=2e-5)
    np.testing.assert_array_equal(updates["moco"].queue[N:], moco.queue[N:])


def test_moco_momentum_encoder_and_queue_wraparound(moco_setup):
    """Two real steps: key params = EMA of the query params; keys enqueued with wrap-around."""
    model, tx = moco_setup
    m, size = 0.9, 12  # 2 batches of 8 wrap around a 12-row queue
    cfg = StepConfig(objective="moco", method="none", moco_queue_size=size, moco_momentum=m)
    state0 = init_state(model, tx, jax.random.key(0), (SIZE, SIZE, 1), cfg)
    # MoCo initialises the key encoder as a copy of the query encoder.
    np.testing.assert_array_equal(_flat(state0.moco.key_params), _flat(state0.params))
    x, y = _batch()
    step = jax.jit(make_train_step(model, tx, AUG, cfg))
    idx = jnp.arange(N)
    state1, _ = step(state0, x, y, idx)
    state2, metrics = step(state1, x, y, idx)
    assert np.isfinite(float(metrics["loss"]))

    # Step 1 used k = m·q0 + (1-m)·q0 = q0; step 2: m·q0 + (1-m)·q1 (the params before step 2's update).
    want_k2 = m * _flat(state0.params) + (1 - m) * _flat(state1.params)
    np.testing.assert_allclose(_flat(state2.moco.key_params), want_k2, rtol=1e-6, atol=1e-7)
    assert int(state2.moco.queue_ptr) == (2 * N) % size

    def keys(state_before, step_index):
        key = jax.random.fold_in(jax.random.wrap_key_data(state_before.key), step_index)
        v2 = augment.two_views(jax.random.split(key)[0], x, AUG)[1]
        kp = jax.tree.map(
            lambda k, q: m * k + (1 - m) * q, state_before.moco.key_params, state_before.params
        )
        (k, _), _ = model.apply(
            {"params": kp, "batch_stats": state_before.moco.key_batch_stats},
            v2,
            train=True,
            mutable=["batch_stats"],
        )
        return np.asarray(k)

    k1, k2 = keys(state0, 0), keys(state1, 1)
    queue = np.asarray(state2.moco.queue)
    # Rows 0..7 got batch 1, then batch 2 filled rows 8..11 and wrapped to rows 0..3.
    np.testing.assert_allclose(queue[8:12], k2[:4], rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(queue[0:4], k2[4:8], rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(queue[4:8], k1[4:8], rtol=1e-4, atol=2e-5)
