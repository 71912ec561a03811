"""The train state and the ONE jitted train step (docs/design.md, "The train step").

One step on a batch of N images (indices into the device-resident training split):

1. two SimCLR views ``v1, v2`` (on device, vmapped);
2. forward ``[v1; v2]`` keeping the VJP w.r.t. the parameters and the attribution taps
   (``gradmix_jax.taps``: zero perturbations added at the tapped submodules' outputs);
3. clean loss ``θ·SupCon + λ·SimCLR`` and its cotangent on ``z``;
4. GradMix: tap gradients of the attribution loss from the SAME forward's VJP (only the part of the
   backward pass above the lowest tap survives XLA's dead-code elimination) -> LayerCAM maps ->
   boxes at the argmax -> mixed view 1; CutMix / Mixup mix view 1 instead;
5. forward/backward of the mixed loss (mixed view 1 anchored on view 2 of the same image);
6. ONE parameter backward of the clean pass whose cotangent also carries the mixed loss's
   gradient w.r.t. view 2's embedding, so view 2 gets its full gradient without a recompute
   (``gradmix.exact=True`` instead recomputes view 2 beside the mixed view, as the authors' code);
7. Adam update.

Objectives and their loss terms are in ``objectives``. ``moco`` (MoCo v1) is its own path: queries from view 1 through the
trained encoder, keys from view 2 through the momentum (EMA) encoder, negatives from a queue in
the state; with a mixing method its loss is ``L_moco + mean_i w_i·ℓ_moco(mixed_i)`` (Appendix G)
with the attribution from the query encoder's InfoNCE loss.

The gradient part is ``make_grad_fn`` (usable on its own in custom loops); ``make_train_step``
adds the per-step key and the optimizer update.

The model contract (any Flax Linen module, not only ``ContrastiveResNet``):
``model.apply(variables, images [B, H, W, C] float, train=bool, mutable=['batch_stats'])`` returns
``((z, aux), new_variables)`` with ``z`` the L2-normalised embeddings ``[B, D]`` the contrastive
losses read and ``aux`` a dict: ``'logits'`` ``[B, num_classes]`` for the CE objectives,
``'features'`` ``[B, F]`` for evaluation. ``variables`` hold ``'params'`` and, if the model has
BatchNorm, ``'batch_stats'`` (else the state's ``batch_stats`` is ``{}``). ``StepConfig.layers``
are tap names the model maps to submodule paths in a ``tap_paths`` attribute
(``ContrastiveResNet``: ``conv2_2`` ... ``conv5_2``), or submodule paths themselves
(``"backbone/stage3"``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from gradmix_jax import attribution, augment, losses, mixing, taps
from gradmix_jax.training.objectives import (  # noqa: F401
    StepConfig,
    clean_terms,
    contrastive_terms,
)
from gradmix_jax.training.openset_eval import make_eval_fn  # noqa: F401  (its former home)


@flax.struct.dataclass
class MocoState:
    """MoCo v1's extra state: the momentum (key) encoder and the queue of negative keys."""

    key_params: Any
    key_batch_stats: Any
    queue: jax.Array  # [K, D] L2-normalised keys, oldest overwritten first
    queue_ptr: jax.Array  # int32 scalar: next row to overwrite


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; a pytree so it can be donated, sharded and saved."""

    step: jax.Array  # int32 scalar
    params: Any
    batch_stats: Any
    opt_state: Any
    key: (
        jax.Array
    )  # uint32[2] raw PRNG key (checkpoint friendly); per-step keys are fold_in(key, step)
    moco: MocoState | None = None  # only for objective='moco'


def make_optimizer(
    learning_rate: float, min_learning_rate: float, total_steps: int, warmup_steps: int = 0
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Adam with (optional linear warmup and) cosine decay to ``min_learning_rate`` (App. D.2)."""
    decay_steps = max(total_steps - warmup_steps, 1)
    cosine = optax.cosine_decay_schedule(
        learning_rate, decay_steps, alpha=min_learning_rate / learning_rate
    )
    if warmup_steps > 0:
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, learning_rate, warmup_steps), cosine], [warmup_steps]
        )
    else:
        schedule = cosine
    return optax.adam(schedule), schedule


