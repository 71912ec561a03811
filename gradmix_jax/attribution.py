"""Attribution maps for GradMix (paper section 3.2, eqs. 4-7) and their layer aggregation.

All functions are pure, jit/vmap friendly and work on NHWC feature maps:
``activation`` and ``gradient`` are ``[B, h, w, C]`` (the forward feature map of one layer
and the gradient of the loss with respect to it).

Vision transformers: a block's output is a sequence of tokens ``[B, N, C]``, often a class
token (and register tokens) followed by the ``h * w`` patch tokens in row-major order.
``layercam``, ``gradcam`` and ``tap_maps`` take such taps when given the static patch grid and
the number of leading tokens to drop (``grid=(h, w), prefix_tokens=1``); ``tokens_to_grid`` does
that reshape (pytorch-grad-cam's ``reshape_transform``) and gives ``[B, h, w, C]``.

``tap_maps`` is the whole pipeline for a set of taps (named layers): one CAM per tap, upsampled,
normalised and summed into one ``[B, H, W]`` map per image. Argument checks read only shapes and
dtypes, so they raise the same one-line ValueError eagerly and under ``jax.jit``.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from gradmix_jax import _checks

__all__ = [
    "NORMALIZE_MODES",
    "NORMALIZE_AT",
    "NORM_EPS",
    "CAMS",
    "tokens_to_grid",
    "layercam",
    "gradcam",
    "normalize_maps",
    "aggregate_maps",
    "tap_maps",
]

#: Allowed values of ``aggregate_maps(normalize=...)``.
NORMALIZE_MODES = ("image", "batch", "none")

#: Allowed values of ``aggregate_maps(normalize_at=...)``: min-max normalise each layer's map
#: after upsampling it to the image size (``'output'``) or at its own resolution, before
#: upsampling (``'layer'``, the authors' code).
NORMALIZE_AT = ("output", "layer")

#: Added to the min-max denominator so a constant map normalises to 0 instead of NaN.
NORM_EPS = 1e-8

#: Allowed values of ``tap_maps(cam=...)``.
CAMS = ("layercam", "gradcam")


def _check_pair(activation: jax.Array, gradient: jax.Array) -> None:
    """One shape, [B, h, w, C] ([h, w, C] under vmap); shapes are static, so this holds under jit."""
    if activation.ndim not in (3, 4) or tuple(activation.shape) != tuple(gradient.shape):
        raise ValueError(
            f"activation and gradient must both be [B, h, w, C] with the same shape (the tap's "
            f"output and d loss / d tap), got {tuple(activation.shape)} and {tuple(gradient.shape)}"
        )


def _grid_args(grid: object, prefix_tokens: object) -> tuple[int, int, int]:
    """``(h, w, prefix_tokens)`` as Python ints; both arguments are static."""
    try:
        h, w = (operator.index(s) for s in grid)
        ok = h > 0 and w > 0
    except (TypeError, ValueError):  # not iterable, not two items, or not integers
        ok = False
    if not ok:
        raise ValueError(f"grid must be the static patch grid (h, w), two ints > 0, got {grid!r}")
    try:
        prefix = operator.index(prefix_tokens)
    except TypeError:
        prefix = -1
    if prefix < 0:
        raise ValueError(
            "prefix_tokens must be an int >= 0 (the class/register tokens before the patch "
            f"tokens), got {prefix_tokens!r}"
        )
    return h, w, prefix


def _to_grid(name: str, tokens: jax.Array, grid: object, prefix_tokens: object) -> jax.Array:
    """``tokens_to_grid`` whose error message names the argument ``name``."""
    h, w, prefix = _grid_args(grid, prefix_tokens)
    shape = tuple(jnp.shape(tokens))
    if len(shape) < 2 or shape[-2] != prefix + h * w:
        if len(shape) >= 2 and shape[-1] == prefix + h * w:
            hint = "; it looks channels-first [B, C, N]: transpose with x.transpose(0, 2, 1)"
        elif len(shape) >= 2 and shape[-2] > h * w and shape[-2] - h * w != prefix:
            extra = shape[-2] - h * w
            hint = (
                f"; if the {extra} extra tokens lead (class/registers), pass prefix_tokens={extra}"
            )
        else:
            hint = ""
        raise ValueError(
            f"{name} must be tokens [B, N, C] with N = prefix_tokens + h * w = {prefix} + "
            f"{h} * {w} = {prefix + h * w} for grid={(h, w)}, prefix_tokens={prefix}, got shape "
            f"{shape}{hint}"
        )
    # Static slice and reshape: the patch tokens are row-major over the (h, w) grid.
    return jnp.asarray(tokens)[..., prefix:, :].reshape(*shape[:-2], h, w, shape[-1])


def tokens_to_grid(tokens: jax.Array, grid: tuple[int, int], prefix_tokens: int = 0) -> jax.Array:
    """Transformer tokens as an NHWC feature map: drop the leading tokens, reshape the rest.

    The ViT counterpart of pytorch-grad-cam's ``reshape_transform``: ``tokens[..., p:, :]``
    reshaped to ``[..., h, w, C]``, for patch tokens in row-major order over the patch grid (a
    ViT's ``Conv`` patch embedding flattened with ``reshape(B, h * w, C)``). A static slice and
    reshape, so it works under ``jax.jit``, ``jax.vmap`` (one example's ``[N, C]``) and
    ``jax.grad`` (the dropped tokens get a zero gradient).

    Args:
      tokens: ``[B, N, C]`` (or ``[N, C]``, any leading axes) with ``N = p + h * w``.
      grid: static ``(h, w)`` patch grid, e.g. ``(H // patch, W // patch)``.
      prefix_tokens: static ``p``, the number of leading tokens that are not patches: 1 for a
        class token, ``1 + R`` with ``R`` register tokens, 0 for a model without them.

    Returns:
      ``[B, h, w, C]`` (the leading axes of ``tokens``, then ``h, w, C``).

    Raises:
      ValueError: ``N != p + h * w`` (naming the shape, ``grid`` and ``prefix_tokens``), or a
        ``grid`` / ``prefix_tokens`` that is not a pair of positive ints / an int >= 0.
    """
    return _to_grid("tokens", tokens, grid, prefix_tokens)


def _token_pair(activation, gradient, grid, prefix_tokens):
    """The pair as NHWC maps: token-shaped via ``grid`` when given (layercam / gradcam)."""
    if grid is None:
        if prefix_tokens:
            raise ValueError(
                f"prefix_tokens={prefix_tokens!r} is given without grid: token activations "
                "[B, N, C] need grid=(h, w) too"
            )
        return activation, gradient
    a_shape, g_shape = tuple(jnp.shape(activation)), tuple(jnp.shape(gradient))
    if len(a_shape) not in (2, 3) or a_shape != g_shape:
        raise ValueError(
            "with grid given, activation and gradient must both be tokens [B, N, C] ([N, C] "
            f"under vmap) with the same shape, got {a_shape} and {g_shape}"
            + ("; [B, h, w, C] maps need no grid" if len(a_shape) == 4 else "")
        )
    return (
        _to_grid("activation", activation, grid, prefix_tokens),
        _to_grid("gradient", gradient, grid, prefix_tokens),
    )


def layercam(
    activation: jax.Array,
    gradient: jax.Array,
    relu: bool = True,
    *,
    grid: tuple[int, int] | None = None,
    prefix_tokens: int = 0,
) -> jax.Array:
    """LayerCAM map (Jiang et al. 2021; paper eqs. 6-7).

    map = ReLU( sum_c ReLU(gradient) * activation )

    Args:
      activation: ``[B, h, w, C]`` forward feature map, or transformer tokens ``[B, N, C]``
        with ``grid`` given.
      gradient: d loss / d activation, the same shape.
      relu: apply the outer ReLU (LayerCAM's definition). The authors' GradMix code does not
        (``relu=False``); the two agree wherever the activations are >= 0 (post-ReLU taps).
      grid: static patch grid ``(h, w)`` for token inputs (``tokens_to_grid``); None for
        ``[B, h, w, C]`` maps. Without it a 3-D input is one example's ``[h, w, C]`` (vmap).
      prefix_tokens: leading non-patch tokens to drop (1 for a class token); needs ``grid``.

    Returns:
      ``[B, h, w]`` map, non-negative when ``relu``.
    """
    activation, gradient = _token_pair(activation, gradient, grid, prefix_tokens)
    _check_pair(activation, gradient)
    # Per-location weights: only positive gradients count as evidence.
    summed = jnp.sum(jnp.maximum(gradient, 0) * activation, axis=-1)
    return jnp.maximum(summed, 0) if relu else summed


def gradcam(
    activation: jax.Array,
    gradient: jax.Array,
    *,
    grid: tuple[int, int] | None = None,
    prefix_tokens: int = 0,
) -> jax.Array:
    """Grad-CAM map (Selvaraju et al. 2017; paper eqs. 4-5).

    alpha_c = mean_{h,w} gradient;  map = ReLU( sum_c alpha_c * activation )

    Args:
      activation: ``[B, h, w, C]`` forward feature map, or transformer tokens ``[B, N, C]``
        with ``grid`` given.
      gradient: d loss / d activation, the same shape.
      grid: static patch grid ``(h, w)`` for token inputs (``tokens_to_grid``); the mean runs
        over the ``h * w`` patch tokens only. None for ``[B, h, w, C]`` maps; without it a 3-D
        input is one example's ``[h, w, C]`` (vmap).
      prefix_tokens: leading non-patch tokens to drop (1 for a class token); needs ``grid``.

    Returns:
      ``[B, h, w]`` non-negative map.
    """
    activation, gradient = _token_pair(activation, gradient, grid, prefix_tokens)
    _check_pair(activation, gradient)
    # One weight per channel: the spatially averaged gradient (axes h, w also under vmap).
    alpha = jnp.mean(gradient, axis=(-3, -2), keepdims=True)  # [B, 1, 1, C]
    return jnp.maximum(jnp.sum(alpha * activation, axis=-1), 0)


def _minmax(maps: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Min-max normalise ``maps`` over ``axes``; a constant slice maps to 0 (eps denominator)."""
    lo = jnp.min(maps, axis=axes, keepdims=True)
    hi = jnp.max(maps, axis=axes, keepdims=True)
    return (maps - lo) / (hi - lo + NORM_EPS)


def _check_normalize(normalize: str, normalize_at: str = "output") -> None:
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
    if normalize_at not in NORMALIZE_AT:
        raise ValueError(f"normalize_at must be one of {NORMALIZE_AT}, got {normalize_at!r}")


def normalize_maps(maps: jax.Array, normalize: str = "image") -> jax.Array:
    """Min-max normalise ``[B, h, w]`` maps: ``(m - min) / (max - min + 1e-8)``.

    Args:
      maps: ``[B, h, w]`` maps.
      normalize: ``'image'`` (one min/max per map), ``'batch'`` (one min/max over the whole
        ``[B, h, w]`` block) or ``'none'`` (returned as float32, unchanged).

    Returns:
      ``[B, h, w]`` float32.
    """
    _check_normalize(normalize)
    _check_layer_maps([maps])
    maps = jnp.asarray(maps, jnp.float32)
    axes = {"image": (1, 2), "batch": (0, 1, 2)}.get(normalize)
    return maps if axes is None else _minmax(maps, axes)


def _check_layer_maps(maps: Sequence[jax.Array]) -> None:
    """Each map [B, h, w], one batch size for all; static shapes only."""
    shapes = [tuple(jnp.shape(m)) for m in maps]
    for i, shape in enumerate(shapes):
        if len(shape) == 3:
            continue
        if len(shape) == 4 and shape[-1] == 1:
            hint = "squeeze the channel axis (m[..., 0])"
        elif len(shape) == 2:
            hint = "add a batch axis (m[None])"
        else:
            hint = "one [B, h, w] map per layer (e.g. from layercam)"
        raise ValueError(f"maps[{i}] must be [B, h, w], got shape {shape}: {hint}")
    if len({shape[0] for shape in shapes}) > 1:
        raise ValueError(
            f"maps must all have the same batch size B ([B, h, w] per layer), got shapes {shapes}"
        )


def aggregate_maps(
    maps: Sequence[jax.Array],
    size: tuple[int, int],
    normalize: str = "image",
    normalize_at: str = "output",
) -> jax.Array:
    """Upsample per-layer maps to image size, min-max normalise each, and sum them.

    Paper section 3.2: M_layercam = M_m + M_n + ... + M_k. The sum itself is not normalised.

    Args:
      maps: non-empty sequence of ``[B, h_l, w_l]`` maps (one per layer; sizes may differ).
      size: ``(H, W)`` target size (static).
      normalize: ``'image'`` (min/max over each image's H x W), ``'batch'`` (one min/max over
        the whole ``[B, H, W]`` block, as in the authors' code) or ``'none'``. The denominator
        is ``max - min + 1e-8`` (``NORM_EPS``), so a constant map normalises to 0 and a
        non-constant one to ``[0, 1)`` up to that epsilon. With ``'image'`` one NaN in a layer
        map makes that image's whole aggregated map NaN (min/max propagate NaN), so the image's
        map is degenerate (``mixing.degenerate_maps``) and GradMix puts its box at a random
        position; with ``'batch'`` the whole batch's maps become NaN.
      normalize_at: ``'output'`` (normalise each upsampled map) or ``'layer'`` (normalise each
        map at its own resolution, then upsample: the authors' code, with ``'batch'`` over the
        maps of both views).

    Returns:
      ``[B, H, W]`` float32 aggregated map.
    """
    _check_normalize(normalize, normalize_at)
    if len(maps) == 0:
        raise ValueError("maps must be a non-empty sequence of [B, h, w] arrays, got an empty one")
    _check_layer_maps(maps)
    height, width = (int(s) for s in size)
    axes = {"image": (1, 2), "batch": (0, 1, 2)}.get(normalize)

    total = None
    for layer_map in maps:  # loop over layers (static count), not over samples
        layer_map = jnp.asarray(layer_map, jnp.float32)
        if axes is not None and normalize_at == "layer":
            layer_map = _minmax(layer_map, axes)
        # 'bilinear' with half-pixel centres == torch F.interpolate(bilinear, align_corners=False)
        # when upsampling; antialias=False keeps that match if a map is ever larger than size.
        up = jax.image.resize(
            layer_map, (layer_map.shape[0], height, width), "bilinear", antialias=False
        )
        if axes is not None and normalize_at == "output":
            up = _minmax(up, axes)
        total = up if total is None else total + up
    return total


def _tap_items(activations, gradients) -> list[tuple[str, jax.Array, jax.Array]]:
    """``(label, activation, gradient)`` per tap; label is ``"['name']"`` or ``"[i]"``."""
    if isinstance(activations, Mapping) != isinstance(gradients, Mapping):
        raise TypeError(
            "activations and gradients must both be Mappings (tap name -> array) or both "
            f"sequences, got {type(activations).__name__} and {type(gradients).__name__}"
        )
    if isinstance(activations, Mapping):
        if set(activations) != set(gradients):
            raise ValueError(
                "activations and gradients must have the same taps (keys), got activations keys "
                f"{sorted(map(str, activations))} and gradients keys {sorted(map(str, gradients))}"
            )
        items = [(f"[{k!r}]", activations[k], gradients[k]) for k in activations]
    else:
        activations, gradients = list(activations), list(gradients)
        if len(activations) != len(gradients):
            raise ValueError(
                "activations and gradients must hold one array per tap each, got "
                f"{len(activations)} activations and {len(gradients)} gradients"
            )
        items = [(f"[{i}]", a, g) for i, (a, g) in enumerate(zip(activations, gradients))]
    if not items:
        raise ValueError(
            "activations and gradients must hold at least one tap ([B, h, w, C] arrays), got none"
        )
    return items


def tap_maps(
    activations: Mapping[str, jax.Array] | Sequence[jax.Array],
    gradients: Mapping[str, jax.Array] | Sequence[jax.Array],
    size: tuple[int, int],
    *,
    normalize: str = "image",
    cam: str = "layercam",
    normalize_at: str = "output",
    relu: bool = True,
    grid: tuple[int, int] | None = None,
    prefix_tokens: int = 0,
) -> jax.Array:
    """Attribution map per image from tapped layers: CAM per tap, then ``aggregate_maps``.

    ``aggregate_maps([cam(a_t, g_t) for t in taps], size, normalize, normalize_at)`` with ``cam`` =
    ``layercam`` (paper eqs. 6-7) or ``gradcam`` (eqs. 4-5), computed in float32 (inputs are
    cast with ``.astype(jnp.float32)``, so bfloat16 taps give the same map as float32 ones up
    to their own rounding). Taps are summed in the order of ``activations``.

    Transformer taps: a 3-D tap ``[B, N, C]`` is read as tokens and reshaped with
    ``tokens_to_grid(tap, grid, prefix_tokens)``; one ``grid`` / ``prefix_tokens`` applies to
    every token tap (a ViT's blocks share one patch grid), 4-D taps ignore them. Taps on
    different grids (hierarchical models): reshape each with ``tokens_to_grid`` first.

    Args:
      activations: tap name -> ``[B, h, w, C]`` forward feature map (a Mapping), or a
        sequence of them; sizes may differ per tap, B may not. With ``grid`` given a tap may
        also be tokens ``[B, N, C]``.
      gradients: the same keys (or the same length): d loss / d activation, same shapes.
      size: static ``(H, W)`` image size to upsample to.
      normalize: ``'image'``, ``'batch'`` or ``'none'`` (see ``aggregate_maps``).
      cam: ``'layercam'`` or ``'gradcam'``.
      normalize_at: ``'output'`` or ``'layer'`` (see ``aggregate_maps``).
      relu: the CAM's outer ReLU (``layercam(relu=...)``; Grad-CAM always applies it).
      grid: static patch grid ``(h, w)`` of the token taps, e.g. ``(H // patch, W // patch)``;
        None when every tap is 4-D.
      prefix_tokens: leading non-patch tokens of each token tap (1 for a class token).

    Returns:
      ``[B, H, W]`` float32.

    Raises:
      ValueError: taps missing/extra/empty, a bad ``cam`` / ``normalize``, an activation and
        gradient of different shapes, a tap that is neither 4-D nor (with ``grid``) 3-D, a
        token tap without ``grid`` or whose ``N`` is not ``prefix_tokens + h * w``, or a tap that
        looks channels-first (``[B, C, h, w]``: its last two axes fit a downsampled ``(H, W)``
        and its middle two do not).
      TypeError: one of activations / gradients is a Mapping and the other is not.
    """
    if cam not in CAMS:
        raise ValueError(f"cam must be one of {CAMS}, got {cam!r}")
    _check_normalize(normalize, normalize_at)
    if grid is not None:
        _grid_args(grid, prefix_tokens)  # a bad grid fails even when no tap is token-shaped
    elif prefix_tokens:
        raise ValueError(
            f"prefix_tokens={prefix_tokens!r} is given without grid: token taps [B, N, C] need "
            "grid=(h, w) too"
        )
    height, width = (int(s) for s in size)
    items = _tap_items(activations, gradients)
    maps = []
    for label, act, grad in items:
        a_shape, g_shape = tuple(jnp.shape(act)), tuple(jnp.shape(grad))
        if len(a_shape) == 3 and a_shape == g_shape and grid is not None:
            # The user's grid is authoritative, so the channels-first guess below is skipped.
            act = _to_grid(f"activations{label}", act, grid, prefix_tokens)
            grad = _to_grid(f"gradients{label}", grad, grid, prefix_tokens)
        elif len(a_shape) != 4 or a_shape != g_shape:
            if 3 not in (len(a_shape), len(g_shape)):
                hint = ""
            elif grid is None:
                hint = (
                    "; for transformer tokens [B, N, C] pass grid=(h, w), the patch grid, and "
                    "prefix_tokens, the number of leading class/register tokens"
                )
            else:
                hint = "; with grid given, tokens [B, N, C] of the same shape are accepted too"
            raise ValueError(
                f"activations{label} and gradients{label} must both be [B, h, w, C] with the same "
                f"shape, got {a_shape} and {g_shape}{hint}"
            )
        elif _checks.looks_channels_first(a_shape, height, width):
            raise ValueError(
                f"activations{label} has shape {a_shape}, which looks channels-first (NCHW) for "
                f"images of size {(height, width)}; taps must be NHWC [B, h, w, C]: transpose "
                "with x.transpose(0, 2, 3, 1)"
            )
        act, grad = act.astype(jnp.float32), grad.astype(jnp.float32)
        maps.append(layercam(act, grad, relu) if cam == "layercam" else gradcam(act, grad))
    return aggregate_maps(maps, (height, width), normalize, normalize_at)
