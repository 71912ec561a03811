"""The input pipeline: which path a run takes, and its per-step batches.

Two paths, one data order. The order is a pure function of (seed, step): each epoch is a
permutation seeded by (seed, epoch), so a resumed run, after a kill too, sees exactly the batches
an uninterrupted one would, and both paths see the same batches.

- ``device``: the training split lives on every device as uint8; the epoch's index matrix goes to
  the device once per epoch and the step picks its row there (no per-step host work).
- ``stream``: the split stays where it is (array_record files, image folders, host memory); Grain
  reads step ``s``'s records, ``batch_indices(seed, s)``, on reader threads (and optionally worker
  processes), each process only its rows of the global batch, which
  ``jax.make_array_from_process_local_data`` assembles. No iterator state needs saving: the
  stream of a resumed run starts at its step.

``data.pipeline='auto'`` takes the device path when the decoded training split fits
``data.device_budget_mb`` and streams otherwise.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from gradmix_jax import augment
from gradmix_jax.data import OpenSetData, load_closed_set, load_openset
from gradmix_jax.data import images as image_sources
from gradmix_jax.training import parallel
from gradmix_jax.training.config_base import resolve_recipe
from gradmix_jax.training.validation import ConfigError

#: ``config.augment`` fields that are not ``AugmentParams`` overrides (input normalisation).
_NORM_FIELDS = ("preset", "normalize", "mean", "std")
#: At most this many training images (evenly spaced) measure a lazy split's mean/std.
STATS_SAMPLE = 10_000


def needs_input_stats(config) -> bool:
    """True when ``augment.normalize='dataset'`` takes its mean/std from the training split."""
    config = resolve_recipe(config)
    return config.augment.get("normalize") == "dataset" and config.augment.get("mean") is None


def input_stats(images, num_threads: int = 16) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)`` of a uint8 ``[N, H, W, C]`` split on the [0, 1] scale.

    An array is measured whole; a lazy source on ``STATS_SAMPLE`` evenly spaced images (the same
    ones on every process, so every process normalises alike).
    """
    n = len(images)
    if image_sources.is_lazy(images) and n > STATS_SAMPLE:
        idx = np.linspace(0, n - 1, STATS_SAMPLE).round().astype(np.int64)
        images = image_sources.read(images, idx, num_threads)
    images = np.asarray(images)
    count = np.zeros(images.shape[-1])
    total = np.zeros(images.shape[-1])
    squares = np.zeros(images.shape[-1])
    for start in range(0, n, 4096):  # float64 in chunks: bounded memory
        chunk = images[start : start + 4096].reshape(-1, images.shape[-1]).astype(np.float64) / 255
        count += len(chunk)
        total += chunk.sum(0)
        squares += (chunk**2).sum(0)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return tuple(float(m) for m in mean), tuple(float(max(s, 1e-6)) for s in std)


def augment_params(config, stats=None) -> augment.AugmentParams:
    """The view augmentation of ``config.augment`` at ``data.image_size``.

    With ``augment.normalize='dataset'`` the views are normalised by ``augment.mean`` / ``std``,
    or by ``stats`` (``input_stats`` of the training split) when those are unset; without
    ``stats`` such a config gets no normalisation yet (the trainer passes them after loading).
    """
    config = resolve_recipe(config)
    size = (config.data.image_size, config.data.image_size)
    overrides = {
        k: (tuple(v) if isinstance(v, (list, tuple)) else v)
        for k, v in config.augment.items()
        if k not in _NORM_FIELDS and v is not None
    }
    if config.augment.get("normalize") == "dataset":
        if config.augment.get("mean") is not None:
            overrides.update(mean=tuple(config.augment.mean), std=tuple(config.augment.std))
        elif stats is not None:
            overrides.update(mean=tuple(stats[0]), std=tuple(stats[1]))
    preset = getattr(augment.AugmentParams, config.augment.preset)  # one of augment.PRESETS
    try:
        return preset(size, **overrides)
    except ValueError as e:
        # AugmentParams names its fields "AugmentParams.<field>"; the config calls them "augment.<field>".
        raise ConfigError(str(e).replace("AugmentParams.", "augment.", 1)) from None


def load_data(config) -> OpenSetData:
    """``config.data``'s split (closed-set data when ``data.closed_set``).

    With ``data.pipeline='stream'`` TFDS splits stay lazy (read from their array_record files);
    image folders and ImageNet100 are always lazy (decoded to ``data.image_size``); everything else
    is in host memory.
    """
    lazy = config.data.pipeline == "stream"
    if config.data.closed_set:
        return load_closed_set(
            config.data.protocol,
            config.data.data_dir or None,
            config.data.closed_set_classes,
            image_size=config.data.image_size,
            lazy=lazy,
        )
    return load_openset(
        config.data.protocol,
        config.data.split,
        tuple(config.data.known_classes),
        config.data.data_dir or None,
        validation=config.data.validation,
        image_size=config.data.image_size,
        lazy=lazy,
    )