def init_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    key: jax.Array,
    image_shape: tuple[int, int, int],
    cfg: "StepConfig | None" = None,
) -> TrainState:
    """Initialises params/batch stats from ``key`` on a [2, H, W, C] dummy batch.

    For ``cfg.objective == 'moco'`` also the momentum encoder (a copy of the initial encoder, as
    MoCo does) and a queue of ``cfg.moco_queue_size`` random unit vectors.
    """
    init_key, state_key, queue_key = jax.random.split(key, 3)
    dummy = jnp.zeros((2, *image_shape), jnp.float32)
    variables = model.init(init_key, dummy, train=False)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    moco = None
    if cfg is not None and cfg.objective == "moco":
        z_shape = jax.eval_shape(lambda v: model.apply(v, dummy, train=False)[0], variables)
        queue = jax.random.normal(queue_key, (cfg.moco_queue_size, z_shape.shape[-1]), jnp.float32)
        moco = MocoState(
            key_params=params,
            key_batch_stats=batch_stats,
            queue=queue / jnp.linalg.norm(queue, axis=1, keepdims=True),
            queue_ptr=jnp.zeros((), jnp.int32),
        )
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        key=jax.random.key_data(state_key),
        moco=moco,
    )


def apply_train(model: nn.Module, params, batch_stats, x: jax.Array):
    """Train-mode forward of ``x``: (z [B, D], aux dict, new batch stats)."""
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    (z, aux), new_vars = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return z, aux, new_vars.get("batch_stats", batch_stats)


def tapped_vjp(model: nn.Module, state: TrainState, x: jax.Array, layers, with_logits: bool):
    """Forward of ``x`` keeping the VJP w.r.t. the params and (if ``layers``) the taps.

    Returns (outputs {'z', ['logits']}, vjp_fn, new batch stats, tap activations {layer: A});
    ``vjp_fn(g) -> (param_grads, tap_grads {layer: dL/dA})`` (activations and tap_grads None
    without layers).
    """

    def forward(params):
        z, aux, batch_stats = apply_train(model, params, state.batch_stats, x)
        outputs = {"z": z, "logits": aux["logits"]} if with_logits else {"z": z}
        return outputs, batch_stats

    if layers:
        outputs, vjp_fn, acts, batch_stats = taps.vjp(
            forward, state.params, taps=taps.for_model(model, layers), has_aux=True
        )
        return outputs, vjp_fn, batch_stats, acts
    outputs, vjp_p, batch_stats = jax.vjp(forward, state.params, has_aux=True)
    return outputs, (lambda g: (vjp_p(g)[0], None)), batch_stats, None


def mix_view(
    key: jax.Array, v1: jax.Array, acts, tap_grads, cfg: StepConfig, out_size: tuple[int, int]
):
    """Mixed view 1 [N, H, W, C], its fractions [N] (``mixing.gradmix``'s) and the mixing metrics.

    GradMix reads the first N rows (view 1) of the tap activations and gradients, or every row
    with ``map_views='both'`` (the maps of both views share one 'batch' normalisation, as in the
    authors' code; only view 1's are used); CutMix and Mixup ignore them. Metrics:
    ``fallback_boxes``, the number of GradMix maps with no region to prefer (NaN or constant)
    whose box went to a random position.
    """
    n = v1.shape[0]
    metrics = {}
    if cfg.method == "gradmix":
        rows = slice(None) if cfg.map_views == "both" else slice(0, n)
        heat = attribution.tap_maps(
            {layer: acts[layer][rows] for layer in cfg.layers},
            {layer: tap_grads[layer][rows] for layer in cfg.layers},
            out_size,
            normalize=cfg.normalize,
            normalize_at=cfg.normalize_at,
            relu=cfg.cam_relu,
        )[:n]
        mixed, masked = mixing.gradmix(
            key,
            v1,
            heat,
            ratio_range=cfg.ratio_range,
            ratio_of=cfg.ratio_of,
            fill=cfg.fill,
            placement=cfg.placement,
            ratio_per=cfg.ratio_per,
            box_size=cfg.box_size,
            noise_channels=cfg.noise_channels,
            area=cfg.weight_area,
        )
        metrics["fallback_boxes"] = jnp.sum(mixing.degenerate_maps(heat))
    elif cfg.method == "cutmix":
        mixed, lam, _ = mixing.cutmix(key, v1, cfg.alpha)
        masked = 1.0 - lam
    else:  # mixup
        mixed, lam, _ = mixing.mixup(key, v1, cfg.alpha)
        masked = 1.0 - lam
    return jax.lax.stop_gradient(mixed), jax.lax.stop_gradient(masked), metrics


def _mixed_loss(cfg: StepConfig, z_clean: jax.Array, z_mixed: jax.Array, z_view2, masked):
    """The mixed term on embeddings: ``losses.mixed_view_loss`` (eq. 8: mixed view 1 against
    view 2) or, for ``mixed_loss='clean_anchors'``, ``losses.mixed_anchor_loss`` (the authors':
    the clean pass's ``z_clean`` [2N, D] as anchors and negatives, ``[z_mixed; z_view2]`` as
    positives)."""
    kwargs = dict(
        temperature=cfg.temperature,
        loss_weight=cfg.loss_weight,
        base_temperature=cfg.base_temperature,
    )
    if cfg.mixed_loss == "clean_anchors":
        z_positive = jnp.concatenate([z_mixed, z_view2])
        return losses.mixed_anchor_loss(z_clean, z_positive, masked, **kwargs)
    return losses.mixed_view_loss(z_mixed, z_view2, masked, **kwargs)


