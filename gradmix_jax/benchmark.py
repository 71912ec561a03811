"""Times the jitted train step per mixing method on synthetic data; writes a JSON report.

``python -m gradmix_jax.benchmark --config configs/benchmark.py --json OUT``

For each method: compile time, then the median wall time of ``timed_steps`` steps (each waited
for with ``block_until_ready``) after ``warmup_steps``; images/s = batch / median; FLOPs per step
(XLA's cost analysis of the lowered step, and the analytic model FLOPs, see ``gradmix_jax.flops``)
and the MFU of each against the device's peak. ``gradmix_exact`` is GradMix with
``gradmix.exact=True``. Ratios are against ``none`` measured in the same run.

``bench.grid`` (e.g. ``('float32/256/32', 'bfloat16/1024/64')``: dtype/batch/image size) runs
several settings in one process; ``bench.profile_dir`` writes a ``jax.profiler`` trace of a few
GradMix steps and the compiled step's HLO text with op counts.
"""

from __future__ import annotations

import copy
import json
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from gradmix_jax import checkpoint, flops, parallel
from gradmix_jax.models import model_from_config
from gradmix_jax.train_step import StepConfig, make_optimizer
from gradmix_jax.trainer import augment_params, build_jitted, epoch_index_matrix, steps_per_epoch_of
from gradmix_jax.validation import validate_config

_CONFIG = config_flags.DEFINE_config_file("config", "configs/benchmark.py", "Benchmark config.",
                                          lock_config=True)
_JSON = flags.DEFINE_string("json", None, "Where to write the JSON report.")


def _method_config(config, method: str):
    c = copy.deepcopy(config)
    with c.unlocked():
        c.mixing.method = "gradmix" if method == "gradmix_exact" else method
        c.gradmix.exact = method == "gradmix_exact" or (method == "gradmix" and config.gradmix.exact)
    return c


def compiled_step(c, images: np.ndarray, labels: np.ndarray, mesh):
    """The trainer's jitted step for config ``c``, lowered and compiled on device-held data.

    Returns (lowered, compiled, state, dev_images, dev_labels, indices, compile_seconds), where
    ``indices(i)`` is step ``i``'s epoch index matrix on the device."""
    model = model_from_config(c)
    tx, schedule = make_optimizer(c.learning_rate, c.min_learning_rate, 10_000)
    repl = parallel.replicated(mesh)
    steps_per_epoch = steps_per_epoch_of(len(images), c.batch_size)
    state, step, rows_sharded = build_jitted(
        model, tx, augment_params(c), StepConfig.from_config(c), schedule, mesh, steps_per_epoch,
        (c.data.image_size, c.data.image_size, images.shape[-1]), c.seed)
    dev_images = jax.device_put(images, repl)
    dev_labels = jax.device_put(labels, repl)

    def indices(i):
        # As the trainer: one index matrix per epoch, uploaded once; the step picks its row.
        return jax.device_put(epoch_index_matrix(c.seed, i // steps_per_epoch, len(images),
                                                 c.batch_size), rows_sharded)

    t0 = time.perf_counter()
    lowered = step.lower(state, dev_images, dev_labels, indices(0))
    compiled = lowered.compile()
    return (lowered, compiled, state, dev_images, dev_labels, indices,
            time.perf_counter() - t0)


def time_method(config, method: str, images: np.ndarray, labels: np.ndarray, mesh) -> dict[str, Any]:
    c = _method_config(config, method)
    validate_config(c, mesh.size)
    b = c.bench
    steps_per_epoch = steps_per_epoch_of(len(images), c.batch_size)
    lowered, compiled, state, dev_images, dev_labels, indices, compile_seconds = compiled_step(
        c, images, labels, mesh)

    times, host_times = [], []
    idx = None
    for i in range(b.warmup_steps + b.timed_steps):
        t0 = time.perf_counter()
        if i % steps_per_epoch == 0 or idx is None:
            idx = indices(i)
        t1 = time.perf_counter()
        state, m = compiled(state, dev_images, dev_labels, idx)
        jax.block_until_ready((state, m))
        t2 = time.perf_counter()
        if i >= b.warmup_steps:
            times.append(t2 - t1)
            host_times.append(t1 - t0)
    median = statistics.median(times)
    xla = flops.xla_flops(lowered)
    analytic = flops.model_step_flops(c, method, images.shape[-1])
    result = {"step_seconds": median, "images_per_second": c.batch_size / median,
              "step_seconds_all": times, "compile_seconds": compile_seconds,
              "xla_flops_per_step": xla, "model_flops_per_step": analytic,
              "xla_flop_rate": xla / median, "model_flop_rate": analytic / median,
              "host_data_seconds": statistics.fmean(host_times), "final_loss": float(m["loss"])}
    if b.checkpoint_stall and method == "gradmix":
        for key, pipelined in (("checkpoint_stall", False), ("checkpoint_stall_pipelined", True)):
            result[key], state = checkpoint_stall(compiled, state, dev_images, dev_labels, idx,
                                                  saves=b.stall_saves, pipelined=pipelined)
    if b.profile_dir and method == "gradmix":
        setting = f"{c.model.dtype}_b{c.batch_size}_s{c.data.image_size}"
        result["profile"] = profile_step(compiled, state, dev_images, dev_labels, idx,
                                         os.path.join(b.profile_dir, setting))
    return result


