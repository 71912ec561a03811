"""Training losses: supervised contrastive (SupCon), SimCLR (NT-Xent), MoCo (InfoNCE) and cross-entropy.

All functions are pure and work under ``jax.jit``, ``jax.vmap`` and ``jax.grad``.

Inside ``jax.pmap`` / ``jax.shard_map`` code pass ``axis_name``: every device contrasts its own
anchors against the features all-gathered over that axis, and the 'mean' loss is ``pmean``-ed, so
it equals the single-device loss on the global batch. Under plain ``jax.jit`` over a mesh (what
the trainer does) no axis name is needed: XLA sees the global batch.

``mixed_view_loss`` is the GradMix paper's eq. 8 mixed-view term (SimCLR between the mixed view
1 and view 2, each sample weighted by ``mix_loss_weights``). ``clean_anchor_loss`` is the mixed
term of the authors' code instead (SupContrast's ``SupConLoss`` with ``features_positive``: anchors
and negatives from the clean pass, only the positives from the mixed pass), and
``mixed_anchor_loss`` weights it per sample as ``mixed_view_loss`` does.

The contrastive losses refuse a batch of one sample without ``axis_name``: with no other sample
there are no negatives, so the loss is exactly 0 with zero gradient and training would silently
do nothing. Shape checks are static, so they raise under ``jax.jit`` as well.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

_REDUCTIONS = ("mean", "none")

#: Allowed values of ``mix_loss_weights(loss_weight=...)`` / ``mixed_view_loss``.
LOSS_WEIGHTS: tuple[str, ...] = ("area", "kept", "one")
#: The train step's mixed-view term: ``mixed_view_loss`` (SimCLR between the mixed view 1 and
#: view 2) or ``mixed_anchor_loss`` (clean anchors and negatives, mixed-pass positives).
MIXED_LOSSES: tuple[str, ...] = ("simclr", "clean_anchors")

_NO_NEGATIVES = (
    "with one sample and no axis_name there are no negatives: the loss is exactly 0 with zero "
    "gradient"
)


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def supcon_loss(
    features: jax.Array,
    labels: jax.Array | None = None,
    temperature: float = 0.05,
    base_temperature: float | None = None,
    reduction: str = "mean",
    axis_name: str | None = None,
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
      axis_name: a pmap/shard_map axis: ``features``/``labels`` are this device's equal-sized
        shard of the global batch; negatives and positives come from the whole global batch,
        'mean' returns the global mean (same on every device), 'none' this shard's anchors.
        Without ``axis_name`` batch must be >= 2 (ValueError otherwise); with it a local batch
        of 1 is fine (the negatives come from the other devices).

    Anchors without any positive (a singleton class seen in one view only) have
    mean_log_prob_pos = 0 (SupContrast divides by 1 instead of 0), so their loss is 0.
    """
    _check_reduction(reduction)
    if features.ndim != 3:
        raise ValueError(
            f"features must have shape [batch, views, dim], got shape {features.shape}"
        )
    batch, views, dim = features.shape
    if axis_name is None and batch < 2:
        raise ValueError(
            "features must hold at least 2 samples ([batch >= 2, views, dim]) unless axis_name "
            f"gathers the others; {_NO_NEGATIVES}; got shape {tuple(features.shape)}"
        )
    if labels is not None and jnp.shape(labels) != (batch,):
        raise ValueError(f"labels must have shape [batch]=({batch},), got {jnp.shape(labels)}")
    if base_temperature is None:
        base_temperature = temperature

    if axis_name is None:
        all_features, offset = features, 0
        all_labels = None if labels is None else jnp.asarray(labels)
    else:
        all_features = jax.lax.all_gather(features, axis_name, tiled=True)
        offset = jax.lax.axis_index(axis_name) * batch
        all_labels = (
            None
            if labels is None
            else jax.lax.all_gather(jnp.asarray(labels), axis_name, tiled=True)
        )
    total = all_features.shape[0]

    # View-major stacking: row v * total + j is view v of sample j (torch.cat(torch.unbind(.., 1))).
    contrast = jnp.transpose(all_features, (1, 0, 2)).reshape(views * total, dim)
    anchor = jnp.transpose(features, (1, 0, 2)).reshape(views * batch, dim)
    anchor_rows = (
        jnp.arange(views)[:, None] * total + offset + jnp.arange(batch)[None, :]
    ).reshape(-1)
    ids = jnp.arange(total) if all_labels is None else all_labels
    ids = jnp.tile(ids, views)  # [views * total]

    not_self = jnp.arange(views * total)[None, :] != anchor_rows[:, None]
    positives = (ids[anchor_rows][:, None] == ids[None, :]) & not_self

    logits = anchor @ contrast.T / temperature
    # SupContrast subtracts the detached row max before exp; log_prob is invariant to that
    # shift, and a masked logsumexp gives the same value without underflow at small temperatures.
    log_denominator = jax.nn.logsumexp(jnp.where(not_self, logits, -jnp.inf), axis=1, keepdims=True)
    log_prob = logits - log_denominator

    num_pos = positives.sum(axis=1)
    num_pos = jnp.where(num_pos < 1, 1, num_pos)  # zero positives: divide by 1, not 0
    mean_log_prob_pos = jnp.where(positives, log_prob, 0.0).sum(axis=1) / num_pos

    loss = -(temperature / base_temperature) * mean_log_prob_pos
    loss = loss.reshape(views, batch).T  # [batch, views]
    if reduction == "none":
        return loss
    return loss.mean() if axis_name is None else jax.lax.pmean(loss.mean(), axis_name)


