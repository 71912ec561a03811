"""Tests for gradmix_jax.augment (SimCLR two-view augmentation on the accelerator)."""

from __future__ import annotations

import colorsys
import dataclasses
import itertools
import math

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradmix_jax import augment as aug
from gradmix_jax.augment import (
    AugmentParams,
    augment_batch,
    augment_image,
    eval_transform,
    sample_crop_box,
    two_views,
)

# Jitted entry points shared by the tests: each (params, shape) compiles once.
# XLA's CPU backend optimisation level 0 halves the compile time, which
# dominates these tests; the results are the same.
_FAST = {"xla_backend_optimization_level": 0}
_augment_batch = jax.jit(augment_batch, static_argnums=2, compiler_options=_FAST)
_two_views = jax.jit(two_views, static_argnums=2, compiler_options=_FAST)


def _images(shape, dtype, seed=0) -> np.ndarray:
    rng = np.random.RandomState(seed)
    if dtype == np.uint8:
        return rng.randint(0, 256, size=shape).astype(np.uint8)
    return rng.rand(*shape).astype(dtype)


def _identity_params(out_size, **overrides) -> AugmentParams:
    """No randomness at all: full-image crop, every probability 0, no rotation/noise."""
    fields = dict(
        out_size=out_size,
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        flip_prob=0.0,
        jitter_prob=0.0,
        grayscale_prob=0.0,
        rotation_degrees=0.0,
        noise_std=0.0,
    )
    fields.update(overrides)
    return AugmentParams(**fields)


# --------------------------------------------------------------------------- #
# Shapes, dtypes, ranges
# --------------------------------------------------------------------------- #


# Compiling the full pipeline takes seconds on a small CPU, so each case below
# is one compilation and the cases together cover C = 1 / 3, uint8 / float,
# upsampling / same size.


@pytest.mark.parametrize(
    "channels,dtype,in_size,out_size",
    [
        (3, np.uint8, (8, 8), (16, 16)),  # RGB uint8, upsampling
        (1, np.float32, (12, 12), (12, 12)),  # 1 channel float, same size
    ],
)
def test_two_views_shape_dtype_range(channels, dtype, in_size, out_size):
    images = _images((3, *in_size, channels), dtype)
    params = AugmentParams.rgb(out_size, rotation_degrees=15.0, noise_std=0.1)
    v1, v2 = _two_views(jax.random.key(0), images, params)
    for v in (v1, v2):
        assert v.shape == (3, *out_size, channels)
        assert v.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(v)))
        assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0
    assert not np.allclose(v1, v2)


def test_digits_params_on_one_channel_uint8():
    images = _images((4, 28, 28, 1), np.uint8)
    params = AugmentParams.digits((28, 28))
    assert params.flip_prob == 0.0
    assert params.saturation == params.hue == params.grayscale_prob == 0.0
    assert params.rotation_degrees > 0 and params.crop_scale[0] >= 0.5
    v1, v2 = _two_views(jax.random.key(0), images, params)
    assert v1.shape == v2.shape == (4, 28, 28, 1) and v1.dtype == jnp.float32
    assert 0.0 <= float(v1.min()) <= float(v1.max()) <= 1.0
    assert not np.allclose(v1, v2)


def test_eval_transform():
    images = _images((2, 8, 8, 3), np.uint8)
    same = eval_transform(images, (8, 8))
    assert same.dtype == jnp.float32
    np.testing.assert_allclose(same, images.astype(np.float32) / 255.0, atol=1e-7)
    up = eval_transform(images, (16, 12))
    assert up.shape == (2, 16, 12, 3) and up.dtype == jnp.float32
    assert 0.0 <= float(up.min()) <= float(up.max()) <= 1.0
    expected = jax.image.resize(images / 255.0, (2, 16, 12, 3), "bilinear")
    np.testing.assert_allclose(up, expected, atol=1e-6)
    assert eval_transform(images[0], (16, 16)).shape == (16, 16, 3)  # single image
    floats = _images((2, 8, 8, 1), np.float32)
    np.testing.assert_array_equal(eval_transform(floats, (8, 8)), floats)


# --------------------------------------------------------------------------- #
# jit / keys
# --------------------------------------------------------------------------- #