def choose_pipeline(config, data: OpenSetData) -> tuple[str, str]:
    """('device' | 'stream', why): ``data.pipeline``, or for 'auto' the decoded training split's
    size against ``data.device_budget_mb`` (every device holds the whole split on the device
    path)."""
    mib = image_sources.nbytes(data.train_images) / 2**20
    budget = config.data.device_budget_mb
    if config.data.pipeline != "auto":
        return config.data.pipeline, f"data.pipeline={config.data.pipeline!r}"
    if mib <= budget:
        return "device", f"training split {mib:.1f} MiB <= data.device_budget_mb={budget:g}"
    return "stream", f"training split {mib:.1f} MiB > data.device_budget_mb={budget:g}"


def for_device_path(data: OpenSetData, num_threads: int) -> OpenSetData:
    """``data`` with its training images in host memory (the device path puts them on the
    devices); lazy test images stay lazy: evaluation reads them in batches."""
    if not image_sources.is_lazy(data.train_images):
        return data
    return dataclasses.replace(
        data, train_images=image_sources.as_array(data.train_images, num_threads)
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


class _StepRecords:
    """Record ``j`` of a process's stream: row ``offset + j % rows`` of step
    ``first_step + j // rows``'s batch, as (image uint8 [H, W, C], label int32). Picklable, so
    Grain can hand it to worker processes."""

    def __init__(self, images, labels, seed, batch_size, first_step, num_steps, rows, offset):
        self.images, self.labels = images, np.asarray(labels, np.int32)
        self.seed, self.batch_size, self.first_step = seed, batch_size, first_step
        self.num_steps, self.rows, self.offset = num_steps, rows, offset

    def __len__(self) -> int:
        return self.num_steps * self.rows

    def __getitem__(self, j: int):
        step, row = divmod(int(j), self.rows)
        index = batch_indices(self.seed, self.first_step + step, len(self.labels), self.batch_size)
        i = int(index[self.offset + row])
        return np.asarray(self.images[i], np.uint8), self.labels[i]


def stream_batches(
    images,
    labels: np.ndarray,
    *,
    seed: int,
    batch_size: int,
    start_step: int,
    num_steps: int,
    num_threads: int = 16,
    num_workers: int = 0,
    prefetch_batches: int = 4,
):
    """This process's rows of steps ``start_step .. start_step + num_steps - 1``, as a Grain
    iterator of (images uint8 [rows, H, W, C], labels int32 [rows]), rows = batch_size / processes.

    Step ``s``'s global batch is ``images[batch_indices(seed, s, N, batch_size)]``: the device
    path's batch, so the two paths train on the same data, and a stream started at a resumed
    run's step continues exactly. Records are read by ``num_threads`` Grain threads
    (``prefetch_batches`` batches ahead); ``num_workers > 0`` makes that many worker processes
    read whole batches instead, each with ``num_threads`` threads.
    """
    import grain

    rows, offset = parallel.process_rows(batch_size)
    if not image_sources.is_lazy(images) and num_workers == 0:
        # A split in host memory needs no reader threads: one fancy index per step is several
        # times faster than Grain's per-record path.
        return _array_batches(images, labels, seed, batch_size, start_step, num_steps, rows, offset)
    records = _StepRecords(images, labels, seed, batch_size, start_step, num_steps, rows, offset)
    source = grain.MapDataset.source(records)
    if num_workers == 0:
        # Threads read single records in order, a bounded window ahead; memory: about
        # prefetch_batches batches of this process's rows.
        options = grain.ReadOptions(
            num_threads=max(num_threads, 1), prefetch_buffer_size=max(prefetch_batches * rows, 1)
        )
        dataset = source.to_iter_dataset(options).batch(
            rows, drop_remainder=True, batch_fn=_stack_pairs
        )
    else:
        # Worker processes take whole batches (Grain hands elements to workers round-robin, so
        # the element must be the batch for each batch to hold its step's rows); each worker's
        # threads read one batch each, so memory is about num_workers * num_threads batches.
        from absl import flags

        if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags (defaults outside a CLI)
            flags.FLAGS.mark_as_parsed()
        options = grain.ReadOptions(
            num_threads=max(num_threads, 1), prefetch_buffer_size=max(num_threads, 1)
        )
        dataset = (
            source.batch(rows, drop_remainder=True, batch_fn=_stack_pairs)
            .to_iter_dataset(options)
            .mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
        )
    return iter(dataset)


def _array_batches(images, labels, seed, batch_size, start_step, num_steps, rows, offset):
    labels = np.asarray(labels, np.int32)
    for step in range(start_step, start_step + num_steps):
        index = batch_indices(seed, step, len(labels), batch_size)[offset : offset + rows]
        yield images[index], labels[index]


def _stack_pairs(pairs):
    return np.stack([p[0] for p in pairs]), np.asarray([p[1] for p in pairs], np.int32)


def global_batch(local_images, local_labels, sharding, batch_size: int):
    """Every process's rows -> the global batch arrays, sharded over the batch axis."""
    return (
        parallel.from_process_rows(local_images, sharding, (batch_size, *local_images.shape[1:])),
        parallel.from_process_rows(local_labels, sharding, (batch_size,)),
    )
