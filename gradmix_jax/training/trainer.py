"""The training program: ``train_and_evaluate(config, workdir) -> summary``.

A run is a sequence of named stages: check the config and the workdir, load the data, choose
the input path, build the model and the compiled step (restoring the newest checkpoint), train,
evaluate, write the records. On the device path the split lives on the device as uint8 and each
step sends only [N] batch indices; on the stream path Grain reads each step's batch on the host
(``pipeline``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from gradmix_jax import files
from gradmix_jax.data import OpenSetData, openness
from gradmix_jax.data.protocols import class_names
from gradmix_jax.models import model_from_config
from gradmix_jax.training import checkpoint, parallel
from gradmix_jax.training import workdir as records
from gradmix_jax.training.config_base import resolve_recipe
from gradmix_jax.training.openset_eval import (  # noqa: F401
    activated_area,
    evaluate,
    extract_features,
    knn_auroc,
    with_headline,
)
from gradmix_jax.training.pipeline import (  # noqa: F401
    augment_params,
    batch_indices,
    choose_pipeline,
    epoch_index_matrix,
    for_device_path,
    global_batch,
    input_stats,
    load_data,
    needs_input_stats,
    num_train_steps,
    on_device_batches,
    steps_per_epoch_of,
    stream_batches,
)
from gradmix_jax.training.train_step import (
    StepConfig,
    init_state,
    make_batch_train_step,
    make_eval_fn,
    make_optimizer,
    make_train_step,
)
from gradmix_jax.training.validation import ConfigError, validate_config, validate_data_dependent

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN/Inf; the last good checkpoint is kept."""


class TrainingPreempted(Exception):
    """SIGTERM or an Orbax preemption notice: the state was saved; rerun the command to resume."""

    def __init__(self, step: int, workdir: str):
        super().__init__(
            f"preempted at step {step}: checkpoint saved in {workdir}/checkpoints; "
            "run the same command again to resume"
        )
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


def build_jitted(
    model,
    tx,
    aug_params,
    step_cfg: StepConfig,
    schedule,
    mesh,
    steps_per_epoch: int,
    image_shape: tuple[int, int, int],
    seed: int,
    stream: bool = False,
):
    """(initial state, jitted donated step) on ``mesh``: state replicated, batch sharded.

    Device path: ``step(state, images, labels, epoch_indices [steps_per_epoch, batch])`` with the
    index rows sharded. ``stream=True``: ``step(state, images [batch, ...], labels [batch])``
    with the batch sharded. Returns (state, step, sharding of the per-step input).
    """
    repl = parallel.replicated(mesh)
    rows_sharded = parallel.batch_sharded(mesh, axis=1)
    state = jax.jit(lambda k: init_state(model, tx, k, image_shape, step_cfg), out_shardings=repl)(
        jax.random.key(seed)
    )
    if stream:
        batch_sharded = parallel.batch_sharded(mesh)
        step = jax.jit(
            make_batch_train_step(model, tx, aug_params, step_cfg, schedule),
            in_shardings=(repl, batch_sharded, batch_sharded),
            out_shardings=(repl, repl),
            donate_argnums=(0,),
        )
        return state, step, batch_sharded
    step = jax.jit(
        on_device_batches(
            make_train_step(model, tx, aug_params, step_cfg, schedule), steps_per_epoch
        ),
        in_shardings=(repl, repl, repl, rows_sharded),
        out_shardings=(repl, repl),
        donate_argnums=(0,),
    )
    return state, step, rows_sharded


