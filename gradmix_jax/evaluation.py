"""Evaluations beyond open-set recognition: OOD detection (Table 4), robustness to common
corruptions (Table 5, Fig. 5) and linear probing of self-supervised features (Table 6, Fig. 6).

Every function takes features (numpy or jax arrays) already extracted by the encoder, so it is
independent of how a model was trained; every rate is a fraction in [0, 1].

- ``ood_evaluation``: k-NN score of Algorithm 1 (``osr.knn_scores``) for in- and out-of-distribution
  features, then ARPL's TNR@95TPR / AUROC / DTACC / AUIN / AUOUT (``metrics.ood_metrics``).
- ``knn_accuracy``: closed-set accuracy of the Algorithm 1 prediction (argmax_c d_c), the
  classifier of a contrastive model (paper §4.2, §4.4).
- ``corruption_accuracy_drops``: D_{c,s} = A_clean - A_{c,s} and its means over severities
  (D̄_c, Fig. 5) and over corruptions (D̄_s, Table 5).
- ``linear_probe``: a softmax linear classifier trained with optax SGD in one jitted function
  (``lax.scan`` over epochs and steps), top-1 / top-5 accuracy.
"""

from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradmix_jax import metrics, osr

OOD_METRICS = ("tnr", "auroc", "dtacc", "auin", "auout")
NORMALIZATIONS = ("standardize", "l2", "none")


def _features(name: str, x) -> jax.Array:
    if np.ndim(x) != 2 or np.shape(x)[0] == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] array, got shape {np.shape(x)}")
    return jnp.asarray(x, jnp.float32)


def _labels(name: str, y, n: int, num_classes: int) -> jax.Array:
    y = np.asarray(y)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"{name} must be an integer array of shape ({n},), got {y.dtype} {y.shape}"
        )
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(
            f"{name} must lie in [0, num_classes={num_classes}), got range [{y.min()}, {y.max()}]"
        )
    return jnp.asarray(y, jnp.int32)


def _positive_int(name: str, value) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _same_dim(reference: jax.Array, **others: jax.Array) -> None:
    for name, x in others.items():
        if x.shape[1] != reference.shape[1]:
            raise ValueError(
                f"{name} must have the feature dimension of train_features "
                f"({reference.shape[1]}), got {x.shape[1]}"
            )


# ----------------------------------------------------------------------------- Table 4


def ood_evaluation(
    train_features,
    train_labels,
    in_features,
    out_features_by_name: Mapping[str, object],
    num_classes: int,
    k: int = 3,
    chunk_size: int = 1024,
) -> dict[str, dict[str, float]]:
    """Out-of-distribution detection with the k-NN score of Algorithm 1 (paper §4.3, App. E).

    The score of a sample is max_c d_c / sum_c d_c, d_c = sum of its k largest cosine similarities to
    training samples of class c (higher = in-distribution). For every out-of-distribution set the
    in-distribution scores are the positives of ``metrics.ood_metrics`` (ARPL's metric_ood).

    Args:
      train_features: [N, D] features of the training set (the k-NN reference).
      train_labels: int [N] in [0, num_classes).
      in_features: [Tin, D] in-distribution test features (e.g. CIFAR10 test).
      out_features_by_name: {name: [Tout, D]} out-of-distribution test features
        (e.g. {'cifar100': ..., 'svhn': ...}); at least one entry.
      num_classes: C; k: neighbours per class (paper: 3); chunk_size: see ``osr.knn_scores``.
    Returns:
      {name: {'tnr', 'auroc', 'dtacc', 'auin', 'auout'}} as fractions.
    """
    num_classes = _positive_int("num_classes", num_classes)
    train = _features("train_features", train_features)
    labels = _labels("train_labels", train_labels, train.shape[0], num_classes)
    inside = _features("in_features", in_features)
    if not isinstance(out_features_by_name, Mapping) or not out_features_by_name:
        raise ValueError(
            "out_features_by_name must be a non-empty dict {name: [T, D] features}, "
            f"got {type(out_features_by_name).__name__}"
        )
    outs = {
        name: _features(f"out_features_by_name[{name!r}]", x)
        for name, x in out_features_by_name.items()
    }
    _same_dim(
        train, in_features=inside, **{f"out_features_by_name[{n!r}]": x for n, x in outs.items()}
    )

    def scores(x):
        return np.asarray(
            osr.knn_scores(train, labels, x, num_classes, k=k, chunk_size=chunk_size)[0]
        )

    in_scores = scores(inside)
    return {name: metrics.ood_metrics(in_scores, scores(x)) for name, x in outs.items()}


# ----------------------------------------------------------------------------- Table 5 / Fig. 5