def hlo_op_counts(hlo_text: str) -> dict[str, int]:
    """How often the ops that cost time without doing model math appear in compiled HLO text."""
    import re
    ops = re.findall(r"=\s*[^\s]+\s+([a-z][a-z0-9-]*)\(", hlo_text)
    kinds = ("convolution", "custom-call", "dot", "transpose", "copy", "fusion", "all-reduce",
             "all-gather", "while", "sort", "scatter", "gather")
    return {k: sum(op == k for op in ops) for k in kinds}


def profile_step(compiled, state, images, labels, idx, directory: str, steps: int = 3):
    """A ``jax.profiler`` trace of ``steps`` steps (view in TensorBoard/Perfetto) and the compiled
    step's HLO in ``directory``; returns the HLO op counts."""
    os.makedirs(directory, exist_ok=True)
    text = compiled.as_text()
    with open(os.path.join(directory, "train_step_gradmix.hlo.txt"), "w") as f:
        f.write(text)
    with jax.profiler.trace(directory):
        for _ in range(steps):
            state, m = compiled(state, images, labels, idx)
        jax.block_until_ready((state, m))
    return {"dir": directory, "hlo_op_counts": hlo_op_counts(text)}


def checkpoint_stall(compiled, state, images, labels, idx, saves: int = 2, clean_steps: int = 5,
                     max_steps: int | None = None, make_saver=None, pipelined: bool = False,
                     max_in_flight: int = 8):
    """Step times around async Orbax saves (made as the trainer makes them) against the median.

    Returns (report, state). Two ways of timing a step:

    * ``pipelined=False``: every step is waited for (``block_until_ready``) before the next one is
      launched, and its time is launch to ready; a save step's time includes the
      ``BackgroundSaver.save`` call. Any host-side delay (e.g. the training thread waiting for the
      GIL while the saving thread runs Python) shows in full. Each save's window is the save step
      and every step until the one during which the save finished (``in_progress()`` false).
    * ``pipelined=True``: as the trainer runs: steps are launched without waiting (at most
      ``max_in_flight`` ahead of the device); at a save step the loop takes the saver's
      ``snapshot`` of the state, launches the next step, then waits for the save step's metrics
      (the trainer checks the loss before it writes) and ``write``s the snapshot. A watcher
      thread records when each step's metrics are ready; a step's time is the time between two
      such completions, i.e. what the device's step rate is. A save's window is the steps after
      the save step until the first one that completed with the save finished.

    Saves are ``clean_steps`` steps apart from any window, and the median is over the steps
    outside every window. Two saves are made by default, because the first one also pays Orbax's
    one-time set-up; ``median_save_ratio`` and ``median_excess_seconds`` summarise many saves.
    ``max_steps`` (default ``150 * saves``) bounds the run. ``make_saver(manager, state)`` builds
    the saver (default ``checkpoint.BackgroundSaver``).
    """
    make_saver = make_saver or checkpoint.BackgroundSaver
    max_steps = 150 * saves if max_steps is None else max_steps
    with tempfile.TemporaryDirectory() as tmp:
        saver = make_saver(checkpoint.make_manager(tmp, max_to_keep=1), state)
        if pipelined:
            times, pending, save_steps, state = _stall_pipelined(
                compiled, state, images, labels, idx, saver, saves, clean_steps, max_steps,
                max_in_flight)
        else:
            times, pending, save_steps, state = _stall_synchronous(
                compiled, state, images, labels, idx, saver, saves, clean_steps, max_steps)
        saver.wait_until_finished()
    # Synchronous: the save step is in its window (its time includes the save call); pipelined:
    # the window starts at the step after it (launched after the snapshot).
    windows = [_window(pending, i + pipelined) for i in save_steps]
    in_windows = {j for w in windows for j in w}
    clean = [t for i, t in enumerate(times) if i not in in_windows and t == t]
    median = statistics.median(clean)
    report = []
    for i, w in zip(save_steps, windows):
        report.append({"step": i, "save_step_seconds": times[i],
                       "after_save_step_seconds": times[i + 1] if i + 1 < len(times) else None,
                       "window_steps": len(w), "finished_in_window": not pending[w[-1]],
                       "ratio": max(times[j] for j in w) / median,
                       "mean_ratio": statistics.fmean(times[j] for j in w) / median,
                       "excess_seconds": sum(times[j] - median for j in w)})
    return ({"mode": "pipelined" if pipelined else "synchronous",
             "median_step_seconds": median, "saves": report,
             "worst_ratio": max(s["ratio"] for s in report),
             "median_save_ratio": statistics.median(s["ratio"] for s in report),
             "median_excess_seconds": statistics.median(s["excess_seconds"] for s in report),
             # The noise floor: the slowest step outside every window, against the same median.
             "clean_worst_ratio": max(clean) / median, "clean_steps": len(clean),
             "step_seconds_all": [t if t == t else None for t in times],  # NaN: no step before
             "save_pending_after_step": pending}, state)


