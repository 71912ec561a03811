"""Tests for gradmix_jax.losses against plain NumPy loop formulas (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradmix_jax.losses import (
    LOSS_WEIGHTS,
    cross_entropy,
    mix_loss_weights,
    mixed_view_loss,
    simclr_loss,
    supcon_loss,
)


def _normalised(rng, batch, views, dim):
    x = rng.normal(size=(batch, views, dim))
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _supcon_loop(features, labels, temperature, base_temperature=None):
    """SupContrast (contrast_mode='all') written anchor by anchor; returns [batch, views]."""
    features = np.asarray(features, np.float64)
    batch, views, _ = features.shape
    if base_temperature is None:
        base_temperature = temperature
    ids = list(range(batch)) if labels is None else [int(label) for label in labels]
    out = np.zeros((batch, views))
    for i in range(batch):
        for v in range(views):
            anchor = features[i, v]
            denominator = 0.0
            for j in range(batch):
                for w in range(views):
                    if (j, w) != (i, v):
                        denominator += np.exp(anchor @ features[j, w] / temperature)
            log_probs = []
            for j in range(batch):
                for w in range(views):
                    if (j, w) != (i, v) and ids[j] == ids[i]:
                        logit = anchor @ features[j, w] / temperature
                        log_probs.append(logit - np.log(denominator))
            mean_log_prob = sum(log_probs) / max(len(log_probs), 1)
            out[i, v] = -(temperature / base_temperature) * mean_log_prob
    return out


LABELS = np.array([0, 1, 0, 2, 1, 3])  # repeated classes and the singleton class 3


def test_supcon_matches_loop_with_labels():
    feats = _normalised(np.random.default_rng(0), 6, 2, 5)
    expected = _supcon_loop(feats, LABELS, 0.5)
    got = supcon_loss(jnp.asarray(feats), jnp.asarray(LABELS), temperature=0.5)
    np.testing.assert_allclose(float(got), expected.mean(), rtol=1e-5)


def test_supcon_none_reduction_layout_and_mean():
    feats = _normalised(np.random.default_rng(1), 6, 2, 5)
    expected = _supcon_loop(feats, LABELS, 0.1)
    per_anchor = supcon_loss(jnp.asarray(feats), jnp.asarray(LABELS), 0.1, reduction="none")
    assert per_anchor.shape == (6, 2)
    # element [i, v] must be the anchor of view v of sample i
    np.testing.assert_allclose(np.asarray(per_anchor), expected, rtol=1e-5)
    mean = supcon_loss(jnp.asarray(feats), jnp.asarray(LABELS), 0.1, reduction="mean")
    np.testing.assert_allclose(float(mean), float(per_anchor.mean()), rtol=1e-6)


def test_supcon_anchor_without_positives_contributes_zero():
    # One view: the singleton class 3 has no positive; SupContrast divides by 1 -> loss 0.
    feats = _normalised(np.random.default_rng(2), 6, 1, 5)
    expected = _supcon_loop(feats, LABELS, 0.2)
    assert expected[5, 0] == 0.0
    got = supcon_loss(jnp.asarray(feats), jnp.asarray(LABELS), 0.2, reduction="none")
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        float(supcon_loss(jnp.asarray(feats), jnp.asarray(LABELS), 0.2)), expected.mean(), rtol=1e-5
    )


def test_simclr_three_views_matches_loop():
    feats = _normalised(np.random.default_rng(3), 4, 3, 5)
    expected = _supcon_loop(feats, None, 0.3)
    got = supcon_loss(jnp.asarray(feats), None, 0.3, reduction="none")
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)
    np.testing.assert_allclose(
        float(simclr_loss(jnp.asarray(feats), 0.3)), expected.mean(), rtol=1e-5
    )


def test_base_temperature_scales_loss():
    feats = _normalised(np.random.default_rng(4), 6, 2, 5)
    expected = _supcon_loop(feats, LABELS, 0.07, base_temperature=0.7)
    got = supcon_loss(jnp.asarray(feats), jnp.asarray(LABELS), 0.07, base_temperature=0.7)
    np.testing.assert_allclose(float(got), expected.mean(), rtol=1e-5)


def test_small_temperature_is_finite_and_correct():
    # 1/T = 200: exp of the unshifted logits would overflow float32.
    feats = _normalised(np.random.default_rng(5), 6, 2, 5)
    expected = _supcon_loop(feats, LABELS, 0.005)
    got = supcon_loss(jnp.asarray(feats), jnp.asarray(LABELS), 0.005, reduction="none")
    assert np.all(np.isfinite(np.asarray(got)))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4)


def test_supcon_jit_and_grad():
    feats = jnp.asarray(_normalised(np.random.default_rng(6), 6, 2, 5))
    labels = jnp.asarray(LABELS)
    eager = supcon_loss(feats, labels, 0.05)
    jitted = jax.jit(supcon_loss, static_argnames=("reduction",))(feats, labels, 0.05)
    np.testing.assert_allclose(float(jitted), float(eager), rtol=1e-6)
    grad = jax.jit(jax.grad(supcon_loss))(feats, labels, 0.05)
    assert grad.shape == feats.shape
    assert np.all(np.isfinite(np.asarray(grad)))
    assert float(jnp.abs(grad).max()) > 0.0
    # Directional finite difference (float32, so a loose tolerance).
    direction = jnp.asarray(np.random.default_rng(7).normal(size=feats.shape), jnp.float32)
    eps = 1e-3
    numeric = (
        supcon_loss(feats + eps * direction, labels, 0.5)
        - supcon_loss(feats - eps * direction, labels, 0.5)
    ) / (2 * eps)
    analytic = jnp.vdot(jax.grad(supcon_loss)(feats, labels, 0.5), direction)
    np.testing.assert_allclose(float(analytic), float(numeric), rtol=2e-2)


def test_supcon_vmap_over_batches():
    rng = np.random.default_rng(8)
    feats = np.stack([_normalised(rng, 6, 2, 5) for _ in range(3)])
    got = jax.vmap(lambda f: supcon_loss(f, jnp.asarray(LABELS), 0.5))(jnp.asarray(feats))
    expected = [_supcon_loop(f, LABELS, 0.5).mean() for f in feats]
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)


def test_bad_arguments_raise():
    feats = jnp.asarray(_normalised(np.random.default_rng(9), 6, 2, 5))
    with pytest.raises(ValueError, match="reduction"):
        supcon_loss(feats, jnp.asarray(LABELS), reduction="sum")
    with pytest.raises(ValueError, match="features"):
        supcon_loss(feats[:, 0], jnp.asarray(LABELS))
    with pytest.raises(ValueError, match="labels"):
        supcon_loss(feats, jnp.asarray(LABELS[:4]))
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32), reduction="avg")


def test_cross_entropy_matches_loop():
    rng = np.random.default_rng(10)
    logits = rng.normal(size=(7, 4)).astype(np.float32) * 3
    labels = rng.integers(0, 4, size=7)
    expected = []
    for row, y in zip(logits.astype(np.float64), labels):
        expected.append(np.log(np.sum(np.exp(row))) - row[y])
    got = jax.jit(cross_entropy, static_argnames="reduction")(
        jnp.asarray(logits), jnp.asarray(labels), reduction="none"
    )
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)
    np.testing.assert_allclose(
        float(cross_entropy(jnp.asarray(logits), jnp.asarray(labels))), np.mean(expected), rtol=1e-5
    )


def test_label_smoothed_cross_entropy_matches_its_formula():
    """(1 - ε)·(-log p_y) + ε·mean_c(-log p_c), from a numpy log-softmax."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 6)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    eps = 0.1
    want = (1 - eps) * -logp[np.arange(6), labels] + eps * -logp.mean(axis=1)
    got = jax.jit(cross_entropy, static_argnames="reduction")(
        jnp.asarray(logits), jnp.asarray(labels), reduction="none", label_smoothing=eps
    )
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
    plain = cross_entropy(jnp.asarray(logits), jnp.asarray(labels), label_smoothing=0.0)
    np.testing.assert_allclose(float(plain), np.mean(-logp[np.arange(6), labels]), rtol=1e-5)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
        cross_entropy(jnp.asarray(logits), jnp.asarray(labels), label_smoothing=1.0)


