"""ResNet shapes, tap paths, and the tap gradients that LayerCAM reads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _reference import add_at_paths

from gradmix_jax import taps
from gradmix_jax.models import TAP_NAMES, create_model, resnet_tap_paths, validate_taps


@pytest.mark.parametrize("name,dim", [("resnet18", 32), ("resnet34", 32), ("resnet50", 128)])
def test_shapes_and_taps(name, dim):
    model = create_model(name, width=4, feature_dim=16, num_classes=5)
    x = jnp.ones((2, 16, 16, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    (z, aux), state = jax.eval_shape(
        lambda v: model.apply(
            v, x, train=True, capture_intermediates=True, mutable=["batch_stats", "intermediates"]
        ),
        variables,
    )
    assert z.shape == (2, 16)
    assert aux["features"].shape == (2, dim)
    assert aux["logits"].shape == (2, 5)
    paths = model.tap_paths
    assert list(paths) == list(TAP_NAMES) and paths == resnet_tap_paths(name)
    blocks = {"resnet18": 2, "resnet34": 3, "resnet50": 3}[name]
    assert paths["conv2_2"] == f"encoder/layer1_{blocks - 1}"  # the LAST block of the stage
    sizes = []
    for tap in TAP_NAMES:
        node = state["intermediates"]
        for part in paths[tap].split("/"):
            node = node[part]
        sizes.append(node["__call__"][0].shape[1])
    assert sizes == [16, 8, 4, 2]  # CIFAR stem: no downsampling before stage 2
    assert set(variables) == {"params", "batch_stats"}  # no tap machinery in the model


def test_imagenet_stem_downsamples():
    model = create_model("resnet18", width=4, stem="imagenet")
    x = jnp.ones((1, 64, 64, 3))
    v = model.init(jax.random.key(0), x, train=False)
    _, acts = taps.activations(
        lambda x: model.apply(v, x, train=False), x, taps=taps.for_model(model, ["conv2_2"])
    )
    assert acts["conv2_2"].shape[1] == 16


def test_projection_is_normalised_and_eval_is_deterministic():
    model = create_model("resnet18", width=4, feature_dim=8)
    x = jax.random.uniform(jax.random.key(1), (3, 8, 8, 1))
    v = model.init(jax.random.key(0), x, train=False)
    z, _ = model.apply(v, x, train=False)
    np.testing.assert_allclose(jnp.linalg.norm(z, axis=-1), 1.0, rtol=1e-5)


def test_tap_gradient_is_the_activation_gradient():
    """taps.vjp's tap cotangent at conv4_2 equals the finite-difference directional derivative."""
    model = create_model("resnet18", width=4, feature_dim=8)
    x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1))
    v = model.init(jax.random.key(0), x, train=False)

    def loss_of(z, aux):
        return jnp.sum(z[:, 0] * 3.0) + jnp.sum(aux["features"] ** 2)

    value, vjp_fn, acts = taps.vjp(
        lambda p: loss_of(*model.apply({**v, "params": p}, x, train=False)),
        v["params"],
        taps=taps.for_model(model, ["conv4_2"]),
    )
    g = vjp_fn(jnp.ones_like(value))[1]["conv4_2"]
    direction = jax.random.normal(jax.random.key(2), g.shape)
    path = resnet_tap_paths("resnet18")["conv4_2"]
    eps = 1e-2

    def bumped(s):
        with add_at_paths({path: s * direction}):
            return loss_of(*model.apply(v, x, train=False))

    fd = (bumped(eps) - bumped(-eps)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.sum(g * direction)), float(fd), rtol=1e-2)
    assert float(jnp.abs(g).sum()) > 0
    assert acts["conv4_2"].shape == g.shape


def test_bad_names():
    with pytest.raises(ValueError, match="model.name"):
        create_model("resnet19")
    with pytest.raises(ValueError, match="gradmix.layers"):
        validate_taps(["conv3_2", "conv6_2"])
