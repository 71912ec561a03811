"""Open-set scoring rules: kNN class-similarity (GradMix Algorithm 1), MSP, max-logit, entropy,
class means, Mahalanobis (NNO) and class-conditional Gaussians (GDA).

Convention for every score here: higher score = more likely a known (in-distribution) sample.
All functions can be called inside jax.jit / vmap; their array work already runs in jitted
bodies (one compile per shape). Checks that need concrete labels are skipped under tracing.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_EPS = 1e-12


def _l2_normalise(x: jax.Array) -> jax.Array:
    """Row-wise L2 normalisation of [N, D]; all-zero rows stay zero instead of NaN."""
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x / jnp.maximum(norm, _EPS)


def _concrete_class_counts(labels: jax.Array, num_classes: int) -> np.ndarray | None:
    """Per-class counts [C] when labels are concrete, None under tracing; checks the range."""
    if isinstance(labels, jax.core.Tracer):
        return None
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"train_labels must lie in [0, num_classes={num_classes}), "
            f"got range [{labels.min()}, {labels.max()}]"
        )
    return np.bincount(labels.astype(np.int64), minlength=num_classes)


def _check_no_empty_class(labels: jax.Array, num_classes: int) -> None:
    """ValueError naming the first empty class (concrete labels only; skipped under tracing)."""
    counts = _concrete_class_counts(labels, num_classes)
    if counts is not None and counts.min() < 1:
        raise ValueError(
            f"train_labels must contain every class in [0, num_classes={num_classes}); "
            f"class {int(counts.argmin())} is empty"
        )


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, jax.core.Tracer):
        raise ValueError(
            f"{name} must be a static Python int, got a traced value: under jax.jit mark it static, "
            f"e.g. jax.jit(knn_scores, static_argnames=('num_classes', 'k', 'chunk_size'))"
        )
    if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def knn_scores(
    train_features: jax.Array,
    train_labels: jax.Array,
    test_features: jax.Array,
    num_classes: int,
    k: int = 3,
    chunk_size: int = 1024,
) -> tuple[jax.Array, jax.Array]:
    """Class-wise top-k cosine similarity scores (GradMix, Algorithm 1).

    For a test sample and class c, ``d_c`` = sum of the k largest cosine similarities
    between the sample and the training samples of class c. Prediction = argmax_c d_c,
    score = max_c d_c / sum_c d_c (meaningful when similarities are positive, e.g. the
    features of a well-trained contrastive encoder).

    Args:
      train_features: [N, D] (normalised inside).
      train_labels: int [N] in [0, num_classes).
      test_features: [T, D] (normalised inside).
      num_classes: C, static.
      k: neighbours per class, static; every class needs at least k training samples.
      chunk_size: test samples processed at once; peak memory is O(chunk_size * N),
        compute O(T * N * (D + C)).
    Returns:
      (scores [T] float, predictions [T] int32).

    With concrete labels a class with fewer than k samples raises ValueError; under jit
    (traced labels) the check cannot run and such classes give d_c = NaN instead.
    """
    _check_positive_int("num_classes", num_classes)
    _check_positive_int("k", k)
    _check_positive_int("chunk_size", chunk_size)
    counts = _concrete_class_counts(train_labels, num_classes)
    if counts is not None and counts.min() < k:
        raise ValueError(
            f"k={k} exceeds the smallest class size {int(counts.min())} "
            f"(class {int(counts.argmin())}); use k <= {int(counts.min())}"
        )
    return _knn_scores(
        jnp.asarray(train_features),
        jnp.asarray(train_labels),
        jnp.asarray(test_features),
        num_classes=num_classes,
        k=k,
        chunk_size=chunk_size,
    )


@functools.partial(jax.jit, static_argnames=("num_classes", "k", "chunk_size"))
def _knn_scores(
    train_features: jax.Array,
    train_labels: jax.Array,
    test_features: jax.Array,
    num_classes: int,
    k: int,
    chunk_size: int,
) -> tuple[jax.Array, jax.Array]:
    """Jitted body of ``knn_scores`` (arguments already validated)."""
    train = _l2_normalise(train_features)
    test = _l2_normalise(test_features)
    labels = train_labels.astype(jnp.int32)
    num_test = test.shape[0]
    class_counts = jnp.bincount(labels, length=num_classes)

    def class_sums(chunk: jax.Array) -> jax.Array:
        """[chunk, D] -> d [chunk, C]."""
        sims = chunk @ train.T  # [chunk, N]

        def one_class(c: jax.Array) -> jax.Array:
            # Masking keeps shapes static; one class at a time bounds memory to [chunk, N].
            masked = jnp.where(labels[None, :] == c, sims, -jnp.inf)
            return jax.lax.top_k(masked, k)[0].sum(axis=-1)  # [chunk]

        return jax.lax.map(one_class, jnp.arange(num_classes)).T

    chunk = min(chunk_size, max(num_test, 1))
    num_chunks = -(-num_test // chunk)
    padded = jnp.pad(test, ((0, num_chunks * chunk - num_test), (0, 0)))
    d = jax.lax.map(class_sums, padded.reshape(num_chunks, chunk, -1))
    d = d.reshape(num_chunks * chunk, num_classes)[:num_test]
    d = jnp.where(class_counts[None, :] >= k, d, jnp.nan)  # too-small class under jit

    predictions = jnp.argmax(d, axis=-1).astype(jnp.int32)
    scores = d.max(axis=-1) / d.sum(axis=-1)
    return scores, predictions


@jax.jit
def msp_score(logits: jax.Array) -> jax.Array:
    """Maximum softmax probability: [N, C] logits -> [N]."""
    return jax.nn.softmax(logits, axis=-1).max(axis=-1)


@jax.jit
def max_logit_score(logits: jax.Array) -> jax.Array:
    """Maximum logit (MLS, Vaze et al. 2022): [N, C] logits -> [N]; unlike MSP it keeps the
    logits' magnitude, which softmax normalises away."""
    return logits.max(axis=-1)


