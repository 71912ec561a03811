"""Attribution analysis of trained encoders (paper §5: Fig. 7/10 maps, Fig. 8 activated area).

The encoders of this project have no classifier, so "attribution" needs a scalar to differentiate.
Two *targets* are offered (``TARGETS``):

``'simclr'``
    The SimCLR (NT-Xent, ``losses.simclr_loss``) loss of the batch, with each image's horizontally
    flipped copy as its second view, at ``temperature``. The gradient is that of the LOSS, the same
    sign convention as GradMix training (``gradmix.attribution_loss='simclr'``): LayerCAM keeps
    the positive part of dLoss/dA. The loss couples the images of a batch (they are each other's
    negatives), so a map depends on its batch mates, and, because the loss is a mean over the
    2B anchors, raw (unnormalised) map values scale like 1/B: compare raw maps only at equal B.
``'prototype'``
    Per image, the cosine similarity of its projection ``z`` to the prototype of its predicted
    class (nearest prototype; e.g. the class-mean projection of the training set, see
    ``class_prototypes``), like Grad-CAM's class score: the gradient of the SCORE (evidence for the
    class). In eval mode the images of a batch are independent, so this is a per-image map.

Both are computed in eval mode (BatchNorm running averages) from ONE ``taps.vjp`` (zero
perturbations at the tapped submodules' outputs), as ``train_step`` does, so any Linen model
whose ``__call__(images, train)`` returns ``(z, aux)`` with ``z`` the L2-normalised embeddings
works, tapped at its own submodule paths; the tap gradients of view 1
(the images themselves) give LayerCAM maps ``ReLU(sum_c ReLU(G) * A)``, which are upsampled,
normalised (per image by default) and summed over layers by ``attribution.aggregate_maps``.

Activated area (Fig. 8): ``S_M(τ) = |{(i, j): M_ij > τ}| / |M|``, averaged over images, for τ on a
log grid from 1e-5 to 1e-3 (``default_thresholds``). WHICH map M the paper thresholds is not stated;
the authors' published script (``activation_map_stats.py`` in gawainxu/GradMix) thresholds the RAW
LayerCAM map (no min-max normalisation, no upsampling) of one layer (ResNet ``layer3`` = conv4_2)
with the SupCon+SimCLR loss of a 256-image batch; that is why its τ are so small. A min-max
normalised map has values in [0, 1] per layer (sum over L layers: [0, L]), and at τ <= 1e-3 S_M then
counts nearly every pixel that is not at the map's minimum. ``experiments/fig8_activated_fraction.py``
therefore reports both: S_M of the raw maps (``normalize='none'``, authors' semantics, summed over
the chosen layers) and of the per-image normalised maps (``normalize='image'``, training semantics).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gradmix_jax import attribution, losses, metrics, taps
from gradmix_jax.models import DEFAULT_TAPS

__all__ = [
    "TARGETS",
    "DEFAULT_LAYERS",
    "tap_activations_and_gradients",
    "layer_maps",
    "attribution_maps",
    "class_prototypes",
    "pick_known_unknown",
    "default_thresholds",
    "activated_fractions",
    "activated_fraction_curve",
]

#: Allowed values of ``target``.
TARGETS = ("simclr", "prototype")

#: The paper's default GradMix layers (``models.DEFAULT_TAPS``: conv3_2, conv4_2, conv5_2).
DEFAULT_LAYERS: tuple[str, ...] = DEFAULT_TAPS


# ----------------------------------------------------------------------------------------------
# Argument checks (one clear ValueError naming the argument and the allowed values)
# ----------------------------------------------------------------------------------------------


def _check_layers(model: nn.Module, layers: Sequence[str]) -> tuple[str, ...]:
    if isinstance(layers, str):
        layers = (layers,)
    layers = tuple(layers)
    named = list(getattr(model, "tap_paths", None) or {})
    # A path that names no submodule is reported by ``taps`` with the paths that exist.
    if not layers or not all(isinstance(layer, str) and layer for layer in layers):
        allowed = f"tap names ({named}) or submodule paths" if named else "submodule paths"
        raise ValueError(f"layers must be a non-empty sequence of {allowed}, got {list(layers)}")
    return layers


def _check_target(target: str, prototypes) -> None:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {list(TARGETS)}, got {target!r}")
    if target == "prototype":
        if prototypes is None:
            raise ValueError(
                "prototypes must be a [num_classes, feature_dim] array when "
                "target='prototype', got None"
            )
        if np.ndim(prototypes) != 2 or np.shape(prototypes)[0] < 1:
            raise ValueError(
                f"prototypes must be a [num_classes, feature_dim] array, "
                f"got shape {np.shape(prototypes)}"
            )


def _check_images(images) -> None:
    if np.ndim(images) != 4:
        raise ValueError(f"images must be a [B, H, W, C] float array, got shape {np.shape(images)}")
    if np.shape(images)[0] < 1:
        raise ValueError("images must hold at least one image, got an empty batch")


def _check_temperature(temperature: float) -> None:
    is_number = isinstance(temperature, (int, float, np.integer, np.floating))
    if not (is_number and temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite float > 0, got {temperature!r}")


def _check_normalize(normalize: str) -> None:
    if normalize not in attribution.NORMALIZE_MODES:
        raise ValueError(
            f"normalize must be one of {list(attribution.NORMALIZE_MODES)}, got {normalize!r}"
        )


# ----------------------------------------------------------------------------------------------
# Tap gradients and maps
# ----------------------------------------------------------------------------------------------


def _variables(variables: Mapping) -> dict:
    # Only the collections the forward pass reads; a stray 'intermediates' would be appended to.
    return {k: variables[k] for k in ("params", "batch_stats") if k in variables}


@functools.partial(jax.jit, static_argnames=("model", "layers", "target", "temperature"))
def _taps_jit(model: nn.Module, variables, images, prototypes, layers, target, temperature):
    n = images.shape[0]
    if target == "simclr":
        # Second view: the horizontal flip (deterministic, keeps the object where it is).
        inputs = jnp.concatenate([images, images[:, :, ::-1, :]], axis=0)
    else:
        inputs = images

    def forward(x):
        z, _ = model.apply(variables, x, train=False)
        z = z.astype(jnp.float32)
        if target == "simclr":
            feats = jnp.stack([z[:n], z[n:]], axis=1)  # [B, 2 views, D]
            return losses.simclr_loss(feats, temperature=temperature)
        protos = prototypes.astype(jnp.float32)
        protos = protos / jnp.maximum(jnp.linalg.norm(protos, axis=-1, keepdims=True), 1e-12)
        sims = z @ protos.T  # [B, K] cosine (z is L2-normalised)
        pred = jax.lax.stop_gradient(jnp.argmax(sims, axis=-1))
        # Sum of per-image scores: in eval mode image i's score depends on image i only, so
        # d(sum)/dA_i = d(score_i)/dA_i.
        return jnp.sum(jnp.take_along_axis(sims, pred[:, None], axis=-1))

    # The input cotangent is unused and pruned by XLA; only the tap cotangents are computed.
    value, vjp_fn, tap_acts = taps.vjp(forward, inputs, taps=taps.for_model(model, layers))
    _, tap_grads = vjp_fn(jnp.ones_like(value))
    acts = {layer: tap_acts[layer][:n].astype(jnp.float32) for layer in layers}
    grad = {layer: tap_grads[layer][:n].astype(jnp.float32) for layer in layers}
    return acts, grad, value


def tap_activations_and_gradients(
    model: nn.Module,
    variables: Mapping,
    images: jax.Array,
    layers: Sequence[str] = DEFAULT_LAYERS,
    target: str = "simclr",
    prototypes: jax.Array | None = None,
    temperature: float = 0.05,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array], jax.Array]:
    """Tap activations and d target / d activation of a trained model in eval mode.

    One forward pass with zero perturbations at the taps and ONE ``jax.vjp`` (see module docstring
    for the targets). Jitted inside (``model``, ``layers``, ``target``, ``temperature`` static).

    Args:
      model: a Linen model whose ``__call__(images, train)`` returns ``(z, aux)``, ``z`` the
        L2-normalised embeddings ``[B, D]`` (``ContrastiveResNet``, or any other).
      variables: ``{'params', 'batch_stats'}`` (other collections are ignored).
      images: ``[B, H, W, C]`` float, preprocessed (``augment.eval_transform``).
      layers: tap names the model defines in ``tap_paths`` (``ContrastiveResNet``: a subset of
        ``models.TAP_NAMES``) or submodule paths (``"backbone/stage3"``).
      target: ``'simclr'`` or ``'prototype'``.
      prototypes: ``[K, D]`` (``D`` = projection dim), required for ``target='prototype'``;
        normalised to unit length inside.
      temperature: SimCLR temperature (``'simclr'`` only).

    Returns:
      ``(activations, gradients, value)``: dicts layer -> ``[B, h_l, w_l, C_l]`` float32 for the
      images themselves (not the flipped view), and the scalar target value.
    """
    layers = _check_layers(model, layers)
    _check_target(target, prototypes)
    _check_images(images)
    _check_temperature(temperature)
    if target == "simclr":
        prototypes = None
    else:
        prototypes = jnp.asarray(prototypes, jnp.float32)
    return _taps_jit(
        model,
        _variables(variables),
        jnp.asarray(images, jnp.float32),
        prototypes,
        layers,
        target,
        float(temperature),
    )


def layer_maps(
    model: nn.Module,
    variables: Mapping,
    images: jax.Array,
    layers: Sequence[str] = DEFAULT_LAYERS,
    target: str = "simclr",
    prototypes: jax.Array | None = None,
    temperature: float = 0.05,
) -> dict[str, jax.Array]:
    """Per-layer LayerCAM maps at feature resolution: layer -> ``[B, h_l, w_l]`` (unnormalised).

    Same arguments as ``tap_activations_and_gradients``. Aggregate them with
    ``attribution.aggregate_maps(list(maps.values()), (H, W), normalize)``; computing the per-layer
    maps once lets callers aggregate with several ``normalize`` modes from one gradient pass.
    """
    acts, grads, _ = tap_activations_and_gradients(
        model, variables, images, layers, target, prototypes, temperature
    )
    return {layer: attribution.layercam(acts[layer], grads[layer]) for layer in acts}


def attribution_maps(
    model: nn.Module,
    variables: Mapping,
    images: jax.Array,
    layers: Sequence[str] = DEFAULT_LAYERS,
    target: str = "simclr",
    prototypes: jax.Array | None = None,
    temperature: float = 0.05,
    normalize: str = "image",
) -> jax.Array:
    """Aggregated LayerCAM attribution maps of a trained encoder (paper §3.2 / Fig. 7).

    Args:
      model, variables, images, layers, target, prototypes, temperature: see
        ``tap_activations_and_gradients`` (targets are described in the module docstring).
      normalize: per-layer normalisation before the sum (``attribution.aggregate_maps``):
        ``'image'`` (min-max per image: each layer in [0, 1], the sum in [0, len(layers)]),
        ``'batch'`` or ``'none'`` (raw LayerCAM values, bilinearly upsampled).

    Returns:
      ``[B, H, W]`` float32 maps at the input resolution.

    Works eagerly and under ``jax.jit`` (mark ``model``, ``layers``, ``target``, ``temperature``
    and ``normalize`` static).
    """
    _check_normalize(normalize)
    _check_images(images)
    maps = layer_maps(model, variables, images, layers, target, prototypes, temperature)
    return attribution.aggregate_maps(
        list(maps.values()), tuple(np.shape(images)[1:3]), normalize=normalize
    )


def class_prototypes(features, labels, num_classes: int) -> np.ndarray:
    """L2-normalised class means: ``features [N, D]``, ``labels [N]`` in ``0..K-1`` -> ``[K, D]``.

    For the ``'prototype'`` target pass the projections ``z`` of the (known-class) training set.
    Every class must have at least one sample.
    """
    features = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"features must be [N, D] and labels [N], got shapes {features.shape} "
            f"and {labels.shape}"
        )
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in 0..{num_classes - 1}, got range [{labels.min()}, {labels.max()}]"
        )
    counts = np.bincount(labels, minlength=num_classes)
    if np.any(counts == 0):
        raise ValueError(
            f"labels must contain every class 0..{num_classes - 1}; missing "
            f"{np.flatnonzero(counts == 0).tolist()}"
        )
    sums = np.zeros((num_classes, features.shape[1]))
    np.add.at(sums, labels, features)
    means = sums / counts[:, None]
    return (means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)).astype(
        np.float32
    )


def pick_known_unknown(labels, num_images: int, seed: int = 0) -> np.ndarray:
    """Fixed, seeded choice of test images from both known and unknown classes (Fig. 1/7).

    Args:
      labels: ``[N]`` test labels, ``-1`` for unknown classes (``data.load_openset`` convention).
      num_images: how many to pick: ``ceil(n/2)`` known and ``floor(n/2)`` unknown; a group with too
        few images is topped up from the other.
      seed: NumPy generator seed.

    Returns:
      ``[num_images]`` int64 indices into ``labels``: the known ones first, each group ascending.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {labels.shape}")
    if not isinstance(num_images, (int, np.integer)) or not 1 <= num_images <= labels.size:
        raise ValueError(f"num_images must be an int in [1, {labels.size}], got {num_images!r}")
    known, unknown = np.flatnonzero(labels >= 0), np.flatnonzero(labels < 0)
    num_known = min(max(-(-num_images // 2), num_images - unknown.size), known.size)
    rng = np.random.default_rng(seed)
    pick_k = np.sort(rng.choice(known, num_known, replace=False))
    pick_u = np.sort(rng.choice(unknown, num_images - num_known, replace=False))
    return np.concatenate([pick_k, pick_u]).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Activated fraction (Fig. 8)
# ----------------------------------------------------------------------------------------------


def default_thresholds(num: int = 9) -> np.ndarray:
    """The paper's τ grid for Fig. 8: ``num`` log-spaced values from 1e-5 to 1e-3 -> ``[num]``."""
    if not isinstance(num, (int, np.integer)) or num < 2:
        raise ValueError(f"num must be an int >= 2, got {num!r}")
    return np.logspace(-5.0, -3.0, int(num))


def _check_thresholds(thresholds) -> np.ndarray:
    thresholds = np.asarray(thresholds, np.float64)
    if thresholds.ndim != 1 or thresholds.size == 0 or not np.all(np.isfinite(thresholds)):
        raise ValueError(
            f"thresholds must be a non-empty 1-D array of finite values, got {thresholds!r}"
        )
    return thresholds


def activated_fractions(maps, thresholds) -> np.ndarray:
    """Per image and threshold, the fraction of map entries ``> τ`` (``metrics.activated_fraction``).

    Args:
      maps: ``[B, H, W]`` (any ``[B, ...]``) attribution maps.
      thresholds: ``[T]`` thresholds.

    Returns:
      ``[B, T]`` float64 in [0, 1].
    """
    thresholds = _check_thresholds(thresholds)
    if np.ndim(maps) < 2 or np.shape(maps)[0] == 0:
        raise ValueError(f"maps must be a non-empty [B, H, W] array, got shape {np.shape(maps)}")
    maps = jnp.asarray(maps, jnp.float32)
    return np.stack(
        [np.asarray(metrics.activated_fraction(maps, float(t)), np.float64) for t in thresholds],
        axis=1,
    )


def activated_fraction_curve(maps, thresholds) -> np.ndarray:
    """S_M per threshold (Fig. 8): mean over images of the fraction of map entries ``> τ``.

    Args:
      maps: ``[B, H, W]`` (any ``[B, ...]``) attribution maps.
      thresholds: ``[T]`` thresholds.

    Returns:
      ``[T]`` float64 in [0, 1].
    """
    return activated_fractions(maps, thresholds).mean(axis=0)