def knn_accuracy(
    train_features,
    train_labels,
    test_features,
    test_labels,
    num_classes: int,
    k: int = 3,
    chunk_size: int = 1024,
) -> float:
    """Accuracy of the Algorithm 1 prediction argmax_c d_c (the classifier of a contrastive model).

    Args:
      train_features: [N, D]; train_labels: int [N]; test_features: [T, D]; test_labels: int [T],
      all labels in [0, num_classes). k, chunk_size: see ``osr.knn_scores``.
    Returns:
      fraction of test samples whose prediction equals the label.
    """
    num_classes = _positive_int("num_classes", num_classes)
    train = _features("train_features", train_features)
    labels = _labels("train_labels", train_labels, train.shape[0], num_classes)
    test = _features("test_features", test_features)
    test_y = _labels("test_labels", test_labels, test.shape[0], num_classes)
    _same_dim(train, test_features=test)
    _, predictions = osr.knn_scores(train, labels, test, num_classes, k=k, chunk_size=chunk_size)
    return float(metrics.closed_set_accuracy(predictions, test_y))


def _fraction(name: str, value) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1], got {value}")
    return value


def corruption_accuracy_drops(
    clean_accuracy: float, accuracy: Mapping[tuple[str, int], float]
) -> dict:
    """Accuracy drops under corruption (paper §4.4): D_{c,s} = A_clean - A_{c,s}.

    Args:
      clean_accuracy: A_clean, accuracy on the uncorrupted test set.
      accuracy: {(corruption, severity): A_{c,s}} for a complete grid (every corruption at every
        severity that occurs), fractions.
    Returns:
      {'drops': {(c, s): D_{c,s}},
       'per_corruption': {c: D̄_c = mean over severities} (Fig. 5),
       'per_severity': {s: D̄_s = mean over corruptions} (Table 5),
       'mean': mean over all (c, s) (Table 5's "Avg." row)}; corruptions keep their first-seen
      order, severities are sorted. Drops are negative where a corruption raised the accuracy.
    """
    clean = _fraction("clean_accuracy", clean_accuracy)
    if not isinstance(accuracy, Mapping) or not accuracy:
        raise ValueError("accuracy must be a non-empty dict {(corruption, severity): accuracy}")
    for cell in accuracy:
        if not (
            isinstance(cell, tuple)
            and len(cell) == 2
            and isinstance(cell[0], str)
            and isinstance(cell[1], (int, np.integer))
        ):
            raise ValueError(
                f"accuracy keys must be (corruption: str, severity: int), got {cell!r}"
            )
    corruptions = list(dict.fromkeys(c for c, _ in accuracy))
    severities = sorted({int(s) for _, s in accuracy})
    missing = [(c, s) for c in corruptions for s in severities if (c, s) not in accuracy]
    if missing:
        raise ValueError(
            f"accuracy must cover every (corruption, severity) of the grid "
            f"{corruptions} x {severities}; missing {missing}"
        )
    drops = {
        (c, int(s)): clean - _fraction(f"accuracy[{(c, s)!r}]", a) for (c, s), a in accuracy.items()
    }
    per_corruption = {c: float(np.mean([drops[(c, s)] for s in severities])) for c in corruptions}
    per_severity = {s: float(np.mean([drops[(c, s)] for c in corruptions])) for s in severities}
    return {
        "drops": drops,
        "per_corruption": per_corruption,
        "per_severity": per_severity,
        "mean": float(np.mean(list(drops.values()))),
    }


# ----------------------------------------------------------------------------- Table 6 / Fig. 6


def topk_accuracy(logits, labels, k: int) -> float:
    """Fraction of rows whose label is among the k largest logits (ties: lower class index first).

    Args:
      logits: [T, C]; labels: int [T] in [0, C); k: 1 <= k <= C.
    """
    logits = _features("logits", logits)
    num_classes = logits.shape[1]
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= num_classes:
        raise ValueError(f"k must be an int in [1, num_classes={num_classes}], got {k!r}")
    y = _labels("labels", labels, logits.shape[0], num_classes)
    return float(_topk_accuracy(logits, y, int(k)))


