"""Fashion-MNIST open-set protocol on a CPU (draft; see docs/tuning_fashion_mnist.md)."""

from gradmix_jax.config_base import get_base_config


def get_config():
    c = get_base_config()
    c.data.protocol = "fashion_mnist"
    c.data.image_size = 16
    c.augment.preset = "rgb"
    c.model.width = 16
    c.batch_size = 128
    c.num_epochs = 0
    c.num_steps = 900
    c.temperature = 0.2
    c.gradmix.layers = ("conv3_2", "conv4_2", "conv5_2")
    c.log_every_steps = 100
    c.checkpoint_every_steps = 900
    c.progress_bar = False
    return c
