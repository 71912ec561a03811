"""Tests for gradmix_jax.losses against plain NumPy loop formulas (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradmix_jax.losses import cross_entropy, simclr_loss, supcon_loss


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
