"""SVHN protocol (6 known / 4 unknown digits), paper Table 8: θ=1, λ=1, k=3, 100 epochs, batch 256.

Command (data prepared once, see README "Datasets"):
    python -m gradmix_jax.train --config configs/svhn.py --workdir runs/svhn --config.data.split=0

Paper (Table 2, GradMix, mean of 5 splits): AUROC 94.7%. Not run with this implementation yet
(the dataset must be prepared with TFDS first).

Choices: conv5_2 alone for the attribution (the paper does not aggregate layers for SVHN and does
not name the layer; conv5_2 is the usual CAM layer). RGB SimCLR augmentation without horizontal
flips (mirrored digits are other shapes).
"""

from gradmix_jax.training.config_base import get_protocol_config


def get_config():
    return get_protocol_config(
        "svhn", epochs=100, simclr_weight=1.0, layers=("conv5_2",), flip_prob=0.0
    )
