"""Which part of an async checkpoint save stalls the training loop? (GPU diagnosis, one process.)

    python scripts/ckpt_stall_variants.py --json OUT.json [--dtypes float32,bfloat16]

Runs the benchmark's GradMix step (ResNet18 width 64, batch 256, 32x32) and, per saving variant,
``benchmark.checkpoint_stall`` (``--saves``, default 2; window = save step .. the step the save
finished in):

  direct          Orbax ``manager.save`` on the training thread (Orbax's own async write)
  background      device snapshot, ``manager.save`` of the unpacked state on a thread
  background_si   as background, with ``sys.setswitchinterval(5e-4)`` (GIL hand-over 10x sooner)
  d2h_only        device snapshot; the thread only does ``jax.device_get`` (no Orbax)
  host_copy       device snapshot + ``copy_to_host_async`` issued on the training thread; the
                  thread does ``jax.device_get`` and Orbax-saves the NumPy tree
  host_copy_si    host_copy with the shorter switch interval
  packed          host_copy, but Orbax saves one flat array per dtype (a few leaves, not ~250)
  npz             host_copy, but ``np.savez`` instead of Orbax (file write without Orbax)
  pinned          device snapshot moved to 'pinned_host' memory on the training thread (a device
                  DMA); the thread Orbax-saves those arrays
  pinned_d2h_only pinned, but the thread only does ``jax.device_get``
  devpack         one flat array per dtype built ON the device (jitted), ``copy_to_host_async``
                  on the training thread; the thread does ``jax.device_get`` + Orbax save
  devpack_thread  the packed device arrays handed to Orbax on the thread (Orbax copies them)
  devpack_pinned  the packed arrays moved to 'pinned_host' memory, then as devpack
  production      ``checkpoint.BackgroundSaver`` as it is now (packed on-disk layout; on an
                  accelerator devpack_pinned, on CPU without the pinned copy)
  production_si   production with the shorter switch interval (not yet measured on a GPU)
  production_pinned  production with the pinned-host copy forced on (the default skips it on CPU)

``--pipelined`` times steps as the trainer runs them (see ``benchmark.checkpoint_stall``);
``--trace DIR`` records a profiler trace of the production runs (host threads and device stream).

Before the packed layout, ``background`` was the library's saver. Results: README "Checkpoint
stall".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from gradmix_jax import benchmark, checkpoint, parallel  # noqa: E402


class DirectSaver:
    def __init__(self, manager, state):
        self.manager = manager

    def save(self, step, state):
        _orbax_save(self.manager, step, state)

    def in_progress(self):
        return self.manager.is_saving_in_progress()

    def wait_until_finished(self):
        self.manager.wait_until_finished()


def _orbax_save(manager, step, tree):
    # Orbax directly, on the tree as given (checkpoint.save would pack it first).
    manager.save(step, args=ocp.args.PyTreeSave(tree))


@jax.jit
def _snapshot(state):
    return jax.tree.map(lambda x: x.copy(), state)


pack = jax.jit(checkpoint.pack)  # the library's device-side packing (one flat array per dtype)


def to_pinned(tree):
    return jax.device_put(tree, jax.tree.map(
        lambda x: x.sharding.with_memory_kind("pinned_host"), tree))


class ThreadSaver(checkpoint.BackgroundSaver):
    """BackgroundSaver with another body for the helper thread."""
    mode = "background"
    snapshot = None  # its ``save`` does it all: the pipelined timing calls ``save``

    def save(self, step, state, force=False):
        self.wait()
        if self.mode.startswith("devpack"):
            snapshot = pack(state)
        else:
            snapshot = _snapshot(state)
        if self.mode in ("pinned", "pinned_d2h_only", "devpack_pinned"):
            snapshot = to_pinned(snapshot)
        if self.mode in ("host_copy", "packed", "npz", "devpack"):
            for leaf in jax.tree.leaves(snapshot):
                leaf.copy_to_host_async()
        self._thread = threading.Thread(target=self._body, args=(step, snapshot), daemon=True)
        self._thread.start()

    def _body(self, step, snapshot):
        t0 = time.perf_counter()
        if self.mode in ("d2h_only", "pinned_d2h_only"):
            jax.device_get(snapshot)
        elif self.mode in ("pinned", "devpack_thread"):
            _orbax_save(self.manager, step, snapshot)
        elif self.mode in ("devpack", "devpack_pinned"):
            _orbax_save(self.manager, step, jax.device_get(snapshot))
        elif self.mode == "host_copy":
            _orbax_save(self.manager, step, jax.device_get(snapshot))
        elif self.mode == "packed":
            # Few leaves: one flat array per dtype (tests whether Orbax's per-leaf work stalls).
            leaves = jax.tree.leaves(jax.device_get(snapshot))
            groups = {}
            for leaf in leaves:
                groups.setdefault(str(leaf.dtype), []).append(np.ravel(leaf))
            _orbax_save(self.manager, step, {k: np.concatenate(v) for k, v in groups.items()})
        elif self.mode == "npz":
            leaves = jax.tree.leaves(jax.device_get(snapshot))
            np.savez(os.path.join(str(self.manager.directory), f"{step}.npz"), *leaves)
        else:
            _orbax_save(self.manager, step, snapshot)
        self.thread_seconds.append(time.perf_counter() - t0)


def saver_factory(mode):
    if mode == "direct":
        return DirectSaver
    if mode in ("production", "production_si"):
        return checkpoint.BackgroundSaver
    if mode == "production_pinned":
        return lambda manager, state: checkpoint.BackgroundSaver(manager, state, pinned=True)

    def make(manager, state):
        s = ThreadSaver(manager, state)
        s.mode, s.thread_seconds = mode.removesuffix("_si"), []
        make.last = s
        return s
    return make


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--modes", default="direct,background,background_si,d2h_only,host_copy,host_copy_si,packed,npz")
    ap.add_argument("--saves", type=int, default=2, help="saves per stall timing")
    ap.add_argument("--repeats", type=int, default=1,
                    help="time the modes this many times, interleaved (A/B on a noisy machine)")
    ap.add_argument("--pipelined", action="store_true",
                    help="time steps as the trainer runs them (no wait per step), see benchmark")
    ap.add_argument("--trace", default="",
                    help="write a jax.profiler trace (with a Perfetto JSON) of each 'production' run here")
    args = ap.parse_args()
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "bench_cfg", os.path.join(os.path.dirname(__file__), "..", "configs", "benchmark.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    mesh = parallel.make_mesh()
    out = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "runs": []}
    out["orbax"] = getattr(ocp, "__version__", "?")
    for dtype in args.dtypes.split(","):
        c = module.get_config()
        c.model.width, c.batch_size, c.model.dtype = args.width, args.batch, dtype
        c.mixing.method = "gradmix"
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (1024, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 6, (1024,)).astype(np.int32)
        lowered, compiled, state, im, lb, indices, comp_s = benchmark.compiled_step(c, images, labels, mesh)
        cost = lowered.cost_analysis()
        out["cost_analysis_type"] = type(cost).__name__
        out["cost_analysis_keys"] = sorted(cost.keys())[:20] if isinstance(cost, dict) else repr(cost)[:200]
        idx = indices(0)
        for _ in range(3):
            state, m = compiled(state, im, lb, idx)
        jax.block_until_ready(state)
        # Compile the packing and the pinned-memory transfers outside the timed loops.
        jax.block_until_ready((to_pinned(pack(state)), to_pinned(_snapshot(state))))
        for mode in [m for _ in range(args.repeats) for m in args.modes.split(",")]:
            sys.setswitchinterval(5e-4 if mode.endswith("_si") else 5e-3)
            make = saver_factory(mode)
            # The step donates its state: give each variant its own device copy.
            trace = (jax.profiler.trace(os.path.join(args.trace, f"{dtype}_{mode}"),
                                        create_perfetto_trace=True)
                     if args.trace and mode.startswith("production") else contextlib.nullcontext())
            with trace:
                st, _ = benchmark.checkpoint_stall(compiled, _snapshot(state), im, lb, idx,
                                                   saves=args.saves, make_saver=make,
                                                   pipelined=args.pipelined)
            st["thread_seconds"] = getattr(getattr(make, "last", None), "thread_seconds", None)
            row = {"dtype": dtype, "mode": mode, "timing": st["mode"],
                   "median_ms": 1e3 * st["median_step_seconds"],
                   "clean_worst_ratio": st["clean_worst_ratio"],
                   "median_save_ratio": st["median_save_ratio"],
                   "median_excess_ms": 1e3 * st["median_excess_seconds"],
                   "saves": [(s["window_steps"], round(s["ratio"], 3), round(1e3 * s["excess_seconds"], 1))
                             for s in st["saves"]],
                   "thread_s": st["thread_seconds"],
                   "steps_ms": [None if t is None else round(1e3 * t, 1)
                                for t in st["step_seconds_all"]]}
            out["runs"].append(row)
            print(dtype, mode, "median %.1f ms" % row["median_ms"], "(window, worst, excess ms)",
                  row["saves"], "thread s", row["thread_s"], flush=True)
            print(f"{dtype} {mode}: median over saves: worst step {row['median_save_ratio']:.3f}x, "
                  f"excess {row['median_excess_ms']:.0f} ms; slowest step without a save "
                  f"{row['clean_worst_ratio']:.3f}x", flush=True)
        # The library's saver: what it wrote restores to the state it was given.
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            saver = checkpoint.BackgroundSaver(checkpoint.make_manager(tmp), state)
            saver.save(1, state)
            saver.wait_until_finished()
            back = checkpoint.restore_latest(checkpoint.make_manager(tmp), state)
            same = all(bool((np.asarray(a) == np.asarray(b)).all())
                       for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(back)))
            out.setdefault("roundtrip_equal", {})[dtype] = same
            print(dtype, "BackgroundSaver save -> restore_latest equal:", same, flush=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    sys.setswitchinterval(5e-3)


if __name__ == "__main__":
    main()
