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
class TrainState:
    """Everything a step reads and writes; a pytree so it can be donated, sharded and saved."""

    step: jax.Array  # int32 scalar
    params: Any
    batch_stats: Any
    opt_state: Any
    key: jax.Array  # uint32[2] raw PRNG key (checkpoint friendly); per-step keys are fold_in(key, step)


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

    @classmethod
    def from_config(cls, config) -> "StepConfig":
        g = config.gradmix
        return cls(objective=config.objective, supcon_weight=float(config.supcon_weight),
                   simclr_weight=float(config.simclr_weight), temperature=float(config.temperature),
                   method=config.mixing.method, alpha=float(config.mixing.alpha),
                   layers=tuple(g.layers), ratio_range=tuple(float(r) for r in g.ratio_range),
                   ratio_of=g.ratio_of, ratio_per=g.ratio_per, fill=g.fill, placement=g.placement,
                   normalize=g.normalize, attribution_loss=g.attribution_loss,
                   loss_weight=g.loss_weight, exact=bool(g.exact))

    @property
    def theta(self) -> float:
        return self.supcon_weight if self.objective in ("supcon_ssl", "supcon") else 0.0

    @property
    def lam(self) -> float:
        return self.simclr_weight if self.objective in ("supcon_ssl", "simclr") else 0.0

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
               image_shape: tuple[int, int, int]) -> TrainState:
    """Initialises params/batch stats from ``key`` on a [2, H, W, C] dummy batch."""
    init_key, state_key = jax.random.split(key)
    variables = model.init(init_key, jnp.zeros((2, *image_shape), jnp.float32), train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables["batch_stats"], opt_state=tx.init(params),
                      key=jax.random.key_data(state_key))


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


def contrastive_terms(z: jax.Array, labels: jax.Array, cfg: StepConfig):
    """Clean loss θ·SupCon + λ·SimCLR on ``z = [z(v1); z(v2)]`` ([2N, D]); returns (loss, parts)."""
    n = labels.shape[0]
    feats = jnp.stack([z[:n], z[n:]], axis=1)  # [N, 2 views, D]
    supcon = losses.supcon_loss(feats, labels, temperature=cfg.temperature)
    simclr = losses.simclr_loss(feats, temperature=cfg.temperature)
    return cfg.theta * supcon + cfg.lam * simclr, {"supcon": supcon, "simclr": simclr}


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
    """
    out_size = aug_params.out_size

    def apply_train(params, batch_stats, x, perturbations=None):
        variables = {"params": params, "batch_stats": batch_stats}
        if perturbations is not None:
            variables["perturbations"] = perturbations
        (z, aux), new_vars = model.apply(variables, x, train=True,
                                         mutable=["batch_stats", "intermediates"])
        return z, aux, new_vars

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

    def compute_grads(state: TrainState, x: jax.Array, y: jax.Array, key: jax.Array):
        """Gradients of the total loss for uint8 batch ``x`` [N,H,W,C], labels ``y`` [N].

        Returns (param_grads, new_batch_stats, metrics).
        """
        aug_key, mix_key = jax.random.split(key)
        v1, v2 = augment.two_views(aug_key, x, aug_params)
        n = v1.shape[0]
        views = jnp.concatenate([v1, v2], axis=0)
        metrics = {}

        use_taps = cfg.method == "gradmix"
        perturbations = (_zero_perturbations(model, state.params, state.batch_stats, views)
                         if use_taps else None)

        def clean_forward(params, perturbations):
            z, aux, new_vars = apply_train(params, state.batch_stats, views, perturbations)
            return z, (new_vars["batch_stats"], new_vars.get("intermediates", {}))

        if use_taps:
            z, vjp_fn, (batch_stats, taps) = jax.vjp(clean_forward, state.params, perturbations,
                                                     has_aux=True)
        else:
            z, vjp_fn, (batch_stats, taps) = jax.vjp(lambda p: clean_forward(p, None), state.params,
                                                     has_aux=True)
        (clean, parts), g_z = jax.value_and_grad(contrastive_terms, has_aux=True)(z, y, cfg)
        metrics.update(parts)
        loss = clean

        if cfg.method == "none":
            param_grads = vjp_fn(g_z)[0]
        else:
            tap_grads = None
            if use_taps:
                if cfg.attribution_loss == "total":
                    g_attr = g_z
                else:
                    g_attr = jax.grad(lambda zz: contrastive_terms(zz, y, cfg)[1]["simclr"])(z)
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
                param_grads = vjp_fn(g_z)[0]
            else:
                def mix_objective(params, z_view2):
                    zm, _, new_vars = apply_train(params, batch_stats, mixed)
                    l = mixed_loss(zm, z_view2, weights, cfg)
                    return cfg.mix_weight * l, (l, new_vars["batch_stats"])
                (_, (l_mix, batch_stats)), (g_mix, g_view2) = jax.value_and_grad(
                    mix_objective, argnums=(0, 1), has_aux=True)(state.params, z[n:])
                # View 2's embedding came from the clean pass: fold its gradient into that pass's
                # cotangent so one backward serves both losses.
                param_grads = vjp_fn(g_z.at[n:].add(g_view2))[0]
            param_grads = jax.tree.map(jnp.add, param_grads, g_mix)
            loss = clean + cfg.mix_weight * l_mix
            metrics["mix_loss"] = l_mix
        metrics["loss"] = loss
        return param_grads, batch_stats, metrics

    def train_step(state: TrainState, images: jax.Array, labels: jax.Array, idx: jax.Array):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
        param_grads, batch_stats, metrics = compute_grads(state, images[idx], labels[idx], key)
        updates, opt_state = tx.update(param_grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics.update(grad_norm=optax.tree.norm(param_grads), param_norm=optax.tree.norm(params))
        if schedule is not None:
            metrics["learning_rate"] = schedule(state.step)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state)
        return new_state, metrics

    train_step.compute_grads = compute_grads  # exposed for tests and custom loops
    return train_step


def make_feature_fn(model: nn.Module, out_size: tuple[int, int], which: str = "encoder") -> Callable:
    """``features(params, batch_stats, images uint8 [B,H,W,C]) -> [B, D]`` in eval mode."""

    def features(params, batch_stats, images):
        x = augment.eval_transform(images, out_size)
        z, aux = model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
        return aux["features"] if which == "encoder" else z

    return features
