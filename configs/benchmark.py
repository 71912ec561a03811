"""Train-step benchmark on synthetic CIFAR-shaped data (no dataset needed).

Command:
    python -m gradmix_jax.tools.benchmark --config configs/benchmark.py --json runs/bench.json

Defaults (ResNet18 width 32, batch 32, 32x32x3) finish in about a minute or two on a 2-core CPU.
The paper's size: --config.model.width=64 --config.batch_size=256.
Measured ratios are in docs/performance.md.
"""

from gradmix_jax.training.config_base import get_base_config


def get_config():
    c = get_base_config()
    c.model.width = 32
    c.batch_size = 32
    c.data.image_size = 32
    c.data.protocol = "cifar10"
    c.num_steps = 1
    c.bench = dict(
        methods=("none", "gradmix", "gradmix_exact", "gradmix_authors", "cutmix", "mixup"),
        num_images=1024,  # synthetic uint8 images held on the device
        num_classes=6,
        channels=3,
        warmup_steps=2,
        timed_steps=7,
        checkpoint_saves=3,  # timed saves of the gradmix state (checkpoint cost line); 0: none
        grid=(),  # e.g. ('float32/256/32', 'bfloat16/1024/64'): dtype/batch/image size settings
        peak_tflops=0.0,  # > 0 overrides the device's peak (else flops.PEAK_TFLOPS or a measured matmul)
        taps_cost=True,  # time taps.vjp against a plain jax.vjp of the same forward pass
        profile_dir="",  # set: jax.profiler trace + compiled HLO of the GradMix step written here
    )
    return c
