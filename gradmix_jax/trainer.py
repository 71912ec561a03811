"""Training loop and evaluation: ``train_and_evaluate(config, workdir) -> summary``.

The split lives on the device as uint8; each step sends only [N] batch indices. The data order is a
function of (seed, step), so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import functools
import logging
import math
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from gradmix_jax import augment, checkpoint, metrics, osr, parallel
from gradmix_jax import workdir as records
from gradmix_jax.data import OpenSetData, load_closed_set, load_openset, openness
from gradmix_jax.models import model_from_config
from gradmix_jax.train_step import (StepConfig, init_state, make_eval_fn,
                                    make_optimizer, make_train_step)
from gradmix_jax.validation import ConfigError, validate_config, validate_data_dependent

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN/Inf; the last good checkpoint is kept."""


class TrainingPreempted(Exception):
    """SIGTERM or an Orbax preemption notice: the state was saved; rerun the command to resume."""

    def __init__(self, step: int, workdir: str):
        super().__init__(f"preempted at step {step}: checkpoint saved in {workdir}/checkpoints; "
                         "run the same command again to resume")
        self.step = step


class _SigtermWatch:
    """Turns SIGTERM (what schedulers send before a kill) into a flag checked between steps."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def augment_params(config) -> augment.AugmentParams:
    """The view augmentation of ``config.augment`` at ``data.image_size``."""
    size = (config.data.image_size, config.data.image_size)
    overrides = {k: (tuple(v) if isinstance(v, (list, tuple)) else v)
                 for k, v in config.augment.items() if k != "preset" and v is not None}
    preset = augment.AugmentParams.digits if config.augment.preset == "digits" else augment.AugmentParams.rgb
    try:
        return preset(size, **overrides)
    except ValueError as e:
        # AugmentParams names its fields "AugmentParams.<field>"; the config calls them "augment.<field>".
        raise ConfigError(str(e).replace("AugmentParams.", "augment.", 1)) from None


def load_data(config) -> OpenSetData:
    """``config.data``'s split in host memory (closed-set data when ``data.closed_set``)."""
    if config.data.closed_set:
        return load_closed_set(config.data.protocol, config.data.data_dir or None,
                               config.data.closed_set_classes)
    return load_openset(config.data.protocol, config.data.split, tuple(config.data.known_classes),
                        config.data.data_dir or None, validation=config.data.validation)


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
    return perm[:steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)


def build_jitted(model, tx, aug_params, step_cfg: StepConfig, schedule, mesh, steps_per_epoch: int,
                 image_shape: tuple[int, int, int], seed: int):
    """(initial state, jitted donated step) on ``mesh``: state replicated, index rows sharded.

    The step is ``step(state, images, labels, epoch_indices [steps_per_epoch, batch])``.
    Returns (state, step, rows_sharding).
    """
    repl = parallel.replicated(mesh)
    rows_sharded = parallel.batch_sharded(mesh, axis=1)
    state = jax.jit(lambda k: init_state(model, tx, k, image_shape, step_cfg), out_shardings=repl)(
        jax.random.key(seed))
    step = jax.jit(on_device_batches(make_train_step(model, tx, aug_params, step_cfg, schedule),
                                     steps_per_epoch),
                   in_shardings=(repl, repl, repl, rows_sharded), out_shardings=(repl, repl),
                   donate_argnums=(0,))
    return state, step, rows_sharded


def on_device_batches(train_step, steps_per_epoch: int):
    """Wraps ``train_step(state, images, labels, idx)`` to take the epoch's index matrix instead.

    The matrix goes to the device once per epoch; the step picks row ``state.step % steps_per_epoch``
    on the device, so no host work or transfer happens per step.
    """

    def step(state, images, labels, epoch_indices):
        idx = jax.lax.dynamic_index_in_dim(epoch_indices, state.step % steps_per_epoch, 0, keepdims=False)
        return train_step(state, images, labels, idx)

    return step


