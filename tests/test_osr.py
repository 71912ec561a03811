"""Tests for gradmix_jax.osr against plain NumPy loop implementations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradmix_jax.osr import class_mean_scores, entropy_score, knn_scores, max_logit_score, msp_score


def _knn_loop(train, train_labels, test, num_classes, k):
    """Algorithm 1, one test sample and one class at a time (float64)."""
    train = np.asarray(train, np.float64)
    test = np.asarray(test, np.float64)
    scores, preds = [], []
    for t in test:
        t = t / np.linalg.norm(t)
        d = []
        for c in range(num_classes):
            sims = [t @ (x / np.linalg.norm(x)) for x, y in zip(train, train_labels) if y == c]
            d.append(sum(sorted(sims, reverse=True)[:k]))
        preds.append(int(np.argmax(d)))
        scores.append(max(d) / sum(d))
    return np.array(scores), np.array(preds)


def _data(seed, num_train=40, num_test=37, dim=6, num_classes=4):
    rng = np.random.default_rng(seed)
    # Non-negative features keep cosine similarities positive, so max/sum is well conditioned.
    train = np.abs(rng.normal(size=(num_train, dim))).astype(np.float32)
    test = np.abs(rng.normal(size=(num_test, dim))).astype(np.float32)
    labels = np.concatenate(
        [np.arange(num_classes), rng.integers(0, num_classes, num_train - num_classes)]
    )
    rng.shuffle(labels)
    return train, labels, test


@pytest.mark.parametrize("chunk_size", [8, 1, 1024])  # 37 % 8 != 0; chunk > T
@pytest.mark.parametrize("k", [1, 3])
def test_knn_matches_loop(chunk_size, k):
    train, labels, test = _data(0)
    labels[:12] = np.repeat(np.arange(4), 3)  # every class has >= 3 samples
    exp_scores, exp_preds = _knn_loop(train, labels, test, 4, k)
    scores, preds = knn_scores(train, labels, test, num_classes=4, k=k, chunk_size=chunk_size)
    assert scores.shape == (37,) and preds.shape == (37,)
    np.testing.assert_allclose(np.asarray(scores), exp_scores, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(preds), exp_preds)


def test_knn_under_jit_with_traced_labels():
    train, labels, test = _data(1, num_train=50, num_test=21, num_classes=3)
    labels[:9] = np.repeat(np.arange(3), 3)
    exp_scores, exp_preds = _knn_loop(train, labels, test, 3, 3)
    fn = jax.jit(knn_scores, static_argnames=("num_classes", "k", "chunk_size"))
    scores, preds = fn(train, jnp.asarray(labels), test, num_classes=3, k=3, chunk_size=4)
    np.testing.assert_allclose(np.asarray(scores), exp_scores, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(preds), exp_preds)


def test_knn_k_larger_than_smallest_class_raises():
    train, _, test = _data(2, num_train=10)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    with pytest.raises(ValueError, match=r"k=3 exceeds the smallest class size 2"):
        knn_scores(train, labels, test, num_classes=3, k=3)
    with pytest.raises(ValueError, match=r"k=1 exceeds the smallest class size 0"):
        knn_scores(train, labels, test, num_classes=4, k=1)  # class 3 is empty
    # Traced labels cannot be checked; the too-small class must show up as NaN, not silently.
    fn = jax.jit(knn_scores, static_argnames=("num_classes", "k", "chunk_size"))
    scores, _ = fn(train, jnp.asarray(labels), test, num_classes=3, k=3)
    assert np.all(np.isnan(np.asarray(scores)))


def test_knn_bad_arguments_raise():
    train, labels, test = _data(3)
    with pytest.raises(ValueError, match="train_labels"):
        knn_scores(train, np.where(labels == 0, 4, labels), test, num_classes=4, k=1)
    with pytest.raises(ValueError, match="chunk_size"):
        knn_scores(train, labels, test, num_classes=4, k=1, chunk_size=0)
    with pytest.raises(ValueError, match="k must"):
        knn_scores(train, labels, test, num_classes=4, k=0)


def test_msp_and_entropy_hand_made():
    logits = jnp.array([[0.0, 0.0], [math.log(3.0), 0.0], [1000.0, 0.0], [2.0, 2.0]], jnp.float32)
    np.testing.assert_allclose(np.asarray(msp_score(logits)), [0.5, 0.75, 1.0, 0.5], rtol=1e-6)
    expected_neg_entropy = [
        -math.log(2.0),
        0.75 * math.log(0.75) + 0.25 * math.log(0.25),
        0.0,
        -math.log(2.0),
    ]
    got = jax.jit(entropy_score)(logits)
    np.testing.assert_allclose(np.asarray(got), expected_neg_entropy, rtol=1e-6, atol=1e-7)
    four = jnp.zeros((1, 4))
    np.testing.assert_allclose(np.asarray(jax.jit(msp_score)(four)), [0.25], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(entropy_score(four)), [-math.log(4.0)], rtol=1e-6)


def test_max_logit_keeps_the_scale_msp_drops():
    # Same softmax (MSP 0.5 for both), different logit magnitude: only max-logit tells them apart.
    logits = jnp.array([[1.0, 1.0, -5.0], [9.0, 9.0, 3.0], [-2.0, 0.5, 0.25]], jnp.float32)
    np.testing.assert_allclose(np.asarray(jax.jit(max_logit_score)(logits)), [1.0, 9.0, 0.5])
    msp = np.asarray(msp_score(logits))
    assert msp[0] == pytest.approx(msp[1])


def test_class_mean_scores_matches_loop():
    train, labels, test = _data(4, num_train=30, num_test=11, num_classes=3)
    rng = np.random.default_rng(5)
    train = rng.normal(size=train.shape).astype(np.float32)
    test = rng.normal(size=test.shape).astype(np.float32)
    tr = train.astype(np.float64) / np.linalg.norm(train, axis=1, keepdims=True)
    te = test.astype(np.float64) / np.linalg.norm(test, axis=1, keepdims=True)
    means = [np.mean([x for x, y in zip(tr, labels) if y == c], axis=0) for c in range(3)]
    exp_scores, exp_preds = [], []
    for t in te:
        dists = [math.sqrt(sum((a - b) ** 2 for a, b in zip(t, m))) for m in means]
        exp_scores.append(-min(dists))
        exp_preds.append(int(np.argmin(dists)))
    fn = jax.jit(class_mean_scores, static_argnames="num_classes")
    scores, preds = fn(train, jnp.asarray(labels), test, num_classes=3)
    np.testing.assert_allclose(np.asarray(scores), exp_scores, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(preds), exp_preds)
    with pytest.raises(ValueError, match="class 3 is empty"):
        class_mean_scores(train, labels, test, num_classes=4)


def test_mahalanobis_scores_match_scipy():
    """NNO (App. A): distance to the closest class mean under the tied covariance, vs scipy."""
    from scipy.spatial.distance import mahalanobis

    rng = np.random.default_rng(3)
    num_classes, dim = 3, 4
    labels = np.repeat(np.arange(num_classes), 20)
    train = rng.normal(size=(60, dim)) * [1.0, 3.0, 0.5, 2.0] + labels[:, None] * 2.0
    test = rng.normal(size=(7, dim)) * 2.0
    means = np.stack([train[labels == c].mean(0) for c in range(num_classes)])
    # Tied covariance (MLE), computed independently: sum of per-class scatter matrices / N.
    scatter = sum(
        np.cov(train[labels == c].T, bias=True) * (labels == c).sum() for c in range(num_classes)
    ) / len(train)
    vi = np.linalg.inv(scatter)
    dists = np.array([[mahalanobis(t, m, vi) for m in means] for t in test])
    from gradmix_jax.osr import mahalanobis_scores

    scores, preds = jax.jit(mahalanobis_scores, static_argnames=("num_classes", "ridge"))(
        train, labels, test, num_classes=num_classes, ridge=0.0
    )
    np.testing.assert_allclose(scores, -dists.min(1), rtol=1e-4)
    np.testing.assert_array_equal(preds, dists.argmin(1))
    with pytest.raises(ValueError, match="class 2 is empty"):
        mahalanobis_scores(train[:40], labels[:40], test, num_classes=3)


@pytest.mark.parametrize("class_weight", [1.0, 0.5, 0.0])
def test_gaussian_scores_match_scipy_logpdf(class_weight):
    """max over classes of the Gaussian log-density; class_weight blends each class's covariance
    with the pooled within-class covariance (1: GDA, each class its own)."""
    from scipy.stats import multivariate_normal

    from gradmix_jax.osr import gaussian_scores

    rng = np.random.default_rng(4)
    num_classes, dim, ridge = 3, 4, 0.05
    labels = np.repeat(np.arange(num_classes), [15, 20, 25])
    scale = np.array([[1.0, 3.0, 0.5, 2.0], [0.2, 0.2, 1.0, 1.0], [2.0, 1.0, 1.0, 0.3]])
    train = rng.normal(size=(60, dim)) * scale[labels] + labels[:, None] * 2.0
    test = rng.normal(size=(7, dim)) * 2.0 + 1.0
    class_covs = [np.cov(train[labels == c].T, bias=True) for c in range(num_classes)]
    counts = np.bincount(labels)
    pooled = sum(n * cov for n, cov in zip(counts, class_covs)) / counts.sum()
    log_density = np.empty((len(test), num_classes))
    for c in range(num_classes):
        cov = class_weight * class_covs[c] + (1 - class_weight) * pooled
        cov += ridge * np.trace(cov) / dim * np.eye(dim)
        log_density[:, c] = multivariate_normal(train[labels == c].mean(0), cov).logpdf(test)
    scores, preds = jax.jit(gaussian_scores, static_argnames=("num_classes",))(
        train, labels, test, num_classes=num_classes, ridge=ridge, class_weight=class_weight
    )
    np.testing.assert_allclose(scores, log_density.max(1), rtol=1e-4)
    np.testing.assert_array_equal(preds, log_density.argmax(1))


def test_gaussian_scores_with_one_shared_covariance_rank_as_nno():
    """class_weight = 0: every class has the same covariance, so the log-density is
    -d^2 / 2 + const with d NNO's Mahalanobis distance under the same ridge."""
    from gradmix_jax.osr import gaussian_scores, mahalanobis_scores

    rng = np.random.default_rng(6)
    labels = np.repeat(np.arange(3), 20)
    train = rng.normal(size=(60, 5)) * rng.uniform(0.3, 2.0, size=(3, 5))[labels] + labels[:, None]
    test = rng.normal(size=(9, 5)) * 1.5
    g, g_pred = gaussian_scores(train, labels, test, 3, ridge=0.01, class_weight=0.0)
    m, m_pred = mahalanobis_scores(train, labels, test, 3, ridge=0.01)
    g, m = np.asarray(g, np.float64), np.asarray(m, np.float64)
    offset = g + 0.5 * m**2  # the same constant for every test sample
    np.testing.assert_allclose(offset, offset[0], atol=1e-3 * np.abs(g).max())
    np.testing.assert_array_equal(g_pred, m_pred)