def simclr_loss(
    features: jax.Array,
    temperature: float = 0.05,
    reduction: str = "mean",
    axis_name: str | None = None,
    base_temperature: float | None = None,
) -> jax.Array:
    """SimCLR / NT-Xent loss: ``supcon_loss`` with ``labels=None``.

    Args:
      features: [batch, views, dim], L2-normalised; batch >= 2 unless ``axis_name``.
      base_temperature: the loss is scaled by ``temperature / base_temperature`` (None: 1).
    Returns:
      scalar ('mean') or [batch, views] ('none').
    """
    return supcon_loss(
        features,
        None,
        temperature=temperature,
        base_temperature=base_temperature,
        reduction=reduction,
        axis_name=axis_name,
    )


def mix_loss_weights(masked: jax.Array, loss_weight: str) -> jax.Array:
    """Per-sample weight of the mixed-view loss from each image's masked (pasted) fraction.

    Args:
      masked: [N] fraction of each mixed image that was replaced (``gradmix``'s
        ``masked_fraction``; ``1 - lam`` for CutMix / MixUp).
      loss_weight: 'area' -> ``masked`` (the paper's gamma^2 for GradMix), 'kept' ->
        ``1 - masked``, 'one' -> ones.

    Returns:
      [N] weights, same dtype as ``masked``.
    """
    if loss_weight not in LOSS_WEIGHTS:
        raise ValueError(f"loss_weight must be one of {LOSS_WEIGHTS}, got {loss_weight!r}")
    return {"area": masked, "kept": 1.0 - masked, "one": jnp.ones_like(masked)}[loss_weight]