@functools.partial(jax.jit, static_argnames="k")
def _topk_accuracy(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    top = jax.lax.top_k(logits, k)[1]
    return jnp.mean(jnp.any(top == labels[:, None], axis=-1))


def _normalise(train: jax.Array, test: jax.Array, how: str) -> tuple[jax.Array, jax.Array]:
    if how == "standardize":
        # Per-dimension statistics of the TRAINING features only; applied to both sets.
        mean, std = train.mean(axis=0), train.std(axis=0)
        scale = 1.0 / jnp.maximum(std, 1e-6)
        return (train - mean) * scale, (test - mean) * scale
    if how == "l2":
        return osr._l2_normalise(train), osr._l2_normalise(test)
    return train, test


@functools.partial(jax.jit, static_argnames=("num_classes", "epochs", "batch_size", "normalize"))
def _linear_probe(
    train_x,
    train_y,
    test_x,
    test_y,
    key,
    learning_rate,
    weight_decay,
    momentum,
    *,
    num_classes: int,
    epochs: int,
    batch_size: int,
    normalize: str,
):
    """Jitted body of ``linear_probe``: every epoch and step on the device in one program."""
    train_x, test_x = _normalise(train_x, test_x, normalize)
    n, dim = train_x.shape
    steps_per_epoch = n // batch_size
    schedule = optax.cosine_decay_schedule(learning_rate, epochs * steps_per_epoch)
    # L2 on the weights only (not the bias), as SGD weight decay: grad += weight_decay * w.
    tx = optax.chain(
        optax.add_decayed_weights(weight_decay, mask={"w": True, "b": False}),
        optax.sgd(schedule, momentum=momentum),
    )
    # Zero init: the problem is convex, so no random init is needed; the key only shuffles.
    params = {
        "w": jnp.zeros((dim, num_classes), jnp.float32),
        "b": jnp.zeros((num_classes,), jnp.float32),
    }

    def loss_fn(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(x @ p["w"] + p["b"], y).mean()

    def step(carry, idx):
        p, opt_state = carry
        grads = jax.grad(loss_fn)(p, train_x[idx], train_y[idx])
        updates, opt_state = tx.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), None

    def epoch(carry, epoch_key):
        # A fresh permutation per epoch; the last n % batch_size samples of it are skipped.
        order = jax.random.permutation(epoch_key, n)[: steps_per_epoch * batch_size]
        return jax.lax.scan(step, carry, order.reshape(steps_per_epoch, batch_size))[0], None

    (params, _), _ = jax.lax.scan(epoch, (params, tx.init(params)), jax.random.split(key, epochs))
    test_logits = test_x @ params["w"] + params["b"]
    train_logits = train_x @ params["w"] + params["b"]
    return {
        "top1": _topk_accuracy(test_logits, test_y, 1),
        "top5": _topk_accuracy(test_logits, test_y, min(5, num_classes)),
        "train_top1": _topk_accuracy(train_logits, train_y, 1),
    }


def linear_probe(
    train_features,
    train_labels,
    test_features,
    test_labels,
    num_classes: int,
    *,
    key: jax.Array,
    epochs: int = 100,
    batch_size: int = 256,
    learning_rate: float = 0.1,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    normalize: str = "standardize",
) -> dict[str, float]:
    """Linear classification on frozen features (paper §4.5, App. G): top-1 / top-5 accuracy.

    A softmax linear layer (weights and bias initialised to zero) is trained by minibatch SGD with
    momentum and a cosine learning-rate decay to 0 over ``epochs`` passes (each pass: one fresh
    permutation of the training set in ``batch_size`` batches, the remainder skipped), cross-entropy
    loss, weight decay on the weights only. The whole training is one jitted function (``lax.scan``
    over epochs and steps), so it runs on the accelerator without host round trips.

    Feature normalisation (``normalize``): 'standardize' (default) subtracts the per-dimension mean
    and divides by the per-dimension std of the TRAINING features (applied to both sets), so one
    learning rate suits encoders of any width and scale (ResNet18's 512-d vs ResNet50's 2048-d
    pooled features); 'l2' projects each feature onto the unit sphere (the geometry the contrastive
    loss and the k-NN use); 'none' uses the features as they are.

    Args:
      train_features: [N, D]; train_labels: int [N] in [0, num_classes).
      test_features: [T, D]; test_labels: int [T] in [0, num_classes).
      num_classes: C.
      key: JAX PRNG key for the data order.
      epochs, batch_size: training length; batch_size is capped at N.
      learning_rate: peak SGD learning rate; weight_decay: >= 0; momentum: in [0, 1).
      normalize: one of ``NORMALIZATIONS``.
    Returns:
      {'top1', 'top5', 'train_top1'} fractions; top-5 uses min(5, C) classes.
    """
    num_classes = _positive_int("num_classes", num_classes)
    epochs = _positive_int("epochs", epochs)
    batch_size = _positive_int("batch_size", batch_size)
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {list(NORMALIZATIONS)}, got {normalize!r}")
    if not float(learning_rate) > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
    if not float(weight_decay) >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if not 0.0 <= float(momentum) < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    train = _features("train_features", train_features)
    test = _features("test_features", test_features)
    _same_dim(train, test_features=test)
    train_y = _labels("train_labels", train_labels, train.shape[0], num_classes)
    test_y = _labels("test_labels", test_labels, test.shape[0], num_classes)
    out = _linear_probe(
        train,
        train_y,
        test,
        test_y,
        key,
        jnp.float32(learning_rate),
        jnp.float32(weight_decay),
        jnp.float32(momentum),
        num_classes=num_classes,
        epochs=epochs,
        batch_size=min(batch_size, train.shape[0]),
        normalize=normalize,
    )
    return {name: float(v) for name, v in out.items()}
