"""Training losses: supervised contrastive (SupCon), SimCLR (NT-Xent) and cross-entropy.

All functions are pure and work under ``jax.jit``, ``jax.vmap`` and ``jax.grad``.

Multi-device note: a future ``axis_name: str | None = None`` keyword can be appended to
``supcon_loss`` / ``simclr_loss`` without breaking callers; it would ``jax.lax.all_gather``
the contrast features (and labels) across that axis so that every device contrasts its own
anchors against the global batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

_REDUCTIONS = ("mean", "none")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def supcon_loss(
    features: jax.Array,
    labels: jax.Array | None = None,
    temperature: float = 0.05,
    base_temperature: float | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """Supervised contrastive loss (Khosla et al. 2020), SupContrast's ``contrast_mode='all'``.

    Args:
      features: [batch, views, dim] embeddings, assumed L2-normalised along ``dim``.
      labels: int [batch] class labels, or None for SimCLR (the only positives of an anchor
        are the other views of the same sample).
      temperature: softmax temperature.
      base_temperature: the loss is scaled by ``temperature / base_temperature``;
        None means ``base_temperature = temperature`` (scale 1).
      reduction: 'mean' -> scalar mean over all batch*views anchors;
        'none' -> [batch, views], element [i, v] is the anchor of view v of sample i.

    Anchors without any positive (a singleton class seen in one view only) have
    mean_log_prob_pos = 0 (SupContrast divides by 1 instead of 0), so their loss is 0.
    """
    _check_reduction(reduction)
    if features.ndim != 3:
        raise ValueError(
            f"features must have shape [batch, views, dim], got shape {features.shape}"
        )
    batch, views, dim = features.shape
    if labels is not None and jnp.shape(labels) != (batch,):
        raise ValueError(f"labels must have shape [batch]=({batch},), got {jnp.shape(labels)}")
    if base_temperature is None:
        base_temperature = temperature

    # View-major stacking: row v * batch + i is view v of sample i (torch.cat(torch.unbind(.., 1))).
    contrast = jnp.transpose(features, (1, 0, 2)).reshape(views * batch, dim)
    ids = jnp.arange(batch) if labels is None else jnp.asarray(labels)
    ids = jnp.tile(ids, views)  # [views * batch]

    not_self = ~jnp.eye(views * batch, dtype=bool)
    positives = (ids[:, None] == ids[None, :]) & not_self

    logits = contrast @ contrast.T / temperature
    # SupContrast subtracts the detached row max before exp; log_prob is invariant to that
    # shift, and a masked logsumexp gives the same value without underflow at small temperatures.
    log_denominator = jax.nn.logsumexp(
        jnp.where(not_self, logits, -jnp.inf), axis=1, keepdims=True
    )
    log_prob = logits - log_denominator

    num_pos = positives.sum(axis=1)
    num_pos = jnp.where(num_pos < 1, 1, num_pos)  # zero positives: divide by 1, not 0
    mean_log_prob_pos = jnp.where(positives, log_prob, 0.0).sum(axis=1) / num_pos

    loss = -(temperature / base_temperature) * mean_log_prob_pos
    loss = loss.reshape(views, batch).T  # [batch, views]
    return loss.mean() if reduction == "mean" else loss


def simclr_loss(
    features: jax.Array, temperature: float = 0.05, reduction: str = "mean"
) -> jax.Array:
    """SimCLR / NT-Xent loss: ``supcon_loss`` with ``labels=None``.

    Args:
      features: [batch, views, dim], L2-normalised.
    Returns:
      scalar ('mean') or [batch, views] ('none').
    """
    return supcon_loss(features, None, temperature=temperature, reduction=reduction)


def cross_entropy(logits: jax.Array, labels: jax.Array, reduction: str = "mean") -> jax.Array:
    """Softmax cross-entropy with integer labels.

    Args:
      logits: [N, C].
      labels: int [N].
      reduction: 'mean' -> scalar; 'none' -> [N].
    """
    _check_reduction(reduction)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return loss.mean() if reduction == "mean" else loss
