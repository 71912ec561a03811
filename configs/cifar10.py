"""CIFAR10 protocol (6 known / 4 unknown classes), paper Table 8: θ=1, λ=1.2, k=3, 600 epochs, batch 256.

Command (data prepared once, see README "Datasets"):
    python -m gradmix_jax.train --config configs/cifar10.py --workdir runs/cifar10 --config.data.split=0

Paper (Table 2, GradMix, mean of 5 splits): AUROC 91.33%. Not run with this implementation yet
(the dataset must be prepared with TFDS first). 600 epochs need an accelerator: at the step rates
in docs/performance.md (10,005 images/s on an H100 in float32, 19,129 on an H200 in bfloat16, both
jax 0.11.2, 2026-11), 600 epochs of the 30,000 known training images take about 30 (16) minutes of
steps.
"""

from gradmix_jax.training.config_base import get_protocol_config


def get_config():
    return get_protocol_config("cifar10", epochs=600, simclr_weight=1.2)
