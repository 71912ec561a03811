"""Tests for gradmix_jax.mixing: GradMix boxes/fill, CutMix, MixUp, argument checks.

Golden values come from plain NumPy formulas written here; the jax functions run under jit.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradmix_jax import mixing as M

STATIC = ("ratio_range", "ratio_of", "fill", "placement", "ratio_per", "noise_range")
jit_gradmix = jax.jit(M.gradmix, static_argnames=STATIC)


@functools.partial(jax.jit, static_argnames=("ratio_of", "placement", "fill"))
def jit_apply(
    images, maps, ratios, perm_or_noise, ratio_of="side", placement="inside", fill="sample"
):
    if fill == "sample":
        return M.gradmix_apply(
            images, maps, ratios, perm=perm_or_noise, ratio_of=ratio_of, placement=placement
        )
    return M.gradmix_apply(
        images, maps, ratios, noise=perm_or_noise, ratio_of=ratio_of, placement=placement
    )


# ----------------------------------------------------------------------------- NumPy references


def np_box(peak, bh, bw, H, W, placement):
    """Untruncated (top, left) for a box centred on peak=(cy, cx)."""
    cy, cx = peak
    top, left = cy - bh // 2, cx - bw // 2
    if placement == "inside":
        top, left = min(max(top, 0), H - bh), min(max(left, 0), W - bw)
    return top, left


def np_mask(top, left, bh, bw, H, W):
    m = np.zeros((H, W), bool)
    m[max(top, 0) : max(min(top + bh, H), 0), max(left, 0) : max(min(left + bw, W), 0)] = True
    return m


def np_bilinear_axis(x, out, axis):
    """torch F.interpolate(bilinear, align_corners=False, antialias=False) along one axis."""
    n = x.shape[axis]
    src = np.maximum((np.arange(out) + 0.5) * n / out - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    frac = (src - i0).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    return np.take(x, i0, axis) * (1 - frac) + np.take(x, i1, axis) * frac


def np_resize_hw(img, bh, bw):
    return np_bilinear_axis(np_bilinear_axis(img.astype(np.float64), bh, 0), bw, 1)


def peak_maps(peaks, H, W, seed=0):
    """Random maps in [0, 1) with a single value 2.0 at each requested peak."""
    rng = np.random.default_rng(seed)
    maps = rng.uniform(size=(len(peaks), H, W)).astype(np.float32)
    for i, (cy, cx) in enumerate(peaks):
        maps[i, cy, cx] = 2.0
    return maps


def rand_images(B, H, W, C=3, seed=0):
    return np.random.default_rng(seed).uniform(size=(B, H, W, C)).astype(np.float32)


# ----------------------------------------------------------------------------- ratios and box sizes


def test_box_sizes_side_and_area():
    ratios = jnp.array([0.1, 0.25, 0.5, 0.3, 0.01])
    bh, bw = jax.jit(M.box_sizes, static_argnums=(1, 2, 3))(ratios, 32, 20, "side")
    # round(r*32), round(r*20), at least 1.
    np.testing.assert_array_equal(np.asarray(bh), [3, 8, 16, 10, 1])
    np.testing.assert_array_equal(np.asarray(bw), [2, 5, 10, 6, 1])
    bh, bw = jax.jit(M.box_sizes, static_argnums=(1, 2, 3))(ratios, 32, 20, "area")
    # side ratio = sqrt(r): sqrt(.1)=.3162, .5, .7071, .5477, .1
    np.testing.assert_array_equal(np.asarray(bh), [10, 16, 23, 18, 3])
    np.testing.assert_array_equal(np.asarray(bw), [6, 10, 14, 11, 2])


def test_box_sizes_random_vs_numpy():
    r = np.random.default_rng(0).uniform(0.1, 0.5, size=64).astype(np.float32)
    for ratio_of, side in (("side", r), ("area", np.sqrt(r))):
        bh, bw = M.box_sizes(jnp.asarray(r), 28, 36, ratio_of)
        np.testing.assert_array_equal(np.asarray(bh), np.maximum(np.round(side * 28), 1))
        np.testing.assert_array_equal(np.asarray(bw), np.maximum(np.round(side * 36), 1))


def test_sample_ratios_range_and_per():
    f = jax.jit(M.sample_ratios, static_argnums=(1, 2, 3))
    r = np.asarray(f(jax.random.key(0), 256, (0.2, 0.4), "sample"))
    assert r.shape == (256,) and r.dtype == np.float32
    assert (r >= 0.2).all() and (r < 0.4).all()
    assert np.unique(r).size > 200  # independent draws
    rb = np.asarray(f(jax.random.key(0), 16, (0.2, 0.4), "batch"))
    assert rb.shape == (16,) and np.unique(rb).size == 1 and 0.2 <= rb[0] < 0.4
    # Degenerate range lo == hi is allowed and constant.
    np.testing.assert_allclose(np.asarray(f(jax.random.key(1), 4, (0.3, 0.3), "sample")), 0.3)


def test_gradmix_ratio_per_batch_gives_equal_box_sizes():
    B, H, W = 8, 32, 32
    imgs, maps = rand_images(B, H, W), peak_maps([(16, 16)] * B, H, W)
    _, frac_b = jit_gradmix(jax.random.key(3), imgs, maps, ratio_per="batch")
    _, frac_s = jit_gradmix(jax.random.key(3), imgs, maps, placement="inside")  # default per-sample
    assert np.unique(np.asarray(frac_b)).size == 1
    assert np.unique(np.asarray(frac_s)).size > 1


# ----------------------------------------------------------------------------- box placement


@pytest.mark.parametrize(
    "peak,placement,expected",
    [
        ((10, 12), "inside", (6, 8)),
        ((10, 12), "clip", (6, 8)),
        ((0, 0), "inside", (0, 0)),  # corner peak: box shifted inside
        ((0, 0), "clip", (-4, -4)),  # corner peak: box hangs over the border
        ((31, 31), "inside", (24, 24)),
        ((31, 31), "clip", (27, 27)),
        ((0, 31), "inside", (0, 24)),
        ((0, 31), "clip", (-4, 27)),
    ],
)
def test_box_from_map_position(peak, placement, expected):
    H = W = 32
    m = np.zeros((H, W), np.float32)
    m[peak] = 1.0
    f = jax.jit(M.box_from_map, static_argnums=(3,))
    top, left = f(jnp.asarray(m), 8, 8, placement)
    assert (int(top), int(left)) == expected == np_box(peak, 8, 8, H, W, placement)


def test_box_from_map_first_maximum_row_major():
    m = np.zeros((8, 8), np.float32)
    m[5, 1] = m[2, 6] = m[2, 7] = 3.0  # (2, 6) comes first in row-major order
    top, left = jax.jit(M.box_from_map, static_argnums=(3,))(jnp.asarray(m), 3, 3, "clip")
    assert (int(top), int(left)) == (1, 5)


def test_box_from_map_odd_rectangular_box():
    m = np.zeros((20, 30), np.float32)
    m[3, 25] = 1.0
    top, left = M.box_from_map(jnp.asarray(m), 7, 9, "inside")
    assert (int(top), int(left)) == np_box((3, 25), 7, 9, 20, 30, "inside") == (0, 21)
    top, left = M.box_from_map(jnp.asarray(m), 7, 9, "clip")
    assert (int(top), int(left)) == (0, 21)


# ----------------------------------------------------------------------------- GradMix fill


@pytest.mark.parametrize("placement", ["inside", "clip"])
def test_gradmix_apply_sample_fill_vs_numpy(placement):
    B, H, W = 4, 24, 32
    imgs = rand_images(B, H, W, seed=1)
    peaks = [(12, 16), (0, 0), (23, 31), (3, 29)]
    maps = peak_maps(peaks, H, W, seed=2)
    ratios = np.array([0.3, 0.45, 0.25, 0.5], np.float32)
    perm = np.array([2, 0, 3, 1])
    mixed, frac = jit_apply(imgs, maps, ratios, perm, placement=placement)
    mixed, frac = np.asarray(mixed), np.asarray(frac)
    for i in range(B):
        bh, bw = max(round(ratios[i] * H), 1), max(round(ratios[i] * W), 1)
        top, left = np_box(peaks[i], bh, bw, H, W, placement)
        mask = np_mask(top, left, bh, bw, H, W)
        # Outside the box: bit-identical to the input.
        np.testing.assert_array_equal(mixed[i][~mask], imgs[i][~mask])
        # Inside: the WHOLE permuted image shrunk to (bh, bw), positioned at the untruncated box.
        patch_np = np_resize_hw(imgs[perm[i]], bh, bw)
        patch_jax = np.asarray(
            jax.image.resize(imgs[perm[i]], (bh, bw, 3), "linear", antialias=M.PATCH_ANTIALIAS)
        )
        rows = np.arange(top, top + bh)
        cols = np.arange(left, left + bw)
        vr, vc = (rows >= 0) & (rows < H), (cols >= 0) & (cols < W)
        region = mixed[i][np.ix_(rows[vr], cols[vc])]
        np.testing.assert_allclose(region, patch_jax[np.ix_(vr, vc)], atol=1e-5)
        np.testing.assert_allclose(region, patch_np[np.ix_(vr, vc)], atol=1e-5)
        # masked_fraction = replaced pixels / (H*W).
        np.testing.assert_allclose(frac[i], mask.sum() / (H * W), rtol=1e-6)
        if placement == "inside":
            np.testing.assert_allclose(frac[i], bh * bw / (H * W), rtol=1e-6)
    if placement == "clip":
        # Corner peaks really were truncated.
        assert frac[1] < round(0.45 * H) * round(0.45 * W) / (H * W)


def test_pasted_patch_is_shrunk_not_cropped():
    # Source is a left-to-right ramp; the patch must show the whole ramp, i.e. span its full range.
    H = W = 16
    ramp = np.broadcast_to(np.linspace(0, 1, W, dtype=np.float32)[None, :, None], (H, W, 1))
    imgs = np.stack([np.zeros((H, W, 1), np.float32), ramp])
    maps = peak_maps([(8, 8), (8, 8)], H, W)
    mixed, _ = jit_apply(imgs, maps, np.array([0.5, 0.5], np.float32), np.array([1, 0]))
    patch = np.asarray(mixed)[0, 4:12, 4:12, 0]  # 8x8 box centred at (8, 8)
    assert patch[:, 0].max() < 0.1 and patch[:, -1].min() > 0.9
    np.testing.assert_allclose(patch, np_resize_hw(ramp, 8, 8)[..., 0], atol=1e-6)


def test_paste_resized_antialias_setting_matches_resize():
    rng = np.random.default_rng(5)
    src = rng.uniform(size=(20, 20, 2)).astype(np.float32)
    for aa in (False, True):
        canvas = jax.jit(M.paste_resized, static_argnums=(5,))(src, 3, -2, 7, 9, aa)
        ref = np.asarray(jax.image.resize(src, (7, 9, 2), "linear", antialias=aa))
        np.testing.assert_allclose(np.asarray(canvas)[3:10, 0:7], ref[:, 2:], atol=1e-5)


def test_gradmix_noise_fill_within_range():
    B, H, W, C = 6, 16, 16, 3
    imgs = rand_images(B, H, W, C)  # values in [0, 1)
    maps = peak_maps([(i, 15 - i) for i in range(B)], H, W)
    for placement in ("inside", "clip"):
        mixed, frac = jit_gradmix(
            jax.random.key(7), imgs, maps, fill="noise", noise_range=(2.0, 3.0), placement=placement
        )
        mixed, frac = np.asarray(mixed), np.asarray(frac)
        replaced = mixed >= 2.0
        assert (mixed[replaced] < 3.0).all()
        np.testing.assert_array_equal(mixed[~replaced], imgs[~replaced])
        # Noise covers exactly the box, all channels.
        np.testing.assert_array_equal(replaced.sum(axis=(1, 2, 3)), np.round(frac * H * W) * C)
        assert (frac > 0).all()


def test_gradmix_matches_documented_randomness():
    B, H, W = 8, 32, 32  # same shapes as the ratio_per test, so compilations are shared
    imgs = rand_images(B, H, W, seed=3)
    maps = peak_maps(
        [(4, 4), (30, 2), (16, 16), (0, 31), (20, 9), (31, 31), (0, 0), (9, 27)], H, W, seed=4
    )
    key = jax.random.key(11)
    k_ratio, k_fill = jax.random.split(key)
    ratios = jax.jit(M.sample_ratios, static_argnums=(1, 2, 3))(k_ratio, B, (0.1, 0.5), "sample")
    perm = jax.jit(jax.random.permutation, static_argnums=(1,))(k_fill, B)
    for placement in ("inside", "clip"):
        got = jit_gradmix(key, imgs, maps, placement=placement)
        want = jit_apply(imgs, maps, ratios, perm, placement=placement)
        np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
        np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
    # Independent check of the sampled fraction for 'inside': (round(r*32)/32)^2.
    _, frac = jit_gradmix(key, imgs, maps, placement="inside")
    r = np.asarray(ratios, np.float64)
    np.testing.assert_allclose(
        np.asarray(frac), (np.maximum(np.round(r * 32), 1) / 32) ** 2, rtol=1e-6
    )


def test_masked_fraction_area_vs_side():
    B, H, W = 64, 40, 40
    imgs = rand_images(B, H, W, C=1)
    rng = np.random.default_rng(6)
    maps = peak_maps([tuple(p) for p in rng.integers(0, 40, size=(B, 2))], H, W)
    ratios = rng.uniform(0.1, 0.5, size=B).astype(np.float32)
    perm = np.roll(np.arange(B), 1)
    _, f_side = jit_apply(imgs, maps, ratios, perm, ratio_of="side")
    _, f_area = jit_apply(imgs, maps, ratios, perm, ratio_of="area")
    s_side = np.round(ratios * 40)
    s_area = np.round(np.sqrt(ratios) * 40)
    np.testing.assert_allclose(np.asarray(f_side), s_side**2 / 1600, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(f_area), s_area**2 / 1600, rtol=1e-6)
    # 'area': fraction ~ r (up to rounding of the side); 'side': fraction ~ r^2.
    np.testing.assert_allclose(np.asarray(f_area), ratios, atol=0.03)
    np.testing.assert_allclose(np.asarray(f_side), ratios**2, atol=0.03)


def test_gradmix_jit_single_trace_and_dtype():
    traces = []

    def fn(key, images, maps):
        traces.append(1)
        return M.gradmix(key, images, maps, ratio_range=(0.1, 0.5), placement="clip")

    f = jax.jit(fn)
    B, H, W = 4, 16, 16
    imgs = rand_images(B, H, W)
    maps = peak_maps([(0, 0), (15, 15), (8, 3), (2, 14)], H, W)
    fracs = [np.asarray(f(jax.random.key(s), imgs, maps)[1]) for s in range(4)]
    assert len(traces) == 1  # ratios, boxes and permutation are traced values
    assert len({f.tobytes() for f in fracs}) > 1  # different keys -> different boxes
    mixed, frac = f(jax.random.key(0), imgs, maps)
    assert mixed.shape == imgs.shape and mixed.dtype == jnp.float32 and frac.shape == (B,)


def test_gradmix_accepts_raw_uint32_key():
    imgs = rand_images(2, 8, 8)
    maps = peak_maps([(1, 1), (6, 6)], 8, 8)
    mixed, frac = jit_gradmix(jax.random.PRNGKey(0), imgs, maps)
    assert mixed.shape == imgs.shape and frac.shape == (2,)


# ----------------------------------------------------------------------------- CutMix / MixUp

# alpha is a traced argument, so one compilation serves every alpha (Beta sampling compiles slowly).
jit_cutmix = jax.jit(M.cutmix)
jit_mixup = jax.jit(M.mixup)
CB, CH, CW = 64, 16, 20


def _const_images(B, H, W):
    """Each image a distinct constant (1..B) so the pasted region is identifiable."""
    return np.broadcast_to(
        np.arange(1, B + 1, dtype=np.float32)[:, None, None, None], (B, H, W, 1)
    ).copy()


def _box_of(changed):
    rows, cols = np.nonzero(changed)
    return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


@pytest.mark.parametrize("alpha,seed", [(1.0, 0), (0.3, 1), (20.0, 2)])
def test_cutmix_kept_fraction_matches_mask(alpha, seed):
    imgs = _const_images(CB, CH, CW)
    mixed, lam, perm = jit_cutmix(jax.random.key(seed), imgs, alpha)
    mixed, lam, perm = np.asarray(mixed), np.asarray(lam), np.asarray(perm)
    assert sorted(perm.tolist()) == list(range(CB))
    assert ((lam >= 0) & (lam <= 1)).all()
    checked = truncated = full = 0
    for i in range(CB):
        assert np.isin(mixed[i], [imgs[i, 0, 0, 0], imgs[perm[i], 0, 0, 0]]).all()
        if perm[i] == i:
            continue
        changed = mixed[i, ..., 0] == imgs[perm[i], 0, 0, 0]
        # lam = kept fraction = 1 - (pixels taken from images[perm[i]]) / (H*W).
        np.testing.assert_allclose(lam[i], 1 - changed.sum() / (CH * CW), rtol=1e-6)
        checked += 1
        if not changed.any():
            continue
        r0, r1, c0, c1 = _box_of(changed)
        assert changed[r0:r1, c0:c1].all()  # a rectangle, pasted at the same location
        if r0 == 0 or c0 == 0 or r1 == CH or c1 == CW:
            truncated += 1
        else:
            # Un-truncated box: (bh, bw) = (floor(H*c), floor(W*c)) for one side ratio c.
            bh, bw = r1 - r0, c1 - c0
            lo_c = max(bh / CH, bw / CW)
            hi_c = min((bh + 1) / CH, (bw + 1) / CW)
            assert lo_c < hi_c, (bh, bw)
            full += 1
    assert checked > CB // 2 and truncated > 0  # border truncation was exercised
    if alpha == 20.0:
        assert full > 0  # lam0 ~ 0.5 -> side ~ 0.7: some boxes fit fully


@pytest.mark.parametrize("alpha,seed", [(0.2, 0), (1.0, 1)])
def test_mixup_convex_combination(alpha, seed):
    imgs = rand_images(16, 8, 8, seed=9)
    mixed, lam, perm = jit_mixup(jax.random.key(seed), imgs, alpha)
    lam, perm = np.asarray(lam), np.asarray(perm)
    assert sorted(perm.tolist()) == list(range(16))
    assert ((lam >= 0) & (lam <= 1)).all() and np.unique(lam).size > 1
    want = lam[:, None, None, None] * imgs + (1 - lam[:, None, None, None]) * imgs[perm]
    np.testing.assert_allclose(np.asarray(mixed), want, atol=1e-6)


# ----------------------------------------------------------------------------- bad arguments


IMGS = np.zeros((2, 8, 8, 3), np.float32)
MAPS = np.zeros((2, 8, 8), np.float32)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"fill": "zeros"}, "fill"),
        ({"placement": "center"}, "placement"),
        ({"ratio_of": "diag"}, "ratio_of"),
        ({"ratio_per": "image"}, "ratio_per"),
        ({"ratio_range": (0.0, 0.5)}, "ratio_range"),
        ({"ratio_range": (0.6, 0.5)}, "ratio_range"),
        ({"ratio_range": (0.1, 1.0)}, "ratio_range"),
        ({"ratio_range": (-0.1, 0.5)}, "ratio_range"),
        ({"ratio_range": (0.1,)}, "ratio_range"),
        ({"ratio_range": "ab"}, "ratio_range"),
        ({"noise_range": (1.0, 0.0)}, "noise_range"),
    ],
)
def test_gradmix_bad_arguments(kwargs, name):
    with pytest.raises(ValueError) as info:
        M.gradmix(jax.random.key(0), IMGS, MAPS, **kwargs)
    msg = str(info.value)
    assert msg.startswith(name) and "\n" not in msg
    bad = next(iter(kwargs.values()))
    assert repr(bad) in msg
    if name in ("fill", "placement", "ratio_of", "ratio_per"):
        allowed = {
            "fill": M.FILL_MODES,
            "placement": M.PLACEMENTS,
            "ratio_of": M.RATIO_OF,
            "ratio_per": M.RATIO_PER,
        }
        assert all(repr(a) in msg for a in allowed[name])
    else:
        assert "<=" in msg


def test_bad_arguments_raise_before_tracing_under_jit():
    with pytest.raises(ValueError, match="^fill must be one of"):
        jit_gradmix(jax.random.key(0), IMGS, MAPS, fill="blur")


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="^per must be one of"):
        M.sample_ratios(jax.random.key(0), 4, per="pixel")
    with pytest.raises(ValueError, match="^ratio_range"):
        M.sample_ratios(jax.random.key(0), 4, ratio_range=(0.5, 0.5001 + 0.5))
    with pytest.raises(ValueError, match="^placement"):
        M.box_from_map(jnp.zeros((4, 4)), 2, 2, "edge")
    with pytest.raises(ValueError, match="^ratio_of"):
        M.box_sizes(jnp.ones(2) * 0.3, 8, 8, "volume")
    with pytest.raises(ValueError, match="^maps must be"):
        M.gradmix(jax.random.key(0), IMGS, MAPS[:, :4])
    with pytest.raises(ValueError, match="exactly one of perm"):
        M.gradmix_apply(IMGS, MAPS, jnp.full((2,), 0.3))
    for fn in (M.cutmix, M.mixup):
        with pytest.raises(ValueError, match="^alpha must be > 0"):
            fn(jax.random.key(0), IMGS, 0.0)


def test_nchw_images_are_named_as_such():
    with pytest.raises(
        ValueError, match=r"images must be NHWC .* looks like NCHW .*transpose\(0, 2, 3, 1\)"
    ):
        M.gradmix(jax.random.key(0), jnp.zeros((2, 3, 8, 8)), jnp.zeros((2, 8, 8)))


def test_library_modules_resolve_from_the_package():
    import gradmix_jax

    assert gradmix_jax.losses.supcon_loss is not None and gradmix_jax.mixing.gradmix is M.gradmix
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gradmix_jax.nope


# ----------------------------------------------------------------------------- degenerate maps


def _degenerate_batch(H=12, W=10):
    """Map 0 all zeros, map 1 random with one NaN at its peak, map 2 constant 3, map 3 one inf,
    map 4 a clean peak at (7, 2)."""
    maps = peak_maps([(0, 0), (5, 5), (0, 0), (0, 0), (7, 2)], H, W, seed=8)
    maps[0] = 0.0
    maps[1, 5, 5] = np.nan
    maps[2] = 3.0
    maps[3, 4, 4] = np.inf
    return maps


def test_degenerate_maps_flags():
    maps = _degenerate_batch()
    got = np.asarray(jax.jit(M.degenerate_maps)(maps))
    np.testing.assert_array_equal(got, [True, True, True, True, False])
    assert got.dtype == bool


@pytest.mark.parametrize("placement", ["inside", "clip"])
def test_degenerate_maps_boxes_go_to_fallback_centers(placement):
    H, W = 12, 10
    maps = _degenerate_batch(H, W)
    ratios = np.full(5, 0.5, np.float32)  # 6 x 5 boxes
    centers = np.array([[6, 5], [0, 9], [11, 0], [3, 3], [0, 0]], np.int32)
    f = jax.jit(M.gradmix_boxes, static_argnums=(2, 3))
    top, left, bh, bw = (np.asarray(x) for x in f(maps, ratios, "side", placement, centers))
    for i in range(4):  # degenerate: centred on the fallback pixel
        assert (top[i], left[i]) == np_box(tuple(centers[i]), 6, 5, H, W, placement)
    # Clean map: its argmax, not the fallback centre.
    assert (top[4], left[4]) == np_box((7, 2), 6, 5, H, W, placement)
    # Without fallback centres the behaviour is unchanged: the argmax (top-left for all zeros).
    top0, left0, _, _ = (np.asarray(x) for x in f(maps, ratios, "side", placement, None))
    assert (top0[0], left0[0]) == np_box((0, 0), 6, 5, H, W, placement)
    assert (top0[4], left0[4]) == (top[4], left[4])


def test_gradmix_fallback_centres_follow_the_documented_draw():
    B, H, W = 5, 12, 10
    imgs = rand_images(B, H, W, seed=5)
    maps = _degenerate_batch(H, W)
    key = jax.random.key(4)
    k_ratio, k_fill = jax.random.split(key)
    ratios = M.sample_ratios(k_ratio, B, (0.1, 0.5), "sample")
    perm = jax.random.permutation(k_fill, B)
    flat = jax.random.randint(jax.random.fold_in(key, 1), (B,), 0, H * W)
    centers = jnp.stack([flat // W, flat % W], axis=1)
    got = jit_gradmix(key, imgs, maps)
    want = jax.jit(M.gradmix_apply)(imgs, maps, ratios, perm=perm, fallback_centers=centers)
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))


def test_gradmix_all_zero_maps_spread_boxes_over_the_image():
    # Before: every box in the top-left corner. Now: random positions.
    B, H, W = 16, 16, 16
    imgs = np.zeros((B, H, W, 1), np.float32)
    mixed, _ = jit_gradmix(
        jax.random.key(0),
        imgs,
        np.zeros((B, H, W), np.float32),
        fill="noise",
        noise_range=(1.0, 2.0),
    )
    covered = np.asarray(mixed)[..., 0] > 0
    assert not covered[:, 0, 0].all()
    assert len({tuple(np.argwhere(c)[0]) for c in covered}) > 4


def test_gradmix_with_clean_maps_is_unchanged_by_the_fallback():
    # Non-degenerate maps: identical to gradmix_apply without fallback centres (the old gradmix).
    B, H, W = 4, 16, 16
    imgs = rand_images(B, H, W, seed=6)
    maps = peak_maps([(0, 0), (15, 15), (8, 3), (2, 14)], H, W, seed=7)
    key = jax.random.key(9)
    k_ratio, k_fill = jax.random.split(key)
    ratios = M.sample_ratios(k_ratio, B, (0.1, 0.5), "sample")
    for fill in ("sample", "noise"):
        got = jit_gradmix(key, imgs, maps, fill=fill)
        if fill == "sample":
            fill_arg = jax.random.permutation(k_fill, B)
        else:
            fill_arg = jax.random.uniform(k_fill, imgs.shape, jnp.float32, 0.0, 1.0)
        want = jit_apply(imgs, maps, ratios, fill_arg, fill=fill)
        np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
        np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