def test_jit_traces_once_and_keys_control_randomness():
    images = _images((4, 8, 8, 3), np.uint8)  # RGB uint8, same size
    params = AugmentParams.rgb((8, 8))
    traces = []

    def step(key, x):
        traces.append(1)
        return two_views(key, x, params)

    jitted = jax.jit(step, compiler_options=_FAST)
    a1, a2 = jitted(jax.random.key(1), images)
    b1, b2 = jitted(jax.random.key(2), images)
    c1, c2 = jitted(jax.random.key(1), images)
    assert len(traces) == 1
    for v in (a1, a2):
        assert v.shape == (4, 8, 8, 3) and v.dtype == jnp.float32
    # Same key -> the same views; different keys -> different views.
    np.testing.assert_array_equal(a1, c1)
    np.testing.assert_array_equal(a2, c2)
    assert not np.allclose(a1, b1)
    assert not np.allclose(a2, b2)
    # The two views of one call differ, for every image.
    per_image = np.abs(np.asarray(a1) - np.asarray(a2)).reshape(4, -1).max(axis=1)
    assert np.all(per_image > 1e-3)


def test_batch_and_views_are_vmaps_of_augment_image():
    # Cheap random params (crop + flip only) keep the compilations short.
    images = _images((3, 8, 8, 3), np.float32)
    params = AugmentParams.rgb((8, 8), jitter_prob=0.0, grayscale_prob=0.0)
    key = jax.random.key(5)
    batch = _augment_batch(key, images, params)
    single = jax.jit(augment_image, static_argnums=2, compiler_options=_FAST)
    for i, k in enumerate(jax.random.split(key, 3)):
        np.testing.assert_allclose(batch[i], single(k, images[i], params), atol=1e-5)
    # two_views(key) == (augment_batch(k1), augment_batch(k2)) with k1, k2 = split(key).
    v1, v2 = _two_views(key, images, params)
    k1, k2 = jax.random.split(key)
    np.testing.assert_allclose(v1, _augment_batch(k1, images, params), atol=1e-5)
    np.testing.assert_allclose(v2, _augment_batch(k2, images, params), atol=1e-5)


def test_params_hashable_static_arg():
    params = AugmentParams(out_size=[8, 8], crop_scale=[0.3, 1.0])  # lists from a config
    assert params.out_size == (8, 8) and params.crop_scale == (0.3, 1.0)
    assert hash(params) == hash(AugmentParams(out_size=(8, 8), crop_scale=(0.3, 1.0)))
    assert params == AugmentParams(out_size=(8, 8), crop_scale=(0.3, 1.0))


# --------------------------------------------------------------------------- #
# Exact behaviour of the individual ops
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "channels,dtype,in_size,out_size",
    [
        (1, np.uint8, (8, 8), (16, 16)),
        (3, np.float32, (8, 8), (16, 16)),
        (3, np.uint8, (12, 12), (12, 12)),
        (1, np.float32, (12, 12), (12, 12)),
    ],
)
def test_identity_params_equal_eval_transform(channels, dtype, in_size, out_size):
    images = _images((3, *in_size, channels), dtype, seed=3)
    got = _augment_batch(jax.random.key(7), images, _identity_params(out_size))
    assert got.shape == (3, *out_size, channels) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, eval_transform(images, out_size), atol=1e-5)


def test_identity_check_is_sensitive_to_the_crop():
    # The comparison above would catch a crop that is not the full image: a
    # half-area crop, or a full crop that is shifted, gives something else.
    images = _images((3, 8, 8, 3), np.float32, seed=3)
    expected = eval_transform(images, (16, 16))
    half = _identity_params((16, 16), crop_scale=(0.5, 0.5))
    assert not np.allclose(_augment_batch(jax.random.key(7), images, half), expected, atol=1e-2)
    resized_crop = jax.jit(aug._resized_crop, static_argnums=2, compiler_options=_FAST)
    top, left, h, w = (jnp.float32(v) for v in (0.0, 1.0, 8.0, 8.0))
    shifted = resized_crop(jnp.asarray(images[0]), (top, left, h, w), (16, 16))
    assert not np.allclose(shifted, expected[0], atol=1e-2)
    exact = resized_crop(jnp.asarray(images[0]), (top, top, h, w), (16, 16))
    np.testing.assert_allclose(exact, expected[0], atol=1e-5)