def extract_features(feature_fn, variables: dict, images: np.ndarray, batch_size: int, mesh):
    """``feature_fn`` on ``images`` in fixed-size (padded) batches: one compilation for any length.

    ``variables = {'params', 'batch_stats'}``.
    ``feature_fn(params, batch_stats, images)`` returns an array or a dict of arrays (batch-major);
    the result has the same structure as NumPy.
    """
    n = len(images)
    batch_size = min(batch_size, max(n, 1))
    batch_size += (-batch_size) % mesh.size  # every device (and process) gets an equal share
    out = []
    for start in range(0, n, batch_size):
        chunk = images[start:start + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        chunk = parallel.global_batch_array(chunk, parallel.batch_sharded(mesh))
        outputs = feature_fn(variables["params"], variables["batch_stats"], chunk)
        out.append(jax.tree.map(lambda a: parallel.to_host(a)[:len(chunk) - pad], outputs))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *out)


def _knn_auroc(train_f, train_labels, test_f, known, num_known: int, k: int) -> float:
    """AUROC of the k-NN score (Algorithm 1) of ``test_f`` against the reference ``train_f``."""
    scores, _ = osr.knn_scores(jnp.asarray(train_f), jnp.asarray(train_labels), jnp.asarray(test_f),
                               num_known, k=k)
    scores = np.asarray(scores)
    return float(metrics.auroc(scores[known], scores[~known]))


def evaluate(eval_fn, variables: dict, data: OpenSetData, config, mesh) -> dict[str, Any]:
    """Open-set evaluation on the known train split and the whole test split.

    ``variables = {'params', 'batch_stats'}``; ``eval_fn`` from ``train_step.make_eval_fn``.
    'auroc' / 'closed_set_accuracy' / 'oscr' use the k-NN rule (Algorithm 1), the paper's method,
    on ``eval.features``. Beside it: 'auroc_knn_encoder' / 'auroc_knn_projection' (the same rule on
    each feature), 'auroc_nno' (Mahalanobis distance to the closest class mean, App. A) for every
    model, 'auroc_msp' / 'auroc_max_logit' / 'auroc_entropy' (and 'closed_set_accuracy_logits') for
    models with a classifier head (else None), and 'intrinsic_dimension' (TwoNN on up to
    eval.id_samples training features).
    """
    train = extract_features(eval_fn, variables, data.train_images, config.eval.batch_size, mesh)
    test = extract_features(eval_fn, variables, data.test_images, config.eval.batch_size, mesh)
    train_f, test_f = train["features"], test["features"]
    scores, preds = osr.knn_scores(jnp.asarray(train_f), jnp.asarray(data.train_labels),
                                   jnp.asarray(test_f), data.num_known, k=config.eval.k)
    scores, preds = np.asarray(scores), np.asarray(preds)
    known = data.test_is_known
    y_known = data.test_labels[known]
    results = {"closed_set_accuracy": float(metrics.closed_set_accuracy(preds[known], y_known)),
               "auroc": None, "oscr": None, "auroc_knn_encoder": None, "auroc_knn_projection": None,
               "auroc_nno": None, "auroc_msp": None, "auroc_max_logit": None, "auroc_entropy": None,
               "closed_set_accuracy_logits": None}
    other_scores = {"nno": np.asarray(osr.mahalanobis_scores(train_f, data.train_labels, test_f,
                                                             data.num_known)[0])}
    if "logits" in test:
        logits = jnp.asarray(test["logits"])
        other_scores["msp"] = np.asarray(osr.msp_score(logits))
        other_scores["max_logit"] = np.asarray(osr.max_logit_score(logits))
        other_scores["entropy"] = np.asarray(osr.entropy_score(logits))
        results["closed_set_accuracy_logits"] = float(metrics.closed_set_accuracy(
            np.argmax(test["logits"][known], axis=1), y_known))
    if (~known).any():  # closed-set data has no unknown test samples
        results["auroc"] = float(metrics.auroc(scores[known], scores[~known]))
        results["oscr"] = float(metrics.oscr(scores[known], preds[known] == y_known, scores[~known]))
        for name, s in other_scores.items():
            results[f"auroc_{name}"] = float(metrics.auroc(s[known], s[~known]))
        for which in ("encoder", "projection"):
            results[f"auroc_knn_{which}"] = (
                results["auroc"] if which == config.eval.features else
                _knn_auroc(train[which], data.train_labels, test[which], known, data.num_known,
                           config.eval.k))
    results["intrinsic_dimension"] = None
    if config.eval.id_samples:
        # A fixed subset keeps TwoNN's O(n^2) distances affordable on 30k+ training images.
        take = np.random.default_rng(0).permutation(len(train_f))[:config.eval.id_samples]
        results["intrinsic_dimension"] = metrics.intrinsic_dimension(train_f[np.sort(take)])
    return results


