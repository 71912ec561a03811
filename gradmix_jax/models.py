"""ResNet encoders with a contrastive projection head and named attribution taps.

Layer names follow the ResNet paper: ``conv1`` is the stem and ``conv{s}_x`` the blocks of residual
stage ``s`` (2..5). A *tap* is the output of the LAST block of a stage, named ``conv{s}_2`` as in the
GradMix paper (for ResNet18 that is literally the second block; for ResNet34/50 it is the last block of
the stage under the same name, so configs carry over between depths). The model itself holds no
tap machinery: ``ContrastiveResNet.tap_paths`` maps each tap name to the submodule path of that
block (``conv3_2`` -> ``encoder/layer2_1`` for ResNet18), and ``gradmix_jax.taps`` reads
activations and gradients there, as it does in any other Flax model.

All modules are NHWC. ``ContrastiveResNet.__call__`` returns ``(z, aux)`` with ``z`` the L2-normalised
projection ``[B, feature_dim]`` and ``aux`` a dict holding ``'features'`` (pooled encoder output
``[B, D]``) and, when ``num_classes > 0``, ``'logits'`` ``[B, num_classes]``.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

TAP_NAMES: tuple[str, ...] = ("conv2_2", "conv3_2", "conv4_2", "conv5_2")
#: The paper's GradMix layers: the last three stages' taps.
DEFAULT_TAPS: tuple[str, ...] = ("conv3_2", "conv4_2", "conv5_2")

# (block kind, blocks per stage) for each supported depth.
ARCHITECTURES: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}

STEMS = ("cifar", "imagenet")
DTYPES = ("auto", "float32", "bfloat16")


def resolve_dtype(name: str):
    """'auto' = bfloat16 on GPU/TPU, float32 on CPU; else the named dtype (activations only)."""
    if name not in DTYPES:
        raise ValueError(f"model.dtype must be one of {list(DTYPES)}, got {name!r}")
    if name == "auto":
        name = "bfloat16" if jax.default_backend() in ("gpu", "tpu") else "float32"
    return jnp.dtype(name)


def model_from_config(config, num_classes: int = 0) -> "ContrastiveResNet":
    """``create_model`` from ``config.model`` (name, width, feature_dim, stem, dtype)."""
    m = config.model
    return create_model(
        m.name,
        m.width,
        m.feature_dim,
        num_classes=num_classes,
        stem=m.stem,
        dtype=resolve_dtype(m.dtype),
    )


def _conv_and_norm(dtype, train: bool):
    """Bias-free conv and BatchNorm with PyTorch's defaults (momentum 0.1 == Flax 0.9, eps 1e-5)."""
    conv = functools.partial(nn.Conv, use_bias=False, dtype=dtype)
    norm = functools.partial(
        nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype
    )
    return conv, norm


def _add_shortcut(x, y, strides: int, conv, norm):
    """relu(y + shortcut(x)); the shortcut is a strided 1x1 conv + BN when the shapes differ."""
    if x.shape != y.shape:
        x = norm()(conv(y.shape[-1], (1, 1), (strides, strides))(x))
    return nn.relu(y + x)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut. Output channels = filters."""

    filters: int
    strides: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        conv, norm = _conv_and_norm(self.dtype, train)
        y = conv(self.filters, (3, 3), (self.strides, self.strides), padding=1)(x)
        y = nn.relu(norm()(y))
        y = conv(self.filters, (3, 3), padding=1)(y)
        y = norm()(y)
        return _add_shortcut(x, y, self.strides, conv, norm)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck; output channels = 4 * filters."""

    filters: int
    strides: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        conv, norm = _conv_and_norm(self.dtype, train)
        y = nn.relu(norm()(conv(self.filters, (1, 1))(x)))
        y = conv(self.filters, (3, 3), (self.strides, self.strides), padding=1)(y)
        y = nn.relu(norm()(y))
        y = norm()(conv(self.filters * 4, (1, 1))(y))
        return _add_shortcut(x, y, self.strides, conv, norm)


