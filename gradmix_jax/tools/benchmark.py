"""Times the jitted train step per mixing method on synthetic data; writes a JSON report.

``python -m gradmix_jax.tools.benchmark --config configs/benchmark.py --json OUT`` (absl and Orbax
INFO logs only with ``-v 0`` / ``--verbosity=0`` or higher)

For each method: compile time, then the median wall time of ``timed_steps`` steps (each waited
for with ``block_until_ready``) after ``warmup_steps``; images/s = batch / median; FLOPs per step
(XLA's cost analysis of the lowered step, and the analytic model FLOPs, see ``gradmix_jax.tools.flops``)
and the MFU of each against the device's peak. ``gradmix_exact`` is GradMix with
``gradmix.exact=True``, ``gradmix_authors`` GradMix with ``gradmix.recipe='authors'`` (its input
normalisation aside: synthetic data have no training-split statistics). Ratios are against ``none`` measured in the same run. For ``gradmix``,
``bench.checkpoint_saves`` saves of the step's state give the checkpoint cost: the median save
time as a fraction of a run's time at ``checkpoint_every_steps`` (see ``checkpoint_cost``).

``bench.taps_cost`` also times what the attribution taps cost: the model's forward and backward
pass as a plain ``jax.vjp`` against ``taps.vjp`` with the GradMix taps (parameter and tap
gradients from the same pass), and the tap gradients alone (what the step's attribution costs).

``bench.grid`` (e.g. ``('float32/256/32', 'bfloat16/1024/64')``: dtype/batch/image size) runs
several settings in one process; ``bench.profile_dir`` writes a ``jax.profiler`` trace of a few
GradMix steps and the compiled step's HLO text with op counts.
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import tempfile
import time
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from gradmix_jax import taps
from gradmix_jax.files import write_text_atomic
from gradmix_jax.models import model_from_config
from gradmix_jax.tools import flops
from gradmix_jax.tools.profiling import hlo_op_counts, profile_step  # noqa: F401
from gradmix_jax.training import checkpoint, parallel
from gradmix_jax.training.config_base import resolve_recipe
from gradmix_jax.training.train_step import StepConfig, make_optimizer
from gradmix_jax.training.trainer import (
    augment_params,
    build_jitted,
    epoch_index_matrix,
    steps_per_epoch_of,
)
from gradmix_jax.training.validation import validate_config

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/benchmark.py", "Benchmark config.", lock_config=True
)
_JSON = flags.DEFINE_string("json", None, "Where to write the JSON report.")


def _method_config(config, method: str):
    c = copy.deepcopy(config)
    with c.unlocked():
        c.mixing.method = "gradmix" if method.startswith("gradmix") else method
        if method == "gradmix_exact":
            c.gradmix.exact = True
        if method == "gradmix_authors":
            c.gradmix.recipe = "authors"
    return resolve_recipe(c)


def compiled_step(c, images: np.ndarray, labels: np.ndarray, mesh):
    """The trainer's jitted step for config ``c``, lowered and compiled on device-held data.

    Returns (lowered, compiled, state, dev_images, dev_labels, indices, compile_seconds), where
    ``indices(i)`` is step ``i``'s epoch index matrix on the device."""
    model = model_from_config(c)
    tx, schedule = make_optimizer(c.learning_rate, c.min_learning_rate, 10_000)
    repl = parallel.replicated(mesh)
    steps_per_epoch = steps_per_epoch_of(len(images), c.batch_size)
    image_shape = (c.data.image_size, c.data.image_size, images.shape[-1])
    cfg = StepConfig.from_config(c)
    state, step, rows_sharded = build_jitted(
        model, tx, augment_params(c), cfg, schedule, mesh, steps_per_epoch, image_shape, c.seed
    )
    dev_images = jax.device_put(images, repl)
    dev_labels = jax.device_put(labels, repl)

    def indices(i):
        # As the trainer: one index matrix per epoch, uploaded once; the step picks its row.
        return jax.device_put(
            epoch_index_matrix(c.seed, i // steps_per_epoch, len(images), c.batch_size),
            rows_sharded,
        )

    t0 = time.perf_counter()
    lowered = step.lower(state, dev_images, dev_labels, indices(0))
    compiled = lowered.compile()
    return (lowered, compiled, state, dev_images, dev_labels, indices, time.perf_counter() - t0)


def time_method(
    config, method: str, images: np.ndarray, labels: np.ndarray, mesh
) -> dict[str, Any]:
    c = _method_config(config, method)
    validate_config(c, mesh.size)
    b = c.bench
    steps_per_epoch = steps_per_epoch_of(len(images), c.batch_size)
    lowered, compiled, state, dev_images, dev_labels, indices, compile_seconds = compiled_step(
        c, images, labels, mesh
    )

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
    result = dict(
        step_seconds=median, images_per_second=c.batch_size / median, step_seconds_all=times,
        compile_seconds=compile_seconds, xla_flops_per_step=xla, model_flops_per_step=analytic,
        xla_flop_rate=xla / median, model_flop_rate=analytic / median,
        host_data_seconds=statistics.fmean(host_times), final_loss=float(m["loss"]),
    )  # fmt: skip
    if b.checkpoint_saves and method == "gradmix":
        result["checkpoint"] = checkpoint_cost(
            state, b.checkpoint_saves, median, c.checkpoint_every_steps
        )
    if b.profile_dir and method == "gradmix":
        setting = f"{c.model.dtype}_b{c.batch_size}_s{c.data.image_size}"
        result["profile"] = profile_step(
            compiled, state, dev_images, dev_labels, idx, f"{b.profile_dir.rstrip('/')}/{setting}"
        )
    return result


def _median_seconds(fn, args, warmup: int, timed: int) -> float:
    times = []
    for i in range(warmup + timed):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def taps_cost(config, images: np.ndarray) -> dict[str, Any]:
    """Forward + backward of ``[v1; v2]`` (2 x batch images, train mode): a plain ``jax.vjp`` vs
    ``taps.vjp`` at ``gradmix.layers``, and the tap cotangents alone. Median seconds and ratios."""
    model = model_from_config(config)
    x = jax.numpy.asarray(images[: 2 * config.batch_size], jax.numpy.float32) / 255.0
    variables = model.init(jax.random.key(0), x[:2], train=False)
    spec = taps.for_model(model, config.gradmix.layers)

    def forward(params):
        (z, _), new = model.apply(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
        )
        return z, new

    def plain(params):
        z, vjp_fn, _ = jax.vjp(forward, params, has_aux=True)
        return vjp_fn(z)[0]

    def tapped(params):
        z, vjp_fn, _, _ = taps.vjp(forward, params, taps=spec, has_aux=True)
        return vjp_fn(z)

    def tap_grads_only(params):
        z, vjp_fn, acts, _ = taps.vjp(forward, params, taps=spec, has_aux=True)
        return vjp_fn(z)[1], acts

    b = config.bench
    seconds = {
        name: _median_seconds(jax.jit(fn), (variables["params"],), b.warmup_steps, b.timed_steps)
        for name, fn in (("plain_vjp", plain), ("taps_vjp", tapped), ("tap_grads", tap_grads_only))
    }
    return {
        "seconds": seconds,
        "taps": list(spec),
        "taps_over_plain": seconds["taps_vjp"] / seconds["plain_vjp"],
        "tap_grads_over_plain": seconds["tap_grads"] / seconds["plain_vjp"],
    }


def checkpoint_cost(state, saves: int, step_seconds: float, every_steps: int) -> dict[str, Any]:
    """What a checkpoint save costs a run, as the trainer saves (``checkpoint.BackgroundSaver``).

    Each of ``saves`` saves is timed from ``save`` until it is on disk (``wait_until_finished``),
    as if the training loop waited for the whole save; the median (the first save also pays
    Orbax's one-time set-up) is compared with the ``every_steps`` steps of ``step_seconds`` run
    between two saves: ``run_fraction = save / (every_steps * step_seconds + save)``. ``state`` is
    not donated and stays usable.
    """
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        saver = checkpoint.BackgroundSaver(checkpoint.make_manager(tmp, max_to_keep=1), state)
        for i in range(saves):
            t0 = time.perf_counter()
            saver.save(i, state)
            saver.wait_until_finished()
            times.append(time.perf_counter() - t0)
    save = statistics.median(times)
    return {
        "save_seconds": save,
        "save_seconds_all": times,
        "every_steps": every_steps,
        "run_fraction": save / (every_steps * step_seconds + save),
    }


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
    saves = config.bench.checkpoint_saves
    if isinstance(saves, bool) or not isinstance(saves, int) or saves < 0:
        raise SystemExit(f"error: bench.checkpoint_saves must be an integer >= 0, got {saves!r}")
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
        print(
            f"{method:14s} {report[method]['step_seconds'] * 1e3:9.1f} ms/step "
            f"{report[method]['images_per_second']:9.1f} img/s "
            f"(compile {report[method]['compile_seconds']:.1f} s)",
            file=sys.stderr,
        )
        if "checkpoint" in report[method]:
            ck = report[method]["checkpoint"]
            print(
                f"{'':14s} checkpoint save {ck['save_seconds'] * 1e3:.1f} ms (median of "
                f"{len(ck['save_seconds_all'])}): {100 * ck['run_fraction']:.3f}% of a run's time "
                f"at checkpoint_every_steps={ck['every_steps']}",
                file=sys.stderr,
            )
    if b.get("taps_cost", False):
        report["taps_cost"] = tc = taps_cost(config, images)
        print(
            f"{'taps':14s} taps.vjp {1e3 * tc['seconds']['taps_vjp']:.1f} ms vs plain jax.vjp "
            f"{1e3 * tc['seconds']['plain_vjp']:.1f} ms ({tc['taps_over_plain']:.3f}x); tap "
            f"gradients alone {1e3 * tc['seconds']['tap_grads']:.1f} ms "
            f"({tc['tap_grads_over_plain']:.3f}x)",
            file=sys.stderr,
        )
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
        no_xla = "n/a (no XLA cost analysis of the lowered step on this backend)"
        xla = f"{100 * r['mfu_xla']:.1f}%" if r["mfu_xla"] == r["mfu_xla"] else no_xla
        print(
            f"{method:14s} MFU {100 * r['mfu_model']:.1f}% (model FLOPs), {xla} (XLA FLOPs) "
            f"of {peak / 1e12:.2f} TFLOP/s ({source})",
            file=sys.stderr,
        )
    device = jax.devices()[0]
    report.update(device=device.device_kind, platform=device.platform, num_devices=mesh.size)
    report["batch_size"] = config.batch_size
    m = config.model
    report["model"] = {"name": m.name, "width": m.width, "image_size": size, "dtype": dtype}
    report["jax_version"] = jax.__version__
    return report


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        # Orbax logs every handler registration and save at INFO: keep stderr to the timing lines
        # unless -v / --verbosity asks for more (as the train CLI does).
        logging.set_verbosity(logging.WARNING)
    report = run_benchmark(_CONFIG.value)
    text = json.dumps(report, indent=2)
    if _JSON.value:
        write_text_atomic(_JSON.value, text)
    ratios = [
        {"dtype": r["model"]["dtype"], "batch": r["batch_size"]}
        | {"image_size": r["model"]["image_size"], **r.get("ratio_to_none", {})}
        for r in report.get("runs", [report])
    ]
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    app.run(main)
