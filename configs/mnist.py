"""MNIST protocol (6 known / 4 unknown digits), paper Table 8: θ=1, λ=1, k=3, 20 epochs, batch 256.

Command (data prepared once, see README "Datasets"):
    python -m gradmix_jax.train --config configs/mnist.py --workdir runs/mnist --config.data.split=0

Paper (Table 2, GradMix, mean of 5 splits): AUROC 99.8%. Not run with this implementation yet
(the dataset must be prepared with TFDS first); `python -m experiments.osr_table --protocols mnist`
runs all five splits.

Choices: images are resized 28 -> 32 on the device, as ARPL/Vaze et al. do for MNIST, so the CIFAR
stem gives the same 32/16/8/4 tap resolutions as the other protocols. The paper aggregates three
layers "except for MNIST and SVHN" without naming the layers used there; we use conv5_2 alone, the
usual CAM layer (the layer ablation script can test others). Augmentation: the 'digits' preset (no
horizontal flip: it turns digits into other shapes).
"""

from gradmix_jax.training.config_base import get_protocol_config


def get_config():
    return get_protocol_config(
        "mnist", epochs=20, simclr_weight=1.0, layers=("conv5_2",), image_size=32, preset="digits"
    )
