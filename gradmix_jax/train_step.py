"""The train state and the ONE jitted train step (DESIGN §4).

One step on a batch of N images (indices into the device-resident training split):

1. two SimCLR views ``v1, v2`` (on device, vmapped);
2. forward ``[v1; v2]`` with zero perturbations at the attribution taps, keeping the VJP;
3. clean loss ``θ·SupCon + λ·SimCLR`` and its cotangent on ``z``;
4. GradMix: tap gradients of the attribution loss from the SAME forward's VJP (only the part of the
   backward pass above the lowest tap survives XLA's dead-code elimination) -> LayerCAM maps ->
   boxes at the argmax -> mixed view 1; CutMix / Mixup mix view 1 instead;
5. forward/backward of the mixed loss (mixed view 1 anchored on view 2 of the same image);
6. ONE parameter backward of the clean pass whose cotangent also carries the mixed loss's
   gradient w.r.t. view 2's embedding, so view 2 gets its full gradient without a recompute
   (``gradmix.exact=True`` instead recomputes view 2 beside the mixed view, as the authors' code);
7. Adam update.

Objectives (``StepConfig.objective``, Table 1 / Table 6): the supervised term is SupCon
(``supcon``, ``supcon_ssl``) or cross-entropy on the classifier head over both views (``ce``,
``ce_ssl``), weighted by θ = ``supcon_weight``; the SimCLR term (λ = ``simclr_weight``) is on for
``*_ssl`` and ``simclr``. ``moco`` (MoCo v1) is its own path: queries from view 1 through the
trained encoder, keys from view 2 through the momentum (EMA) encoder, negatives from a queue in
the state; with a mixing method its loss is ``L_moco + mean_i w_i·ℓ_moco(mixed_i)`` (Appendix G)
with the attribution from the query encoder's InfoNCE loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from gradmix_jax import attribution, augment, losses, mixing
from gradmix_jax.models import tap_path


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
    key: jax.Array  # uint32[2] raw PRNG key (checkpoint friendly); per-step keys are fold_in(key, step)
    moco: MocoState | None = None  # only for objective='moco'


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static settings of the train step (hashable: part of the compiled function)."""

    objective: str = "supcon_ssl"
    supcon_weight: float = 1.0
    simclr_weight: float = 1.0
    temperature: float = 0.05
    method: str = "gradmix"
    alpha: float = 1.0
    layers: tuple[str, ...] = ("conv3_2", "conv4_2", "conv5_2")
    ratio_range: tuple[float, float] = (0.1, 0.5)
    ratio_of: str = "side"
    ratio_per: str = "sample"
    fill: str = "sample"
    placement: str = "inside"
    normalize: str = "image"
    attribution_loss: str = "simclr"
    loss_weight: str = "area"
    exact: bool = False
    moco_momentum: float = 0.999
    moco_queue_size: int = 4096

    @classmethod
    def from_config(cls, config) -> "StepConfig":
        g = config.gradmix
        return cls(objective=config.objective, supcon_weight=float(config.supcon_weight),
                   simclr_weight=float(config.simclr_weight), temperature=float(config.temperature),
                   method=config.mixing.method, alpha=float(config.mixing.alpha),
                   layers=tuple(g.layers), ratio_range=tuple(float(r) for r in g.ratio_range),
                   ratio_of=g.ratio_of, ratio_per=g.ratio_per, fill=g.fill, placement=g.placement,
                   normalize=g.normalize, attribution_loss=g.attribution_loss,
                   loss_weight=g.loss_weight, exact=bool(g.exact),
                   moco_momentum=float(config.moco.momentum),
                   moco_queue_size=int(config.moco.queue_size))

    @property
    def supervised(self) -> str | None:
        """The supervised loss of the objective: 'supcon', 'ce' or None (self-supervised only)."""
        return {"supcon": "supcon", "supcon_ssl": "supcon", "ce": "ce", "ce_ssl": "ce"}.get(
            self.objective)

    @property
    def theta(self) -> float:
        return self.supcon_weight if self.supervised else 0.0

    @property
    def lam(self) -> float:
        return self.simclr_weight if self.objective in ("supcon_ssl", "ce_ssl", "simclr") else 0.0

    @property
    def mix_weight(self) -> float:
        # The mixed term sits inside λ(·) in eq. 8; for the supcon-only objective keep λ as its scale.
        return self.simclr_weight