def test_identity_same_size_is_exact_copy():
    images = _images((2, 8, 8, 3), np.float32)
    got = _augment_batch(jax.random.key(0), images, _identity_params((8, 8)))
    np.testing.assert_allclose(got, images, atol=1e-6)


@pytest.mark.parametrize("out_size", [(8, 8), (16, 16)])
def test_flip_prob_one_mirrors(out_size):
    images = _images((2, 8, 8, 3), np.uint8, seed=4)
    got = _augment_batch(jax.random.key(3), images, _identity_params(out_size, flip_prob=1.0))
    expected = eval_transform(images, out_size)[:, :, ::-1, :]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_grayscale_prob_one_gives_equal_channels():
    images = _images((3, 8, 8, 3), np.float32, seed=5)
    got = _augment_batch(jax.random.key(0), images, _identity_params((8, 8), grayscale_prob=1.0))
    np.testing.assert_allclose(got[..., 0], got[..., 1], atol=1e-6)
    np.testing.assert_allclose(got[..., 0], got[..., 2], atol=1e-6)
    np.testing.assert_allclose(got, pix.rgb_to_grayscale(images, keep_dims=True), atol=1e-5)
    assert float(jnp.std(got[..., 0])) > 0.05  # still an image, not a constant


def test_brightness_is_multiplicative_like_torchvision():
    images = _images((16, 8, 8, 3), np.float32, seed=6) * 0.5  # no clipping at 1.4x
    params = _identity_params(
        (8, 8), jitter_prob=1.0, brightness=0.4, contrast=0.0, saturation=0.0, hue=0.0
    )
    got = np.asarray(_augment_batch(jax.random.key(2), images, params))
    ratio = got / images
    factors = ratio.reshape(16, -1)
    np.testing.assert_allclose(factors, np.broadcast_to(factors[:, :1], factors.shape), rtol=1e-4)
    assert np.all((factors >= 0.6 - 1e-5) & (factors <= 1.4 + 1e-5))
    assert factors[:, 0].std() > 0.05


def test_jitter_prob_zero_and_one_channel_ignores_colour_ops():
    images = _images((2, 8, 8, 1), np.float32)
    # saturation/hue/grayscale are statically skipped for C == 1 ...
    params = _identity_params(
        (8, 8),
        jitter_prob=1.0,
        brightness=0.0,
        contrast=0.0,
        saturation=0.9,
        hue=0.5,
        grayscale_prob=1.0,
    )
    np.testing.assert_allclose(_augment_batch(jax.random.key(0), images, params), images, atol=1e-6)
    # ... brightness/contrast still apply.
    params = dataclasses.replace(params, brightness=0.4, contrast=0.4)
    assert not np.allclose(_augment_batch(jax.random.key(0), images, params), images, atol=1e-3)


@pytest.mark.parametrize(
    "ops",
    [
        ("brightness", "contrast", "saturation", "hue"),
        ("brightness", "contrast", "saturation"),
        ("saturation", "hue"),
    ],
)
def test_random_order_jitter_matches_sequential_application(ops):
    image = _images((8, 8, 3), np.float32, seed=8)
    values = {"brightness": 1.3, "contrast": 0.7, "saturation": 1.35, "hue": 0.08}
    values = {k: v for k, v in values.items() if k in ops}
    masked = jax.jit(
        lambda order: aug._apply_color_jitter(
            jnp.asarray(image), ops, {k: jnp.float32(v) for k, v in values.items()}, order
        ),
        compiler_options=_FAST,
    )
    outs = []
    for perm in itertools.permutations(range(len(ops))):
        got = np.asarray(masked(jnp.asarray(perm)))
        expected = image.astype(np.float64)
        for i in perm:
            expected = _torchvision_jitter_op(expected, ops[i], values[ops[i]])
        np.testing.assert_allclose(got, expected, atol=1e-4)
        outs.append(got)
    # The order matters (otherwise this test would prove nothing).
    assert max(np.abs(o - outs[0]).max() for o in outs) > 1e-2


