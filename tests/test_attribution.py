"""Tests for gradmix_jax.attribution against hand-computed values and plain NumPy formulas."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradmix_jax import attribution as A

EPS = 1e-8  # the documented min-max denominator epsilon


# ----------------------------------------------------------------------------- NumPy references


def np_layercam(act: np.ndarray, grad: np.ndarray) -> np.ndarray:
    return np.maximum((np.maximum(grad, 0) * act).sum(-1), 0)


def np_gradcam(act: np.ndarray, grad: np.ndarray) -> np.ndarray:
    alpha = grad.mean(axis=(1, 2), keepdims=True)
    return np.maximum((alpha * act).sum(-1), 0)


def np_bilinear_axis(x: np.ndarray, out: int, axis: int) -> np.ndarray:
    """torch F.interpolate(bilinear, align_corners=False) along one axis, no antialias."""
    n = x.shape[axis]
    src = (np.arange(out) + 0.5) * n / out - 0.5
    src = np.maximum(src, 0.0)  # torch clamps negative source coordinates
    i0 = np.minimum(np.floor(src).astype(int), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    frac = (src - i0).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    return np.take(x, i0, axis) * (1 - frac) + np.take(x, i1, axis) * frac


def np_resize_bhw(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np_bilinear_axis(np_bilinear_axis(m.astype(np.float64), size[0], 1), size[1], 2)


def np_aggregate(maps, size, normalize):
    total = 0.0
    for m in maps:
        up = np_resize_bhw(np.asarray(m), size)
        if normalize == "image":
            lo = up.min(axis=(1, 2), keepdims=True)
            hi = up.max(axis=(1, 2), keepdims=True)
            up = (up - lo) / (hi - lo + EPS)
        elif normalize == "batch":
            up = (up - up.min()) / (up.max() - up.min() + EPS)
        total = total + up
    return total


def jit_aggregate(size, normalize):
    return jax.jit(functools.partial(A.aggregate_maps, size=size, normalize=normalize))


# ----------------------------------------------------------------------------- CAMs


def test_layercam_hand_made():
    # One image, 1x2 spatial, 2 channels.
    act = np.array([[[[1.0, 2.0], [3.0, -1.0]]]])  # [1, 1, 2, 2]
    grad = np.array([[[[0.5, -4.0], [-1.0, 2.0]]]])
    # pixel 0: relu(0.5)*1 + relu(-4)*2 = 0.5            -> 0.5
    # pixel 1: relu(-1)*3 + relu(2)*(-1) = -2 -> ReLU     -> 0.0
    expected = np.array([[[0.5, 0.0]]])
    got = jax.jit(A.layercam)(jnp.asarray(act), jnp.asarray(grad))
    assert got.shape == (1, 1, 2)
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-7)


def test_gradcam_hand_made():
    act = np.array([[[[1.0, 2.0], [3.0, -1.0]]]])  # [1, 1, 2, 2]
    grad = np.array([[[[1.0, -4.0], [3.0, 2.0]]]])
    # alpha = spatial mean of grad = [2.0, -1.0]
    # pixel 0: 2*1 - 1*2 = 0 ; pixel 1: 2*3 - 1*(-1) = 7
    expected = np.array([[[0.0, 7.0]]])
    got = jax.jit(A.gradcam)(jnp.asarray(act), jnp.asarray(grad))
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-6)
    # A negative weighted sum is clipped to zero.
    got_neg = jax.jit(A.gradcam)(jnp.asarray(act), jnp.asarray(-grad))
    np.testing.assert_allclose(np.asarray(got_neg), np.array([[[0.0, 0.0]]]), atol=1e-6)


@pytest.mark.parametrize("fn,ref", [(A.layercam, np_layercam), (A.gradcam, np_gradcam)])
def test_cams_random_vs_numpy(fn, ref):
    rng = np.random.default_rng(0)
    act = rng.normal(size=(3, 5, 4, 6)).astype(np.float32)
    grad = rng.normal(size=(3, 5, 4, 6)).astype(np.float32)
    got = np.asarray(jax.jit(fn)(act, grad))
    want = ref(act.astype(np.float64), grad.astype(np.float64))
    assert got.shape == (3, 5, 4)
    assert (got >= 0).all()
    assert (want > 0).any() and (want == 0).any()  # both branches of the outer ReLU exercised
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_layercam_differs_from_gradcam():
    # Same inputs, different weighting rules -> different maps (guards against aliasing one to the other).
    rng = np.random.default_rng(1)
    act = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
    grad = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
    assert not np.allclose(np.asarray(A.layercam(act, grad)), np.asarray(A.gradcam(act, grad)))


# ----------------------------------------------------------------------------- aggregation


def test_resize_matches_torch_bilinear_golden():
    # torch.nn.functional.interpolate([[0,1],[2,3]], size=(4,4), mode='bilinear', align_corners=False)
    m = jnp.array([[[0.0, 1.0], [2.0, 3.0]]])
    expected = np.array(
        [
            [0.0, 0.25, 0.75, 1.0],
            [0.5, 0.75, 1.25, 1.5],
            [1.5, 1.75, 2.25, 2.5],
            [2.0, 2.25, 2.75, 3.0],
        ]
    )[None]
    got = jit_aggregate((4, 4), "none")([m])
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-6)


@pytest.mark.parametrize("normalize", ["image", "batch", "none"])
def test_aggregate_two_layers_vs_numpy(normalize):
    rng = np.random.default_rng(2)
    m1 = rng.uniform(0, 3, size=(3, 4, 4)).astype(np.float32)
    m2 = rng.uniform(0, 1, size=(3, 8, 6)).astype(np.float32)  # different h, w
    size = (16, 12)
    got = jit_aggregate(size, normalize)([jnp.asarray(m1), jnp.asarray(m2)])
    assert got.shape == (3, 16, 12) and got.dtype == jnp.float32
    want = np_aggregate([m1, m2], size, normalize)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_aggregate_normalisation_and_sum_independent_of_resize():
    # Normalise/sum checked against jax.image.resize output so only that part is under test.
    rng = np.random.default_rng(3)
    m1 = rng.uniform(0, 5, size=(2, 3, 3)).astype(np.float32)
    m2 = rng.uniform(-1, 1, size=(2, 5, 5)).astype(np.float32)
    up1 = np.asarray(jax.image.resize(m1, (2, 10, 10), "bilinear"), np.float64)
    up2 = np.asarray(jax.image.resize(m2, (2, 10, 10), "bilinear"), np.float64)

    def norm_img(u):
        lo, hi = u.min(axis=(1, 2), keepdims=True), u.max(axis=(1, 2), keepdims=True)
        return (u - lo) / (hi - lo + EPS)

    got = jit_aggregate((10, 10), "image")([m1, m2])
    np.testing.assert_allclose(np.asarray(got), norm_img(up1) + norm_img(up2), atol=1e-5)
    # Each normalised layer spans [0, 1], so the per-image sum spans at most [0, 2].
    g = np.asarray(got)
    assert g.min() >= -1e-6 and g.max() <= 2 + 1e-6


def test_batch_vs_image_normalisation():
    # Image 0 spans [0, 1], image 1 spans [0, 10] (same layer).
    m = np.zeros((2, 2, 2), np.float32)
    m[0, 0, 0], m[1, 0, 0] = 1.0, 10.0
    per_image = np.asarray(jit_aggregate((2, 2), "image")([m]))
    per_batch = np.asarray(jit_aggregate((2, 2), "batch")([m]))
    # 'image': each image's own max -> ~1.
    np.testing.assert_allclose(per_image.max(axis=(1, 2)), [1.0, 1.0], atol=1e-6)
    # 'batch': one scale for the batch -> image 0 peaks at 1/10.
    np.testing.assert_allclose(per_batch.max(axis=(1, 2)), [0.1, 1.0], atol=1e-6)
    np.testing.assert_allclose(per_batch, m / 10.0, atol=1e-6)


def test_constant_map_normalises_to_zero():
    const = jnp.full((2, 3, 3), 7.0)
    for normalize in ("image", "batch"):
        got = np.asarray(jit_aggregate((6, 6), normalize)([const]))
        assert np.isfinite(got).all()
        np.testing.assert_array_equal(got, np.zeros((2, 6, 6)))
    # 'none' leaves the values alone.
    np.testing.assert_allclose(np.asarray(jit_aggregate((6, 6), "none")([const])), 7.0)
    # A constant layer adds nothing to a varying one.
    rng = np.random.default_rng(4)
    vary = rng.uniform(size=(2, 3, 3)).astype(np.float32)
    both = np.asarray(jit_aggregate((6, 6), "image")([vary, const]))
    alone = np.asarray(jit_aggregate((6, 6), "image")([vary]))
    np.testing.assert_allclose(both, alone, atol=1e-7)
    # Per-image: only image 1 is constant.
    mixed = np.stack([vary[0], np.full((3, 3), 2.0, np.float32)])
    got = np.asarray(jit_aggregate((3, 3), "image")([mixed]))
    np.testing.assert_array_equal(got[1], 0.0)
    assert got[0].max() > 0.99


def test_aggregate_output_is_float32_for_other_dtypes():
    m = jnp.arange(8, dtype=jnp.float16).reshape(2, 2, 2)
    assert A.aggregate_maps([m], (4, 4)).dtype == jnp.float32


@pytest.mark.parametrize("bad", ["per_image", "Image", None, "max"])
def test_bad_normalize_raises_one_line(bad):
    with pytest.raises(ValueError) as info:
        A.aggregate_maps([jnp.zeros((1, 2, 2))], (4, 4), normalize=bad)
    msg = str(info.value)
    assert "normalize" in msg and "'image'" in msg and "'batch'" in msg and "'none'" in msg
    assert "\n" not in msg


def test_empty_maps_raise():
    with pytest.raises(ValueError, match="maps"):
        A.aggregate_maps([], (4, 4))


def test_layercam_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"same shape .* got \(2, 4, 4, 8\) and \(2, 4, 4, 7\)"):
        A.layercam(jnp.zeros((2, 4, 4, 8)), jnp.zeros((2, 4, 4, 7)))


# ----------------------------------------------------------------------------- tap_maps


def _taps(seed=20):
    rng = np.random.default_rng(seed)
    shapes = {"layer2": (3, 8, 6, 5), "layer3": (3, 4, 3, 7), "layer4": (3, 2, 2, 4)}
    acts = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    grads = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    return acts, grads


@pytest.mark.parametrize("normalize", ["image", "batch", "none"])
@pytest.mark.parametrize("cam", ["layercam", "gradcam"])
def test_tap_maps_equals_numpy_pipeline(cam, normalize):
    acts, grads = _taps()
    size = (16, 12)
    f = jax.jit(functools.partial(A.tap_maps, size=size, normalize=normalize, cam=cam))
    got = f(acts, grads)
    assert got.shape == (3, 16, 12) and got.dtype == jnp.float32
    ref = np_layercam if cam == "layercam" else np_gradcam
    per_tap = [ref(acts[k].astype(np.float64), grads[k].astype(np.float64)) for k in acts]
    want = np_aggregate(per_tap, size, normalize)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_tap_maps_sequence_and_low_precision_taps():
    acts, grads = _taps(21)
    as_dict = A.tap_maps(acts, grads, (8, 8))
    as_list = A.tap_maps(list(acts.values()), list(grads.values()), (8, 8))
    np.testing.assert_array_equal(np.asarray(as_dict), np.asarray(as_list))
    # bfloat16 taps are cast to float32 before the CAM: the result is float32.
    acts16 = {k: jnp.asarray(v, jnp.bfloat16) for k, v in acts.items()}
    grads16 = {k: jnp.asarray(v, jnp.bfloat16) for k, v in grads.items()}
    got = A.tap_maps(acts16, grads16, (8, 8))
    assert got.dtype == jnp.float32
    want = A.tap_maps(
        {k: np.asarray(v, np.float32) for k, v in acts16.items()},
        {k: np.asarray(v, np.float32) for k, v in grads16.items()},
        (8, 8),
    )
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_gradcam_under_vmap_averages_over_space():
    rng = np.random.default_rng(22)
    act = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)
    grad = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)
    per_example = jax.vmap(lambda a, g: A.gradcam(a, g))(act, grad)
    np.testing.assert_allclose(np.asarray(per_example), np_gradcam(act, grad), rtol=1e-5, atol=1e-5)


def test_one_nan_makes_the_image_map_nan_with_image_normalisation():
    m = np.random.default_rng(23).uniform(size=(2, 3, 3)).astype(np.float32)
    m[1, 1, 1] = np.nan
    got = np.asarray(A.aggregate_maps([m], (6, 6)))
    assert np.isfinite(got[0]).all() and np.isnan(got[1]).all()
