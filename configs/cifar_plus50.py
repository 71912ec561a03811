"""CIFAR+50 protocol (4 known CIFAR10 classes / 50 unknown CIFAR-100 classes), paper Table 8:
θ=1, λ=1.2, k=3, 600 epochs, batch 256.

Command (cifar10 and cifar100 prepared once, see README "Datasets"):
    python -m gradmix_jax.train --config configs/cifar_plus50.py --workdir runs/cifar_plus50

Paper (Table 2, GradMix, mean of 5 splits): AUROC 97.64%. Measured here: not run yet.
"""

from gradmix_jax.training.config_base import get_protocol_config


def get_config():
    return get_protocol_config("cifar_plus50", epochs=600, simclr_weight=1.2)