class ResNetEncoder(nn.Module):
    """ResNet trunk: stem, four residual stages, global average pooling.

    Input ``[B, H, W, C]`` float images; output ``[B, D]`` with D = 8*width (basic) or 32*width
    (bottleneck). ``stem='cifar'``: 3x3 stride-1 conv, no max-pool (for 28-64 px images);
    ``stem='imagenet'``: 7x7 stride-2 conv + 3x3 stride-2 max-pool.
    """

    arch: str = "resnet18"
    width: int = 64
    stem: str = "cifar"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = True) -> jnp.ndarray:
        kind, stage_sizes = ARCHITECTURES[self.arch]
        block = BasicBlock if kind == "basic" else BottleneckBlock
        x = x.astype(self.dtype)
        if self.stem == "cifar":
            x = nn.Conv(
                self.width, (3, 3), padding=1, use_bias=False, dtype=self.dtype, name="conv1"
            )(x)
        else:
            x = nn.Conv(
                self.width,
                (7, 7),
                (2, 2),
                padding=3,
                use_bias=False,
                dtype=self.dtype,
                name="conv1",
            )(x)
        x = _conv_and_norm(self.dtype, train)[1](name="bn1")(x)
        x = nn.relu(x)
        if self.stem == "imagenet":
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, num_blocks in enumerate(stage_sizes):
            for b in range(num_blocks):
                strides = 2 if (stage > 0 and b == 0) else 1
                # Blocks use torchvision's names (layer1_0, ...); the taps use the paper's.
                x = block(
                    self.width * 2**stage, strides, dtype=self.dtype, name=f"layer{stage + 1}_{b}"
                )(x, train)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # pool in float32


class ContrastiveResNet(nn.Module):
    """Encoder + 2-layer MLP projection head (L2-normalised) + optional linear classifier.

    ``dtype`` is the activation dtype of the encoder (params stay float32); the pooled features,
    the head and everything after it are float32.

    ``__call__(images [B,H,W,C], train) -> (z [B, feature_dim], aux)``;
    ``aux = {'features': [B, D], 'logits': [B, num_classes]}`` (logits only when num_classes > 0).
    """

    arch: str = "resnet18"
    width: int = 64
    feature_dim: int = 128
    num_classes: int = 0
    stem: str = "cifar"
    dtype: Any = jnp.float32

    @property
    def tap_paths(self) -> dict[str, str]:
        """Tap name -> submodule path: ``conv{s}_2`` is the last block of stage ``s``."""
        return resnet_tap_paths(self.arch)

    @nn.compact
    def __call__(self, images: jnp.ndarray, train: bool = True):
        h = ResNetEncoder(self.arch, self.width, self.stem, self.dtype, name="encoder")(
            images, train
        )
        z = nn.Dense(h.shape[-1], name="head_hidden")(h)
        z = nn.Dense(self.feature_dim, name="head_out")(nn.relu(z))
        z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
        aux = {"features": h}
        if self.num_classes > 0:
            aux["logits"] = nn.Dense(self.num_classes, name="classifier")(h)
        return z, aux


def resnet_tap_paths(arch: str = "resnet18") -> dict[str, str]:
    """Tap name -> submodule path in ``ContrastiveResNet``: the last block of each stage."""
    _, stage_sizes = ARCHITECTURES[arch]
    return {
        tap: f"encoder/layer{stage + 1}_{blocks - 1}"
        for stage, (tap, blocks) in enumerate(zip(TAP_NAMES, stage_sizes))
    }


def create_model(
    name: str = "resnet18",
    width: int = 64,
    feature_dim: int = 128,
    num_classes: int = 0,
    stem: str = "cifar",
    dtype: Any = jnp.float32,
) -> ContrastiveResNet:
    """Builds a ContrastiveResNet, validating the names first."""
    if name not in ARCHITECTURES:
        raise ValueError(f"model.name must be one of {sorted(ARCHITECTURES)}, got {name!r}")
    if stem not in STEMS:
        raise ValueError(f"model.stem must be one of {list(STEMS)}, got {stem!r}")
    if width < 1 or feature_dim < 1:
        raise ValueError(
            f"model.width and model.feature_dim must be >= 1, got {width}, {feature_dim}"
        )
    return ContrastiveResNet(
        arch=name,
        width=width,
        feature_dim=feature_dim,
        num_classes=num_classes,
        stem=stem,
        dtype=dtype,
    )


def validate_taps(layers: Sequence[str]) -> tuple[str, ...]:
    """Checks attribution layer names; returns them as a tuple."""
    layers = tuple(layers)
    bad = [layer for layer in layers if layer not in TAP_NAMES]
    if bad or not layers:
        raise ValueError(
            f"gradmix.layers must be a non-empty subset of {list(TAP_NAMES)}, got {list(layers)}"
        )
    return layers