@jax.jit
def entropy_score(logits: jax.Array) -> jax.Array:
    """Negative softmax entropy, sum_c p_c log p_c: [N, C] logits -> [N] (<= 0)."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def class_mean_scores(
    train_features: jax.Array,
    train_labels: jax.Array,
    test_features: jax.Array,
    num_classes: int,
) -> tuple[jax.Array, jax.Array]:
    """Nearest-class-mean (NNO-style) scores on L2-normalised features.

    Class means are averages of the normalised training features (not re-normalised).

    Args:
      train_features: [N, D]; train_labels: int [N]; test_features: [T, D].
      num_classes: C, static.
    Returns:
      (scores [T] = -Euclidean distance to the closest mean, predictions [T] int32).
    Empty classes raise ValueError with concrete labels; under jit they are never predicted.
    """
    _check_positive_int("num_classes", num_classes)
    _check_no_empty_class(train_labels, num_classes)
    return _class_mean_scores(
        jnp.asarray(train_features),
        jnp.asarray(train_labels),
        jnp.asarray(test_features),
        num_classes=num_classes,
    )


@functools.partial(jax.jit, static_argnames="num_classes")
def _class_mean_scores(
    train_features: jax.Array,
    train_labels: jax.Array,
    test_features: jax.Array,
    num_classes: int,
) -> tuple[jax.Array, jax.Array]:
    """Jitted body of ``class_mean_scores`` (arguments already validated)."""
    train = _l2_normalise(train_features)
    test = _l2_normalise(test_features)
    labels = train_labels.astype(jnp.int32)

    sums = jax.ops.segment_sum(train, labels, num_segments=num_classes)  # [C, D]
    class_counts = jnp.bincount(labels, length=num_classes)
    means = sums / jnp.maximum(class_counts, 1)[:, None]

    # ||t - m||^2 expanded so that no [T, C, D] tensor is built; clamp rounding below zero.
    sq_dist = (
        jnp.sum(test**2, axis=-1, keepdims=True)
        + jnp.sum(means**2, axis=-1)[None, :]
        - 2.0 * test @ means.T
    )
    sq_dist = jnp.maximum(sq_dist, 0.0)  # [T, C]
    sq_dist = jnp.where(class_counts[None, :] > 0, sq_dist, jnp.inf)
    predictions = jnp.argmin(sq_dist, axis=-1).astype(jnp.int32)
    scores = -jnp.sqrt(sq_dist.min(axis=-1))
    return scores, predictions


def mahalanobis_scores(
    train_features: jax.Array,
    train_labels: jax.Array,
    test_features: jax.Array,
    num_classes: int,
    ridge: float = 1e-6,
) -> tuple[jax.Array, jax.Array]:
    """NNO as in the paper's Appendix A: Mahalanobis distance to the closest class mean.

    Class means and ONE shared (tied) covariance of the raw training features around their class
    means (Lee et al. 2018); the precision is the inverse of ``cov + ridge * mean(diag(cov)) * I``
    (the ridge keeps rank-deficient covariances, e.g. ReLU features with dead units, invertible).

    Args:
      train_features: [N, D]; train_labels: int [N] in [0, C); test_features: [T, D].
      num_classes: C, static.
      ridge: relative diagonal loading, >= 0.
    Returns:
      (scores [T] = -distance to the closest class mean (higher = known),
       predictions [T] int32 = index of that class).
    """
    _check_positive_int("num_classes", num_classes)
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    _check_no_empty_class(train_labels, num_classes)
    return _mahalanobis_scores(
        jnp.asarray(train_features, jnp.float32),
        jnp.asarray(train_labels),
        jnp.asarray(test_features, jnp.float32),
        num_classes=num_classes,
        ridge=ridge,
    )


def _class_means_and_pooled_cov(train_features, train_labels, num_classes):
    """(counts [C], class means [C, D], features centred on their class mean [N, D], pooled
    within-class covariance [D, D] (biased: the centred features' second moment))."""
    labels = train_labels.astype(jnp.int32)
    counts = jnp.bincount(labels, length=num_classes)
    means = jax.ops.segment_sum(train_features, labels, num_segments=num_classes)
    means = means / jnp.maximum(counts, 1)[:, None]
    centred = train_features - means[labels]
    return counts, means, centred, centred.T @ centred / train_features.shape[0]


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _mahalanobis_scores(train_features, train_labels, test_features, num_classes, ridge):
    counts, means, _, cov = _class_means_and_pooled_cov(train_features, train_labels, num_classes)
    dim = cov.shape[0]
    cov = cov + ridge * jnp.trace(cov) / dim * jnp.eye(dim, dtype=cov.dtype)
    precision = jnp.linalg.inv(cov)
    # (t - m)^T P (t - m) = t P t + m P m - 2 t P m, without a [T, C, D] tensor.
    tp = test_features @ precision
    sq = (
        jnp.sum(tp * test_features, axis=1, keepdims=True)
        + jnp.sum((means @ precision) * means, axis=1)[None, :]
        - 2.0 * tp @ means.T
    )
    sq = jnp.where(counts[None, :] > 0, jnp.maximum(sq, 0.0), jnp.inf)  # [T, C]
    return -jnp.sqrt(sq.min(axis=1)), jnp.argmin(sq, axis=1).astype(jnp.int32)


#: Default relative diagonal loading of ``gaussian_scores``' class covariances (chosen on the
#: Fashion-MNIST validation hold-out: docs/tuning_fashion_mnist.md).
GDA_RIDGE = 1e-3


def gaussian_scores(
    train_features: jax.Array,
    train_labels: jax.Array,
    test_features: jax.Array,
    num_classes: int,
    ridge: float = GDA_RIDGE,
    class_weight: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """GDA: log-density of the most likely class-conditional Gaussian (one covariance per class).

    Class c is modelled as N(m_c, S + ridge * mean(diag(S)) * I) with
    S = class_weight * S_c + (1 - class_weight) * S_pooled, where m_c and S_c are the mean and
    (biased) covariance of its training features and S_pooled is the covariance of every training
    feature around its own class mean (NNO's tied covariance); the score of a test sample is
    max_c log N(t; m_c, S'). With class_weight = 1 (plain GDA), unlike NNO
    (``mahalanobis_scores``: one covariance shared by every class), each class keeps its own
    spread, so a sample that sits close to a tight class's mean along a direction that class never
    varies in is scored as unlikely. Weights in (0, 1) shrink the class covariances towards the
    shared one (regularised discriminant analysis, Friedman 1989); 0 shares one covariance, which
    ranks test samples as NNO with the same ridge does.

    Args:
      train_features: [N, D]; train_labels: int [N] in [0, C); test_features: [T, D].
      num_classes: C, static.
      ridge: relative diagonal loading, > 0 (keeps rank-deficient class covariances, e.g. ReLU
        features with dead units or classes with fewer samples than dimensions, invertible).
      class_weight: weight of each class's own covariance, in [0, 1].
    Returns:
      (scores [T] = max_c log-density (higher = known), predictions [T] int32 = that class).
    Memory: O(N * D) per class (classes are processed one after another), O(C * D^2) in all.
    """
    _check_positive_int("num_classes", num_classes)
    if not isinstance(ridge, jax.core.Tracer) and not ridge > 0:  # traced: checked by the caller
        raise ValueError(f"ridge must be > 0, got {ridge}")
    if not isinstance(class_weight, jax.core.Tracer) and not 0.0 <= class_weight <= 1.0:
        raise ValueError(f"class_weight must be in [0, 1], got {class_weight}")
    _check_no_empty_class(train_labels, num_classes)
    return _gaussian_scores(
        jnp.asarray(train_features, jnp.float32),
        jnp.asarray(train_labels),
        jnp.asarray(test_features, jnp.float32),
        num_classes=num_classes,
        ridge=ridge,
        class_weight=class_weight,
    )


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _gaussian_scores(train_features, train_labels, test_features, num_classes, ridge, class_weight):
    labels = train_labels.astype(jnp.int32)
    dim = train_features.shape[1]
    counts, means, pooled_centred, pooled = _class_means_and_pooled_cov(
        train_features, labels, num_classes
    )

    def class_log_density(c: jax.Array) -> jax.Array:  # [T]
        mask = (labels == c).astype(train_features.dtype)[:, None]
        count = jnp.maximum(mask.sum(), 1.0)
        mean = means[c]
        centred = pooled_centred * mask  # other classes' rows are zero
        cov = class_weight * (centred.T @ centred / count) + (1.0 - class_weight) * pooled
        cov = cov + ridge * jnp.trace(cov) / dim * jnp.eye(dim, dtype=cov.dtype)
        chol = jnp.linalg.cholesky(cov)
        # (t - m)^T S^-1 (t - m) = |L^-1 (t - m)|^2 with S = L L^T.
        white = jax.scipy.linalg.solve_triangular(chol, (test_features - mean).T, lower=True)
        log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))
        return -0.5 * (jnp.sum(white**2, axis=0) + log_det + dim * jnp.log(2.0 * jnp.pi))

    # lax.map, not vmap: one class's [N, D] masked copy at a time.
    log_density = jax.lax.map(class_log_density, jnp.arange(num_classes)).T  # [T, C]
    log_density = jnp.where(counts[None, :] > 0, log_density, -jnp.inf)
    return log_density.max(axis=1), jnp.argmax(log_density, axis=1).astype(jnp.int32)
