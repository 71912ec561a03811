"""GradMix (paper section 3.2) plus CutMix and MixUp baselines, as pure batched JAX functions.

Conventions: images are ``[B, H, W, C]`` float (NHWC), attribution maps are ``[B, H, W]``.
Every function takes an explicit PRNG key where it needs randomness, jits with a fixed
trace (ratios, boxes and permutations are traced values) and never loops over samples in
Python. String / range arguments are static and validated in Python before any tracing.

A box is described by integer ``(top, left, bh, bw)``; for placement ``'clip'`` ``top`` /
``left`` may be negative or the box may run past the border, and only its part inside the
image counts (``box_mask`` truncates it).

Degenerate maps: a map with a NaN/inf or with no variation (max == min, e.g. all zeros) has no
region to prefer, and its argmax would silently be the top-left pixel. ``gradmix`` instead
puts its box at a uniformly random position (a centre drawn from ``jax.random.fold_in(key,
1)``); ``gradmix_boxes`` / ``gradmix_apply`` do the same given ``fallback_centers``.
``degenerate_maps`` says which maps are degenerate, and the train step reports their count.

Argument checks read only static facts (shapes, dtypes, Python types), so they raise the same
one-line error eagerly and under ``jax.jit`` / ``jax.vmap``: keys must be PRNG keys
(``jax.random.key(seed)`` or a raw ``uint32[2]``), images NHWC, floating point except for
``cutmix`` (which copies pixels), and a batch that is mixed with itself needs ``B >= 2``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gradmix_jax import _checks

__all__ = [
    "FILL_MODES",
    "PLACEMENTS",
    "RATIO_OF",
    "RATIO_PER",
    "BOX_SIZES",
    "NOISE_CHANNELS",
    "AREAS",
    "PATCH_ANTIALIAS",
    "sample_ratios",
    "nominal_sides",
    "box_sizes",
    "box_from_map",
    "box_mask",
    "paste_resized",
    "degenerate_maps",
    "gradmix_boxes",
    "gradmix_apply",
    "gradmix",
    "cutmix",
    "mixup",
]

#: Allowed values of the static string arguments.
#: The mixing of view 1 a train step can apply ("none": no mixed term).
METHODS = ("none", "gradmix", "cutmix", "mixup")
FILL_MODES = ("sample", "noise")
PLACEMENTS = ("inside", "clip")
RATIO_OF = ("side", "area")
RATIO_PER = ("sample", "batch")
#: How a ratio becomes a box side: ``round(s * H)`` (at least 1), or the authors' code's
#: ``cut = int(s * H)`` with the box spanning ``2 * (cut // 2)`` pixels around the centre.
BOX_SIZES = ("round", "floor_even")
#: Noise fill: an independent value per channel, or one value per pixel shared by all channels
#: (the authors' code).
NOISE_CHANNELS = ("independent", "shared")
#: The fraction ``gradmix`` returns: the pixels really replaced (after border clipping), or
#: the nominal box ``cut_h * cut_w`` before clipping (the authors' loss weight is 1 minus it).
AREAS = ("masked", "nominal")

#: Antialias setting used to shrink the pasted sample. False = plain bilinear interpolation,
#: i.e. torch ``F.interpolate(mode='bilinear', align_corners=False)`` (its default), which is
#: what ResizeMix-style pasting uses; the patch equals
#: ``jax.image.resize(x, (bh, bw, C), 'linear', antialias=PATCH_ANTIALIAS)``.
PATCH_ANTIALIAS = False


# --------------------------------------------------------------------------- validation


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _pair(name: str, value: object, rule: str) -> tuple[float, float]:
    """Parse a static ``(lo, hi)`` pair of Python numbers or raise a one-line ValueError."""
    try:
        lo, hi = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a static (lo, hi) pair with {rule}, got {value!r}"
        ) from None
    return lo, hi


def _check_ratio_range(ratio_range: Sequence[float]) -> tuple[float, float]:
    rule = "0 < lo <= hi < 1"
    lo, hi = _pair("ratio_range", ratio_range, rule)
    if not 0.0 < lo <= hi < 1.0:
        raise ValueError(
            f"ratio_range must be a static (lo, hi) pair with {rule}, got {ratio_range!r}"
        )
    return lo, hi


def _check_noise_range(noise_range: Sequence[float]) -> tuple[float, float]:
    rule = "lo <= hi"
    lo, hi = _pair("noise_range", noise_range, rule)
    if not lo <= hi:
        raise ValueError(
            f"noise_range must be a static (lo, hi) pair with {rule}, got {noise_range!r}"
        )
    return lo, hi


def _check_alpha(alpha: float) -> None:
    # A traced alpha cannot be checked here; a Python number can.
    if isinstance(alpha, (int, float)) and not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")


_SELF_MIX = "a batch of one can only be mixed with itself"


def _check_images(
    images: jax.Array,
    maps: jax.Array | None = None,
    *,
    floating: bool = True,
    min_batch: bool = False,
) -> None:
    """images [B, H, W, C] (floating unless ``floating=False``), maps [B, H, W], B >= 2 if asked."""
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {tuple(images.shape)}")
    if maps is not None and tuple(maps.shape) != tuple(images.shape[:3]):
        if maps.ndim == 3 and tuple(maps.shape) == (images.shape[0], *images.shape[2:]):
            # maps fit [B, C, H, W] images: the images are channels-first.
            raise ValueError(
                f"images must be NHWC [B, H, W, C]; shape {tuple(images.shape)} looks like NCHW "
                f"(maps are {tuple(maps.shape)}): transpose with images.transpose(0, 2, 3, 1)"
            )
        raise ValueError(
            f"maps must be [B, H, W] = {tuple(images.shape[:3])}, got shape {tuple(maps.shape)}"
        )
    if floating:
        _checks.check_floating_images("images", images)
    if min_batch:
        _checks.check_min_batch("images", tuple(images.shape), "[B, H, W, C]", _SELF_MIX)


# --------------------------------------------------------------------------- building blocks


def sample_ratios(
    key: jax.Array,
    batch: int,
    ratio_range: Sequence[float] = (0.1, 0.5),
    per: str = "sample",
) -> jax.Array:
    """Uniform ratios in ``[lo, hi)``.

    Args:
      key: PRNG key (``jax.random.key(seed)`` or a raw ``uint32[2]``).
      batch: static batch size B.
      ratio_range: static ``(lo, hi)`` with ``0 < lo <= hi < 1``.
      per: ``'sample'`` (one draw per sample) or ``'batch'`` (one draw shared by the whole
        batch, as in the authors' code).

    Returns:
      ``[B]`` float32 ratios.
    """
    _checks.check_key("key", key)
    lo, hi = _check_ratio_range(ratio_range)
    _check_choice("per", per, RATIO_PER)
    shape = (batch,) if per == "sample" else ()
    ratios = jax.random.uniform(key, shape, jnp.float32, minval=lo, maxval=hi)
    return jnp.broadcast_to(ratios, (batch,))


def nominal_sides(
    ratios: jax.Array, height: int, width: int, ratio_of: str = "side", box_size: str = "round"
) -> tuple[jax.Array, jax.Array]:
    """The box sides a ratio asks for, before ``box_size='floor_even'`` evens them.

    ``s = r`` for ``ratio_of='side'`` and ``s = sqrt(r)`` for ``'area'``; ``'round'``:
    ``clip(round(s * H), 1, H)`` (half-to-even); ``'floor_even'``: ``floor(s * H)``, the authors'
    ``int(H * sqrt(1 - lam))`` (``s * H`` in float32).

    Returns:
      ``(cut_h, cut_w)`` int32 arrays shaped like ``ratios``.
    """
    _check_choice("ratio_of", ratio_of, RATIO_OF)
    _check_choice("box_size", box_size, BOX_SIZES)
    side = ratios if ratio_of == "side" else jnp.sqrt(ratios)
    if box_size == "floor_even":
        cut_h = jnp.floor(side * height).astype(jnp.int32)
        return cut_h, jnp.floor(side * width).astype(jnp.int32)
    bh = jnp.clip(jnp.round(side * height), 1, height).astype(jnp.int32)
    bw = jnp.clip(jnp.round(side * width), 1, width).astype(jnp.int32)
    return bh, bw


def box_sizes(
    ratios: jax.Array,
    height: int,
    width: int,
    ratio_of: str = "side",
    box_size: str = "round",
) -> tuple[jax.Array, jax.Array]:
    """Box height/width from ratios.

    ``'round'``: ``bh = round(s * H)``, ``bw = round(s * W)``, each >= 1 (``s = r`` for
    ``ratio_of='side'``, the paper's gamma; ``s = sqrt(r)`` for ``'area'``). ``'floor_even'``
    (the authors' code): ``cut = floor(s * H)`` and the box spans ``2 * (cut // 2)`` pixels, from
    ``cut // 2`` above the centre to ``cut // 2 - 1`` below it (0 when ``cut < 2``).

    Args:
      ratios: float array of any shape ``S``.
      height, width: static image size H, W.
      ratio_of: ``'side'`` or ``'area'``.
      box_size: ``'round'`` or ``'floor_even'``.

    Returns:
      ``(bh, bw)`` int32 arrays of shape ``S``.
    """
    cut_h, cut_w = nominal_sides(ratios, height, width, ratio_of, box_size)
    if box_size == "floor_even":
        return 2 * (cut_h // 2), 2 * (cut_w // 2)
    return cut_h, cut_w


def box_from_map(
    attr_map: jax.Array, bh: jax.Array, bw: jax.Array, placement: str = "inside"
) -> tuple[jax.Array, jax.Array]:
    """Top-left corner of a ``bh x bw`` box centred on the map's argmax (one sample).

    The centre is the first maximum in row-major order. ``'inside'`` shifts the box to lie
    fully inside the image; ``'clip'`` keeps ``top = cy - bh // 2`` (may be negative or run
    past the border; the caller truncates via ``box_mask``), as in the authors' code.

    Args:
      attr_map: ``[H, W]`` attribution map.
      bh, bw: scalar int box size (may be traced).
      placement: ``'inside'`` or ``'clip'``.

    Returns:
      ``(top, left)`` int32 scalars.
    """
    _check_choice("placement", placement, PLACEMENTS)
    height, width = attr_map.shape
    cy, cx = _argmax_center(attr_map)
    return _place_box(cy, cx, bh, bw, height, width, placement)


def _argmax_center(attr_map: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(cy, cx)`` of the first maximum of an ``[H, W]`` map in row-major order."""
    width = attr_map.shape[1]
    flat = jnp.argmax(attr_map.reshape(-1))  # argmax returns the first maximum
    return flat // width, flat % width


def _place_box(cy, cx, bh, bw, height: int, width: int, placement: str):
    """``(top, left)`` int32 of a ``bh x bw`` box centred on ``(cy, cx)`` (see ``box_from_map``)."""
    top = cy - bh // 2
    left = cx - bw // 2
    if placement == "inside":
        top = jnp.clip(top, 0, height - bh)
        left = jnp.clip(left, 0, width - bw)
    return top.astype(jnp.int32), left.astype(jnp.int32)


def degenerate_maps(maps: jax.Array) -> jax.Array:
    """Which maps have no region to prefer: ``[B] bool``, True where a map has any NaN/inf value
    or is constant (``max == min``, e.g. all zeros).

    The argmax of such a map is meaningless (the first pixel), so GradMix places their boxes at
    a fallback position instead (``gradmix_boxes(fallback_centers=...)``). Jit/vmap friendly.

    Args:
      maps: ``[B, H, W]`` attribution maps.

    Returns:
      ``[B]`` bool.
    """
    if jnp.ndim(maps) != 3:
        raise ValueError(f"maps must be [B, H, W], got shape {tuple(jnp.shape(maps))}")
    nonfinite = ~jnp.all(jnp.isfinite(maps), axis=(1, 2))
    constant = jnp.max(maps, axis=(1, 2)) == jnp.min(maps, axis=(1, 2))
    return nonfinite | constant


def box_mask(
    top: jax.Array, left: jax.Array, bh: jax.Array, bw: jax.Array, height: int, width: int
) -> jax.Array:
    """Boolean ``[H, W]`` mask of rows ``[top, top+bh)`` x cols ``[left, left+bw)`` (one sample).

    Parts of the box outside the image are dropped, which is the border truncation.
    """
    rows = jnp.arange(height)
    cols = jnp.arange(width)
    in_rows = (rows >= top) & (rows < top + bh)
    in_cols = (cols >= left) & (cols < left + bw)
    return in_rows[:, None] & in_cols[None, :]


def paste_resized(
    source: jax.Array,
    top: jax.Array,
    left: jax.Array,
    bh: jax.Array,
    bw: jax.Array,
    antialias: bool = PATCH_ANTIALIAS,
) -> jax.Array:
    """Shrink the whole ``source`` to ``bh x bw`` and place it at ``(top, left)`` (one sample).

    ``scale_and_translate`` lets a traced box size land in a fixed-size canvas: canvas pixel
    ``(top + i, left + j)`` equals ``jax.image.resize(source, (bh, bw, C), 'linear',
    antialias=antialias)[i, j]`` for ``0 <= i < bh, 0 <= j < bw``. Values outside the box are
    meaningless and must be masked by the caller.

    Args:
      source: ``[H, W, C]`` image.
      top, left: int scalars (may be negative for clipped boxes).
      bh, bw: int scalars, box size.
      antialias: passed to ``scale_and_translate``; must match the resize it should equal.

    Returns:
      ``[H, W, C]`` canvas.
    """
    height, width = source.shape[:2]
    scale = jnp.stack([bh / height, bw / width]).astype(jnp.float32)
    translation = jnp.stack([top, left]).astype(jnp.float32)
    return jax.image.scale_and_translate(
        source, source.shape, (0, 1), scale, translation, "linear", antialias=antialias
    )


def _check_fallback_centers(fallback_centers: jax.Array | None, batch: int) -> None:
    if fallback_centers is None:
        return
    shape = tuple(jnp.shape(fallback_centers))
    dtype = jnp.result_type(fallback_centers)
    if shape != (batch, 2) or not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(
            f"fallback_centers must be [B, 2] = ({batch}, 2) integer (cy, cx) pixels or None, "
            f"got {_checks.describe(fallback_centers)}"
        )


def gradmix_boxes(
    maps: jax.Array,
    ratios: jax.Array,
    ratio_of: str = "side",
    placement: str = "inside",
    fallback_centers: jax.Array | None = None,
    box_size: str = "round",
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """GradMix boxes for a batch: size from ``ratios``, centre at each map's argmax.

    A degenerate map (``degenerate_maps``: a NaN/inf or no variation) has no region to
    prefer; with ``fallback_centers`` given, its box is centred on ``fallback_centers[i]``
    instead of the argmax (same placement rule). Without it, the argmax is used for every map
    (for a degenerate map that is the first pixel in row-major order, or the first NaN).

    Args:
      maps: ``[B, H, W]`` attribution maps at image size.
      ratios: ``[B]`` ratios (see ``box_sizes``).
      ratio_of: ``'side'`` or ``'area'``.
      placement: ``'inside'`` or ``'clip'``.
      fallback_centers: ``[B, 2]`` int ``(cy, cx)`` pixel centres for degenerate maps (clipped
        to the image), or None.
      box_size: ``'round'`` or ``'floor_even'`` (see ``box_sizes``).

    Returns:
      ``(top, left, bh, bw)``, each ``[B]`` int32 (untruncated for ``'clip'``).
    """
    _check_choice("ratio_of", ratio_of, RATIO_OF)
    _check_choice("box_size", box_size, BOX_SIZES)
    _check_choice("placement", placement, PLACEMENTS)
    if jnp.ndim(maps) != 3:
        raise ValueError(f"maps must be [B, H, W], got shape {tuple(jnp.shape(maps))}")
    batch, height, width = maps.shape
    _check_fallback_centers(fallback_centers, batch)
    bh, bw = box_sizes(ratios, height, width, ratio_of, box_size)
    if fallback_centers is None:
        top, left = jax.vmap(lambda m, h, w: box_from_map(m, h, w, placement))(maps, bh, bw)
        return top, left, bh, bw
    cy, cx = jax.vmap(_argmax_center)(maps)
    bad = degenerate_maps(maps)
    fallback = jnp.asarray(fallback_centers)
    cy = jnp.where(bad, jnp.clip(fallback[:, 0], 0, height - 1).astype(cy.dtype), cy)
    cx = jnp.where(bad, jnp.clip(fallback[:, 1], 0, width - 1).astype(cx.dtype), cx)
    top, left = _place_box(cy, cx, bh, bw, height, width, placement)
    return top, left, bh, bw


def _batch_masks(top, left, bh, bw, height: int, width: int) -> jax.Array:
    """``[B, H, W]`` boolean masks for ``[B]`` boxes."""
    return jax.vmap(box_mask, in_axes=(0, 0, 0, 0, None, None))(top, left, bh, bw, height, width)


def _masked_fraction(masks: jax.Array) -> jax.Array:
    """``[B]`` float32 fraction of replaced pixels."""
    height, width = masks.shape[1:]
    return jnp.sum(masks, axis=(1, 2)).astype(jnp.float32) / (height * width)


def _nominal_fraction(ratios, height: int, width: int, ratio_of: str, box_size: str) -> jax.Array:
    """``[B]`` float32 ``cut_h * cut_w / (H * W)``, the nominal box area before clipping."""
    cut_h, cut_w = nominal_sides(ratios, height, width, ratio_of, box_size)
    # 1 - fraction is the authors' weight, 1 - cut_h * cut_w / (H * W) computed in float64 and
    # stored as float32. A static table of those values keeps it exact (XLA turns a division by a
    # constant into a multiplication, which can be 1 ulp off); 1 - kept, and 1 minus that again,
    # are exact in float32 whenever kept >= 1/2 (Sterbenz), i.e. for every box up to half the image.
    rows, cols = np.arange(height + 1), np.arange(width + 1)
    kept = np.float32(1.0 - np.outer(rows, cols) / (height * width))
    return 1.0 - jnp.asarray(kept)[cut_h, cut_w]


def _check_area(area: str) -> None:
    _check_choice("area", area, AREAS)


# --------------------------------------------------------------------------- GradMix


def gradmix_apply(
    images: jax.Array,
    maps: jax.Array,
    ratios: jax.Array,
    *,
    perm: jax.Array | None = None,
    noise: jax.Array | None = None,
    ratio_of: str = "side",
    placement: str = "inside",
    fallback_centers: jax.Array | None = None,
    box_size: str = "round",
    area: str = "masked",
) -> tuple[jax.Array, jax.Array]:
    """Deterministic GradMix core given the already-drawn randomness.

    Exactly one of ``perm`` (fill with the whole image ``images[perm[i]]`` shrunk to the box)
    or ``noise`` (fill the box with ``noise[i]`` at the same pixels) must be given.

    Args:
      images: ``[B, H, W, C]`` floating point (NHWC); ``B >= 2`` with ``perm``.
      maps: ``[B, H, W]`` attribution maps at image size.
      ratios: ``[B]`` ratios.
      perm: ``[B]`` int permutation of the batch, or None.
      noise: ``[B, H, W, C]`` fill values (or ``[B, H, W, 1]``, one value per pixel for every
        channel), or None.
      ratio_of: ``'side'`` or ``'area'``.
      placement: ``'inside'`` or ``'clip'``.
      fallback_centers: ``[B, 2]`` int ``(cy, cx)`` box centres for degenerate maps (a NaN/inf
        or no variation), or None (argmax everywhere); see ``gradmix_boxes``.
      box_size: ``'round'`` or ``'floor_even'`` (see ``box_sizes``).
      area: the fraction returned: ``'masked'`` (pixels replaced) or ``'nominal'`` (the box
        ``cut_h * cut_w / (H * W)`` before clipping and evening, see ``nominal_sides``).

    Returns:
      ``(mixed [B, H, W, C] same dtype as images, fraction [B] float32)``;
      pixels outside each box are exactly the input.
    """
    _check_choice("ratio_of", ratio_of, RATIO_OF)
    _check_choice("placement", placement, PLACEMENTS)
    _check_area(area)
    if (perm is None) == (noise is None):
        raise ValueError(
            "gradmix_apply needs exactly one of perm (fill='sample') or noise (fill='noise')"
        )
    _check_images(images, maps, min_batch=perm is not None)
    _, height, width, _ = images.shape
    top, left, bh, bw = gradmix_boxes(maps, ratios, ratio_of, placement, fallback_centers, box_size)
    masks = _batch_masks(top, left, bh, bw, height, width)
    if perm is not None:
        fill = jax.vmap(paste_resized)(images[perm], top, left, bh, bw)
    else:
        fill = noise
    mixed = jnp.where(masks[..., None], fill.astype(images.dtype), images)
    if area == "nominal":
        return mixed, _nominal_fraction(ratios, height, width, ratio_of, box_size)
    return mixed, _masked_fraction(masks)


def gradmix(
    key: jax.Array,
    images: jax.Array,
    maps: jax.Array,
    ratio_range: Sequence[float] = (0.1, 0.5),
    ratio_of: str = "side",
    fill: str = "sample",
    placement: str = "inside",
    ratio_per: str = "sample",
    noise_range: Sequence[float] = (0.0, 1.0),
    *,
    box_size: str = "round",
    noise_channels: str = "independent",
    area: str = "masked",
) -> tuple[jax.Array, jax.Array]:
    """GradMix: cover the most attributed region of each image with a box.

    Per sample i: ``r_i ~ U(ratio_range)``; box size from ``box_sizes``; box centred on the
    argmax of ``maps[i]`` (``box_from_map``); the box is filled with the whole image
    ``images[perm[i]]`` shrunk to the box size (``fill='sample'``, paper Fig. 2) or with
    uniform noise in ``noise_range`` (``fill='noise'``, the authors' code).

    A map with a NaN/inf or with no variation has no region to prefer: its box goes to a
    uniformly random position (centre uniform over the H x W pixels, then the same placement
    rule); ``degenerate_maps`` says which, and the train step reports their count.

    Randomness (documented so callers can reproduce it): ``k_ratio, k_fill =
    jax.random.split(key)``; ``ratios = sample_ratios(k_ratio, B, ratio_range, ratio_per)``;
    ``perm = jax.random.permutation(k_fill, B)`` or ``noise = jax.random.uniform(k_fill,
    images.shape, images.dtype, *noise_range)`` (shape ``[B, H, W, 1]`` with
    ``noise_channels='shared'``); fallback centres ``flat =
    jax.random.randint(jax.random.fold_in(key, 1), (B,), 0, H * W)``, ``(cy, cx) = (flat // W,
    flat % W)``. So ``gradmix(key, ...) == gradmix_apply(..., fallback_centers=...)`` with
    these draws, and for non-degenerate maps the centres are unused.

    Args:
      key: PRNG key (``jax.random.key(seed)`` or a raw ``uint32[2]``).
      images: ``[B, H, W, C]`` floating point (NHWC); ``B >= 2`` for ``fill='sample'``.
      maps: ``[B, H, W]`` attribution maps at image size.
      ratio_range: static ``(lo, hi)``, ``0 < lo <= hi < 1``.
      ratio_of: ``'side'`` (paper's gamma) or ``'area'``.
      fill: ``'sample'`` or ``'noise'``.
      placement: ``'inside'`` or ``'clip'``.
      ratio_per: ``'sample'`` or ``'batch'``.
      noise_range: static ``(lo, hi)`` for ``fill='noise'``.
      box_size: ``'round'`` or ``'floor_even'`` (the authors' code; see ``box_sizes``).
      noise_channels: ``'independent'`` (one draw per channel) or ``'shared'`` (one draw per
        pixel, the same in every channel, as the authors' code).
      area: ``'masked'`` or ``'nominal'`` (see ``gradmix_apply``).

    Returns:
      ``(mixed [B, H, W, C], fraction [B] float32)``; with ``area='masked'`` the fraction is
      the number of replaced pixels / (H * W) (``bh * bw / (H * W)`` for ``'inside'``), the
      paper's gamma^2 loss weight.
    """
    _check_ratio_range(ratio_range)
    _check_choice("ratio_of", ratio_of, RATIO_OF)
    _check_choice("fill", fill, FILL_MODES)
    _check_choice("placement", placement, PLACEMENTS)
    _check_choice("ratio_per", ratio_per, RATIO_PER)
    noise_lo, noise_hi = _check_noise_range(noise_range)
    _check_choice("box_size", box_size, BOX_SIZES)
    _check_choice("noise_channels", noise_channels, NOISE_CHANNELS)
    _check_area(area)
    _checks.check_key("key", key)
    _check_images(images, maps, min_batch=fill == "sample")

    batch, height, width, _ = images.shape
    k_ratio, k_fill = jax.random.split(key)
    ratios = sample_ratios(k_ratio, batch, ratio_range, ratio_per)
    flat = jax.random.randint(jax.random.fold_in(key, 1), (batch,), 0, height * width)
    centers = jnp.stack([flat // width, flat % width], axis=1).astype(jnp.int32)
    kwargs = dict(
        ratio_of=ratio_of,
        placement=placement,
        fallback_centers=centers,
        box_size=box_size,
        area=area,
    )
    if fill == "sample":
        perm = jax.random.permutation(k_fill, batch)
        return gradmix_apply(images, maps, ratios, perm=perm, **kwargs)
    shape = images.shape if noise_channels == "independent" else (*images.shape[:3], 1)
    noise = jax.random.uniform(k_fill, shape, images.dtype, minval=noise_lo, maxval=noise_hi)
    return gradmix_apply(images, maps, ratios, noise=noise, **kwargs)


# --------------------------------------------------------------------------- baselines


def cutmix(
    key: jax.Array, images: jax.Array, alpha: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """CutMix (Yun et al. 2019), one box per sample.

    ``lam0 ~ Beta(alpha, alpha)``; box side ``bh = floor(H * sqrt(1 - lam0))`` (same for W, as
    ``int()`` in the reference code); centre ``(cy, cx)`` uniform over integer pixels;
    ``top = cy - bh // 2``; the box is truncated at the border; the box pixels are taken from
    ``images[perm[i]]`` at the same location (no resizing).

    Args:
      key: PRNG key (``jax.random.key(seed)`` or a raw ``uint32[2]``).
      images: ``[B, H, W, C]`` (NHWC), ``B >= 2``, any dtype: pixels are copied exactly, so
        uint8 images stay uint8 and are mixed without conversion.
      alpha: Beta concentration (> 0).

    Returns:
      ``(mixed [B, H, W, C], lam [B] float32, perm [B] int32)`` with ``lam`` the kept
      fraction ``1 - (truncated box area) / (H * W)``, i.e. the label weight of ``images``.
    """
    _check_alpha(alpha)
    _checks.check_key("key", key)
    _check_images(images, floating=False, min_batch=True)
    batch, height, width, _ = images.shape
    k_lam, k_perm, k_cy, k_cx = jax.random.split(key, 4)
    lam0 = jax.random.beta(k_lam, alpha, alpha, (batch,), jnp.float32)
    side = jnp.sqrt(1.0 - lam0)
    bh = jnp.floor(side * height).astype(jnp.int32)
    bw = jnp.floor(side * width).astype(jnp.int32)
    cy = jax.random.randint(k_cy, (batch,), 0, height)
    cx = jax.random.randint(k_cx, (batch,), 0, width)
    masks = _batch_masks(cy - bh // 2, cx - bw // 2, bh, bw, height, width)
    perm = jax.random.permutation(k_perm, batch)
    mixed = jnp.where(masks[..., None], images[perm], images)
    return mixed, 1.0 - _masked_fraction(masks), perm


def mixup(
    key: jax.Array, images: jax.Array, alpha: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """MixUp (Zhang et al. 2018) with a per-sample ``lam ~ Beta(alpha, alpha)``.

    Args:
      key: PRNG key (``jax.random.key(seed)`` or a raw ``uint32[2]``).
      images: ``[B, H, W, C]`` floating point, ``B >= 2``.
      alpha: Beta concentration (> 0).

    Returns:
      ``(mixed = lam * x + (1 - lam) * x[perm], lam [B] float32, perm [B] int32)``.
    """
    _check_alpha(alpha)
    _checks.check_key("key", key)
    _check_images(images, min_batch=True)
    batch = images.shape[0]
    k_lam, k_perm = jax.random.split(key)
    lam = jax.random.beta(k_lam, alpha, alpha, (batch,), jnp.float32)
    perm = jax.random.permutation(k_perm, batch)
    w = lam.astype(images.dtype)[:, None, None, None]
    return w * images + (1 - w) * images[perm], lam, perm