def test_gaussian_scores_rank_deficient_and_bad_input():
    from gradmix_jax.osr import gaussian_scores

    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(2), 3)  # 3 samples per class in 5 dimensions
    train = np.concatenate([rng.normal(size=(6, 4)), np.zeros((6, 1))], axis=1)  # a dead unit
    scores, preds = gaussian_scores(train, labels, train, num_classes=2)
    assert np.isfinite(np.asarray(scores)).all()
    np.testing.assert_array_equal(preds, labels)  # each training sample is its own class's
    with pytest.raises(ValueError, match="ridge must be > 0"):
        gaussian_scores(train, labels, train, num_classes=2, ridge=0.0)
    with pytest.raises(ValueError, match=r"class_weight must be in \[0, 1\]"):
        gaussian_scores(train, labels, train, num_classes=2, class_weight=1.5)
    with pytest.raises(ValueError, match="class 2 is empty"):
        gaussian_scores(train, labels, train, num_classes=3)


def test_jit_without_static_num_classes_names_the_fix():
    x, y = jnp.ones((6, 4)), jnp.array([0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match=r"static_argnames=\('num_classes', 'k', 'chunk_size'\)"):
        jax.jit(knn_scores)(x, y, x[:2], 2)
    scores, _ = jax.jit(knn_scores, static_argnames=("num_classes", "k"))(
        x, y, x[:2], num_classes=2, k=3
    )
    np.testing.assert_allclose(np.asarray(scores), [0.5, 0.5])  # equal similarity to both classes