def _torchvision_jitter_op(image: np.ndarray, name: str, value: float) -> np.ndarray:
    """Independent numpy reference of torchvision's functional colour ops on [H, W, 3]."""
    gray = image @ np.array([0.2989, 0.587, 0.114])
    if name == "brightness":
        out = image * value
    elif name == "contrast":
        out = value * image + (1 - value) * gray.mean()
    elif name == "saturation":
        out = value * image + (1 - value) * gray[..., None]
    else:
        out = np.empty_like(image)
        for idx in np.ndindex(image.shape[:2]):
            h, s, v = colorsys.rgb_to_hsv(*image[idx])
            out[idx] = colorsys.hsv_to_rgb((h + value) % 1.0, s, v)
    return np.clip(out, 0.0, 1.0)


def test_rotation_and_noise_change_only_what_they_should():
    images = _images((2, 16, 16, 1), np.float32)
    base = AugmentParams.digits((16, 16), rotation_degrees=0.0, jitter_prob=0.0)
    key = jax.random.key(11)
    a = _augment_batch(key, images, base)
    rotated = _augment_batch(key, images, dataclasses.replace(base, rotation_degrees=30.0))
    noisy = _augment_batch(key, images, dataclasses.replace(base, noise_std=0.2))
    for v in (rotated, noisy):
        assert not np.allclose(v, a, atol=1e-3)
        assert 0.0 <= float(v.min()) <= float(v.max()) <= 1.0
    # The crop draw does not depend on whether noise is on: away from the
    # clipping bounds the difference is the noise itself, ~N(0, 0.2^2).
    diff = np.asarray(noisy - a)
    inside = (np.asarray(a) > 0.3) & (np.asarray(a) < 0.7) & (np.abs(diff) < 0.29)
    assert inside.sum() > 50
    assert abs(diff[inside].mean()) < 0.05 and 0.1 < diff[inside].std() < 0.2


def test_rotate_matches_dm_pix_away_from_the_border():
    image = jnp.asarray(_images((12, 12, 3), np.float32, seed=9))
    angle = jnp.float32(0.3)
    ours = jax.jit(aug._rotate, compiler_options=_FAST)
    expected = jax.jit(
        lambda im, a: pix.rotate(im, a, order=1, mode="constant", cval=0.0), compiler_options=_FAST
    )(image, angle)
    np.testing.assert_allclose(ours(image, angle)[3:-3, 3:-3], expected[3:-3, 3:-3], atol=1e-5)
    np.testing.assert_allclose(ours(image, jnp.float32(0.0)), image, atol=1e-6)


# --------------------------------------------------------------------------- #
# Random resized crop box sampler
# --------------------------------------------------------------------------- #


def _boxes(height, width, scale, ratio, n=4000, **kw):
    keys = jax.random.split(jax.random.key(42), n)
    fn = jax.jit(
        jax.vmap(lambda k: sample_crop_box(k, height, width, scale, ratio, **kw)),
        compiler_options=_FAST,
    )
    return [np.asarray(x, np.float64) for x in fn(keys)]


# (height, width, largest reachable area fraction): a 24x40 image only fits
# boxes with w / h <= 4/3 up to 32x24, i.e. 0.8 of its area.
@pytest.mark.parametrize("height,width,max_frac", [(32, 32, 1.0), (24, 40, 0.8)])
def test_crop_box_statistics_continuous(height, width, max_frac):
    scale, ratio = (0.2, 1.0), (3 / 4, 4 / 3)
    top, left, h, w = _boxes(height, width, scale, ratio, round_to_pixels=False)
    frac, aspect = h * w / (height * width), w / h
    # The central-crop fallback (no candidate fitted) may lie outside `scale`.
    fallback_h, fallback_w = height, min(width, height * ratio[1])
    sampled = ~((h == fallback_h) & (w == fallback_w))
    assert sampled.mean() > 0.9
    assert np.all(frac[sampled] >= scale[0] - 1e-5) and np.all(frac[sampled] <= scale[1] + 1e-5)
    assert np.all(aspect >= ratio[0] - 1e-5) and np.all(aspect <= ratio[1] + 1e-5)
    assert np.all(top >= 0) and np.all(left >= 0)
    assert np.all(top + h <= height + 1e-4) and np.all(left + w <= width + 1e-4)
    # The ranges are actually covered (not a degenerate sampler).
    assert frac.min() < 0.22 and frac.max() > 0.95 * max_frac
    assert aspect.min() < 0.78 and aspect.max() > 1.28
    assert np.unique(np.round(top, 3)).size > 50 and np.unique(np.round(left, 3)).size > 50


