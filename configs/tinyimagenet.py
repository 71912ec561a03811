"""TinyImageNet protocol (20 known / 180 unknown classes), paper Table 8: θ=1, λ=1, k=3, 600 epochs,
batch 256, 64x64 images.

Command (tiny-imagenet-200.zip or its folder under data.data_dir, see README "Datasets"):
    python -m gradmix_jax.train --config configs/tinyimagenet.py --workdir runs/tiny \
        --config.data.data_dir=/path/holding/tiny-imagenet-200

Paper (Table 2, GradMix, mean of 5 splits): AUROC 81.92%. Measured here: not run yet.
Class index = position of the wnid in sorted wnids.txt (the convention of the split lists).
"""

from gradmix_jax.training.config_base import get_protocol_config


def get_config():
    return get_protocol_config("tinyimagenet", epochs=600, simclr_weight=1.0, image_size=64)
