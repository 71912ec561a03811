"""SimCLR / SupCon two-view augmentation that runs on the accelerator.

Everything here is a pure function of an explicit PRNG key and the input, so it
can live inside a jitted train step: per-image randomness comes from
``jax.random.split(key, B)`` and ``jax.vmap``; all random decisions (crop box,
flip, jitter on/off, jitter order, factors, grayscale, rotation angle, noise)
are traced values, so the trace is fixed and never depends on the key. The
:class:`AugmentParams` object is static configuration (frozen and hashable):
close over it or pass it as a static argument to ``jax.jit``.

Pipeline of :func:`augment_image` (the SupContrast CIFAR recipe, in
torchvision order)::

    RandomResizedCrop(out_size, scale=crop_scale, ratio=crop_ratio)   # bilinear, antialiased
    RandomHorizontalFlip(flip_prob)
    RandomRotation(rotation_degrees)        # optional; bilinear, fill 0
    RandomApply(ColorJitter(brightness, contrast, saturation, hue), p=jitter_prob)
    RandomGrayscale(grayscale_prob)
    additive Gaussian noise(noise_std)      # optional
    clip to [0, 1]
    Normalize(mean, std)                    # optional: only when AugmentParams.mean is set

Without ``mean`` / ``std`` (the default, the paper recipe) the model sees images in [0, 1]; with
them (the authors' recipe, whose models see torchvision-``Normalize``d inputs) the views and
``eval_transform``'s images are ``(x - mean) / std`` per channel, so anything written into a view
afterwards (GradMix's noise fill) lands in that normalised space.

Colour-jitter semantics follow torchvision's ``ColorJitter`` rather than
TensorFlow's (which is what ``dm_pix.adjust_brightness/contrast/saturation``
implement), because the GradMix / SupContrast recipe was defined with
torchvision:

* brightness: ``x * f``, ``f ~ U[max(0, 1 - b), 1 + b]`` (dm-pix is additive);
* contrast: blend with the scalar mean of the grayscale image,
  ``f * x + (1 - f) * mean(gray(x))`` (dm-pix uses per-channel means);
* saturation: blend with the grayscale image, ``f * x + (1 - f) * gray(x)``
  (dm-pix scales HSV saturation);
* hue: HSV hue shift by ``d ~ U[-h, h]`` (``dm_pix.adjust_hue``, identical);
* each op is followed by a clip to [0, 1] like torchvision's ``_blend``, and the
  four ops are applied in a random order per image (``torch.randperm(4)``),
  unless ``jitter_random_order=False`` (then brightness, contrast, saturation,
  hue).

dm-pix is used for the grayscale conversion (rec601 weights, the same as
torchvision), the hue shift and the horizontal flip. The rotation uses
``jax.scipy.ndimage.map_coordinates`` (dm-pix's rotate is ~100x slower on CPU,
see :func:`_rotate`). The random
resized crop is hand-written (:func:`sample_crop_box` +
``jax.image.scale_and_translate``): the box is traced, the output shape static.

Randomness: each image's key gives ONE ``jax.random.uniform`` vector that is
sliced at fixed positions for every decision (plus the noise values when noise
is on). Every separate threefry call costs XLA compile time, and the fixed
layout means toggling one op does not change the draws of the others.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable

import dm_pix as pix
import jax
import jax.numpy as jnp
import jax.scipy.ndimage
import jax.scipy.special
import numpy as np

from gradmix_jax import _checks

Array = jax.Array
PRNGKey = jax.Array

__all__ = [
    "AugmentParams",
    "augment_batch",
    "augment_image",
    "eval_transform",
    "normalize",
    "sample_crop_box",
    "to_float",
    "two_views",
]

# Number of candidate boxes drawn by the random-resized-crop sampler
# (torchvision tries 10 times before falling back to a central crop).
_CROP_TRIES = 10


def _pair(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else value


#: Named view augmentations: the ``AugmentParams`` class methods of the same names.
PRESETS: tuple[str, ...] = ("rgb", "digits")


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """Static configuration of the two-view augmentation (hashable, jit-static).

    Attributes:
      out_size: (out_H, out_W) of the augmented views.
      crop_scale: (lo, hi) range of the crop area as a fraction of the image
        area, 0 < lo <= hi <= 1.
      crop_ratio: (lo, hi) range of the crop aspect ratio width / height,
        sampled log-uniformly, 0 < lo <= hi.
      flip_prob: probability of a horizontal flip.
      jitter_prob: probability of applying colour jitter (all four ops together).
      brightness: brightness factor drawn from [max(0, 1 - b), 1 + b].
      contrast: contrast factor drawn from [max(0, 1 - c), 1 + c].
      saturation: saturation factor drawn from [max(0, 1 - s), 1 + s]
        (ignored for 1-channel images).
      hue: hue shift drawn from [-h, h], 0 <= h <= 0.5 (ignored for 1 channel).
      grayscale_prob: probability of converting to grayscale (3 equal channels;
        ignored for 1-channel images).
      rotation_degrees: maximum absolute random rotation in degrees, angle ~
        U[-d, d]; 0 disables it. Corners are filled with 0.
      noise_std: standard deviation of additive Gaussian noise (on the [0, 1]
        scale); 0 disables it.
      jitter_random_order: apply the colour-jitter ops in a random order per
        image (torchvision behaviour); False uses the fixed order brightness,
        contrast, saturation, hue.
      mean, std: per-channel input normalisation ``(x - mean) / std`` applied last
        (tuples of one value or one per channel, std > 0), or None for none.
    """

    out_size: tuple[int, int]
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip_prob: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_prob: float = 0.2
    rotation_degrees: float = 0.0
    noise_std: float = 0.0
    jitter_random_order: bool = True
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        # Lists (e.g. from a config file) become tuples so the object stays hashable,
        # and numpy scalars become Python numbers.
        for name in ("out_size", "crop_scale", "crop_ratio", "mean", "std"):
            object.__setattr__(self, name, _pair(getattr(self, name)))
        if isinstance(self.out_size, tuple) and all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in self.out_size
        ):
            object.__setattr__(self, "out_size", tuple(int(s) for s in self.out_size))
        self.validate()

    @classmethod
    def rgb(cls, out_size: tuple[int, int], **overrides: Any) -> "AugmentParams":
        """SupContrast / SimCLR CIFAR recipe for RGB images.

        RandomResizedCrop(scale=(0.2, 1)), horizontal flip p=0.5,
        ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8 (random op order),
        RandomGrayscale p=0.2. No rotation, no noise. Keyword overrides replace
        any field.
        """
        return cls(out_size=tuple(out_size), **overrides)

    @classmethod
    def digits(cls, out_size: tuple[int, int], **overrides: Any) -> "AugmentParams":
        """Recipe for 1-channel handwritten digits (MNIST-like).

        * no horizontal flip: mirroring changes digit identity/shape (2, 3, 7, ...);
        * crop_scale=(0.5, 1.0): digits fill the centre of the frame, smaller
          crops would regularly cut off strokes that define the class;
        * crop_ratio=(0.8, 1.25): milder than (3/4, 4/3) so strokes are not
          stretched into other shapes (e.g. a 0 into a 1-like bar);
        * rotation_degrees=10: a small, label-preserving rotation (larger angles
          start to confuse 6/9 and 1/7); fill value 0 matches the black background;
        * brightness=0.4, contrast=0.4 with jitter_prob=0.8: the only colour ops
          that make sense for one channel;
        * saturation=hue=grayscale_prob=0: meaningless for 1 channel;
        * noise_std=0: off by default (override to e.g. 0.05 if wanted).
        """
        fields = dict(
            out_size=tuple(out_size),
            crop_scale=(0.5, 1.0),
            crop_ratio=(0.8, 1.25),
            flip_prob=0.0,
            jitter_prob=0.8,
            brightness=0.4,
            contrast=0.4,
            saturation=0.0,
            hue=0.0,
            grayscale_prob=0.0,
            rotation_degrees=10.0,
            noise_std=0.0,
        )
        fields.update(overrides)
        return cls(**fields)

    def validate(self) -> None:
        """Raises ValueError (one line naming the field) if a field is invalid."""

        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(
                f"AugmentParams.{name}={getattr(self, name)!r} is invalid: expected {allowed}"
            )

        size = self.out_size
        if not (
            isinstance(size, tuple)
            and len(size) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
        ):
            raise bad("out_size", "a pair of positive ints (out_H, out_W)")
        for name in ("flip_prob", "jitter_prob", "grayscale_prob"):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Real) and 0.0 <= value <= 1.0):
                raise bad(name, "a probability in [0, 1]")
        scale = self.crop_scale
        if not (
            isinstance(scale, tuple)
            and len(scale) == 2
            and all(isinstance(v, numbers.Real) for v in scale)
            and 0.0 < scale[0] <= scale[1] <= 1.0
        ):
            raise bad("crop_scale", "a pair (lo, hi) with 0 < lo <= hi <= 1")
        ratio = self.crop_ratio
        if not (
            isinstance(ratio, tuple)
            and len(ratio) == 2
            and all(isinstance(v, numbers.Real) and math.isfinite(v) for v in ratio)
            and 0.0 < ratio[0] <= ratio[1]
        ):
            raise bad("crop_ratio", "a pair (lo, hi) of positive aspect ratios with lo <= hi")
        for name in ("brightness", "contrast", "saturation", "noise_std"):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Real) and math.isfinite(value) and value >= 0.0):
                raise bad(name, "a finite number >= 0 (0 = off)")
        if not (isinstance(self.hue, numbers.Real) and 0.0 <= self.hue <= 0.5):
            raise bad("hue", "a number in [0, 0.5]")
        if not (
            isinstance(self.rotation_degrees, numbers.Real)
            and 0.0 <= self.rotation_degrees <= 180.0
        ):
            raise bad("rotation_degrees", "a number of degrees in [0, 180] (0 = off)")
        if not isinstance(self.jitter_random_order, bool):
            raise bad("jitter_random_order", "a bool")
        if (self.mean is None) != (self.std is None):
            raise bad(
                "mean" if self.mean is None else "std", "set together with the other (or both None)"
            )
        if self.mean is not None:
            for name in ("mean", "std"):
                value = getattr(self, name)
                if not (
                    isinstance(value, tuple)
                    and len(value) in (1, 3)
                    and all(isinstance(v, numbers.Real) and math.isfinite(v) for v in value)
                ):
                    raise bad(name, "a tuple of 1 or 3 finite numbers (one per channel)")
            if len(self.mean) != len(self.std) or not all(v > 0 for v in self.std):
                raise bad("std", f"{len(self.mean)} numbers > 0, like mean")


# --------------------------------------------------------------------------- #
# Utilities
# --------------------------------------------------------------------------- #


def normalize(
    images: Array, mean: tuple[float, ...] | None, std: tuple[float, ...] | None
) -> Array:
    """``(images - mean) / std`` over the last (channel) axis; unchanged when ``mean`` is None.

    Args:
      images: float [..., C].
      mean, std: tuples of 1 or C numbers, or None.
    Returns:
      float32, the shape of ``images``.
    """
    if mean is None:
        return images
    channels = images.shape[-1]
    if len(mean) not in (1, channels):
        raise ValueError(
            f"mean and std must hold 1 or {channels} values (one per channel of the images), "
            f"got {len(mean)}"
        )
    mean_ = jnp.asarray(mean, jnp.float32)
    std_ = jnp.asarray(std, jnp.float32)
    return ((images - mean_) / std_).astype(jnp.float32)


def to_float(images: Array) -> Array:
    """uint8 in [0, 255] -> float32 in [0, 1]; float input is cast to float32.

    Args:
      images: any shape, dtype uint8 or floating (assumed already in [0, 1]).
    Returns:
      float32 array of the same shape.
    """
    images = jnp.asarray(images)
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    if jnp.issubdtype(images.dtype, jnp.floating):
        return images.astype(jnp.float32)
    raise TypeError(f"images must be uint8 or floating, got dtype {images.dtype}")


_CROP_UNIFORMS = 2 * _CROP_TRIES + 2  # areas, log-ratios, top, left


def sample_crop_box(
    key: PRNGKey,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    *,
    round_to_pixels: bool = True,
) -> tuple[Array, Array, Array, Array]:
    """Samples a RandomResizedCrop box like torchvision, vectorised.

    torchvision tries up to 10 times to draw ``area ~ U(scale) * H * W`` and a
    log-uniform aspect ratio (w / h) in ``ratio``, keeps the first box that fits
    in the image and places it uniformly at random; if none fits it falls back
    to a central crop with the aspect ratio clamped into ``ratio``. Here the 10
    candidates are drawn at once and the first valid one is selected, so there
    is no data-dependent control flow.

    Args:
      key: one PRNG key (``jax.random.key(seed)`` or a raw ``uint32[2]``).
      height, width: static input image size.
      scale: (lo, hi) area fraction range.
      ratio: (lo, hi) aspect ratio range.
      round_to_pixels: round the box size and offset to whole pixels like
        torchvision (default). If False the box is continuous (sub-pixel).
    Returns:
      (top, left, crop_h, crop_w): float32 scalars in input pixel units; the box
      covers rows [top, top + crop_h) and columns [left, left + crop_w).
    """
    _checks.check_key("key", key)
    u = jax.random.uniform(key, (_CROP_UNIFORMS,))
    return _crop_box_from_uniforms(u, height, width, scale, ratio, round_to_pixels)


def _crop_box_from_uniforms(
    u: Array,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    round_to_pixels: bool = True,
) -> tuple[Array, Array, Array, Array]:
    """sample_crop_box driven by ``u``: [_CROP_UNIFORMS] uniforms in [0, 1)."""
    tries = _CROP_TRIES
    area = float(height * width)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u[:tries])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = jnp.exp(log_lo + (log_hi - log_lo) * u[tries : 2 * tries])
    cand_w = jnp.sqrt(target_area * aspect)
    cand_h = jnp.sqrt(target_area / aspect)
    if round_to_pixels:
        cand_w = jnp.round(cand_w)
        cand_h = jnp.round(cand_h)
    valid = (cand_w > 0) & (cand_w <= width) & (cand_h > 0) & (cand_h <= height)
    first = jnp.argmax(valid)  # index of the first valid candidate (0 if none)

    # Central-crop fallback (static: depends only on the shapes and `ratio`).
    in_ratio = width / height
    if in_ratio < min(ratio):
        fb_w = float(width)
        fb_h = fb_w / min(ratio)
    elif in_ratio > max(ratio):
        fb_h = float(height)
        fb_w = fb_h * max(ratio)
    else:
        fb_w, fb_h = float(width), float(height)
    if round_to_pixels:
        fb_w, fb_h = float(round(fb_w)), float(round(fb_h))
        fb_top, fb_left = float((height - int(fb_h)) // 2), float((width - int(fb_w)) // 2)
    else:
        fb_top, fb_left = (height - fb_h) / 2.0, (width - fb_w) / 2.0

    found = jnp.any(valid)
    crop_h = jnp.where(found, cand_h[first], fb_h)
    crop_w = jnp.where(found, cand_w[first], fb_w)
    u_top, u_left = u[2 * tries], u[2 * tries + 1]
    if round_to_pixels:
        # torch.randint(0, H - h + 1): uniform integer in [0, H - h].
        top = jnp.minimum(jnp.floor(u_top * (height - crop_h + 1.0)), height - crop_h)
        left = jnp.minimum(jnp.floor(u_left * (width - crop_w + 1.0)), width - crop_w)
    else:
        top = u_top * (height - crop_h)
        left = u_left * (width - crop_w)
    top = jnp.where(found, top, fb_top)
    left = jnp.where(found, left, fb_left)
    f32 = jnp.float32
    return top.astype(f32), left.astype(f32), crop_h.astype(f32), crop_w.astype(f32)


def _resized_crop(
    image: Array,
    box: tuple[Array, Array, Array, Array],
    out_size: tuple[int, int],
) -> Array:
    """Maps the box of a [H, W, C] image onto [out_H, out_W, C] (linear, antialiased)."""
    top, left, crop_h, crop_w = box
    out_h, out_w = out_size
    scale = jnp.stack([out_h / crop_h, out_w / crop_w])
    translation = -jnp.stack([top, left]) * scale
    return jax.image.scale_and_translate(
        image,
        (out_h, out_w, image.shape[-1]),
        spatial_dims=(0, 1),
        scale=scale,
        translation=translation,
        method="linear",
        antialias=True,
    )


def _rotate(image: Array, angle: Array) -> Array:
    """Rotates [H, W, C] about its centre by ``angle`` radians, bilinear, fill 0.

    Same sampling grid as ``dm_pix.rotate(image, angle, order=1, mode="constant")``
    (identical away from the border), but a 2-D ``map_coordinates`` per channel:
    dm-pix interpolates in 3-D (channel axis included) and its gathers made the
    digits pipeline ~100x slower on CPU. Outside the image the fill 0 is blended
    bilinearly (soft edges, like torchvision's rotate), not cut off hard.
    """
    height, width, channels = image.shape
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    yy, xx = jnp.meshgrid(
        jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij"
    )
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    src_y = cos * (yy - cy) + sin * (xx - cx) + cy
    src_x = -sin * (yy - cy) + cos * (xx - cx) + cx
    planes = [
        jax.scipy.ndimage.map_coordinates(
            image[..., c], [src_y, src_x], order=1, mode="constant", cval=0.0
        )
        for c in range(channels)
    ]
    return jnp.stack(planes, axis=-1)


# The colour ops work on a tuple of channel planes ([H, W] each: (r, g, b) or (y,)),
# as dm-pix's colour conversions do internally. Mixing the channels of one
# [H, W, 3] array through slices lets XLA's fused kernels recompute the producer
# chain once per channel at every channel-mixing op; on planes each value is
# computed once. Together with the scan in _apply_color_jitter this took the
# random-order jitter of 512 32x32 RGB images from ~450 ms to ~30 ms (2-core CPU).
Planes = tuple[Array, ...]

# rec601 luma, the weights of dm_pix.rgb_to_grayscale and torchvision.
_LUMA = (0.2989, 0.5870, 0.1140)


def _gray_plane(planes: Planes) -> Array:
    """Luma plane [H, W] of (r, g, b) planes; the single plane of (y,)."""
    if len(planes) == 1:
        return planes[0]
    r, g, b = planes
    return _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b


def _blend(planes: Planes, other: Array, factor: Array) -> Planes:
    """torchvision ``_blend``: clip(factor * x + (1 - factor) * other) per plane."""
    return tuple(jnp.clip(factor * p + (1.0 - factor) * other, 0.0, 1.0) for p in planes)


def _brightness(planes: Planes, factor: Array) -> Planes:
    return _blend(planes, jnp.zeros((), planes[0].dtype), factor)


def _contrast(planes: Planes, factor: Array) -> Planes:
    return _blend(planes, jnp.mean(_gray_plane(planes)), factor)


def _saturation(planes: Planes, factor: Array) -> Planes:
    return _blend(planes, _gray_plane(planes), factor)


def _hue(planes: Planes, delta: Array) -> Planes:
    """HSV hue rotation by ``delta`` (dm_pix.adjust_hue; it works on planes inside)."""
    rgb = jnp.clip(pix.adjust_hue(jnp.stack(planes, axis=-1), delta), 0.0, 1.0)
    return tuple(rgb[..., c] for c in range(3))


_JITTER_OPS = ("brightness", "contrast", "saturation", "hue")  # torchvision's fixed order
_OPS = {"brightness": _brightness, "contrast": _contrast, "saturation": _saturation, "hue": _hue}


def _jitter_ops(params: AugmentParams, channels: int) -> tuple[str, ...]:
    """Enabled jitter ops, in the fixed order (static).

    Ops with zero strength, and saturation/hue for 1-channel images, are removed.
    """
    colour_only = ("saturation", "hue")
    return tuple(
        name
        for name in _JITTER_OPS
        if getattr(params, name) > 0 and (channels == 3 or name not in colour_only)
    )


def _apply_color_jitter(
    image: Array, ops: tuple[str, ...], values: dict[str, Array], order: Array | None
) -> Array:
    """Applies the jitter ops ``ops[order[0]], ops[order[1]], ...`` to [H, W, C].

    Args:
      image: [H, W, C] float in [0, 1].
      ops: static names of the enabled ops (see _jitter_ops).
      values: op name -> scalar factor (hue: shift).
      order: [len(ops)] int permutation (traced), or None for the listed order.
    Returns:
      [H, W, C] float in [0, 1].

    A traced order is not a ``lax.switch`` (under vmap that evaluates every op
    in every slot, 16 ops incl. 4 hue conversions). Instead: brightness,
    contrast and saturation with factor 1 are exact identities, so in slot i
    every such op runs with its factor if it is the op of slot i, else with
    factor 1. Hue (not an exact identity at 0, and the expensive op) runs
    exactly once, between the masked slots before it and after it. The slots
    run in a ``lax.scan`` so each slot's result is materialised (an unrolled
    chain gets re-fused into every contrast-mean reduction, ~10x slower on CPU).
    """
    planes: Planes = tuple(image[..., c] for c in range(image.shape[-1]))
    if order is None:
        for name in ops:
            planes = _OPS[name](planes, values[name])
        return jnp.stack(planes, axis=-1)

    n = len(ops)
    cheap = [(k, name) for k, name in enumerate(ops) if name != "hue"]
    hue_pos = jnp.argmax(order == ops.index("hue")) if "hue" in ops else n

    def run_slots(x: Planes, slots: range, active: Callable[[Array], Array]) -> Planes:
        def slot(carry: Planes, i: Array) -> tuple[Planes, None]:
            for k, name in cheap:
                f = jnp.where((order[i] == k) & active(i), values[name], 1.0)
                carry = _OPS[name](carry, f)
            return carry, None

        return jax.lax.scan(slot, x, jnp.arange(slots.start, slots.stop))[0]

    if "hue" not in ops:
        planes = run_slots(planes, range(0, n), lambda i: jnp.bool_(True))
    else:
        planes = run_slots(planes, range(0, n - 1), lambda i: i < hue_pos)  # before hue
        planes = _hue(planes, values["hue"])
        planes = run_slots(planes, range(1, n), lambda i: i > hue_pos)  # after hue
    return jnp.stack(planes, axis=-1)


def _color_jitter(u: Array, image: Array, params: AugmentParams) -> Array:
    """torchvision ColorJitter on one [H, W, C] image in [0, 1] (always applied).

    Args:
      u: [8] uniforms in [0, 1): 4 op values (brightness, contrast, saturation,
        hue) and 4 sort keys for the random order.
      image: [H, W, C] float in [0, 1].
      params: static AugmentParams.
    """
    ops = _jitter_ops(params, image.shape[-1])
    if not ops:
        return image
    values = {}
    for i, name in enumerate(_JITTER_OPS):
        if name not in ops:
            continue
        strength = getattr(params, name)
        lo, hi = (
            (-strength, strength) if name == "hue" else (max(0.0, 1.0 - strength), 1.0 + strength)
        )
        values[name] = lo + (hi - lo) * u[i]
    order = None
    if params.jitter_random_order and len(ops) > 1:
        # argsort of i.i.d. uniforms is a uniformly random permutation.
        order = jnp.argsort(u[len(_JITTER_OPS) : len(_JITTER_OPS) + len(ops)])
    return _apply_color_jitter(image, ops, values, order)


# Layout of the per-image uniform vector drawn in augment_image.
_U_CROP = 0
_U_FLIP = _U_CROP + _CROP_UNIFORMS
_U_ROTATE = _U_FLIP + 1
_U_JITTER_ON = _U_ROTATE + 1
_U_JITTER = _U_JITTER_ON + 1  # 4 op values + 4 order keys
_U_GRAY = _U_JITTER + 8
_NUM_UNIFORMS = _U_GRAY + 1
_MINUS_ONE_OPEN = float(np.nextafter(np.float32(-1.0), np.float32(0.0)))


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #


def augment_image(key: PRNGKey, image: Array, params: AugmentParams) -> Array:
    """One random SimCLR view of one image.

    Args:
      key: one PRNG key per image (``jax.random.key(seed)``, shape ``()``, or a raw
        ``uint32[2]``); under ``jax.vmap`` one per example.
      image: [H, W, C] with C in {1, 3}, uint8 in [0, 255] or float in [0, 1].
      params: static AugmentParams.
    Returns:
      float32 [out_H, out_W, C] in [0, 1].
    """
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"image must be [H, W, C] with C in (1, 3), got shape {image.shape}")
    _checks.check_key("key", key)
    height, width, channels = image.shape
    image = to_float(image)
    # All per-image randomness is ONE uniform draw sliced at fixed positions
    # (each threefry call adds XLA compile time); the fixed layout keeps e.g.
    # the crop unchanged when jitter or rotation is toggled. With noise on, the
    # noise uniforms are appended (with JAX's default partitionable threefry the
    # first _NUM_UNIFORMS values do not change).
    out_h, out_w = params.out_size
    num_noise = out_h * out_w * channels if params.noise_std > 0 else 0
    u = jax.random.uniform(key, (_NUM_UNIFORMS + num_noise,))

    box = _crop_box_from_uniforms(
        u[_U_CROP : _U_CROP + _CROP_UNIFORMS], height, width, params.crop_scale, params.crop_ratio
    )
    image = _resized_crop(image, box, params.out_size)

    if params.flip_prob > 0:
        image = jnp.where(u[_U_FLIP] < params.flip_prob, pix.flip_left_right(image), image)

    if params.rotation_degrees > 0:
        max_rad = math.radians(params.rotation_degrees)
        angle = max_rad * (2.0 * u[_U_ROTATE] - 1.0)
        image = _rotate(image, angle)

    image = jnp.clip(image, 0.0, 1.0)
    if params.jitter_prob > 0:
        jittered = _color_jitter(u[_U_JITTER : _U_JITTER + 8], image, params)
        image = jnp.where(u[_U_JITTER_ON] < params.jitter_prob, jittered, image)

    if channels == 3 and params.grayscale_prob > 0:
        gray = pix.rgb_to_grayscale(image, keep_dims=True)
        image = jnp.where(u[_U_GRAY] < params.grayscale_prob, gray, image)

    if params.noise_std > 0:
        # Standard normal by inverse CDF, as jax.random.normal does (open interval).
        z = jnp.maximum(2.0 * u[_NUM_UNIFORMS:] - 1.0, _MINUS_ONE_OPEN)
        noise = math.sqrt(2.0) * jax.scipy.special.erfinv(z)
        image = image + params.noise_std * noise.reshape(image.shape)

    return normalize(jnp.clip(image, 0.0, 1.0).astype(jnp.float32), params.mean, params.std)


def augment_batch(key: PRNGKey, images: Array, params: AugmentParams) -> Array:
    """Independent random views of a batch (vmap of augment_image over split keys).

    Args:
      key: one PRNG key for the whole batch (``jax.random.key(seed)`` or a raw ``uint32[2]``).
      images: [B, H, W, C], uint8 or float in [0, 1], C in {1, 3}.
      params: static AugmentParams.
    Returns:
      float32 [B, out_H, out_W, C] in [0, 1] (normalised when ``params.mean`` is set).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
    _checks.check_key("key", key)
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(augment_image, in_axes=(0, 0, None))(keys, images, params)


