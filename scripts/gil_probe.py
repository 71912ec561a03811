"""How long does an async checkpoint save keep the training thread waiting for the GIL?

    python scripts/gil_probe.py --json OUT.json [--mb 138] [--modes ...]

No training: the main thread only sleeps 1 ms at a time in a loop (a sleep releases the GIL, and
waking up needs it back), while a save of a packed state (``checkpoint.pack``'s layout: one
float32 array of ``--mb`` MB plus the int32 layout, already in host memory, as
``BackgroundSaver`` hands it over after the pinned-host DMA) runs in the background. A wake-up
later than 1 ms + the no-save baseline's median is time the thread waited for the GIL (or a
core). Reported per mode: the wall time until the save was on disk, the sum and the maximum of
the late wake-ups during it, and the process CPU time it used. Modes:

  baseline        no save
  production      ``checkpoint.BackgroundSaver``'s helper-thread body (``_save_packed``)
  production_si   the same with ``sys.setswitchinterval(5e-4)``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from gradmix_jax import checkpoint  # noqa: E402


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def probe_while(busy: threading.Event, started: threading.Event, min_seconds: float):
    """Sleep 1 ms at a time until ``busy`` is cleared (and at least ``min_seconds``); lateness."""
    lateness = []
    started.wait()
    t_end = time.perf_counter() + min_seconds
    while busy.is_set() or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        time.sleep(1e-3)
        lateness.append(time.perf_counter() - t0 - 1e-3)
    return lateness


def run_mode(mode: str, packed: dict, layout: np.ndarray, workdir: str, step: int):
    manager = checkpoint.make_manager(workdir, max_to_keep=1)
    busy, started = threading.Event(), threading.Event()
    busy.set()
    result = {}

    def save():
        started.set()
        t0, c0 = time.perf_counter(), cpu_seconds()
        if mode != "baseline":
            checkpoint._save_packed(manager, step, layout, packed, False)
            result["save_call_s"] = time.perf_counter() - t0
            manager.wait_until_finished()
        result["save_s"], result["cpu_s"] = time.perf_counter() - t0, cpu_seconds() - c0
        busy.clear()

    sys.setswitchinterval(5e-4 if mode.endswith("_si") else 5e-3)
    try:
        thread = threading.Thread(target=save, daemon=True)
        thread.start()
        late = probe_while(busy, started, 0.3 if mode == "baseline" else 0.0)
        thread.join()
    finally:
        sys.setswitchinterval(5e-3)
    manager.close()
    return late, result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--mb", type=float, default=138.0)
    ap.add_argument("--modes", default="baseline,production,production_si")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    n = int(args.mb * 1e6 / 4)
    packed = {"data_float32": np.random.default_rng(0).normal(size=n).astype(np.float32)}
    layout = np.arange(1000, dtype=np.int32)
    out = {"mb": args.mb, "runs": []}
    floor = None
    with tempfile.TemporaryDirectory() as tmp:
        step = 0
        for r in range(args.repeats):
            for mode in args.modes.split(","):
                step += 1
                late, res = run_mode(mode, packed, layout, tmp, step)
                if mode == "baseline":
                    floor = statistics.median(late)
                f = floor or 0.0
                extra = [max(0.0, x - f) for x in late]
                row = {"mode": mode, "repeat": r, **{k: round(v, 4) for k, v in res.items()},
                       "wakeups": len(late), "late_sum_ms": round(1e3 * sum(extra), 2),
                       "late_max_ms": round(1e3 * max(extra), 2),
                       "late_p99_ms": round(1e3 * float(np.percentile(extra, 99)), 2),
                       "floor_ms": round(1e3 * f, 3)}
                out["runs"].append(row)
                print(row, flush=True)
    with open(args.json, "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