# ----------------------------------------------------------------------------- mixed-view loss


def _np_mixed_view_loss(z_mixed, z_view2, masked, temperature, loss_weight):
    """Eq. 8 written out: NT-Xent over the 2N embeddings (cosine / T, softmax over the 2N - 1
    others, positive = the sample's other view), averaged over its two anchors, weighted."""
    z = np.concatenate([z_mixed, z_view2]).astype(np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z_mixed)
    sims = z @ z.T / temperature
    per_anchor = np.zeros(2 * n)
    for a in range(2 * n):
        others = [b for b in range(2 * n) if b != a]
        logits = sims[a, others]
        log_z = logits.max() + np.log(np.exp(logits - logits.max()).sum())
        per_anchor[a] = -(sims[a, (a + n) % (2 * n)] - log_z)
    per_sample = (per_anchor[:n] + per_anchor[n:]) / 2
    weight = {"area": masked, "kept": 1 - masked, "one": np.ones(n)}[loss_weight]
    return float(np.mean(weight * per_sample))


def _jnp_mixed_view_loss(z_mixed, z_view2, masked, temperature, loss_weight):
    """The same naive formula in jnp (for gradients)."""
    z = jnp.concatenate([z_mixed, z_view2])
    n = z_mixed.shape[0]
    sims = z @ z.T / temperature
    eye = jnp.eye(2 * n, dtype=bool)
    log_z = jax.nn.logsumexp(jnp.where(eye, -jnp.inf, sims), axis=1)
    positive = sims[jnp.arange(2 * n), (jnp.arange(2 * n) + n) % (2 * n)]
    per_anchor = log_z - positive
    per_sample = (per_anchor[:n] + per_anchor[n:]) / 2
    weight = {"area": masked, "kept": 1 - masked, "one": jnp.ones(n)}[loss_weight]
    return jnp.mean(weight * per_sample)