def make_optimizer(learning_rate: float, min_learning_rate: float, total_steps: int,
                   warmup_steps: int = 0) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Adam with (optional linear warmup and) cosine decay to ``min_learning_rate`` (App. D.2)."""
    decay_steps = max(total_steps - warmup_steps, 1)
    cosine = optax.cosine_decay_schedule(learning_rate, decay_steps,
                                         alpha=min_learning_rate / learning_rate)
    if warmup_steps > 0:
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, learning_rate, warmup_steps), cosine], [warmup_steps])
    else:
        schedule = cosine
    return optax.adam(schedule), schedule


def init_state(model: nn.Module, tx: optax.GradientTransformation, key: jax.Array,
               image_shape: tuple[int, int, int], cfg: "StepConfig | None" = None) -> TrainState:
    """Initialises params/batch stats from ``key`` on a [2, H, W, C] dummy batch.

    For ``cfg.objective == 'moco'`` also the momentum encoder (a copy of the initial encoder, as
    MoCo does) and a queue of ``cfg.moco_queue_size`` random unit vectors.
    """
    init_key, state_key, queue_key = jax.random.split(key, 3)
    variables = model.init(init_key, jnp.zeros((2, *image_shape), jnp.float32), train=False)
    params = variables["params"]
    moco = None
    if cfg is not None and cfg.objective == "moco":
        queue = jax.random.normal(queue_key, (cfg.moco_queue_size, model.feature_dim), jnp.float32)
        moco = MocoState(key_params=params, key_batch_stats=variables["batch_stats"],
                         queue=queue / jnp.linalg.norm(queue, axis=1, keepdims=True),
                         queue_ptr=jnp.zeros((), jnp.int32))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables["batch_stats"], opt_state=tx.init(params),
                      key=jax.random.key_data(state_key), moco=moco)


def _zero_perturbations(model: nn.Module, params, batch_stats, images: jax.Array):
    """Zeros shaped like every tap of ``model`` on ``images`` (abstract evaluation, no compute)."""
    shapes = jax.eval_shape(
        lambda p, b, x: model.apply({"params": p, "batch_stats": b}, x, train=True,
                                    mutable=["batch_stats", "perturbations"])[1]["perturbations"],
        params, batch_stats, images)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def clean_terms(outputs: dict[str, jax.Array], labels: jax.Array, cfg: StepConfig):
    """Clean loss θ·(SupCon | CE) + λ·SimCLR of both views; returns (loss, parts).

    outputs: {'z': [2N, D] = [z(v1); z(v2)], 'logits': [2N, C] (CE objectives only)}; labels: [N].
    The SimCLR part is always computed (GradMix's attribution loss), even when λ = 0.
    """
    z = outputs["z"]
    n = labels.shape[0]
    feats = jnp.stack([z[:n], z[n:]], axis=1)  # [N, 2 views, D]
    simclr = losses.simclr_loss(feats, temperature=cfg.temperature)
    parts = {"simclr": simclr}
    loss = cfg.lam * simclr
    if cfg.supervised == "supcon":
        parts["supcon"] = losses.supcon_loss(feats, labels, temperature=cfg.temperature)
        loss = loss + cfg.theta * parts["supcon"]
    elif cfg.supervised == "ce":
        parts["ce"] = losses.cross_entropy(outputs["logits"], jnp.concatenate([labels, labels]))
        loss = loss + cfg.theta * parts["ce"]
    return loss, parts


def contrastive_terms(z: jax.Array, labels: jax.Array, cfg: StepConfig):
    """``clean_terms`` for the objectives without a classifier: z = [z(v1); z(v2)] ([2N, D])."""
    return clean_terms({"z": z}, labels, cfg)


def mixed_loss(z_mixed: jax.Array, z_view2: jax.Array, weights: jax.Array, cfg: StepConfig):
    """mean_i w_i·ℓ_mix,i: SimCLR on (mixed view 1, view 2); ℓ_mix,i averages sample i's two anchors."""
    per_anchor = losses.simclr_loss(jnp.stack([z_mixed, z_view2], axis=1),
                                    temperature=cfg.temperature, reduction="none")  # [N, 2]
    return jnp.mean(weights * jnp.mean(per_anchor, axis=1))


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    aug_params: augment.AugmentParams, cfg: StepConfig,
                    schedule: Callable | None = None) -> Callable:
    """Returns ``train_step(state, images, labels, idx) -> (state, metrics)`` (not yet jitted).

    images: [M, H, W, C] uint8 training split (device resident); labels: [M] int32;
    idx: [N] int32 batch indices. metrics: dict of scalars.
    ``train_step.compute_grads(state, x, y, key) -> (param_grads, updates, metrics)`` is the
    gradient part on a uint8 batch; ``updates`` holds the new 'batch_stats' (and 'moco').
    """
    out_size = aug_params.out_size
    use_taps = cfg.method == "gradmix"
    with_logits = cfg.supervised == "ce"

    def apply_train(params, batch_stats, x, perturbations=None):
        variables = {"params": params, "batch_stats": batch_stats}
        if perturbations is not None:
            variables["perturbations"] = perturbations
        (z, aux), new_vars = model.apply(variables, x, train=True,
                                         mutable=["batch_stats", "intermediates"])
        return z, aux, new_vars

    def tapped_vjp(state: TrainState, x: jax.Array):
        """Forward of ``x`` keeping the VJP w.r.t. (params, tap perturbations).

        Returns (outputs {'z', ['logits']}, vjp_fn, new batch stats, tap activations);
        ``vjp_fn(g) -> (param_grads, tap_grads)`` (tap_grads None without taps).
        """
        perturbations = (_zero_perturbations(model, state.params, state.batch_stats, x)
                         if use_taps else None)

        def forward(params, perturbations):
            z, aux, new_vars = apply_train(params, state.batch_stats, x, perturbations)
            outputs = {"z": z, "logits": aux["logits"]} if with_logits else {"z": z}
            return outputs, (new_vars["batch_stats"], new_vars.get("intermediates", {}))

        if use_taps:
            outputs, vjp_fn, (batch_stats, taps) = jax.vjp(forward, state.params, perturbations,
                                                           has_aux=True)
        else:
            outputs, vjp_p, (batch_stats, taps) = jax.vjp(lambda p: forward(p, None), state.params,
                                                          has_aux=True)
            vjp_fn = lambda g: (vjp_p(g)[0], None)  # noqa: E731
        return outputs, vjp_fn, batch_stats, taps

    def mix_view(key, v1, taps, tap_grads, n):
        """Mixed view 1 and its per-sample loss weights."""
        if cfg.method == "gradmix":
            # Attribution in float32 whatever the activation dtype.
            maps = [attribution.layercam(_get(taps, tap_path(l))[0][:n].astype(jnp.float32),
                                         _get(tap_grads, tap_path(l))[:n].astype(jnp.float32))
                    for l in cfg.layers]
            heat = attribution.aggregate_maps(maps, out_size, normalize=cfg.normalize)
            mixed, masked = mixing.gradmix(key, v1, heat, ratio_range=cfg.ratio_range,
                                           ratio_of=cfg.ratio_of, fill=cfg.fill,
                                           placement=cfg.placement, ratio_per=cfg.ratio_per)
        elif cfg.method == "cutmix":
            mixed, lam, _ = mixing.cutmix(key, v1, cfg.alpha)
            masked = 1.0 - lam
        else:  # mixup
            mixed, lam, _ = mixing.mixup(key, v1, cfg.alpha)
            masked = 1.0 - lam
        weights = {"area": masked, "kept": 1.0 - masked, "one": jnp.ones_like(masked)}[cfg.loss_weight]
        return jax.lax.stop_gradient(mixed), jax.lax.stop_gradient(weights), masked

    def contrastive_grads(state: TrainState, x: jax.Array, y: jax.Array, key: jax.Array):
        """SupCon / CE / SimCLR objectives (both views through the trained encoder)."""
        aug_key, mix_key = jax.random.split(key)
        v1, v2 = augment.two_views(aug_key, x, aug_params)
        n = v1.shape[0]
        outputs, vjp_fn, batch_stats, taps = tapped_vjp(state, jnp.concatenate([v1, v2], axis=0))
        (clean, parts), g_out = jax.value_and_grad(clean_terms, has_aux=True)(outputs, y, cfg)
        metrics = dict(parts)
        loss = clean

        if cfg.method == "none":
            param_grads = vjp_fn(g_out)[0]
        else:
            tap_grads = None
            if use_taps:
                if cfg.attribution_loss == "total":
                    g_attr = g_out
                else:
                    g_attr = jax.grad(lambda o: clean_terms(o, y, cfg)[1]["simclr"])(outputs)
                # Only the tap cotangents are used: XLA drops the weight gradients and everything
                # below the lowest tap from this call.
                tap_grads = vjp_fn(g_attr)[1]
            mixed, weights, masked = mix_view(mix_key, v1, taps, tap_grads, n)
            metrics["masked_fraction"] = jnp.mean(masked)

            if cfg.exact:
                def mix_objective(params):
                    zz, _, new_vars = apply_train(params, batch_stats, jnp.concatenate([mixed, v2]))
                    l = mixed_loss(zz[:n], zz[n:], weights, cfg)
                    return cfg.mix_weight * l, (l, new_vars["batch_stats"])
                (_, (l_mix, batch_stats)), g_mix = jax.value_and_grad(
                    mix_objective, has_aux=True)(state.params)
                param_grads = vjp_fn(g_out)[0]
            else:
                def mix_objective(params, z_view2):
                    zm, _, new_vars = apply_train(params, batch_stats, mixed)
                    l = mixed_loss(zm, z_view2, weights, cfg)
                    return cfg.mix_weight * l, (l, new_vars["batch_stats"])
                (_, (l_mix, batch_stats)), (g_mix, g_view2) = jax.value_and_grad(
                    mix_objective, argnums=(0, 1), has_aux=True)(state.params, outputs["z"][n:])
                # View 2's embedding came from the clean pass: fold its gradient into that pass's
                # cotangent so one backward serves both losses.
                g_out = {**g_out, "z": g_out["z"].at[n:].add(g_view2)}
                param_grads = vjp_fn(g_out)[0]
            param_grads = jax.tree.map(jnp.add, param_grads, g_mix)
            loss = clean + cfg.mix_weight * l_mix
            metrics["mix_loss"] = l_mix
        metrics["loss"] = loss
        return param_grads, {"batch_stats": batch_stats}, metrics

    def moco_grads(state: TrainState, x: jax.Array, y: jax.Array, key: jax.Array):
        """MoCo v1: queries = encoder(view 1), keys = momentum encoder(view 2), queue negatives."""
        del y  # self-supervised
        aug_key, mix_key = jax.random.split(key)
        v1, v2 = augment.two_views(aug_key, x, aug_params)
        n = v1.shape[0]
        moco = state.moco
        m = cfg.moco_momentum
        # As MoCo: update the key encoder from the current query encoder, then compute the keys.
        key_params = jax.tree.map(lambda k, q: m * k + (1.0 - m) * q, moco.key_params, state.params)
        (k, _), key_vars = model.apply({"params": key_params, "batch_stats": moco.key_batch_stats},
                                       v2, train=True, mutable=["batch_stats"])
        k = jax.lax.stop_gradient(k)

        def infonce(q):
            return jnp.mean(losses.moco_loss(q, k, moco.queue, cfg.temperature, reduction="none"))

        outputs, vjp_fn, batch_stats, taps = tapped_vjp(state, v1)
        loss, g_q = jax.value_and_grad(infonce)(outputs["z"])
        # The attribution loss IS the training loss here: one backward gives both gradients.
        param_grads, tap_grads = vjp_fn({"z": g_q})
        metrics = {"moco": loss}
        if cfg.method != "none":
            mixed, weights, masked = mix_view(mix_key, v1, taps, tap_grads, n)
            metrics["masked_fraction"] = jnp.mean(masked)

            def mix_objective(params):
                qm, _, new_vars = apply_train(params, batch_stats, mixed)
                per = losses.moco_loss(qm, k, moco.queue, cfg.temperature, reduction="none")
                l = jnp.mean(weights * per)
                return l, new_vars["batch_stats"]
            (l_mix, batch_stats), g_mix = jax.value_and_grad(mix_objective, has_aux=True)(state.params)
            param_grads = jax.tree.map(jnp.add, param_grads, g_mix)
            loss = loss + l_mix
            metrics["mix_loss"] = l_mix
        metrics["loss"] = loss
        # Enqueue this batch's keys over the oldest ones (any queue size >= batch size works).
        rows = (moco.queue_ptr + jnp.arange(n)) % moco.queue.shape[0]
        new_moco = MocoState(key_params=key_params, key_batch_stats=key_vars["batch_stats"],
                             queue=moco.queue.at[rows].set(k),
                             queue_ptr=(moco.queue_ptr + n) % moco.queue.shape[0])
        return param_grads, {"batch_stats": batch_stats, "moco": new_moco}, metrics

    compute_grads = moco_grads if cfg.objective == "moco" else contrastive_grads

    def train_step(state: TrainState, images: jax.Array, labels: jax.Array, idx: jax.Array):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
        param_grads, updates, metrics = compute_grads(state, images[idx], labels[idx], key)
        opt_updates, opt_state = tx.update(param_grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, opt_updates)
        metrics.update(grad_norm=optax.tree.norm(param_grads), param_norm=optax.tree.norm(params))
        if schedule is not None:
            metrics["learning_rate"] = schedule(state.step)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, **updates)
        return new_state, metrics

    train_step.compute_grads = compute_grads  # exposed for tests and custom loops
    return train_step


def make_eval_fn(model: nn.Module, out_size: tuple[int, int], which: str = "encoder") -> Callable:
    """``outputs(params, batch_stats, images uint8 [B,H,W,C]) -> dict`` in eval mode.

    Keys: 'features' [B, D] (``which``: pooled encoder output or normalised projection z),
    'encoder' [B, D_enc] and 'projection' [B, feature_dim] (both, for evaluations that report
    each) and, for models with a classifier head, 'logits' [B, C].
    """

    def outputs(params, batch_stats, images):
        x = augment.eval_transform(images, out_size)
        z, aux = model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
        out = {"encoder": aux["features"], "projection": z}
        out["features"] = out[which]
        if "logits" in aux:
            out["logits"] = aux["logits"]
        return out

    return outputs
