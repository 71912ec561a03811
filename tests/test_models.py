"""ResNet shapes, taps, and the perturbation gradients that LayerCAM reads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradmix_jax.models import TAP_NAMES, create_model, validate_taps


@pytest.mark.parametrize("name,dim", [("resnet18", 32), ("resnet34", 32), ("resnet50", 128)])
def test_shapes_and_taps(name, dim):
    model = create_model(name, width=4, feature_dim=16, num_classes=5)
    x = jnp.ones((2, 16, 16, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    (z, aux), state = jax.eval_shape(
        lambda v: model.apply(v, x, train=True, mutable=["batch_stats", "intermediates"]), variables
    )
    assert z.shape == (2, 16)
    assert aux["features"].shape == (2, dim)
    assert aux["logits"].shape == (2, 5)
    taps = state["intermediates"]["encoder"]
    assert sorted(taps) == sorted(TAP_NAMES)
    sizes = [taps[t][0].shape[1] for t in TAP_NAMES]
    assert sizes == [16, 8, 4, 2]  # CIFAR stem: no downsampling before stage 2
    assert set(variables["perturbations"]["encoder"]) == set(TAP_NAMES)


def test_imagenet_stem_downsamples():
    model = create_model("resnet18", width=4, stem="imagenet")
    x = jnp.ones((1, 64, 64, 3))
    v = model.init(jax.random.key(0), x, train=False)
    _, state = model.apply(v, x, train=False, mutable=["intermediates"])
    assert state["intermediates"]["encoder"]["conv2_2"][0].shape[1] == 16


def test_projection_is_normalised_and_eval_is_deterministic():
    model = create_model("resnet18", width=4, feature_dim=8)
    x = jax.random.uniform(jax.random.key(1), (3, 8, 8, 1))
    v = model.init(jax.random.key(0), x, train=False)
    z, _ = model.apply(v, x, train=False)
    np.testing.assert_allclose(jnp.linalg.norm(z, axis=-1), 1.0, rtol=1e-5)


def test_perturbation_gradient_is_the_activation_gradient():
    """d loss / d perturbation equals the directional derivative w.r.t. the tap activation."""
    model = create_model("resnet18", width=4, feature_dim=8)
    x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1))
    v = model.init(jax.random.key(0), x, train=False)
    zeros = jax.tree.map(jnp.zeros_like, v["perturbations"])

    def loss(pert):
        z, aux = model.apply(
            {"params": v["params"], "batch_stats": v["batch_stats"], "perturbations": pert},
            x,
            train=False,
        )
        return jnp.sum(z[:, 0] * 3.0) + jnp.sum(aux["features"] ** 2)

    g = jax.grad(loss)(zeros)["encoder"]["conv4_2"]
    direction = jax.random.normal(jax.random.key(2), g.shape)
    eps = 1e-2

    def bump(s):
        return jax.tree.map(jnp.zeros_like, zeros) | {
            "encoder": {**zeros["encoder"], "conv4_2": s * direction}
        }

    fd = (loss(bump(eps)) - loss(bump(-eps))) / (2 * eps)
    np.testing.assert_allclose(float(jnp.sum(g * direction)), float(fd), rtol=1e-2)
    assert float(jnp.abs(g).sum()) > 0


def test_bad_names():
    with pytest.raises(ValueError, match="model.name"):
        create_model("resnet19")
    with pytest.raises(ValueError, match="gradmix.layers"):
        validate_taps(["conv3_2", "conv6_2"])