def mixed_view_loss(
    z_mixed: jax.Array,
    z_view2: jax.Array,
    masked: jax.Array,
    *,
    temperature: float = 0.05,
    loss_weight: str = "area",
    axis_name: str | None = None,
    base_temperature: float | None = None,
) -> jax.Array:
    """GradMix mixed-view term (paper eq. 8): weighted SimCLR between mixed view 1 and view 2.

    ``w = stop_gradient(mix_loss_weights(masked, loss_weight))``; ``l = simclr_loss(
    stack([z_mixed, z_view2], 1), temperature, reduction='none')`` is [N, 2] (sample i's anchor
    in the mixed view and in view 2, its positive being the other one, the other 2N - 2
    embeddings its negatives); the result is ``mean_i(w_i * mean(l_i))``.

    Args:
      z_mixed: [N, D] L2-normalised embeddings of the mixed views.
      z_view2: [N, D] L2-normalised embeddings of the second views (same samples, same order).
      masked: [N] masked fraction of each mixed view (see ``mix_loss_weights``); no gradient
        flows through it.
      temperature: softmax temperature.
      loss_weight: one of ``LOSS_WEIGHTS``.
      axis_name: a pmap/shard_map axis: the inputs are this device's shard, negatives come
        from the global batch and the result is the global mean (``pmean``). Without it N must
        be >= 2.
      base_temperature: the loss is scaled by ``temperature / base_temperature`` (None: 1).

    Returns:
      scalar.
    """
    m_shape, v_shape = tuple(jnp.shape(z_mixed)), tuple(jnp.shape(z_view2))
    if len(m_shape) != 2 or v_shape != m_shape:
        raise ValueError(
            f"z_mixed and z_view2 must both be [N, D] with the same shape, got {m_shape} and "
            f"{v_shape}"
        )
    if tuple(jnp.shape(masked)) != m_shape[:1]:
        raise ValueError(
            f"masked must be [N] = ({m_shape[0]},) (one masked fraction per mixed view), got "
            f"shape {tuple(jnp.shape(masked))}"
        )
    if axis_name is None and m_shape[0] < 2:
        raise ValueError(
            "z_mixed must hold at least 2 samples ([N >= 2, D]) unless axis_name gathers the "
            f"others; {_NO_NEGATIVES}; got shape {m_shape}"
        )
    weights = jax.lax.stop_gradient(mix_loss_weights(masked, loss_weight))
    per_anchor = simclr_loss(
        jnp.stack([z_mixed, z_view2], axis=1),
        temperature=temperature,
        reduction="none",
        axis_name=axis_name,
        base_temperature=base_temperature,
    )  # [N, 2]
    loss = jnp.mean(weights * jnp.mean(per_anchor, axis=1))
    return loss if axis_name is None else jax.lax.pmean(loss, axis_name)


