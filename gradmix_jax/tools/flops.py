"""FLOP counts and peak throughput for model-FLOPs utilisation (MFU).

Two counts, both per train step:

* ``xla_step_flops``: XLA's HLO cost analysis of the *lowered* (not yet backend-compiled) step.
  The compiled module's analysis on GPU misses the convolutions, which the GPU backend rewrites
  into cuDNN custom calls that the analysis does not count; the lowered module still holds them as
  plain HLO convolutions, on every platform. It counts everything the step does (attribution,
  augmentation, optimizer), with convolutions counted over valid (non-padding) taps only.
* ``model_step_flops``: the analytic model FLOPs of the useful work: forward + backward = 3x the
  forward FLOPs of every image that is trained on (2N clean views, + N mixed views), with the
  usual convention that a convolution costs 2·K²·C_in·C_out per output position (padding counted).

MFU = FLOPs per step / step time / peak FLOP/s of the device (``peak_flops``).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from gradmix_jax.models import ARCHITECTURES

# Dense peak TFLOP/s per chip: (float32 as XLA runs it by default, bfloat16). On NVIDIA Ampere and
# later XLA runs float32 convolutions and matmuls on TF32 tensor cores by default, so the float32
# peak is the TF32 one; TPUs run default-precision float32 matmuls as bfloat16 passes.
PEAK_TFLOPS: dict[str, tuple[float, float]] = {
    "NVIDIA H100 80GB HBM3": (494.7, 989.4),  # H100 SXM5
    "NVIDIA H100 PCIe": (378.0, 756.0),
    "NVIDIA H200": (494.7, 989.4),
    "NVIDIA A100-SXM4-80GB": (156.0, 312.0),
    "NVIDIA A100-SXM4-40GB": (156.0, 312.0),
    "TPU v4": (275.0, 275.0),
    "TPU v5 lite": (197.0, 197.0),
    "TPU v5": (459.0, 459.0),
    "TPU v6 lite": (918.0, 918.0),
}


def _valid_taps(size_in: int, kernel: int, stride: int, pad: int) -> tuple[int, int]:
    """(output size, sum over output positions of the kernel taps that hit the input) in 1-D."""
    size_out = (size_in + 2 * pad - kernel) // stride + 1
    taps = sum(
        sum(0 <= o * stride - pad + j < size_in for j in range(kernel)) for o in range(size_out)
    )
    return size_out, taps


def _conv(h, w, c_in, c_out, k, stride, pad, count_padding):
    h_out, taps_h = _valid_taps(h, k, stride, pad)
    w_out, taps_w = _valid_taps(w, k, stride, pad)
    positions = h_out * w_out * k * k if count_padding else taps_h * taps_w
    return 2 * positions * c_in * c_out, h_out, w_out


def forward_flops(
    arch: str = "resnet18",
    width: int = 64,
    image_size: int = 32,
    channels: int = 3,
    stem: str = "cifar",
    feature_dim: int = 128,
    num_classes: int = 0,
    count_padding: bool = True,
) -> int:
    """Multiply-add FLOPs (2 per MAC) of one image through ``ContrastiveResNet``'s convolutions and
    dense layers (normalisation, activations and pooling not counted).

    ``count_padding=False`` counts only the taps that hit the image, as XLA's cost analysis does.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
    kind, stages = ARCHITECTURES[arch]
    total = 0
    h = w = image_size
    if stem == "cifar":
        f, h, w = _conv(h, w, channels, width, 3, 1, 1, count_padding)
    elif stem == "imagenet":
        f, h, w = _conv(h, w, channels, width, 7, 2, 3, count_padding)
        h, w = (h + 2 - 3) // 2 + 1, (w + 2 - 3) // 2 + 1  # 3x3/2 max-pool
    else:
        raise ValueError(f"stem must be one of ['cifar', 'imagenet'], got {stem!r}")
    total += f
    c = width
    for s, blocks in enumerate(stages):
        filters = width * 2**s
        for b in range(blocks):
            stride = 2 if (s > 0 and b == 0) else 1
            if kind == "basic":
                f1, h1, w1 = _conv(h, w, c, filters, 3, stride, 1, count_padding)
                f2, _, _ = _conv(h1, w1, filters, filters, 3, 1, 1, count_padding)
                out = filters
                total += f1 + f2
            else:
                f1, _, _ = _conv(h, w, c, filters, 1, 1, 0, count_padding)
                f2, h1, w1 = _conv(h, w, filters, filters, 3, stride, 1, count_padding)
                f3, _, _ = _conv(h1, w1, filters, 4 * filters, 1, 1, 0, count_padding)
                out = 4 * filters
                total += f1 + f2 + f3
            if stride != 1 or c != out:  # projection shortcut
                total += _conv(h, w, c, out, 1, stride, 0, count_padding)[0]
            h, w, c = h1, w1, out
    total += 2 * c * c + 2 * c * feature_dim  # projection head
    total += 2 * c * num_classes
    return total


# Images that go through forward + backward per batch image, by mixing method (fused step).
IMAGES_TRAINED_PER_SAMPLE = {
    "none": 2,
    "gradmix": 3,
    "cutmix": 3,
    "mixup": 3,
    "gradmix_exact": 4,
    "gradmix_authors": 4,  # exact=True: view 2 is forwarded again beside the mixed view
}


def model_step_flops(config, method: str, channels: int) -> int:
    """Analytic model FLOPs of one train step (3 x forward per trained image, see module doc)."""
    m = config.model
    per_image = forward_flops(
        m.name, m.width, config.data.image_size, channels, m.stem, m.feature_dim
    )
    return 3 * per_image * IMAGES_TRAINED_PER_SAMPLE[method] * config.batch_size


def xla_flops(lowered) -> float:
    """FLOPs of a ``jax.jit(...).lower(...)`` result from XLA's HLO cost analysis (NaN if absent)."""
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def measured_matmul_peak(dtype=jnp.float32, size: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of a [size, size] @ [size, size] matmul on the default device (an empirical
    peak for devices without a published number, e.g. CPUs)."""
    a = jnp.ones((size, size), dtype)
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a))
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best


def peak_flops(device_kind: str, dtype: str, override_tflops: float = 0.0) -> tuple[float, str]:
    """(peak FLOP/s, where the number comes from) for ``device_kind`` and activation ``dtype``."""
    if override_tflops > 0:
        return override_tflops * 1e12, "config bench.peak_tflops"
    if device_kind in PEAK_TFLOPS:
        f32, bf16 = PEAK_TFLOPS[device_kind]
        return (
            bf16 if dtype == "bfloat16" else f32
        ) * 1e12, "published dense peak (flops.PEAK_TFLOPS)"
    jdtype = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    return measured_matmul_peak(jdtype), f"measured 2048x2048 {np.dtype(jdtype).name} matmul"
