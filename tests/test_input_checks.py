"""Bad inputs to the library functions raise one clear error naming the argument, the expected
layout and what was given -- eagerly and under jax.jit (the checks read only static facts).

Patterns end in ``(\n|$)``: under jit JAX appends a note about filtered traceback frames."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradmix_jax import _checks
from gradmix_jax import attribution as A
from gradmix_jax import augment as G
from gradmix_jax import losses as L
from gradmix_jax import mixing as M

IMGS = np.zeros((2, 8, 8, 3), np.float32)
MAPS = np.zeros((2, 8, 8), np.float32)
KEY = jax.random.key(0)
PARAMS = G.AugmentParams.rgb((8, 8))


# ----------------------------------------------------------------------------- PRNG keys

KEY_CALLS = {
    "sample_ratios": lambda k: M.sample_ratios(k, 4),
    "gradmix": lambda k: M.gradmix(k, IMGS, MAPS),
    "cutmix": lambda k: M.cutmix(k, IMGS, 1.0),
    "mixup": lambda k: M.mixup(k, IMGS, 1.0),
    "augment_image": lambda k: G.augment_image(k, IMGS[0], PARAMS),
    "augment_batch": lambda k: G.augment_batch(k, IMGS, PARAMS),
    "two_views": lambda k: G.two_views(k, IMGS, PARAMS),
    "sample_crop_box": lambda k: G.sample_crop_box(k, 8, 8, (0.2, 1.0), (0.75, 1.33)),
}

BAD_KEYS = [
    (0, r"got int 0(\n|$)"),
    (np.zeros(2, np.float32), r"got float32 array of shape \(2,\)(\n|$)"),
    (np.zeros(3, np.uint32), r"got uint32 array of shape \(3,\)(\n|$)"),
    (np.zeros((2, 2), np.uint32), r"got uint32 array of shape \(2, 2\)(\n|$)"),
]


@pytest.mark.parametrize("fn", sorted(KEY_CALLS))
@pytest.mark.parametrize("bad,tail", BAD_KEYS)
def test_bad_key_is_a_type_error_naming_key(fn, bad, tail):
    with pytest.raises(
        TypeError, match=r"^key must be a PRNG key \(jax\.random\.key\(seed\).*" + tail
    ):
        KEY_CALLS[fn](bad)


@pytest.mark.parametrize("fn", sorted(KEY_CALLS))
def test_key_array_instead_of_one_key(fn):
    keys = jax.random.split(KEY, 4)
    with pytest.raises(TypeError, match=r"^key must be a single PRNG key \(shape \(\)\), got a "):
        KEY_CALLS[fn](keys)


def test_raw_and_typed_keys_are_accepted_also_under_vmap():
    _checks.check_key("key", KEY)
    _checks.check_key("key", jax.random.PRNGKey(0))
    _checks.check_key("key", np.zeros(2, np.uint32))
    # Per-example keys under vmap: a scalar typed key / a uint32[2] raw key.
    for keys in (jax.random.split(KEY, 3), jax.random.split(jax.random.PRNGKey(0), 3)):
        boxes = jax.vmap(lambda k: G.sample_crop_box(k, 8, 8, (0.2, 1.0), (0.75, 1.33)))(keys)
        assert boxes[0].shape == (3,)


def test_bad_key_raises_under_jit():
    # A Python int under jit is a traced int32 scalar: still not a key.
    f = jax.jit(M.cutmix, static_argnums=2)
    with pytest.raises(TypeError, match=r"^key must be a PRNG key .*got int32 array of shape \(\)"):
        f(0, IMGS, 1.0)


# ----------------------------------------------------------------------------- images

U8 = np.zeros((2, 8, 8, 3), np.uint8)
DTYPE_MSG = (
    r"^images must be floating point \[B, H, W, C\]; got uint8: convert first, "
    r"e\.g\. images\.astype\(jnp\.float32\) / 255(\n|$)"
)


@pytest.mark.parametrize(
    "call",
    [
        lambda: M.gradmix(KEY, U8, MAPS),
        lambda: M.gradmix(KEY, U8, MAPS, fill="noise"),
        lambda: M.gradmix_apply(U8, MAPS, jnp.full(2, 0.3), perm=jnp.array([1, 0])),
        lambda: M.mixup(KEY, U8, 1.0),
        lambda: jax.jit(M.mixup, static_argnums=2)(KEY, U8, 1.0),
        lambda: jax.jit(M.gradmix)(KEY, U8, MAPS),
    ],
)
def test_integer_images_refused_where_they_are_blended(call):
    with pytest.raises(TypeError, match=DTYPE_MSG):
        call()


def test_cutmix_accepts_uint8_and_copies_exactly():
    imgs = np.arange(4 * 6 * 6 * 1, dtype=np.uint8).reshape(4, 6, 6, 1)
    mixed, lam, perm = jax.jit(M.cutmix)(KEY, imgs, 1.0)
    assert mixed.dtype == jnp.uint8
    mixed, perm = np.asarray(mixed), np.asarray(perm)
    taken = mixed != imgs
    np.testing.assert_array_equal(mixed[taken], imgs[perm][taken])


BATCH1 = r"^images must hold at least 2 samples \(\[B, H, W, C\] with B >= 2\); got batch size 1 "
BATCH1 += r"\(shape \(1, 8, 8, 3\)\): a batch of one can only be mixed with itself(\n|$)"


@pytest.mark.parametrize(
    "call",
    [
        lambda: M.gradmix(KEY, IMGS[:1], MAPS[:1]),
        lambda: M.gradmix_apply(IMGS[:1], MAPS[:1], jnp.full(1, 0.3), perm=jnp.array([0])),
        lambda: M.cutmix(KEY, IMGS[:1], 1.0),
        lambda: M.mixup(KEY, IMGS[:1], 1.0),
        lambda: jax.jit(M.mixup, static_argnums=2)(KEY, IMGS[:1], 1.0),
    ],
)
def test_batch_of_one_refused_where_samples_are_mixed_with_each_other(call):
    with pytest.raises(ValueError, match=BATCH1):
        call()


def test_batch_of_one_allowed_for_noise_fill():
    mixed, frac = jax.jit(M.gradmix, static_argnames="fill")(KEY, IMGS[:1], MAPS[:1], fill="noise")
    assert mixed.shape == (1, 8, 8, 3) and frac.shape == (1,)
    apply = jax.jit(M.gradmix_apply)
    mixed, _ = apply(IMGS[:1], MAPS[:1], jnp.full(1, 0.3), noise=IMGS[:1] + 1)
    assert mixed.shape == (1, 8, 8, 3)


def test_bad_fallback_centers():
    with pytest.raises(ValueError, match=r"^fallback_centers must be \[B, 2\] = \(2, 2\) integer"):
        M.gradmix_boxes(MAPS, jnp.full(2, 0.3), fallback_centers=jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"got int32 array of shape \(3, 2\)(\n|$)"):
        M.gradmix_boxes(MAPS, jnp.full(2, 0.3), fallback_centers=jnp.zeros((3, 2), jnp.int32))
    with pytest.raises(ValueError, match=r"^maps must be \[B, H, W\], got shape \(8, 8\)(\n|$)"):
        M.degenerate_maps(MAPS[0])


# ----------------------------------------------------------------------------- attribution maps


def test_aggregate_maps_with_channel_axis():
    with pytest.raises(
        ValueError,
        match=r"^maps\[1\] must be \[B, h, w\], got shape \(2, 4, 4, 1\): squeeze the channel "
        r"axis \(m\[\.\.\., 0\]\)(\n|$)",
    ):
        A.aggregate_maps([jnp.zeros((2, 4, 4)), jnp.zeros((2, 4, 4, 1))], (8, 8))


def test_aggregate_maps_without_batch_axis():
    with pytest.raises(
        ValueError,
        match=r"^maps\[0\] must be \[B, h, w\], got shape \(4, 4\): add a batch axis \(m\[None\]\)(\n|$)",
    ):
        jax.jit(functools.partial(A.aggregate_maps, size=(8, 8)))([jnp.zeros((4, 4))])


def test_aggregate_maps_other_rank():
    with pytest.raises(
        ValueError, match=r"^maps\[0\] must be \[B, h, w\], got shape \(2, 4, 4, 3\)"
    ):
        A.aggregate_maps([jnp.zeros((2, 4, 4, 3))], (8, 8))


def test_aggregate_maps_batch_mismatch_lists_shapes():
    with pytest.raises(
        ValueError,
        match=r"^maps must all have the same batch size B .* got shapes "
        r"\[\(2, 4, 4\), \(3, 2, 2\)\](\n|$)",
    ):
        A.aggregate_maps([jnp.zeros((2, 4, 4)), jnp.zeros((3, 2, 2))], (8, 8))


@pytest.mark.parametrize("fn", [A.layercam, A.gradcam])
def test_cams_refuse_wrong_rank(fn):
    with pytest.raises(ValueError, match=r"\[B, h, w, C\] .* got \(4, 4\) and \(4, 4\)"):
        fn(jnp.zeros((4, 4)), jnp.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"got \(1, 2, 4, 4, 3\) and \(1, 2, 4, 4, 3\)"):
        fn(jnp.zeros((1, 2, 4, 4, 3)), jnp.zeros((1, 2, 4, 4, 3)))


def test_tap_maps_bad_taps():
    a = {"conv2": jnp.zeros((2, 8, 8, 4)), "conv3": jnp.zeros((2, 4, 4, 8))}
    with pytest.raises(
        ValueError,
        match=r"^activations and gradients must have the same taps \(keys\), got activations keys "
        r"\['conv2', 'conv3'\] and gradients keys \['conv2'\](\n|$)",
    ):
        A.tap_maps(a, {"conv2": a["conv2"]}, (16, 16))
    with pytest.raises(ValueError, match=r"^activations and gradients must hold at least one tap"):
        A.tap_maps({}, {}, (16, 16))
    with pytest.raises(ValueError, match=r"^activations and gradients must hold one array per tap"):
        A.tap_maps([a["conv2"]], [], (16, 16))
    with pytest.raises(TypeError, match=r"^activations and gradients must both be Mappings"):
        A.tap_maps(a, list(a.values()), (16, 16))
    with pytest.raises(
        ValueError, match=r"^cam must be one of \('layercam', 'gradcam'\), got 'cam'"
    ):
        A.tap_maps(a, a, (16, 16), cam="cam")
    with pytest.raises(ValueError, match=r"^normalize must be one of"):
        A.tap_maps(a, a, (16, 16), normalize="max")
    with pytest.raises(
        ValueError,
        match=r"^activations\['conv3'\] and gradients\['conv3'\] must both be \[B, h, w, C\] with "
        r"the same shape, got \(2, 4, 4, 8\) and \(2, 4, 4, 7\)(\n|$)",
    ):
        A.tap_maps(a, {**a, "conv3": jnp.zeros((2, 4, 4, 7))}, (16, 16))
    with pytest.raises(ValueError, match=r"^activations\[0\] and gradients\[0\] must both be"):
        A.tap_maps([jnp.zeros((2, 4, 4))], [jnp.zeros((2, 4, 4))], (16, 16))


def test_tap_maps_channels_first_is_named():
    act = {"conv3": jnp.zeros((8, 64, 8, 8))}
    msg = (
        r"^activations\['conv3'\] has shape \(8, 64, 8, 8\), which looks channels-first \(NCHW\) "
        r"for images of size \(32, 32\); taps must be NHWC \[B, h, w, C\]: transpose with "
        r"x\.transpose\(0, 2, 3, 1\)(\n|$)"
    )
    with pytest.raises(ValueError, match=msg):
        A.tap_maps(act, act, (32, 32))
    with pytest.raises(ValueError, match=msg):
        jax.jit(functools.partial(A.tap_maps, size=(32, 32)))(act, act)


@pytest.mark.parametrize(
    "shape",
    [
        (2, 8, 8, 64),  # NHWC
        (2, 8, 8, 8),  # ambiguous: NHWC fits, so it is accepted
        (2, 4, 4, 3),  # 3 channels, 4x4 map
        (2, 32, 32, 16),  # full resolution
        (2, 16, 8, 4),  # NHWC for 32 x 16 images
    ],
)
def test_tap_maps_accepts_nhwc(shape):
    size = (32, 16) if shape == (2, 16, 8, 4) else (32, 32)
    x = jnp.ones(shape)
    assert A.tap_maps({"t": x}, {"t": x}, size).shape == (2, *size)


def test_plausible_size_rule():
    assert _checks.plausible_size(8, 8, 32, 32)
    assert not _checks.plausible_size(64, 8, 32, 32)  # taller than the image
    assert not _checks.plausible_size(8, 2, 32, 32)  # aspect 4x off
    assert _checks.plausible_size(8, 4, 32, 32)  # aspect exactly 2x off: still plausible
    assert _checks.looks_channels_first((2, 3, 16, 16), 32, 32)
    assert not _checks.looks_channels_first((2, 16, 16, 3), 32, 32)


# ----------------------------------------------------------------------------- losses


def _feats(batch, views=2, dim=128):
    x = np.random.default_rng(0).normal(size=(batch, views, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


ONE_SAMPLE = (
    r"^features must hold at least 2 samples \(\[batch >= 2, views, dim\]\) .*"
    r"got shape \(1, 2, 128\)(\n|$)"
)


@pytest.mark.parametrize(
    "call",
    [
        lambda f: L.supcon_loss(f, jnp.array([0])),
        lambda f: L.supcon_loss(f),
        lambda f: L.simclr_loss(f),
        lambda f: jax.jit(L.simclr_loss)(f),
        lambda f: jax.grad(L.simclr_loss)(f),
    ],
)
def test_contrastive_losses_refuse_one_sample(call):
    with pytest.raises(ValueError, match=ONE_SAMPLE):
        call(_feats(1))


def test_one_sample_per_device_is_fine_with_axis_name():
    feats = jnp.asarray(_feats(2))[:, None]  # [devices=2, batch=1, views, dim]
    per_device = jax.jit(jax.vmap(lambda f: L.simclr_loss(f, 0.5, axis_name="d"), axis_name="d"))(
        feats
    )
    global_loss = L.simclr_loss(jnp.asarray(_feats(2)), 0.5)
    np.testing.assert_allclose(np.asarray(per_device), float(global_loss), rtol=1e-6)


def test_mixed_view_loss_bad_arguments():
    z = jnp.asarray(_feats(3)[:, 0])
    masked = jnp.full(3, 0.25)
    with pytest.raises(ValueError, match=r"^loss_weight must be one of \('area', 'kept', 'one'\)"):
        L.mixed_view_loss(z, z, masked, loss_weight="gamma")
    with pytest.raises(ValueError, match=r"^loss_weight must be one of .* got 'gamma'(\n|$)"):
        L.mix_loss_weights(masked, "gamma")
    with pytest.raises(
        ValueError,
        match=r"^z_mixed and z_view2 must both be \[N, D\] with the same shape, "
        r"got \(3, 128\) and \(2, 128\)(\n|$)",
    ):
        L.mixed_view_loss(z, z[:2], masked)
    with pytest.raises(
        ValueError, match=r"^masked must be \[N\] = \(3,\) .* got shape \(3, 1\)(\n|$)"
    ):
        L.mixed_view_loss(z, z, masked[:, None])
    with pytest.raises(
        ValueError, match=r"^z_mixed must hold at least 2 samples .* got shape \(1, 128\)(\n|$)"
    ):
        L.mixed_view_loss(z[:1], z[:1], masked[:1])