def _window(pending: list[bool], first: int) -> list[int]:
    """Steps ``first``.. up to the first one after which no save was pending (or the last step)."""
    end = min(first, len(pending) - 1)
    while end + 1 < len(pending) and pending[end]:
        end += 1
    return list(range(first, end + 1))


def _stall_synchronous(compiled, state, images, labels, idx, saver, saves, clean_steps,
                       max_steps):
    times, pending, save_steps = [], [], []
    clean_run = 0
    for i in range(max_steps):
        t0 = time.perf_counter()
        state, m = compiled(state, images, labels, idx)
        jax.block_until_ready((state, m))
        saving_now = len(save_steps) < saves and clean_run >= clean_steps
        if saving_now:
            saver.save(i, state)
            save_steps.append(i)
        times.append(time.perf_counter() - t0)
        in_window = saving_now or (i > 0 and pending[-1])
        pending.append(saver.in_progress())
        clean_run = 0 if in_window else clean_run + 1
        if len(save_steps) == saves and clean_run >= clean_steps:
            break
    return times, pending, save_steps, state


def _stall_pipelined(compiled, state, images, labels, idx, saver, saves, clean_steps, max_steps,
                     max_in_flight):
    ready_at: list[float] = []  # when step j's metrics were ready (watcher thread)
    pending: list[bool] = []  # whether a save was in flight when step j was seen ready
    launched: queue.Queue = queue.Queue()

    unwritten = threading.Event()  # a snapshot is taken but not yet handed to ``write``

    def watch():
        while (m := launched.get()) is not None:
            jax.block_until_ready(m)
            ready_at.append(time.perf_counter())
            pending.append(unwritten.is_set() or saver.in_progress())

    watcher = threading.Thread(target=watch, name="stall-watcher", daemon=True)
    watcher.start()
    save_steps: list[int] = []
    in_flight: list = []

    def clean_since_last_window() -> int:
        # Completed steps since the last save's window closed (or since the start).
        seen = len(pending)
        if not save_steps:
            return seen
        j = save_steps[-1] + 1
        while j < seen and pending[j]:
            j += 1
        return max(0, seen - j - 1)

    deferred = None  # (step, metrics, snapshot) of a save step, written after the next launch
    try:
        for i in range(max_steps):
            state, m = compiled(state, images, labels, idx)
            launched.put(m)
            in_flight.append(m)
            if deferred is not None:  # as the trainer: read the loss, then write the snapshot
                jax.block_until_ready(deferred[1])
                saver.write(deferred[0], deferred[2])
                unwritten.clear()
                deferred = None
            if len(save_steps) < saves and clean_since_last_window() >= clean_steps:
                if callable(getattr(saver, "snapshot", None)):
                    unwritten.set()
                    deferred = (i, m, saver.snapshot(state))
                else:  # a saver without the split API: wait for the loss, then save
                    jax.block_until_ready(m)
                    saver.save(i, state)
                save_steps.append(i)
            if len(in_flight) > max_in_flight:
                jax.block_until_ready(in_flight.pop(0))
            if len(save_steps) == saves and clean_since_last_window() >= clean_steps:
                break
        if deferred is not None:  # max_steps ran out right after a save step
            saver.write(deferred[0], deferred[2])
            unwritten.clear()
    finally:
        launched.put(None)
        watcher.join()
    times = [float("nan")] + [b - a for a, b in zip(ready_at, ready_at[1:])]
    return times, pending, save_steps, state


