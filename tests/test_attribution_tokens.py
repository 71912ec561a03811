"""Tests for token (vision transformer) inputs to gradmix_jax.attribution, against plain NumPy."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradmix_jax import attribution as A

EPS = 1e-8  # the documented min-max denominator epsilon
GRID = (3, 4)  # a non-square grid, so a transposed reshape cannot pass
PREFIX = 1  # one class token


# ----------------------------------------------------------------------------- NumPy references


def np_patches(tokens: np.ndarray, grid, prefix: int) -> np.ndarray:
    """[B, N, C] -> [B, h, w, C]: drop the prefix tokens, patch t sits at (t // w, t % w)."""
    b, _, c = tokens.shape
    h, w = grid
    out = np.empty((b, h, w, c), tokens.dtype)
    for t in range(h * w):
        out[:, t // w, t % w, :] = tokens[:, prefix + t, :]
    return out


def np_layercam_tokens(act, grad, grid, prefix, relu=True):
    a, g = np_patches(act, grid, prefix), np_patches(grad, grid, prefix)
    summed = (np.maximum(g, 0) * a).sum(-1)
    return np.maximum(summed, 0) if relu else summed


def np_gradcam_tokens(act, grad, grid, prefix):
    a, g = np_patches(act, grid, prefix), np_patches(grad, grid, prefix)
    return np.maximum((g.mean(axis=(1, 2), keepdims=True) * a).sum(-1), 0)


def np_resize_1d(x: np.ndarray, out: int, axis: int) -> np.ndarray:
    """Bilinear along one axis, half-pixel centres (align_corners=False), edge clamped."""
    n = x.shape[axis]
    res = np.empty(x.shape[:axis] + (out,) + x.shape[axis + 1 :])
    for j in range(out):
        src = min(max((j + 0.5) * n / out - 0.5, 0.0), n - 1.0)
        lo = int(np.floor(src))
        hi = min(lo + 1, n - 1)
        frac = src - lo
        res_j = np.take(x, lo, axis) * (1 - frac) + np.take(x, hi, axis) * frac
        idx = [slice(None)] * x.ndim
        idx[axis] = j
        res[tuple(idx)] = res_j
    return res


def np_minmax_image(m: np.ndarray) -> np.ndarray:
    lo, hi = m.min(axis=(1, 2), keepdims=True), m.max(axis=(1, 2), keepdims=True)
    return (m - lo) / (hi - lo + EPS)


def _tokens(shape, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)


N = PREFIX + GRID[0] * GRID[1]


# ----------------------------------------------------------------------------- tokens_to_grid


def test_tokens_to_grid_round_trips_arange():
    b, c = 2, 3
    tokens = np.arange(b * N * c, dtype=np.float32).reshape(b, N, c)
    got = np.asarray(
        jax.jit(functools.partial(A.tokens_to_grid, grid=GRID, prefix_tokens=1))(tokens)
    )
    assert got.shape == (b, 3, 4, c)
    # Row-major: patch (i, j) is token 1 + i * w + j; its first channel value is known.
    for i in range(3):
        for j in range(4):
            np.testing.assert_array_equal(got[:, i, j, :], tokens[:, 1 + i * 4 + j, :])
    # Flattening the grid and putting the class token back gives the input again.
    back = np.concatenate([tokens[:, :1], got.reshape(b, 12, c)], axis=1)
    np.testing.assert_array_equal(back, tokens)
    np.testing.assert_array_equal(got, np_patches(tokens, GRID, 1))


def test_tokens_to_grid_vmap_and_grad():
    tokens, _ = _tokens((2, N, 5), 30)
    per_example = jax.vmap(lambda t: A.tokens_to_grid(t, GRID, PREFIX))(tokens)  # [N, C] each
    np.testing.assert_array_equal(np.asarray(per_example), A.tokens_to_grid(tokens, GRID, PREFIX))
    weight = np.random.default_rng(31).normal(size=(2, *GRID, 5)).astype(np.float32)
    g = jax.grad(lambda t: jnp.sum(A.tokens_to_grid(t, GRID, PREFIX) * weight))(tokens)
    np.testing.assert_array_equal(np.asarray(g)[:, 0], 0.0)  # the class token is dropped
    np.testing.assert_array_equal(np.asarray(g)[:, 1:], weight.reshape(2, 12, 5))


# ----------------------------------------------------------------------------- CAMs on tokens


@pytest.mark.parametrize("relu", [True, False])
def test_layercam_tokens_equals_numpy(relu):
    act, grad = _tokens((3, N, 6), 32)
    f = jax.jit(functools.partial(A.layercam, relu=relu, grid=GRID, prefix_tokens=PREFIX))
    got = np.asarray(f(act, grad))
    want = np_layercam_tokens(act.astype(np.float64), grad.astype(np.float64), GRID, PREFIX, relu)
    assert got.shape == (3, *GRID)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if relu:
        assert (want > 0).any() and (want == 0).any()  # both sides of the outer ReLU


def test_gradcam_tokens_equals_numpy_and_ignores_the_class_token():
    act, grad = _tokens((3, N, 6), 33)
    f = jax.jit(functools.partial(A.gradcam, grid=GRID, prefix_tokens=PREFIX))
    want = np_gradcam_tokens(act.astype(np.float64), grad.astype(np.float64), GRID, PREFIX)
    np.testing.assert_allclose(np.asarray(f(act, grad)), want, rtol=1e-5, atol=1e-5)
    # The class token's gradient does not enter the channel weights.
    grad2 = grad.copy()
    grad2[:, 0] += 100.0
    np.testing.assert_allclose(np.asarray(f(act, grad2)), want, rtol=1e-5, atol=1e-5)


def test_layercam_tokens_under_vmap():
    act, grad = _tokens((3, N, 6), 34)
    per_example = jax.vmap(lambda a, g: A.layercam(a, g, grid=GRID, prefix_tokens=PREFIX))(
        act, grad
    )
    want = np_layercam_tokens(act.astype(np.float64), grad.astype(np.float64), GRID, PREFIX)
    np.testing.assert_allclose(np.asarray(per_example), want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- tap_maps on tokens


def test_tap_maps_tokens_equals_numpy_pipeline():
    # Two token taps and one NHWC tap (a hybrid model): numpy CAMs, numpy bilinear, numpy min-max.
    acts, grads = {}, {}
    acts["block0"], grads["block0"] = _tokens((2, N, 5), 35)
    acts["block1"], grads["block1"] = _tokens((2, N, 7), 36)
    acts["stem"], grads["stem"] = _tokens((2, 6, 8, 4), 37)
    size = (12, 16)
    f = jax.jit(functools.partial(A.tap_maps, size=size, grid=GRID, prefix_tokens=PREFIX))
    got = np.asarray(f(acts, grads))
    assert got.shape == (2, *size) and got.dtype == np.float32
    a64 = {k: v.astype(np.float64) for k, v in acts.items()}
    g64 = {k: v.astype(np.float64) for k, v in grads.items()}
    layer_maps = [
        np_layercam_tokens(a64["block0"], g64["block0"], GRID, PREFIX),
        np_layercam_tokens(a64["block1"], g64["block1"], GRID, PREFIX),
        np.maximum((np.maximum(g64["stem"], 0) * a64["stem"]).sum(-1), 0),
    ]
    want = 0.0
    for m in layer_maps:
        up = np_resize_1d(np_resize_1d(m, size[0], 1), size[1], 2)
        want = want + np_minmax_image(up)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cam", ["layercam", "gradcam"])
def test_tap_maps_tokens_vs_jax_resize_of_numpy_maps(cam):
    act, grad = _tokens((3, N, 6), 38)
    size = (9, 8)
    got = A.tap_maps([act], [grad], size, cam=cam, grid=GRID, prefix_tokens=PREFIX)
    ref = np_layercam_tokens if cam == "layercam" else np_gradcam_tokens
    m = ref(act.astype(np.float64), grad.astype(np.float64), GRID, PREFIX).astype(np.float32)
    up = np.asarray(jax.image.resize(m, (3, *size), "bilinear", antialias=False), np.float64)
    np.testing.assert_allclose(np.asarray(got), np_minmax_image(up), rtol=1e-5, atol=1e-5)


def test_tap_maps_tokens_match_the_reshaped_nhwc_taps_and_grad():
    act, grad = _tokens((2, N, 6), 39)
    as_tokens = A.tap_maps({"t": act}, {"t": grad}, (8, 8), grid=GRID, prefix_tokens=PREFIX)
    as_nhwc = A.tap_maps(
        {"t": np_patches(act, GRID, PREFIX)}, {"t": np_patches(grad, GRID, PREFIX)}, (8, 8)
    )
    np.testing.assert_array_equal(np.asarray(as_tokens), np.asarray(as_nhwc))
    # Differentiable in the activation, finite, and the class token gets no gradient.
    d = jax.grad(lambda a: A.tap_maps([a], [grad], (8, 8), grid=GRID, prefix_tokens=1).sum())(act)
    assert np.isfinite(np.asarray(d)).all()
    np.testing.assert_array_equal(np.asarray(d)[:, 0], 0.0)


def test_grid_leaves_nhwc_taps_unchanged():
    rng = np.random.default_rng(40)
    acts = {"a": rng.normal(size=(2, 4, 4, 3)).astype(np.float32)}
    grads = {"a": rng.normal(size=(2, 4, 4, 3)).astype(np.float32)}
    plain = A.tap_maps(acts, grads, (8, 8))
    with_grid = A.tap_maps(acts, grads, (8, 8), grid=(2, 2), prefix_tokens=1)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(with_grid))


# ----------------------------------------------------------------------------- refusals


def _one_line_error(fn, *patterns):
    with pytest.raises(ValueError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg
    for pattern in patterns:
        assert pattern in msg, (pattern, msg)


def test_token_count_mismatch_names_shapes_and_arguments():
    act = jnp.zeros((2, 16, 8))  # 16 patch tokens, no class token
    for call in (
        lambda: A.tokens_to_grid(act, (4, 4), prefix_tokens=1),
        lambda: A.layercam(act, act, grid=(4, 4), prefix_tokens=1),
        lambda: jax.jit(functools.partial(A.tap_maps, size=(16, 16), grid=(4, 4), prefix_tokens=1))(
            {"block0": act}, {"block0": act}
        ),
    ):
        _one_line_error(call, "(2, 16, 8)", "grid=(4, 4)", "prefix_tokens=1", "1 + 4 * 4 = 17")
    # A class token not declared: the message says how many extra tokens there are.
    _one_line_error(lambda: A.tokens_to_grid(jnp.zeros((2, 17, 8)), (4, 4)), "prefix_tokens=1")
    # Tokens laid out [B, C, N].
    _one_line_error(lambda: A.tokens_to_grid(jnp.zeros((2, 8, 17)), (4, 4), 1), "transpose")
    _one_line_error(
        lambda: A.tap_maps({"b": act}, {"b": act}, (16, 16)), "grid=(h, w)", "prefix_tokens"
    )
    _one_line_error(
        lambda: jax.jit(functools.partial(A.tap_maps, size=(16, 16)))([act], [act]),
        "activations[0]",
        "(2, 16, 8)",
        "grid=(h, w)",
    )


TOK = jnp.zeros((2, 17, 8))  # class token + a 4 x 4 grid
NHWC = TOK[:, 1:].reshape(2, 4, 4, 8)


@pytest.mark.parametrize(
    "call, patterns",
    [
        (lambda: A.tokens_to_grid(TOK, (4,)), ("grid", "(4,)")),
        (lambda: A.tokens_to_grid(TOK, (4, 0)), ("grid", "(4, 0)")),
        (lambda: A.tokens_to_grid(TOK, (4, 4), prefix_tokens=-1), ("prefix_tokens", "-1")),
        (lambda: A.layercam(TOK, TOK, prefix_tokens=1), ("prefix_tokens=1", "grid=(h, w)")),
        (lambda: A.tap_maps([TOK], [TOK], (8, 8), prefix_tokens=1), ("prefix_tokens=1", "grid")),
        (lambda: A.layercam(TOK, TOK[..., :4], grid=(4, 4)), ("(2, 17, 8)", "(2, 17, 4)")),
        (lambda: A.gradcam(NHWC, NHWC, grid=(4, 4)), ("need no grid",)),
        (
            lambda: A.tap_maps([TOK], [TOK[..., :4]], (8, 8), grid=(4, 4)),
            ("[B, N, C]", "(2, 17, 4)"),
        ),
    ],
)
def test_bad_token_arguments_raise_one_line(call, patterns):
    _one_line_error(call, *patterns)
