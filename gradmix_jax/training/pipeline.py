"""The input pipeline: the split in host memory, on the device as uint8, and per-step batches.

The data order is a pure function of (seed, step): each epoch is a permutation seeded by
(seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would. The epoch's
index matrix goes to the device once per epoch; the step picks its row on the device.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from gradmix_jax import augment
from gradmix_jax.data import OpenSetData, load_closed_set, load_openset
from gradmix_jax.training.validation import ConfigError


def augment_params(config) -> augment.AugmentParams:
    """The view augmentation of ``config.augment`` at ``data.image_size``."""
    size = (config.data.image_size, config.data.image_size)
    overrides = {
        k: (tuple(v) if isinstance(v, (list, tuple)) else v)
        for k, v in config.augment.items()
        if k != "preset" and v is not None
    }
    preset = getattr(augment.AugmentParams, config.augment.preset)  # one of augment.PRESETS
    try:
        return preset(size, **overrides)
    except ValueError as e:
        # AugmentParams names its fields "AugmentParams.<field>"; the config calls them "augment.<field>".
        raise ConfigError(str(e).replace("AugmentParams.", "augment.", 1)) from None


def load_data(config) -> OpenSetData:
    """``config.data``'s split in host memory (closed-set data when ``data.closed_set``)."""
    if config.data.closed_set:
        return load_closed_set(
            config.data.protocol, config.data.data_dir or None, config.data.closed_set_classes
        )
    return load_openset(
        config.data.protocol,
        config.data.split,
        tuple(config.data.known_classes),
        config.data.data_dir or None,
        validation=config.data.validation,
    )


def steps_per_epoch_of(num_train: int, batch_size: int) -> int:
    """Full batches per epoch; the last incomplete batch of an epoch is dropped."""
    return max(num_train // batch_size, 1)


def num_train_steps(config, num_train: int) -> tuple[int, int]:
    """(total steps, steps per epoch)."""
    steps_per_epoch = steps_per_epoch_of(num_train, config.batch_size)
    total = config.num_steps if config.num_steps > 0 else config.num_epochs * steps_per_epoch
    return total, steps_per_epoch


@functools.lru_cache(maxsize=2)
def _epoch_permutation(seed: int, epoch: int, num_train: int) -> np.ndarray:
    perm = np.random.default_rng([seed, epoch]).permutation(num_train).astype(np.int32)
    perm.flags.writeable = False
    return perm


def batch_indices(seed: int, step: int, num_train: int, batch_size: int) -> np.ndarray:
    """Indices of ``step``'s batch: epoch-wise permutations seeded by (seed, epoch).

    A pure function of its arguments, so a resumed run draws exactly the batches of an
    uninterrupted one; each epoch's permutation is computed once (cached).
    """
    epoch, pos = divmod(step, steps_per_epoch_of(num_train, batch_size))
    return epoch_index_matrix(seed, epoch, num_train, batch_size)[pos]


def epoch_index_matrix(seed: int, epoch: int, num_train: int, batch_size: int) -> np.ndarray:
    """All batches of ``epoch`` as [steps_per_epoch, batch_size]; row r = batch_indices(epoch*spe + r)."""
    steps_per_epoch = steps_per_epoch_of(num_train, batch_size)
    perm = _epoch_permutation(seed, epoch, num_train)
    return perm[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)


def on_device_batches(train_step, steps_per_epoch: int):
    """Wraps ``train_step(state, images, labels, idx)`` to take the epoch's index matrix instead.

    The matrix goes to the device once per epoch; the step picks row ``state.step % steps_per_epoch``
    on the device, so no host work or transfer happens per step.
    """

    def step(state, images, labels, epoch_indices):
        idx = jax.lax.dynamic_index_in_dim(
            epoch_indices, state.step % steps_per_epoch, 0, keepdims=False
        )
        return train_step(state, images, labels, idx)

    return step