def clean_anchor_loss(
    features: jax.Array,
    features_positive: jax.Array,
    labels: jax.Array | None = None,
    temperature: float = 0.05,
    base_temperature: float | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """SupContrast's ``SupConLoss(features, labels, features_positive=...)`` as the authors'
    GradMix code uses it for the mixed-view term (``contrast_mode='all'``).

    With ``A`` the clean features and ``P`` the positives' features, both stacked view-major
    (``[V*B, D]``): ``Sn = A A^T / T`` gives the denominator (every other anchor, self
    excluded) and ``Sp = A P^T / T`` the positive logits. Each row is shifted by its own
    detached maximum, ``mp_i = max_j Sp_ij`` and ``mn_i = max_j Sn_ij`` (diagonals included), as
    that code does, so ``log_prob_ij = Sp_ij - mp_i - log sum_{k != i} exp(Sn_ik - mn_i)``: unlike
    SupCon's own shift this one does not cancel, the value carries ``mn_i - mp_i`` while the
    gradient does not. Positives: the other views of the same sample (same label with
    ``labels``), self excluded; anchor ``i``'s loss is ``-(T / base_temperature)`` times the mean
    of ``log_prob`` over them. With ``features_positive = features`` this is ``supcon_loss``.

    The train step's authors' recipe calls it with ``features = [z(v1), z(v2)]`` from the clean
    pass and ``features_positive = [z(mixed v1), z(v2)]`` from the mixed pass: anchor ``z(v1)_s``
    has the one positive ``z(v2)_s`` (mixed pass), anchor ``z(v2)_s`` has ``z(mixed v1)_s``.

    Args:
      features: [batch >= 2, views >= 2, dim] L2-normalised clean embeddings (anchors, negatives).
      features_positive: same shape: the embeddings whose similarities are the positive logits.
      labels: int [batch] or None (positives are the other views of the same sample).
      temperature: softmax temperature T.
      base_temperature: the loss is scaled by ``T / base_temperature`` (None: 1; the authors'
        code keeps SupContrast's 0.07).
      reduction: 'mean' -> scalar over all views*batch anchors; 'none' -> [batch, views].

    Returns:
      scalar ('mean') or [batch, views] ('none').
    """
    _check_reduction(reduction)
    shape = tuple(jnp.shape(features))
    if len(shape) != 3 or tuple(jnp.shape(features_positive)) != shape:
        raise ValueError(
            "features and features_positive must both be [batch, views, dim] with the same "
            f"shape, got {shape} and {tuple(jnp.shape(features_positive))}"
        )
    batch, views, dim = shape
    if batch < 2 or views < 2:
        raise ValueError(
            "features must be [batch >= 2, views >= 2, dim] (an anchor needs a positive and a "
            f"negative), got shape {shape}"
        )
    if labels is not None and jnp.shape(labels) != (batch,):
        raise ValueError(f"labels must have shape [batch]=({batch},), got {jnp.shape(labels)}")
    if base_temperature is None:
        base_temperature = temperature
    anchor = jnp.transpose(features, (1, 0, 2)).reshape(views * batch, dim)
    positive = jnp.transpose(features_positive, (1, 0, 2)).reshape(views * batch, dim)
    s_neg = anchor @ anchor.T / temperature
    s_pos = anchor @ positive.T / temperature
    m_neg = jax.lax.stop_gradient(jnp.max(s_neg, axis=1, keepdims=True))
    m_pos = jax.lax.stop_gradient(jnp.max(s_pos, axis=1, keepdims=True))
    not_self = ~jnp.eye(views * batch, dtype=bool)
    ids = jnp.tile(jnp.arange(batch) if labels is None else jnp.asarray(labels), views)
    positives = (ids[:, None] == ids[None, :]) & not_self
    log_denominator = jax.nn.logsumexp(
        jnp.where(not_self, s_neg - m_neg, -jnp.inf), axis=1, keepdims=True
    )
    log_prob = (s_pos - m_pos) - log_denominator
    # Every anchor has >= views - 1 >= 1 positives, so the count is never 0.
    mean_log_prob_pos = jnp.where(positives, log_prob, 0.0).sum(axis=1) / positives.sum(axis=1)
    loss = (-(temperature / base_temperature) * mean_log_prob_pos).reshape(views, batch).T
    return loss if reduction == "none" else loss.mean()


def mixed_anchor_loss(
    z_clean: jax.Array,
    z_positive: jax.Array,
    masked: jax.Array,
    *,
    temperature: float = 0.05,
    loss_weight: str = "kept",
    base_temperature: float | None = None,
) -> jax.Array:
    """The authors' mixed-view term, weighted per sample: ``mean_i(w_i * mean_v l_iv)``.

    ``l = clean_anchor_loss(stack([z_clean[:N], z_clean[N:]], 1), stack([z_positive[:N],
    z_positive[N:]], 1), reduction='none')`` and ``w = stop_gradient(mix_loss_weights(masked,
    loss_weight))``; with one weight for the batch (the authors' ``1 - cut^2 / (H W)``) this is
    ``w * clean_anchor_loss(...)``.

    Args:
      z_clean: [2N, D] clean embeddings ``[z(v1); z(v2)]`` (anchors and negatives).
      z_positive: [2N, D] ``[z(mixed v1); z(v2)]`` from the mixed pass (positives).
      masked: [N] fraction per mixed view (see ``mix_loss_weights``).
      temperature, base_temperature: as ``clean_anchor_loss``.
      loss_weight: one of ``LOSS_WEIGHTS``.

    Returns:
      scalar.
    """
    c_shape, p_shape = tuple(jnp.shape(z_clean)), tuple(jnp.shape(z_positive))
    if len(c_shape) != 2 or c_shape[0] % 2 or p_shape != c_shape:
        raise ValueError(
            "z_clean and z_positive must both be [2N, D] (view 1 rows, then view 2 rows) with the "
            f"same shape, got {c_shape} and {p_shape}"
        )
    n = c_shape[0] // 2
    if tuple(jnp.shape(masked)) != (n,):
        raise ValueError(
            f"masked must be [N] = ({n},) (one fraction per mixed view), got shape "
            f"{tuple(jnp.shape(masked))}"
        )
    weights = jax.lax.stop_gradient(mix_loss_weights(masked, loss_weight))
    per_anchor = clean_anchor_loss(
        jnp.stack([z_clean[:n], z_clean[n:]], axis=1),
        jnp.stack([z_positive[:n], z_positive[n:]], axis=1),
        temperature=temperature,
        base_temperature=base_temperature,
        reduction="none",
    )  # [N, 2]
    return jnp.mean(weights * jnp.mean(per_anchor, axis=1))


def moco_loss(
    queries: jax.Array,
    keys: jax.Array,
    queue: jax.Array,
    temperature: float = 0.07,
    reduction: str = "mean",
    axis_name: str | None = None,
) -> jax.Array:
    """MoCo (He et al. 2020) InfoNCE: each query's positive is its own key, negatives the queue.

    ``logits_i = [q_i·k_i, q_i·queue_1, ..., q_i·queue_K] / T``; loss_i = cross-entropy with target 0.

    Args:
      queries: [N, D] L2-normalised query embeddings (gradients flow through these).
      keys: [N, D] L2-normalised key embeddings (from the momentum encoder; treat as constants:
        this function does not stop their gradient, the caller decides).
      queue: [K, D] L2-normalised negatives from earlier batches.
      temperature: softmax temperature (MoCo v1: 0.07).
      reduction: 'mean' -> scalar; 'none' -> [N].
      axis_name: inside pmap/shard_map, 'mean' is ``pmean``-ed over this axis (the positives are
        per-sample and the queue is replicated, so no gathering is needed).
    """
    _check_reduction(reduction)
    if (
        queries.ndim != 2
        or keys.shape != queries.shape
        or queue.ndim != 2
        or queue.shape[1] != queries.shape[1]
    ):
        raise ValueError(
            f"queries and keys must be [N, D] and queue [K, D]; got {queries.shape}, "
            f"{keys.shape}, {queue.shape}"
        )
    positive = jnp.sum(queries * keys, axis=-1, keepdims=True)  # [N, 1]
    negative = queries @ queue.T  # [N, K]
    logits = jnp.concatenate([positive, negative], axis=1) / temperature
    loss = jax.nn.logsumexp(logits, axis=1) - logits[:, 0]
    if reduction == "none":
        return loss
    return loss.mean() if axis_name is None else jax.lax.pmean(loss.mean(), axis_name)


def cross_entropy(
    logits: jax.Array, labels: jax.Array, reduction: str = "mean", label_smoothing: float = 0.0
) -> jax.Array:
    """Softmax cross-entropy with integer labels, optionally label-smoothed.

    Args:
      logits: [N, C].
      labels: int [N].
      reduction: 'mean' -> scalar; 'none' -> [N].
      label_smoothing: ε in [0, 1): the target is (1 - ε)·one_hot + ε / C (``optax.smooth_labels``).
    """
    _check_reduction(reduction)
    if isinstance(label_smoothing, (int, float)):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if label_smoothing == 0.0:  # the integer-label form: no [N, C] one-hot
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            return loss.mean() if reduction == "mean" else loss
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    loss = optax.softmax_cross_entropy(logits, targets)
    return loss.mean() if reduction == "mean" else loss