class _Scalars:
    """TensorBoard scalars (tensorboardX) in ``<workdir>/tensorboard``; process 0 only."""

    def __init__(self, workdir: str):
        self._writer = None
        if jax.process_index() == 0:
            from tensorboardX import SummaryWriter
            records.register_tensorboard_filesystems()
            self._writer = SummaryWriter(str(records.as_path(workdir) / "tensorboard"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if self._writer is not None:
            for k, v in scalars.items():
                self._writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class _Progress:
    """The tqdm bar, shown from the first compiled step on: a "compiling" line stands for the
    first step, so the bar's rate and ETA never include compilation."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.enabled, self.total = enabled, total
        self.bar = None
        if enabled and start < total:
            print(f"compiling the train step (step {start + 1} of {total})...", file=sys.stderr,
                  flush=True)

    def advance(self, done: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = tqdm(total=self.total, initial=done, desc="train", unit="step",
                            dynamic_ncols=True)
        else:
            self.bar.update(1)

    def set_postfix(self, **values) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Record:
    """``train_history.json`` across restarts: the logged scalars and the train time of every
    process that trained this run. Written at each checkpoint, so a resumed run continues the
    record of the steps its checkpoint holds (entries past that step are dropped)."""

    def __init__(self, workdir: str, start_step: int):
        self.path = records.as_path(workdir) / records.HISTORY
        stored = (records.read_json(self.path) or {}) if start_step > 0 else {}
        self.prior = [h for h in stored.get("history", []) if h.get("step", 0) <= start_step]
        self.prior_seconds = float(stored.get("train_seconds") or 0.0)
        self.prior_steps = int(stored.get("steps_timed") or 0)

    def totals(self, seconds: float, steps_timed: int) -> tuple[float, int]:
        """(train seconds, timed steps) of the whole run, this process's included."""
        return self.prior_seconds + seconds, self.prior_steps + steps_timed

    def write(self, history: list[dict], seconds: float, steps_timed: int) -> None:
        if jax.process_index() != 0:
            return
        total_seconds, total_steps = self.totals(seconds, steps_timed)
        records.write_json(self.path, {"history": self.prior + history, "train_seconds": total_seconds,
                                       "steps_timed": total_steps})


def _train_loop(config, workdir, train_step, state, images, labels, saver, scalars, bar, sigterm,
                start_step: int, total_steps: int, steps_per_epoch: int, num_train: int,
                rows_sharded, record: _Record):
    """Runs steps start_step..total_steps-1; logs, checks the loss, checkpoints, handles preemption.

    Returns (state, last logged loss, wall time after the first compiled step, logged history).
    Metrics are fetched from the device only on log/checkpoint steps, and one step late: the
    metrics of log step ``i`` are read after step ``i + 1`` has been launched, so the device is not
    idle while the host reads, logs and checks them. A checkpoint step's state is packed on the
    device right away (``BackgroundSaver.snapshot``) and written only after its loss was checked,
    so a non-finite state is never saved.
    """
    last_loss = float("nan")
    history: list[dict[str, float]] = []
    t_first = None  # wall time when the first (compiling) step finished
    t_window, window_start = time.perf_counter(), start_step  # images/s since the last log
    epoch_indices, loaded_epoch = None, None
    pending = None  # (step, metrics, snapshot or None, force) of a log step not yet read

    def finish(done, step_metrics, snapshot, force):
        nonlocal last_loss, t_window, window_start
        m = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        if not math.isfinite(m["loss"]):
            saver.wait_until_finished()
            raise NonFiniteLossError(
                f"training loss is {m['loss']} at step {done}; stopped. The last good checkpoint "
                f"(step {saver.manager.latest_step()}) in {workdir}/checkpoints is kept.")
        if snapshot is not None:
            saver.write(done, snapshot, force=force)
        last_loss = m["loss"]
        checkpointed = snapshot is not None
        now = time.perf_counter()
        if done > window_start:
            m["images_per_second"] = (done - window_start) * config.batch_size / (now - t_window)
            t_window, window_start = now, done
        m["step"] = done
        history.append(m)
        if checkpointed:  # the record matches the checkpoint just written
            record.write(history, now - t_first, done - (start_step + 1))
        scalars.write(done, m)
        bar.set_postfix(loss=f"{m['loss']:.3f}",
                        img_s=f"{m.get('images_per_second', 0):.0f}", refresh=False)

    for step in range(start_step, total_steps):
        epoch = step // steps_per_epoch
        if epoch != loaded_epoch:
            epoch_indices = parallel.global_batch_array(
                epoch_index_matrix(config.seed, epoch, num_train, config.batch_size), rows_sharded,
                axis=1)
            loaded_epoch = epoch
        state, step_metrics = train_step(state, images, labels, epoch_indices)
        done = step + 1
        if t_first is None:
            jax.block_until_ready(state)
            t_first = t_window = time.perf_counter()
            window_start = done
        if pending is not None:
            finish(*pending)
            pending = None
        preempt = sigterm.requested or saver.manager.reached_preemption(done)
        is_log = done % config.log_every_steps == 0 or done == total_steps
        is_ckpt = done % config.checkpoint_every_steps == 0 or done == total_steps or preempt
        if is_log or is_ckpt or done == start_step + 1:
            pending = (done, step_metrics, saver.snapshot(state) if is_ckpt else None, preempt)
            if preempt or done == total_steps:  # no next step to overlap with
                finish(*pending)
                pending = None
        bar.advance(done)
        if preempt:
            saver.wait_until_finished()
            raise TrainingPreempted(done, workdir)
    jax.block_until_ready(state)
    return state, last_loss, t_first, history


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, reevaluate: bool = False
                       ) -> dict[str, Any]:
    """Trains on ``config.data``'s known classes, evaluates open-set recognition, writes results.json.

    A workdir that already holds a finished run of the same config is left untouched: its stored
    summary is returned with ``already_finished: True`` (``reevaluate=True`` evaluates the final
    checkpoint again and rewrites results.json, keeping the run's train time). An interrupted run,
    or a finished one of another config (say a longer schedule), resumes from its newest checkpoint
    and continues ``train_history.json``.

    Returns the summary dict (DESIGN §6 keys: auroc, closed_set_accuracy, num_steps,
    final_train_loss, train_seconds, protocol, split, known_classes, config, ...).
    """
    mesh = parallel.make_mesh()
    validate_config(config, mesh.size)
    aug_params = augment_params(config)
    stored = records.finished_run(workdir, config)
    if stored is not None and not reevaluate:
        # Nothing is loaded, trained or written: the finished run's files stay byte-identical.
        return {**stored, "already_finished": True}
    try:
        records.check_writable(workdir)  # before any data is loaded or anything compiled
    except records.WorkdirError as e:
        raise ConfigError(str(e)) from None
    data = load_data(config)
    validate_data_dependent(config, data.min_class_count(), len(data.train_images))
    records.as_path(workdir).mkdir(parents=True, exist_ok=True)

    total_steps, steps_per_epoch = num_train_steps(config, len(data.train_images))
    model = model_from_config(config, num_classes=data.num_known if config.objective in ("ce", "ce_ssl")
                              else 0)
    tx, schedule = make_optimizer(config.learning_rate, config.min_learning_rate, total_steps,
                                  config.warmup_steps)
    step_cfg = StepConfig.from_config(config)
    repl, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)

    image_shape = (config.data.image_size, config.data.image_size, data.image_shape[-1])
    state, train_step, rows_sharded = build_jitted(model, tx, aug_params, step_cfg, schedule, mesh,
                                                   steps_per_epoch, image_shape, config.seed)
    manager = checkpoint.make_manager(workdir, config.max_to_keep)
    restored = checkpoint.restore_latest(manager, state)
    if restored is not None:
        state = restored
        if jax.process_index() == 0:
            print(f"resumed from step {int(state.step)} ({manager.directory})",
                  flush=True)
    start_step = int(state.step)
    record = _Record(workdir, start_step)

    images = parallel.replicate(data.train_images, repl)
    labels = parallel.replicate(data.train_labels.astype(np.int32), repl)

    scalars = _Scalars(workdir)
    bar = _Progress(config.progress_bar and jax.process_index() == 0, total_steps, start_step)
    saver = checkpoint.BackgroundSaver(manager, state)
    try:
        with _SigtermWatch() as sigterm:
            state, last_loss, t_first, history = _train_loop(
                config, workdir, train_step, state, images, labels, saver, scalars, bar, sigterm,
                start_step, total_steps, steps_per_epoch, len(data.train_images), rows_sharded,
                record)
    finally:
        bar.close()
        saver.wait_until_finished()
    # Whole run: this process's steps after its compiling step, plus earlier processes' (resumed).
    this_seconds = time.perf_counter() - t_first if t_first is not None else 0.0
    this_steps = max(total_steps - start_step - 1, 0)
    train_seconds, steps_timed = record.totals(this_seconds, this_steps)
    if not history and record.prior:  # nothing trained here (re-evaluation): the run's last loss
        last_loss = record.prior[-1].get("loss", last_loss)

    t_eval = time.perf_counter()
    eval_fn = jax.jit(make_eval_fn(model, aug_params.out_size, config.eval.features),
                      in_shardings=(repl, repl, sharded))
    results = evaluate(eval_fn, {"params": state.params, "batch_stats": state.batch_stats}, data,
                       config, mesh)
    eval_seconds = time.perf_counter() - t_eval
    summary: dict[str, Any] = {
        **results,
        "num_steps": total_steps,
        "resumed_from_step": start_step,
        "steps_per_epoch": steps_per_epoch,
        "final_train_loss": last_loss,
        "train_seconds": train_seconds,
        "train_images_per_second": (steps_timed * config.batch_size / train_seconds
                                    if train_seconds > 0 and steps_timed > 0 else None),
        "eval_seconds": eval_seconds,
        # How many times the train step was compiled in this process (1 = traced once).
        "train_step_compilations": train_step._cache_size(),
        "protocol": config.data.protocol,
        "split": config.data.split,
        "known_classes": list(data.known_classes),
        "unknown_classes": list(data.unknown_classes),
        "openness": openness(len(data.known_classes), len(data.unknown_classes)),
        "num_train_images": int(len(data.train_images)),
        "image_shape": list(image_shape),
        "num_known_classes": data.num_known,
        # Outputs of the classifier head (ce / ce_ssl objectives); 0 = no head (contrastive only).
        "classifier_outputs": int(model.num_classes),
        "num_test_known": int(data.test_is_known.sum()),
        "num_test_unknown": int((~data.test_is_known).sum()),
        "device": jax.devices()[0].device_kind,
        "activation_dtype": str(model.dtype),
        "num_devices": mesh.size,
        "jax_version": jax.__version__,
        "config": config.to_dict(),
    }
    scalars.write(total_steps, {f"eval/{k}": v for k, v in results.items() if v is not None})
    scalars.close()
    if jax.process_index() == 0:
        record.write(history, this_seconds, this_steps)
        records.write_json(records.as_path(workdir) / records.RESULTS, summary)
    return summary
