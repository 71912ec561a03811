"""Analytic FLOP counts vs XLA's cost analysis; peak lookup."""

import jax
import jax.numpy as jnp
import pytest

from gradmix_jax.models import create_model
from gradmix_jax.tools import flops


@pytest.mark.parametrize(
    "size,k,stride,pad", [(8, 3, 1, 1), (7, 3, 2, 1), (9, 7, 2, 3), (8, 1, 2, 0)]
)
def test_single_conv_matches_xla_exactly(size, k, stride, pad):
    """With count_padding=False the count is XLA's (only taps that hit the image)."""
    x = jnp.zeros((1, size, size, 3))
    w = jnp.zeros((k, k, 3, 5))
    conv = jax.jit(
        lambda x, w: jax.lax.conv_general_dilated(
            x, w, (stride, stride), [(pad, pad)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    )
    got, h_out, _ = flops._conv(size, size, 3, 5, k, stride, pad, count_padding=False)
    assert got == flops.xla_flops(conv.lower(x, w))
    assert h_out == conv(x, w).shape[1]
    # Counting padding: every output position costs 2·K²·C_in·C_out.
    assert flops._conv(size, size, 3, 5, k, stride, pad, True)[0] == 2 * h_out**2 * k * k * 3 * 5


@pytest.mark.parametrize(
    "arch,stem,size", [("resnet18", "cifar", 32), ("resnet50", "imagenet", 64)]
)
def test_model_forward_close_to_xla(arch, stem, size):
    """Convolutions and dense layers are all but the elementwise remainder of XLA's count."""
    model = create_model(arch, 16, 32, num_classes=10, stem=stem)
    x = jnp.zeros((1, size, size, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    xla = flops.xla_flops(jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x))
    ours = flops.forward_flops(arch, 16, size, 3, stem, 32, num_classes=10, count_padding=False)
    assert 0.95 * xla < ours <= xla


def test_resnet18_cifar_reference_count():
    """ResNet18 (CIFAR stem, width 64) at 32x32: the widely quoted 0.56 GMACs = 1.11 GFLOPs."""
    f = flops.forward_flops("resnet18", 64, 32, 3, "cifar", feature_dim=128)
    assert abs(f / 2 - 0.557e9) / 0.557e9 < 0.01


def test_peak_lookup_and_override():
    assert flops.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == (
        989.4e12,
        "published dense peak (flops.PEAK_TFLOPS)",
    )
    assert flops.peak_flops("anything", "float32", override_tflops=2.0)[0] == 2e12
    with pytest.raises(ValueError, match="arch must be one of"):
        flops.forward_flops("vgg")