def two_views(key: PRNGKey, images: Array, params: AugmentParams) -> tuple[Array, Array]:
    """Two independent augmentations of every image (SimCLR / SupCon positives).

    Args:
      key: one PRNG key (``jax.random.key(seed)`` or a raw ``uint32[2]``).
      images: [B, H, W, C], uint8 or float in [0, 1], C in {1, 3}.
      params: static AugmentParams.
    Returns:
      (view1, view2), each float32 [B, out_H, out_W, C] in [0, 1] (normalised when
      ``params.mean`` is set).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
    _checks.check_key("key", key)
    # view_v == augment_batch(split(key)[v], images, params), but traced as one
    # nested vmap (half the program size, so half the compile time of two calls).
    view_keys = jax.random.split(key)
    keys = jax.vmap(lambda k: jax.random.split(k, images.shape[0]))(view_keys)  # [2, B]
    per_view = jax.vmap(augment_image, in_axes=(0, 0, None))
    views = jax.vmap(per_view, in_axes=(0, None, None))(keys, images, params)
    return views[0], views[1]


def eval_transform(
    images: Array,
    out_size: tuple[int, int],
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> Array:
    """Deterministic evaluation transform: scale to [0, 1], bilinear resize, then ``normalize``.

    Args:
      images: [B, H, W, C] (or a single [H, W, C]), uint8 or float in [0, 1].
      out_size: (out_H, out_W).
      mean, std: the views' input normalisation (``AugmentParams.mean`` / ``std``) or None.
    Returns:
      float32 [B, out_H, out_W, C] (or [out_H, out_W, C]) in [0, 1] (normalised with ``mean``).
    """
    images = to_float(images)
    if images.ndim not in (3, 4):
        raise ValueError(f"images must be [B, H, W, C] or [H, W, C], got shape {images.shape}")
    out_h, out_w = out_size
    if images.shape[-3:-1] != (out_h, out_w):
        shape = (*images.shape[:-3], out_h, out_w, images.shape[-1])
        images = jax.image.resize(images, shape, method="bilinear", antialias=True)
    return normalize(jnp.clip(images, 0.0, 1.0), mean, std)
