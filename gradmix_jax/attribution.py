"""Attribution maps for GradMix (paper section 3.2, eqs. 4-7) and their layer aggregation.

All functions are pure, jit/vmap friendly and work on NHWC feature maps:
``activation`` and ``gradient`` are ``[B, h, w, C]`` (the forward feature map of one layer
and the gradient of the loss with respect to it).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

__all__ = ["NORMALIZE_MODES", "NORM_EPS", "layercam", "gradcam", "aggregate_maps"]

#: Allowed values of ``aggregate_maps(normalize=...)``.
NORMALIZE_MODES = ("image", "batch", "none")

#: Added to the min-max denominator so a constant map normalises to 0 instead of NaN.
NORM_EPS = 1e-8


def _check_pair(activation: jax.Array, gradient: jax.Array) -> None:
    """One shape, [B, h, w, C] ([h, w, C] under vmap); shapes are static, so this holds under jit."""
    if activation.ndim < 3 or tuple(activation.shape) != tuple(gradient.shape):
        raise ValueError(
            f"activation and gradient must both be [B, h, w, C] with the same shape (the tap's "
            f"output and d loss / d tap), got {tuple(activation.shape)} and {tuple(gradient.shape)}"
        )


def layercam(activation: jax.Array, gradient: jax.Array) -> jax.Array:
    """LayerCAM map (Jiang et al. 2021; paper eqs. 6-7).

    map = ReLU( sum_c ReLU(gradient) * activation )

    Args:
      activation: ``[B, h, w, C]`` forward feature map.
      gradient: ``[B, h, w, C]`` d loss / d activation.

    Returns:
      ``[B, h, w]`` non-negative map.
    """
    _check_pair(activation, gradient)
    # Per-location weights: only positive gradients count as evidence.
    weighted = jnp.maximum(gradient, 0) * activation
    return jnp.maximum(jnp.sum(weighted, axis=-1), 0)


def gradcam(activation: jax.Array, gradient: jax.Array) -> jax.Array:
    """Grad-CAM map (Selvaraju et al. 2017; paper eqs. 4-5).

    alpha_c = mean_{h,w} gradient;  map = ReLU( sum_c alpha_c * activation )

    Args:
      activation: ``[B, h, w, C]`` forward feature map.
      gradient: ``[B, h, w, C]`` d loss / d activation.

    Returns:
      ``[B, h, w]`` non-negative map.
    """
    _check_pair(activation, gradient)
    # One weight per channel: the spatially averaged gradient.
    alpha = jnp.mean(gradient, axis=(1, 2), keepdims=True)  # [B, 1, 1, C]
    return jnp.maximum(jnp.sum(alpha * activation, axis=-1), 0)


def _minmax(maps: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Min-max normalise ``maps`` over ``axes``; a constant slice maps to 0 (eps denominator)."""
    lo = jnp.min(maps, axis=axes, keepdims=True)
    hi = jnp.max(maps, axis=axes, keepdims=True)
    return (maps - lo) / (hi - lo + NORM_EPS)


def _check_normalize(normalize: str) -> None:
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")


def aggregate_maps(
    maps: Sequence[jax.Array],
    size: tuple[int, int],
    normalize: str = "image",
) -> jax.Array:
    """Upsample per-layer maps to image size, min-max normalise each, and sum them.

    Paper section 3.2: M_layercam = M_m + M_n + ... + M_k.

    Args:
      maps: non-empty sequence of ``[B, h_l, w_l]`` maps (one per layer; sizes may differ).
      size: ``(H, W)`` target size (static).
      normalize: ``'image'`` (min/max over each image's H x W), ``'batch'`` (one min/max over
        the whole ``[B, H, W]`` block, as in the authors' code) or ``'none'``. The denominator
        is ``max - min + 1e-8`` (``NORM_EPS``), so a constant map normalises to 0 and a
        non-constant one to ``[0, 1)`` up to that epsilon.

    Returns:
      ``[B, H, W]`` float32 aggregated map.
    """
    _check_normalize(normalize)
    if len(maps) == 0:
        raise ValueError("maps must be a non-empty sequence of [B, h, w] arrays, got an empty one")
    height, width = (int(s) for s in size)
    axes = {"image": (1, 2), "batch": (0, 1, 2)}.get(normalize)

    total = None
    for layer_map in maps:  # loop over layers (static count), not over samples
        layer_map = jnp.asarray(layer_map, jnp.float32)
        # 'bilinear' with half-pixel centres == torch F.interpolate(bilinear, align_corners=False)
        # when upsampling; antialias=False keeps that match if a map is ever larger than size.
        up = jax.image.resize(
            layer_map, (layer_map.shape[0], height, width), "bilinear", antialias=False
        )
        if axes is not None:
            up = _minmax(up, axes)
        total = up if total is None else total + up
    return total