def _grid_configs(config):
    """The config once per ``bench.grid`` entry 'dtype/batch/size' (or as given if empty)."""
    if not config.bench.grid:
        return [config]
    out = []
    for entry in config.bench.grid:
        try:
            dtype, batch, size = entry.split("/")
            c = copy.deepcopy(config)
            with c.unlocked():
                c.model.dtype, c.batch_size, c.data.image_size = dtype, int(batch), int(size)
        except ValueError:
            raise SystemExit(f"error: bench.grid entries must be 'dtype/batch/size', got {entry!r}")
        out.append(c)
    return out


def run_benchmark(config) -> dict[str, Any]:
    """One report (see ``run_setting``) or, with ``bench.grid``, {'runs': [report per setting]}."""
    saves = config.bench.stall_saves
    if isinstance(saves, bool) or not isinstance(saves, int) or saves < 1:
        raise SystemExit(f"error: bench.stall_saves must be an integer >= 1, got {saves!r}")
    configs = _grid_configs(config)
    for c in configs:
        validate_config(c, parallel.make_mesh().size)
    if len(configs) == 1 and not config.bench.grid:
        return run_setting(configs[0])
    return {"runs": [run_setting(c) for c in configs]}


def run_setting(config) -> dict[str, Any]:
    """Per method timings, FLOPs and MFU for one (dtype, batch, image size)."""
    mesh = parallel.make_mesh()
    b = config.bench
    rng = np.random.default_rng(config.seed)
    size = config.data.image_size
    images = rng.integers(0, 256, (b.num_images, size, size, b.channels), dtype=np.uint8)
    labels = rng.integers(0, b.num_classes, (b.num_images,)).astype(np.int32)
    report: dict[str, Any] = {}
    for method in b.methods:
        report[method] = time_method(config, method, images, labels, mesh)
        print(f"{method:14s} {report[method]['step_seconds'] * 1e3:9.1f} ms/step "
              f"{report[method]['images_per_second']:9.1f} img/s "
              f"(compile {report[method]['compile_seconds']:.1f} s)", file=sys.stderr)
        for key in ("checkpoint_stall", "checkpoint_stall_pipelined"):
            if key not in report[method]:
                continue
            st = report[method][key]
            for k, sv in enumerate(st["saves"]):
                print(f"{'':14s} async checkpoint {k + 1} ({st['mode']}): median "
                      f"{st['median_step_seconds'] * 1e3:.1f} ms; {sv['window_steps']} steps until "
                      f"written: worst {sv['ratio']:.2f}x, mean {sv['mean_ratio']:.2f}x, "
                      f"excess {sv['excess_seconds'] * 1e3:.0f} ms", file=sys.stderr)
            print(f"{'':14s} {len(st['saves'])} saves ({st['mode']}): median worst step "
                  f"{st['median_save_ratio']:.2f}x, median excess "
                  f"{st['median_excess_seconds'] * 1e3:.0f} ms; slowest of {st['clean_steps']} "
                  f"steps without a save: {st['clean_worst_ratio']:.2f}x", file=sys.stderr)
    if "none" in report:
        base = report["none"]["step_seconds"]
        report["ratio_to_none"] = {m: report[m]["step_seconds"] / base for m in b.methods}
    dtype = str(model_from_config(config).dtype)
    peak, source = flops.peak_flops(jax.devices()[0].device_kind, dtype, b.peak_tflops)
    report["peak_flops_per_device"], report["peak_source"] = peak, source
    for method in b.methods:
        r = report[method]
        r["mfu_xla"] = r["xla_flop_rate"] / (peak * mesh.size)
        r["mfu_model"] = r["model_flop_rate"] / (peak * mesh.size)
        xla = (f"{100 * r['mfu_xla']:.1f}%" if r["mfu_xla"] == r["mfu_xla"]
               else "n/a (no XLA cost analysis of the lowered step on this backend)")
        print(f"{method:14s} MFU {100 * r['mfu_model']:.1f}% (model FLOPs), {xla} (XLA FLOPs) "
              f"of {peak / 1e12:.2f} TFLOP/s ({source})", file=sys.stderr)
    report["device"] = jax.devices()[0].device_kind
    report["platform"] = jax.devices()[0].platform
    report["num_devices"] = mesh.size
    report["batch_size"] = config.batch_size
    report["model"] = {"name": config.model.name, "width": config.model.width,
                       "image_size": size, "dtype": dtype}
    report["jax_version"] = jax.__version__
    return report


def main(argv):
    del argv
    report = run_benchmark(_CONFIG.value)
    text = json.dumps(report, indent=2)
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            f.write(text)
    runs = report.get("runs", [report])
    print(json.dumps([{"dtype": r["model"]["dtype"], "batch": r["batch_size"],
                       "image_size": r["model"]["image_size"], **r.get("ratio_to_none", {})}
                      for r in runs], indent=2))


if __name__ == "__main__":
    app.run(main)