def _mixed_term(
    model: nn.Module,
    cfg: StepConfig,
    params,
    batch_stats,
    mixed: jax.Array,
    v2: jax.Array,
    z_clean: jax.Array,
    masked: jax.Array,
):
    """The mixed loss's value and gradients: (loss, batch stats, param grads, dL/dz_clean).

    ``z_clean`` [2N, D] are the clean pass's embeddings ``[z(v1); z(v2)]``. Default: only the
    mixed view is forwarded; view 2's embedding comes from the clean pass. ``cfg.exact``: view 2
    is forwarded again beside the mixed view (the authors' code). The gradient w.r.t. ``z_clean``
    (view 2's rows, and every row for ``mixed_loss='clean_anchors'``) is returned, to be folded
    into the clean pass's cotangent so one backward serves both losses.
    """
    n = mixed.shape[0]

    def objective(p, z_clean):
        if cfg.exact:
            zz, _, new_stats = apply_train(model, p, batch_stats, jnp.concatenate([mixed, v2]))
            z_mixed, z_view2 = zz[:n], zz[n:]
        else:
            z_mixed, _, new_stats = apply_train(model, p, batch_stats, mixed)
            z_view2 = z_clean[n:]
        loss = _mixed_loss(cfg, z_clean, z_mixed, z_view2, masked)
        return cfg.mix_weight * loss, (loss, new_stats)

    (_, (loss, batch_stats)), (g_params, g_clean) = jax.value_and_grad(
        objective, argnums=(0, 1), has_aux=True
    )(params, z_clean)
    return loss, batch_stats, g_params, g_clean


def contrastive_grads(
    model: nn.Module,
    aug_params: augment.AugmentParams,
    cfg: StepConfig,
    state: TrainState,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
):
    """SupCon / CE / SimCLR objectives (both views through the trained encoder).

    x: uint8 [N, H, W, C]; y: [N]. Returns (param grads, {'batch_stats'}, metrics).
    """
    aug_key, mix_key = jax.random.split(key)
    v1, v2 = augment.two_views(aug_key, x, aug_params)
    layers = cfg.layers if cfg.method == "gradmix" else ()
    outputs, vjp_fn, batch_stats, acts = tapped_vjp(
        model, state, jnp.concatenate([v1, v2], axis=0), layers, cfg.supervised == "ce"
    )
    (clean, parts), g_out = jax.value_and_grad(clean_terms, has_aux=True)(outputs, y, cfg)
    metrics = dict(parts)
    if cfg.method == "none":
        metrics["loss"] = clean
        return vjp_fn(g_out)[0], {"batch_stats": batch_stats}, metrics

    tap_grads = None
    if layers:
        if cfg.attribution_loss == "total":
            g_attr = g_out
        else:
            g_attr = jax.grad(lambda o: clean_terms(o, y, cfg)[1]["simclr"])(outputs)
        # Only the tap cotangents are used: XLA drops the weight gradients and everything below
        # the lowest tap from this call.
        tap_grads = vjp_fn(g_attr)[1]
    mixed, masked, mix_metrics = mix_view(mix_key, v1, acts, tap_grads, cfg, aug_params.out_size)
    l_mix, batch_stats, g_mix, g_clean = _mixed_term(
        model, cfg, state.params, batch_stats, mixed, v2, outputs["z"], masked
    )
    # The mixed loss read clean embeddings (view 2's, or all as anchors): fold their gradient
    # into the clean pass's cotangent so one backward serves both losses.
    g_out = {**g_out, "z": g_out["z"] + g_clean}
    param_grads = jax.tree.map(jnp.add, vjp_fn(g_out)[0], g_mix)
    metrics.update(
        mix_metrics,
        masked_fraction=jnp.mean(masked),
        mix_loss=l_mix,
        loss=clean + cfg.mix_weight * l_mix,
    )
    return param_grads, {"batch_stats": batch_stats}, metrics