class _Scalars:
    """TensorBoard scalars (tensorboardX) in ``<workdir>/tensorboard``; process 0 only."""

    def __init__(self, workdir: str):
        self._writer = None
        if jax.process_index() == 0:
            from tensorboardX import SummaryWriter

            records.register_tensorboard_filesystems()
            self._writer = SummaryWriter(str(files.as_path(workdir) / "tensorboard"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if self._writer is not None:
            for k, v in scalars.items():
                self._writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


#: Steps dispatched ahead of the newest finished one: enough that the device always has the next
#: step queued (it never idles while the host waits), few enough that the progress bar, which
#: counts finished steps, is at most this many steps behind the dispatch.
RUN_AHEAD = 2


class _Progress:
    """The tqdm bar of FINISHED steps, shown from the first compiled step on.

    A "compiling" line stands for the first step, so the bar's rate and ETA never include
    compilation. The loop calls ``advance(done)`` when step ``done`` has finished on the device
    (not when it was dispatched), and the rate is the average over the finished steps since the
    bar appeared (``smoothing=0``): a log or checkpoint step that blocks the host does not make
    the rate jump, and the step time it implies is the run's (``train_history.json``).
    """

    def __init__(self, enabled: bool, total: int, start: int):
        self.enabled, self.total = enabled, total
        self.bar = None
        if enabled and start < total:
            print(
                f"compiling the train step (step {start + 1} of {total})...",
                file=sys.stderr,
                flush=True,
            )

    def advance(self, done: int) -> None:
        """Step ``done`` (1-based count of steps run) has finished."""
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = tqdm(
                total=self.total,
                initial=done,
                desc="train",
                unit="step",
                dynamic_ncols=True,
                smoothing=0,
            )
        elif done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def set_postfix(self, **values) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _InFlight:
    """Dispatched steps not yet known to be finished; at most ``RUN_AHEAD`` of them.

    ``dispatched(done, metrics)`` records step ``done`` by one of its output arrays and, past
    ``RUN_AHEAD`` steps in flight, waits for the oldest and advances the bar to it.
    """

    def __init__(self, bar: _Progress, run_ahead: int = RUN_AHEAD):
        self.bar, self.run_ahead = bar, run_ahead
        self.steps: list[tuple[int, Any]] = []

    def dispatched(self, done: int, metrics: Any) -> None:
        self.steps.append((done, jax.tree.leaves(metrics)[0]))
        while len(self.steps) > self.run_ahead:
            self._finish_oldest()

    def drain(self) -> None:
        while self.steps:
            self._finish_oldest()

    def _finish_oldest(self) -> None:
        done, marker = self.steps.pop(0)
        jax.block_until_ready(marker)
        self.bar.advance(done)


class _Record:
    """``train_history.json`` across restarts: the logged scalars and the train time of every
    process that trained this run. Written at each checkpoint, so a resumed run continues the
    record of the steps its checkpoint holds (entries past that step are dropped)."""

    def __init__(self, workdir: str, start_step: int):
        self.path = files.as_path(workdir) / records.HISTORY
        stored = (files.read_json(self.path) or {}) if start_step > 0 else {}
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
        files.write_json(
            self.path,
            {
                "history": self.prior + history,
                "train_seconds": total_seconds,
                "steps_timed": total_steps,
            },
        )


def _train_loop(
    config,
    workdir,
    train_step,
    state,
    feed,
    saver,
    scalars,
    bar,
    sigterm,
    start_step: int,
    total_steps: int,
    record: _Record,
):
    """Runs steps start_step..total_steps-1; logs, checks the loss, checkpoints, handles preemption.

    ``feed(step)`` returns the step's inputs after the state (``_device_feed`` / ``_stream_feed``).

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
    pending = None  # (step, metrics, snapshot or None, force) of a log step not yet read

    def finish(done, step_metrics, snapshot, force):
        nonlocal last_loss, t_window, window_start
        m = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        if not math.isfinite(m["loss"]):
            saver.wait_until_finished()
            raise NonFiniteLossError(
                f"training loss is {m['loss']} at step {done}; stopped. The last good checkpoint "
                f"(step {saver.manager.latest_step()}) in {workdir}/checkpoints is kept."
            )
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
        # images/s of the window since the last log step; none yet after the compiling step.
        rate = {"img_s": f"{m['images_per_second']:.0f}"} if "images_per_second" in m else {}
        bar.set_postfix(loss=f"{m['loss']:.3f}", **rate, refresh=False)

    inflight = _InFlight(bar)
    for step in range(start_step, total_steps):
        state, step_metrics = train_step(state, *feed(step))
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
        inflight.dispatched(done, step_metrics)
        if preempt:
            saver.wait_until_finished()
            raise TrainingPreempted(done, workdir)
    jax.block_until_ready(state)
    inflight.drain()
    return state, last_loss, t_first, history


def _device_feed(config, data: OpenSetData, mesh, rows_sharded, steps_per_epoch: int):
    """Device path: the split on every device once; per epoch, its [steps, batch] index matrix."""
    repl = parallel.replicated(mesh)
    images = parallel.replicate(data.train_images, repl)
    labels = parallel.replicate(data.train_labels.astype(np.int32), repl)
    num_train = len(data.train_images)
    loaded = {}

    def feed(step: int):
        epoch = step // steps_per_epoch
        if epoch not in loaded:
            loaded.clear()
            loaded[epoch] = parallel.global_batch_array(
                epoch_index_matrix(config.seed, epoch, num_train, config.batch_size),
                rows_sharded,
                axis=1,
            )
        return images, labels, loaded[epoch]

    return feed


def _stream_feed(config, data: OpenSetData, batch_sharding, start_step: int, total_steps: int):
    """Stream path: Grain reads each step's rows of this process; ``feed(step)`` checks that the
    stream and the loop agree on the step."""
    batches = stream_batches(
        data.train_images,
        data.train_labels,
        seed=config.seed,
        batch_size=config.batch_size,
        start_step=start_step,
        num_steps=total_steps - start_step,
        num_threads=config.data.num_threads,
        num_workers=config.data.num_workers,
    )
    expected = [start_step]

    def feed(step: int):
        if step != expected[0]:  # the stream is positional: steps must come in order
            raise RuntimeError(f"stream at step {expected[0]}, loop at step {step}")
        expected[0] += 1
        local_images, local_labels = next(batches)
        return global_batch(local_images, local_labels, batch_sharding, config.batch_size)

    return feed


@dataclasses.dataclass
class _Run:
    """What the stages of one run share: the model, the compiled step and where it resumes."""

    model: Any
    aug_params: Any
    mesh: Any
    state: Any
    train_step: Any
    rows_sharded: Any
    manager: Any
    image_shape: tuple[int, int, int]
    total_steps: int
    steps_per_epoch: int
    start_step: int
    pipeline: str  # 'device' | 'stream'


@dataclasses.dataclass
class _Trained:
    """The outcome of the train stage."""

    state: Any
    last_loss: float
    history: list
    this_seconds: float  # this process, after its compiling step
    this_steps: int
    record: "_Record"
    scalars: "_Scalars"  # still open: the eval scalars follow


def _check_workdir(workdir: str) -> None:
    try:
        records.check_writable(workdir)  # before any data is loaded or anything compiled
    except records.WorkdirError as e:
        raise ConfigError(str(e)) from None


def _build(config, data: OpenSetData, aug_params, mesh, workdir: str, pipeline: str) -> _Run:
    """Model, optimizer, compiled step and initial state, restored from the newest checkpoint."""
    total_steps, steps_per_epoch = num_train_steps(config, len(data.train_images))
    with_head = config.objective in ("ce", "ce_ssl")
    model = model_from_config(config, num_classes=data.num_known if with_head else 0)
    tx, schedule = make_optimizer(
        config.learning_rate, config.min_learning_rate, total_steps, config.warmup_steps
    )
    image_shape = (config.data.image_size, config.data.image_size, data.image_shape[-1])
    state, train_step, rows_sharded = build_jitted(
        model,
        tx,
        aug_params,
        StepConfig.from_config(config),
        schedule,
        mesh,
        steps_per_epoch,
        image_shape,
        config.seed,
        stream=pipeline == "stream",
    )
    manager = checkpoint.make_manager(workdir, config.max_to_keep)
    restored = checkpoint.restore_latest(manager, state)
    if restored is not None:
        state = restored
        if jax.process_index() == 0:
            print(f"resumed from step {int(state.step)} ({manager.directory})", flush=True)
    return _Run(
        model,
        aug_params,
        mesh,
        state,
        train_step,
        rows_sharded,
        manager,
        image_shape,
        total_steps,
        steps_per_epoch,
        int(state.step),
        pipeline,
    )


def _train(config, workdir: str, run: _Run, data: OpenSetData) -> _Trained:
    """Steps ``run.start_step`` .. ``run.total_steps`` with progress, records and checkpoints."""
    if run.pipeline == "stream":
        feed = _stream_feed(config, data, run.rows_sharded, run.start_step, run.total_steps)
    else:
        feed = _device_feed(config, data, run.mesh, run.rows_sharded, run.steps_per_epoch)
    record = _Record(workdir, run.start_step)
    scalars = _Scalars(workdir)
    bar = _Progress(
        config.progress_bar and jax.process_index() == 0, run.total_steps, run.start_step
    )
    saver = checkpoint.BackgroundSaver(run.manager, run.state)
    try:
        with _SigtermWatch() as sigterm:
            state, last_loss, t_first, history = _train_loop(
                config,
                workdir,
                run.train_step,
                run.state,
                feed,
                saver,
                scalars,
                bar,
                sigterm,
                run.start_step,
                run.total_steps,
                record,
            )
    finally:
        bar.close()
        saver.wait_until_finished()
    if not history and record.prior:  # nothing trained here (re-evaluation): the run's last loss
        last_loss = record.prior[-1].get("loss", last_loss)
    this_seconds = time.perf_counter() - t_first if t_first is not None else 0.0
    return _Trained(
        state,
        last_loss,
        history,
        this_seconds,
        max(run.total_steps - run.start_step - 1, 0),
        record,
        scalars,
    )


def _evaluate(config, run: _Run, state, data: OpenSetData) -> tuple[dict[str, Any], float]:
    """(open-set results, evaluation seconds) of the trained state."""
    t_eval = time.perf_counter()
    repl, sharded = parallel.replicated(run.mesh), parallel.batch_sharded(run.mesh)
    eval_fn = jax.jit(
        make_eval_fn(
            run.model,
            run.aug_params.out_size,
            config.eval.features,
            run.aug_params.mean,
            run.aug_params.std,
        ),
        in_shardings=(repl, repl, sharded),
    )
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    results = evaluate(eval_fn, variables, data, config, run.mesh)
    results["activated_area"] = activated_area(
        run.model,
        variables,
        data,
        config,
        run.aug_params.out_size,
        run.aug_params.mean,
        run.aug_params.std,
    )
    return results, time.perf_counter() - t_eval


def _summary(
    config, run: _Run, trained: _Trained, data: OpenSetData, results: dict, eval_seconds: float
) -> dict[str, Any]:
    """results.json's content: the scores, the whole run's train time, the data and the config."""
    # Whole run: this process's steps after its compiling step, plus earlier processes' (resumed).
    train_seconds, steps_timed = trained.record.totals(trained.this_seconds, trained.this_steps)
    return {
        **results,
        "num_steps": run.total_steps,
        "resumed_from_step": run.start_step,
        "steps_per_epoch": run.steps_per_epoch,
        "final_train_loss": trained.last_loss,
        "train_seconds": train_seconds,
        "train_images_per_second": (
            steps_timed * config.batch_size / train_seconds
            if train_seconds > 0 and steps_timed > 0
            else None
        ),
        "eval_seconds": eval_seconds,
        # How many times the train step was compiled in this process (1 = traced once).
        "train_step_compilations": run.train_step._cache_size(),
        "protocol": config.data.protocol,
        "split": config.data.split,
        "known_classes": list(data.known_classes),
        "unknown_classes": list(data.unknown_classes),
        # Their names, in label order (None where the source has none: TinyImageNet, ImageNet100).
        "class_names": class_names(
            config.data.protocol, data.known_classes, data.unknown_classes, data.class_names
        ),
        "openness": openness(len(data.known_classes), len(data.unknown_classes)),
        "num_train_images": int(len(data.train_images)),
        "input_pipeline": run.pipeline,
        "image_shape": list(run.image_shape),
        "num_known_classes": data.num_known,
        # Outputs of the classifier head (ce / ce_ssl objectives); 0 = no head (contrastive only).
        "classifier_outputs": int(run.model.num_classes),
        "num_test_known": int(data.test_is_known.sum()),
        "num_test_unknown": int((~data.test_is_known).sum()),
        "device": jax.devices()[0].device_kind,
        "activation_dtype": str(run.model.dtype),
        "num_devices": run.mesh.size,
        "jax_version": jax.__version__,
        "config": config.to_dict(),
        # The views' and evaluation's input normalisation (augment.normalize), or None.
        "input_norm": (
            None
            if run.aug_params.mean is None
            else {"mean": list(run.aug_params.mean), "std": list(run.aug_params.std)}
        ),
    }


def _write_records(workdir: str, trained: _Trained, results: dict, summary: dict) -> None:
    """TensorBoard's eval scalars, train_history.json and results.json (process 0 writes)."""
    trained.scalars.write(
        summary["num_steps"],
        {f"eval/{k}": v for k, v in results.items() if isinstance(v, (int, float))},
    )
    trained.scalars.close()
    if jax.process_index() == 0:
        trained.record.write(trained.history, trained.this_seconds, trained.this_steps)
        files.write_json(files.as_path(workdir) / records.RESULTS, summary)


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, reevaluate: bool = False
) -> dict[str, Any]:
    """Trains on ``config.data``'s known classes, evaluates open-set recognition, writes results.json.

    A workdir that already holds a finished run of the same config is left untouched: its stored
    summary is returned with ``already_finished: True`` (``reevaluate=True`` evaluates the final
    checkpoint again and rewrites results.json, keeping the run's train time). An interrupted run,
    or a finished one of another config (say a longer schedule), resumes from its newest checkpoint
    and continues ``train_history.json``. Every input is checked before any data is loaded.

    Returns the summary dict (keys documented in docs/design.md: auroc, closed_set_accuracy,
    num_steps, final_train_loss, train_seconds, protocol, split, known_classes, config, ...).
    """
    mesh = parallel.make_mesh()
    config = resolve_recipe(config)  # gradmix.recipe fills the fields left unset
    validate_config(config, mesh.size)
    aug_params = augment_params(config)
    stored = records.finished_run(workdir, config)
    if stored is not None and not reevaluate:
        # Nothing is loaded, trained or written: the finished run's files stay byte-identical.
        # Its auroc is read as this config's eval.score (every score is stored).
        headline = with_headline(stored, config.eval.score, config.eval.features)
        return {**headline, "already_finished": True}
    _check_workdir(workdir)
    data = load_data(config)
    validate_data_dependent(config, data.min_class_count(), len(data.train_images))
    if needs_input_stats(config):  # augment.normalize='dataset': the training split's mean/std
        aug_params = augment_params(config, input_stats(data.train_images, config.data.num_threads))
    pipeline, why = choose_pipeline(config, data)
    if jax.process_index() == 0:
        print(f"input pipeline: {pipeline} ({why})", flush=True)
    if pipeline == "device":
        data = for_device_path(data, config.data.num_threads)
    files.as_path(workdir).mkdir(parents=True, exist_ok=True)
    run = _build(config, data, aug_params, mesh, workdir, pipeline)
    trained = _train(config, workdir, run, data)
    results, eval_seconds = _evaluate(config, run, trained.state, data)
    summary = _summary(config, run, trained, data, results, eval_seconds)
    _write_records(workdir, trained, results, summary)
    return summary