def test_crop_box_statistics_pixels():
    height = width = 32
    scale, ratio = (0.2, 1.0), (3 / 4, 4 / 3)
    top, left, h, w = _boxes(height, width, scale, ratio)
    for x in (top, left, h, w):
        np.testing.assert_array_equal(x, np.round(x))  # whole pixels like torchvision
    assert np.all(top >= 0) and np.all(left >= 0)
    assert np.all(top + h <= height) and np.all(left + w <= width) and np.all(h >= 1)
    # Rounding each side to a whole pixel moves the area by at most ~(w + h) / 2 + 1/4 px.
    area, tol = h * w, (h + w) / 2 + 0.25
    assert np.all(area >= scale[0] * height * width - tol)
    assert np.all(area <= scale[1] * height * width + tol)
    # Aspect ratio, up to the same rounding (half a pixel on each side).
    assert np.all((w + 0.5) / np.maximum(h - 0.5, 1e-9) >= ratio[0])
    assert np.all((w - 0.5) / (h + 0.5) <= ratio[1])
    assert (area / (height * width)).min() < 0.22 and (area / (height * width)).max() > 0.95


def test_crop_box_fallback_is_central_crop():
    # No candidate fits: aspect ratio >= 4 at >= 90% of the area is impossible.
    top, left, h, w = _boxes(32, 32, (0.9, 1.0), (4.0, 5.0), n=16)
    np.testing.assert_array_equal(w, 32)
    np.testing.assert_array_equal(h, 8)  # round(32 / 4)
    np.testing.assert_array_equal(top, 12)  # (32 - 8) // 2
    np.testing.assert_array_equal(left, 0)


def test_crop_box_identity_and_log_uniform_ratio():
    top, left, h, w = _boxes(16, 16, (1.0, 1.0), (1.0, 1.0), n=64)
    for x, v in ((top, 0), (left, 0), (h, 16), (w, 16)):
        np.testing.assert_array_equal(x, v)
    # Log-uniform aspect ratio: log(w / h) is symmetric around 0 for (1/2, 2).
    _, _, h, w = _boxes(64, 64, (0.05, 0.1), (0.5, 2.0), round_to_pixels=False)
    log_aspect = np.log(w / h)
    assert abs(log_aspect.mean()) < 0.05
    assert abs(np.mean(log_aspect < 0) - 0.5) < 0.05
    assert abs(log_aspect.std() - math.log(4) / math.sqrt(12)) < 0.05


# --------------------------------------------------------------------------- #
# Validation
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "field,value",
    [
        ("flip_prob", 1.5),
        ("jitter_prob", -0.1),
        ("grayscale_prob", 2.0),
        ("crop_scale", (0.0, 1.0)),
        ("crop_scale", (0.8, 0.5)),
        ("crop_scale", (0.5, 1.2)),
        ("crop_ratio", (0.0, 1.0)),
        ("crop_ratio", (2.0, 1.0)),
        ("crop_ratio", (-1.0, 1.0)),
        ("out_size", (0, 8)),
        ("out_size", (8,)),
        ("brightness", -0.1),
        ("hue", 0.6),
        ("rotation_degrees", -5.0),
        ("noise_std", -1.0),
    ],
)
def test_validation_errors_name_the_field(field, value):
    fields = {"out_size": (8, 8), field: value}
    with pytest.raises(ValueError, match=field) as info:
        AugmentParams(**fields)
    assert "\n" not in str(info.value)


def test_presets_are_valid_and_overridable():
    rgb = AugmentParams.rgb((32, 32))
    assert (rgb.brightness, rgb.contrast, rgb.saturation, rgb.hue) == (0.4, 0.4, 0.4, 0.1)
    assert (rgb.jitter_prob, rgb.grayscale_prob, rgb.flip_prob) == (0.8, 0.2, 0.5)
    assert rgb.crop_scale == (0.2, 1.0)
    digits = AugmentParams.digits((28, 28), rotation_degrees=5.0)
    assert digits.rotation_degrees == 5.0 and digits.flip_prob == 0.0
    digits.validate()
    with pytest.raises(ValueError, match="flip_prob"):
        AugmentParams.digits((28, 28), flip_prob=3.0)