def _mixed_inputs(n=5, dim=6, seed=11):
    rng = np.random.default_rng(seed)
    feats = _normalised(rng, n, 2, dim)
    masked = rng.uniform(0.05, 0.5, size=n).astype(np.float32)
    return feats[:, 0], feats[:, 1], masked


@pytest.mark.parametrize("loss_weight", LOSS_WEIGHTS)
def test_mixed_view_loss_matches_naive_numpy_under_jit(loss_weight):
    zm, zv, masked = _mixed_inputs()
    f = jax.jit(mixed_view_loss, static_argnames=("temperature", "loss_weight"))
    got = f(zm, zv, masked, temperature=0.3, loss_weight=loss_weight)
    want = _np_mixed_view_loss(zm, zv, masked, 0.3, loss_weight)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


@pytest.mark.parametrize("loss_weight", LOSS_WEIGHTS)
def test_mixed_view_loss_equals_the_train_step_formula_exactly(loss_weight):
    # objectives.mixed_loss(z_mixed, z_view2, mix_loss_weights(masked), cfg), written out.
    zm, zv, masked = _mixed_inputs(seed=12)

    def train_step_formula(zm, zv, masked):
        weights = mix_loss_weights(masked, loss_weight)
        per_anchor = simclr_loss(jnp.stack([zm, zv], axis=1), temperature=0.05, reduction="none")
        return jnp.mean(weights * jnp.mean(per_anchor, axis=1))

    got = jax.jit(lambda *a: mixed_view_loss(*a, loss_weight=loss_weight))(zm, zv, masked)
    want = jax.jit(train_step_formula)(zm, zv, masked)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("loss_weight", LOSS_WEIGHTS)
def test_mixed_view_loss_gradient_matches_naive_jnp(loss_weight):
    zm, zv, masked = _mixed_inputs(seed=13)
    grads = jax.jit(
        jax.grad(
            lambda a, b, m: mixed_view_loss(a, b, m, temperature=0.2, loss_weight=loss_weight),
            argnums=(0, 1, 2),
        )
    )(zm, zv, masked)
    want = jax.jit(
        jax.grad(
            lambda a, b: _jnp_mixed_view_loss(a, b, jnp.asarray(masked), 0.2, loss_weight),
            argnums=(0, 1),
        )
    )(zm, zv)
    np.testing.assert_allclose(np.asarray(grads[0]), np.asarray(want[0]), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grads[1]), np.asarray(want[1]), rtol=1e-4, atol=1e-6)
    # No gradient flows into the weights.
    np.testing.assert_array_equal(np.asarray(grads[2]), 0.0)


def test_mix_loss_weights_values():
    masked = jnp.array([0.0, 0.25, 1.0])
    np.testing.assert_array_equal(np.asarray(mix_loss_weights(masked, "area")), [0.0, 0.25, 1.0])
    np.testing.assert_array_equal(np.asarray(mix_loss_weights(masked, "kept")), [1.0, 0.75, 0.0])
    np.testing.assert_array_equal(np.asarray(mix_loss_weights(masked, "one")), [1.0, 1.0, 1.0])
    assert LOSS_WEIGHTS == ("area", "kept", "one")
