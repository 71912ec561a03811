"""Offline default: scikit-learn's handwritten digits, MNIST split lists (DESIGN §6).

Command:
    python -m gradmix_jax.train --config configs/digits.py --workdir runs/digits

Result: see README "Results" (measured numbers are filled in there and below once tuned).
"""

from gradmix_jax.config_base import get_base_config


def get_config():
    c = get_base_config()
    c.data.protocol = "digits"
    c.data.image_size = 16
    c.augment.preset = "digits"
    c.model.width = 16
    c.batch_size = 128
    c.num_epochs = 0
    c.num_steps = 300
    c.temperature = 0.1
    c.gradmix.layers = ("conv3_2", "conv4_2", "conv5_2")
    c.log_every_steps = 25
    c.checkpoint_every_steps = 300
    return c