def moco_grads(
    model: nn.Module,
    aug_params: augment.AugmentParams,
    cfg: StepConfig,
    state: TrainState,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
):
    """MoCo v1: queries = encoder(view 1), keys = momentum encoder(view 2), queue negatives.

    Returns (param grads, {'batch_stats', 'moco'}, metrics).
    """
    del y  # self-supervised
    aug_key, mix_key = jax.random.split(key)
    v1, v2 = augment.two_views(aug_key, x, aug_params)
    n = v1.shape[0]
    moco = state.moco
    m = cfg.moco_momentum
    # As MoCo: update the key encoder from the current query encoder, then compute the keys.
    key_params = jax.tree.map(lambda k, q: m * k + (1.0 - m) * q, moco.key_params, state.params)
    k, _, key_batch_stats = apply_train(model, key_params, moco.key_batch_stats, v2)
    k = jax.lax.stop_gradient(k)

    def infonce(q):
        return jnp.mean(losses.moco_loss(q, k, moco.queue, cfg.temperature, reduction="none"))

    layers = cfg.layers if cfg.method == "gradmix" else ()
    outputs, vjp_fn, batch_stats, acts = tapped_vjp(model, state, v1, layers, False)
    loss, g_q = jax.value_and_grad(infonce)(outputs["z"])
    # The attribution loss IS the training loss here: one backward gives both gradients.
    param_grads, tap_grads = vjp_fn({"z": g_q})
    metrics = {"moco": loss}
    if cfg.method != "none":
        mixed, masked, mix_metrics = mix_view(
            mix_key, v1, acts, tap_grads, cfg, aug_params.out_size
        )
        weights = losses.mix_loss_weights(masked, cfg.loss_weight)

        def mix_objective(params):
            qm, _, new_stats = apply_train(model, params, batch_stats, mixed)
            per = losses.moco_loss(qm, k, moco.queue, cfg.temperature, reduction="none")
            return jnp.mean(weights * per), new_stats

        (l_mix, batch_stats), g_mix = jax.value_and_grad(mix_objective, has_aux=True)(state.params)
        param_grads = jax.tree.map(jnp.add, param_grads, g_mix)
        loss = loss + l_mix
        metrics.update(mix_metrics, masked_fraction=jnp.mean(masked), mix_loss=l_mix)
    metrics["loss"] = loss
    # Enqueue this batch's keys over the oldest ones (any queue size >= batch size works).
    rows = (moco.queue_ptr + jnp.arange(n)) % moco.queue.shape[0]
    new_moco = MocoState(
        key_params=key_params,
        key_batch_stats=key_batch_stats,
        queue=moco.queue.at[rows].set(k),
        queue_ptr=(moco.queue_ptr + n) % moco.queue.shape[0],
    )
    return param_grads, {"batch_stats": batch_stats, "moco": new_moco}, metrics


def make_grad_fn(model: nn.Module, aug_params: augment.AugmentParams, cfg: StepConfig) -> Callable:
    """``grad_fn(state, x uint8 [N,H,W,C], y [N], key) -> (param_grads, updates, metrics)``: the
    gradient part of the step; ``updates`` holds the new 'batch_stats' (and 'moco')."""
    grads = moco_grads if cfg.objective == "moco" else contrastive_grads
    return functools.partial(grads, model, aug_params, cfg)


def apply_gradients(
    tx: optax.GradientTransformation,
    schedule: Callable | None,
    state: TrainState,
    param_grads,
    updates: dict,
    metrics: dict,
):
    """The optimizer update: (next state, metrics with grad/param norms and the learning rate)."""
    opt_updates, opt_state = tx.update(param_grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, opt_updates)
    metrics = {
        **metrics,
        "grad_norm": optax.tree.norm(param_grads),
        "param_norm": optax.tree.norm(params),
    }
    if schedule is not None:
        metrics["learning_rate"] = schedule(state.step)
    return state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, **updates
    ), metrics


def make_batch_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    aug_params: augment.AugmentParams,
    cfg: StepConfig,
    schedule: Callable | None = None,
) -> Callable:
    """Returns ``train_step(state, images, labels) -> (state, metrics)`` (not yet jitted) on the
    batch itself: images [N, H, W, C] uint8, labels [N] int32 (the streaming input path).
    metrics: dict of scalars. The step's key is ``fold_in(state.key, state.step)``.
    """
    grad_fn = make_grad_fn(model, aug_params, cfg)

    def train_step(state: TrainState, images: jax.Array, labels: jax.Array):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
        param_grads, updates, metrics = grad_fn(state, images, labels, key)
        return apply_gradients(tx, schedule, state, param_grads, updates, metrics)

    return train_step


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    aug_params: augment.AugmentParams,
    cfg: StepConfig,
    schedule: Callable | None = None,
) -> Callable:
    """Returns ``train_step(state, images, labels, idx) -> (state, metrics)`` (not yet jitted).

    images: [M, H, W, C] uint8 training split (device resident); labels: [M] int32;
    idx: [N] int32 batch indices: ``make_batch_train_step``'s step on ``images[idx]``.
    """
    batch_step = make_batch_train_step(model, tx, aug_params, cfg, schedule)

    def train_step(state: TrainState, images: jax.Array, labels: jax.Array, idx: jax.Array):
        return batch_step(state, images[idx], labels[idx])

    return train_step
