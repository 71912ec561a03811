"""``gradmix.recipe='authors'`` against golden values produced by the authors' own PyTorch code.

``data/authors_gradmix_cases.npz`` holds the outputs of four functions of the authors' GradMix
repository (``layer_salient_maps``, ``rand_bbox``, ``salient_cutmix`` and ``SupConLoss``, commit
b4f2ece) run on small synthetic inputs, in NHWC layout. Three mixing cases with B = 8: ``a32``
(32 px, taps 16/8/4 px, activations >= 0), ``b28`` (28 px, taps 14/7/4 px: non-power-of-two
resizes, maxima at the border so boxes are clipped, signed activations so an outer ReLU would
show) and ``c32tie`` (one 4 px tap: maxima shared by 4 or 16 pixels). Per case:

- ``P_act{l}``, ``P_grad{l}`` [2B, h, w, C]: tap outputs and gradients of both views (inputs);
- ``P_normmap{l}`` [2B, h, w]: each layer's map min-max normalised over all 2B maps, native size;
- ``P_cam`` [2B, H, W]: the upsampled maps summed; ``P_centre`` [B, 2]: (cy, cx) of view 1's;
- ``P_lam`` [K]: lam values (box area 1 - lam); ``P_cut`` [K]: int(H * sqrt(1 - lam));
  ``P_boxes`` [K, B, 4]: (row lo, row hi, col lo, col hi), half-open;
- ``P_noise`` [K, B, H, W]: the uniform draws their code wrote into each box (zero elsewhere, one
  value per pixel for every channel); ``P_mixed`` [K, B, H, W, 3]; ``P_weight`` [K]: 1 - cut^2/HW.

Loss case: clean features ``loss_feats`` and second-pass features ``loss_feats_pos`` [8, 2, 16]
with T = 0.05 and base temperature 0.07; values (float64 in their code) and gradients.

Tolerances are the fixture's own: maps 1e-5, integers / mixed images / weights exact, loss
values rtol 1e-5, gradients atol 1e-5.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradmix_jax import attribution, augment, losses, mixing
from gradmix_jax.training import pipeline
from gradmix_jax.training.config_base import RECIPES, get_base_config, resolve_recipe
from gradmix_jax.training.objectives import StepConfig
from gradmix_jax.training.train_step import mix_view
from gradmix_jax.training.validation import ConfigError, validate_config

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "authors_gradmix_cases.npz")
CASES = ("a32", "b28", "c32tie")


@pytest.fixture(scope="module")
def golden():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


def _layers(golden, case):
    n = sum(1 for k in golden if k.startswith(f"{case}_act"))
    acts = [golden[f"{case}_act{i}"] for i in range(n)]
    grads = [golden[f"{case}_grad{i}"] for i in range(n)]
    return acts, grads


def authors_step_config(layers=("conv2_2",)) -> StepConfig:
    c = get_base_config()
    c.gradmix.recipe = "authors"
    c.gradmix.layers = layers
    return StepConfig.from_config(c)


@pytest.mark.parametrize("case", CASES)
def test_layer_maps_normalised_over_both_views(golden, case):
    acts, grads = _layers(golden, case)

    @jax.jit
    def normmaps(acts, grads):
        return [
            attribution.normalize_maps(attribution.layercam(a, g, relu=False), "batch")
            for a, g in zip(acts, grads)
        ]

    for i, got in enumerate(normmaps(acts, grads)):
        np.testing.assert_allclose(got, golden[f"{case}_normmap{i}"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_aggregated_map_and_centres(golden, case):
    acts, grads = _layers(golden, case)
    cfg = authors_step_config()
    height = golden[f"{case}_images"].shape[1]
    cam = jax.jit(
        functools.partial(
            attribution.tap_maps,
            size=(height, height),
            normalize=cfg.normalize,
            normalize_at=cfg.normalize_at,
            relu=cfg.cam_relu,
        )
    )(acts, grads)
    np.testing.assert_allclose(cam, golden[f"{case}_cam"], atol=1e-5, rtol=0)
    batch = golden[f"{case}_centre"].shape[0]
    flat = np.asarray(jnp.argmax(cam[:batch].reshape(batch, -1), axis=1))
    np.testing.assert_array_equal(
        np.stack([flat // height, flat % height], 1), golden[f"{case}_centre"]
    )


@pytest.mark.parametrize("case", CASES)
def test_cut_boxes_mixed_images_and_weights(golden, case):
    cfg = authors_step_config()
    images = golden[f"{case}_images"]
    batch, height, width, _ = images.shape
    cam = golden[f"{case}_cam"][:batch]

    @jax.jit
    def mix(ratio, noise):
        ratios = jnp.full((batch,), ratio)
        kwargs = dict(ratio_of=cfg.ratio_of, placement=cfg.placement, box_size=cfg.box_size)
        cut = mixing.nominal_sides(ratios, height, width, cfg.ratio_of, cfg.box_size)[0]
        boxes = mixing.gradmix_boxes(cam, ratios, **kwargs)
        mixed, fraction = mixing.gradmix_apply(
            images, cam, ratios, noise=noise[..., None], area=cfg.weight_area, **kwargs
        )
        return cut, boxes, mixed, losses.mix_loss_weights(fraction, cfg.loss_weight)

    for k, lam in enumerate(golden[f"{case}_lam"]):
        ratio = np.float32(1) - lam  # their box covers 1 - lam of the image
        cut, (top, left, bh, bw), mixed, weight = mix(ratio, golden[f"{case}_noise"][k])
        assert int(cut[0]) == golden[f"{case}_cut"][k]
        boxes = np.stack(
            [
                np.clip(top, 0, height),
                np.clip(top + bh, 0, height),
                np.clip(left, 0, width),
                np.clip(left + bw, 0, width),
            ],
            axis=1,
        )
        np.testing.assert_array_equal(boxes, golden[f"{case}_boxes"][k])
        np.testing.assert_array_equal(np.asarray(mixed), golden[f"{case}_mixed"][k])
        # One nominal weight for the whole batch, exactly the float32 their code stores.
        np.testing.assert_array_equal(
            np.asarray(weight), np.full(batch, golden[f"{case}_weight"][k])
        )


@pytest.mark.parametrize("labels", [False, True], ids=["mix_ssl", "mix_sup"])
def test_mixed_loss_value_and_gradients(golden, labels):
    name = "loss_mix_sup" if labels else "loss_mix_ssl"
    y = jnp.asarray(golden["loss_labels"].astype(np.int32)) if labels else None
    temperature = float(golden["loss_temperature"])
    base = float(golden["loss_base_temperature"])

    def loss(f, fp):
        return losses.clean_anchor_loss(f, fp, y, temperature, base)

    value, (g_f, g_fp) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(
        golden["loss_feats"], golden["loss_feats_pos"]
    )
    np.testing.assert_allclose(float(value), golden[name], rtol=1e-5)
    np.testing.assert_allclose(g_f, golden[f"{name}_grad_feats"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(g_fp, golden[f"{name}_grad_feats_pos"], atol=1e-5, rtol=0)
    # The row-max shift their code leaves in the value (it changes the value, not the gradient).
    assert abs(float(value) - golden["loss_mix_ssl_noshift"]) > 1.0 or labels


def test_clean_term_with_the_base_temperature(golden):
    """Their clean SSL term (also the attribution loss): SupCon without labels, scale T / 0.07."""
    temperature = float(golden["loss_temperature"])
    base = float(golden["loss_base_temperature"])
    value, grad = jax.jit(
        jax.value_and_grad(lambda f: losses.simclr_loss(f, temperature, base_temperature=base))
    )(golden["loss_feats"])
    np.testing.assert_allclose(float(value), golden["loss_clean_ssl"], rtol=1e-5)
    np.testing.assert_allclose(grad, golden["loss_clean_ssl_grad_feats"], atol=1e-5, rtol=0)
    # The same function with features_positive = features.
    same = losses.clean_anchor_loss(
        golden["loss_feats"], golden["loss_feats"], None, temperature, base
    )
    np.testing.assert_allclose(float(same), golden["loss_clean_ssl"], rtol=1e-5)


def test_weighted_mixed_term_is_weight_times_their_loss(golden):
    """``mixed_anchor_loss`` with one weight w for the batch is w * SupConLoss(f, fp)."""
    f, fp = golden["loss_feats"], golden["loss_feats_pos"]
    z_clean = np.concatenate([f[:, 0], f[:, 1]])
    z_pos = np.concatenate([fp[:, 0], fp[:, 1]])
    w = np.float32(0.6)
    got = jax.jit(
        functools.partial(
            losses.mixed_anchor_loss, temperature=0.05, loss_weight="kept", base_temperature=0.07
        )
    )(z_clean, z_pos, np.full(8, 1 - w, np.float32))
    np.testing.assert_allclose(float(got), float(w) * golden["loss_mix_ssl"], rtol=1e-5)


@pytest.mark.parametrize("case", ["a32", "b28"])
def test_the_steps_mixing_follows_the_recipe(golden, case):
    """``train_step.mix_view`` with the authors' recipe: maps of both views (fixture), one ratio
    for the batch, boxes at their centres, channel-shared noise, one nominal weight."""
    acts, grads = _layers(golden, case)
    names = [f"tap{i}" for i in range(len(acts))]
    cfg = authors_step_config(tuple(names))
    images = golden[f"{case}_images"]
    batch, height, width, channels = images.shape
    key = jax.random.key(7)
    mixed, fraction, _ = jax.jit(mix_view, static_argnums=(4, 5))(
        key, images, dict(zip(names, acts)), dict(zip(names, grads)), cfg, (height, width)
    )
    # The draws gradmix documents: k_ratio, k_fill = split(key); one ratio per batch.
    k_ratio, k_fill = jax.random.split(key)
    ratio = mixing.sample_ratios(k_ratio, batch, cfg.ratio_range, "batch")
    noise = jax.random.uniform(k_fill, (batch, height, width, 1))
    cam = golden[f"{case}_cam"][:batch]
    top, left, bh, bw = mixing.gradmix_boxes(cam, ratio, "area", "clip", box_size="floor_even")
    rows, cols = np.arange(height), np.arange(width)
    for i in range(batch):
        inside = ((rows >= top[i]) & (rows < top[i] + bh[i]))[:, None] & (
            (cols >= left[i]) & (cols < left[i] + bw[i])
        )[None, :]
        want = np.where(inside[..., None], np.asarray(noise[i]), images[i])
        np.testing.assert_array_equal(np.asarray(mixed[i]), want)
        if inside.any():  # the same value in every channel
            assert np.all(np.asarray(mixed[i])[inside] == np.asarray(mixed[i])[inside][:, :1])
    cut = int(np.floor(np.sqrt(np.float32(ratio[0])) * np.float32(height)))
    np.testing.assert_allclose(fraction, np.full(batch, cut * cut / (height * width)), rtol=1e-6)


def test_recipe_fills_unset_fields_and_keeps_overrides():
    c = get_base_config()
    c.lock()
    paper = resolve_recipe(c)
    for field, value in RECIPES["paper"].items():
        node, leaf = field.rsplit(".", 1) if "." in field else ("", field)
        assert (paper[node] if node else paper)[leaf] == value
    c.gradmix.recipe = "authors"
    c.gradmix.fill = "sample"  # an explicit field beats the recipe
    authors = resolve_recipe(c)
    assert authors.gradmix.fill == "sample"
    assert authors.gradmix.box_size == "floor_even" and authors.eval.features == "projection"
    assert authors.base_temperature == 0.07 and authors.augment.normalize == "dataset"
    assert resolve_recipe(authors).to_dict() == authors.to_dict()  # idempotent
    cfg = StepConfig.from_config(c)
    assert (cfg.fill, cfg.mixed_loss, cfg.exact, cfg.base_temperature) == (
        "sample",
        "clean_anchors",
        True,
        0.07,
    )
    # The paper recipe's step settings are the StepConfig defaults the paper numbers came from.
    assert StepConfig.from_config(get_base_config()) == StepConfig()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("gradmix.recipe", "torch", "gradmix.recipe must be one of ['paper', 'authors']"),
        ("gradmix.box_size", "ceil", "gradmix.box_size must be one of ['round', 'floor_even']"),
        (
            "gradmix.mixed_loss",
            "x",
            "gradmix.mixed_loss must be one of ['simclr', 'clean_anchors']",
        ),
        ("augment.normalize", "imagenet", "augment.normalize must be one of ['none', 'dataset']"),
        ("base_temperature", -1.0, "base_temperature must be >= 0"),
    ],
)
def test_bad_recipe_fields_are_one_line_errors(field, value, message):
    c = get_base_config()
    node, leaf = field.rsplit(".", 1) if "." in field else (None, field)
    (c[node] if node else c)[leaf] = value
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_config(c)


def test_moco_refuses_the_clean_anchor_term():
    c = get_base_config()
    c.objective = "moco"
    c.gradmix.recipe = "authors"
    with pytest.raises(
        ConfigError, match="gradmix.mixed_loss must be 'simclr' for objective='moco'"
    ):
        validate_config(c)


def test_input_normalisation_of_views_and_evaluation():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 6, 6, 3), dtype=np.uint8)
    mean, std = pipeline.input_stats(images)
    x = images.astype(np.float64) / 255
    np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-9)
    np.testing.assert_allclose(std, x.std(axis=(0, 1, 2)), rtol=1e-9)
    got = augment.eval_transform(images, (6, 6), mean, std)
    np.testing.assert_allclose(got, (x - mean) / std, atol=1e-5)
    params = augment.AugmentParams.rgb((6, 6), mean=mean, std=std, jitter_prob=0.0)
    plain = augment.AugmentParams.rgb((6, 6), jitter_prob=0.0)
    key = jax.random.key(1)
    np.testing.assert_allclose(
        augment.augment_batch(key, images, params),
        (np.asarray(augment.augment_batch(key, images, plain)) - mean) / std,
        atol=1e-5,
    )
    c = get_base_config()
    c.gradmix.recipe = "authors"
    assert pipeline.needs_input_stats(c)
    assert pipeline.augment_params(c, (mean, std)).mean == mean
    c.augment.mean, c.augment.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    assert not pipeline.needs_input_stats(c)
    assert pipeline.augment_params(c).std == (0.25, 0.25, 0.25)
    with pytest.raises(ValueError, match="AugmentParams.std"):
        augment.AugmentParams.rgb((6, 6), mean=(0.5,), std=(0.0,))
