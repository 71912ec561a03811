"""Host throughput of the streaming input path: images/s that ``pipeline.stream_batches`` delivers.

``python -m gradmix_jax.tools.input_benchmark --out DIR [--sizes 32,224] [--threads 1,2,4]
[--workers 0,2] [--images 512] [--batch 64] [--seconds 5]``

Writes an ImageNet-like JPEG folder under ``DIR/jpeg`` (500x375 px, quality 90; a few random
images of 8x6 to 125x94 px upsampled bicubically and summed, plus mild Gaussian noise, so they
compress like photos rather than like noise), then for every image size and every (threads,
workers) pair times ``stream_batches`` over the files as ``images.ImageFiles`` (read, JPEG
decode with ``draft``, shorter-side resize, centre crop, all on the host) and, for comparison,
over an in-memory uint8 array of the same shape (the copy and batching cost only). The first
batch of each cell is dropped as warm-up; batches are then timed until ``--seconds`` have passed
(at least ``--min_batches``). The files are read from the page cache after the first pass.

The JSON report (default ``DIR/input_throughput.json``) holds the batches' arrival times (every
batch's, or every k-th when a cell timed more than ``MAX_ARRIVALS`` batches), the
CPU seconds of each timed window (the machine's, this process's with its workers', and the
difference: what other processes took, from /proc), the config, the jax/grain/Pillow versions, the CPU model, ``os.cpu_count()``, the date and the git
commit. ``--wait_quiet`` first waits until no ``pytest`` or ``gradmix_jax.train`` process runs.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

#: Arrival times kept per cell: every k-th batch's beyond this (an in-memory split yields batches
#: in microseconds; a full list would take megabytes).
MAX_ARRIVALS = 2000
#: Processes whose presence makes a measurement noisy (``pgrep -f`` pattern).
BUSY_PATTERN = "pytest|gradmix_jax.train"


def thin_arrivals(arrivals) -> dict:
    """{'arrival_s': every ``stride``-th arrival time (the last one included), 'arrival_stride'}."""
    stride = max(1, -(-len(arrivals) // MAX_ARRIVALS))
    kept = list(arrivals[::stride])
    if arrivals and (len(arrivals) - 1) % stride:
        kept.append(arrivals[-1])
    return {"arrival_s": [round(a, 6) for a in kept], "arrival_stride": stride}


def photo_like_jpeg(rng: np.random.Generator, width: int, height: int, quality: int) -> bytes:
    """A JPEG that compresses like a photo: random images of a few scales upsampled bicubically
    and summed (smooth regions and edges), plus Gaussian noise (sensor grain)."""
    from PIL import Image

    out = np.zeros((height, width, 3), np.float32)
    for sw, sh, amplitude in ((8, 6, 1.0), (40, 30, 0.5), (125, 94, 0.3)):
        small = rng.integers(0, 256, (min(sh, height), min(sw, width), 3), dtype=np.uint8)
        up = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
        out += amplitude * (np.asarray(up, np.float32) - 128.0)
    out = out / 1.8 + 128.0 + rng.normal(0.0, 8.0, out.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(out, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def write_jpegs(
    folder, count: int, *, width: int = 500, height: int = 375, quality: int = 90, seed: int = 0
) -> list[str]:
    """``count`` photo-like JPEGs ``folder/img_00000.jpg ...``; image ``i`` is drawn from the
    seed ``(seed, i)``, and files that exist are kept."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img_{i:05d}.jpg"
        if not path.exists():
            rng = np.random.default_rng([seed, i])
            path.write_bytes(photo_like_jpeg(rng, width, height, quality))
        paths.append(str(path))
    return paths


def busy_processes(exclude=()) -> list[str]:
    """Command lines of running ``pytest``/``gradmix_jax.train`` processes, except ``exclude``
    pids and this process."""
    out = subprocess.run(["pgrep", "-af", BUSY_PATTERN], capture_output=True, text=True)
    skip = {os.getpid(), *exclude}
    lines = []
    for line in out.stdout.splitlines():
        pid, _, cmd = line.partition(" ")
        if int(pid) not in skip and "pgrep" not in cmd:
            lines.append(line)
    return lines


def wait_until_quiet(max_seconds: float = 900, poll_seconds: float = 20) -> dict:
    """Polls until ``busy_processes()`` is empty or ``max_seconds`` pass.

    Returns {'quiet': bool, 'waited_s': float, 'busy': command lines still running at the end}."""
    start = time.monotonic()
    while True:
        busy = busy_processes()
        waited = time.monotonic() - start
        if not busy or waited >= max_seconds:
            return {"quiet": not busy, "waited_s": round(waited, 1), "busy": busy}
        time.sleep(poll_seconds)


def cpu_seconds() -> dict:
    """CPU seconds so far: the whole machine's busy time (/proc/stat, all CPUs) and this process's
    with its live descendants (Grain workers) (/proc/<pid>/stat utime + stime). Their difference
    over an interval is the CPU time other processes took; {} where /proc is not readable."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        parents, own = {}, {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            rest = stat[stat.rindex(")") + 2 :].split()  # the fields after "(comm)"
            parents[int(entry.name)] = int(rest[1])
            own[int(entry.name)] = (int(rest[11]) + int(rest[12])) / tick
    except (OSError, ValueError, IndexError):
        return {}
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        pid = frontier.pop()
        children = [c for c, p in parents.items() if p == pid and c not in tree]
        tree.update(children)
        frontier += children
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    steal = fields[7] if len(fields) > 7 else 0
    return {
        "machine_busy_s": (sum(fields[:8]) - idle - steal) / tick,
        "steal_s": steal / tick,
        "own_tree_s": sum(own.get(pid, 0.0) for pid in tree),
    }


def time_stream(
    images,
    labels,
    *,
    batch_size: int,
    num_threads: int,
    num_workers: int,
    min_seconds: float,
    min_batches: int = 3,
    max_batches: int = 100_000,
) -> dict:
    """Times ``stream_batches`` over ``images``: the first batch is warm-up, then batches are
    drawn until ``min_seconds`` and ``min_batches`` are both reached.

    Returns first-batch seconds, each timed batch's arrival time (seconds after the warm-up
    batch), the timed image count and images/s."""
    from gradmix_jax.training.pipeline import stream_batches

    t0 = time.perf_counter()
    iterator = stream_batches(
        images,
        labels,
        seed=0,
        batch_size=batch_size,
        start_step=0,
        num_steps=max_batches + 1,
        num_threads=num_threads,
        num_workers=num_workers,
        prefetch_batches=4,
    )
    try:
        first, _ = next(iterator)
        cpu_start = cpu_seconds()
        t_start = time.perf_counter()
        arrivals, count = [], 0
        while True:
            batch, _ = next(iterator)
            count += len(batch)
            arrivals.append(time.perf_counter() - t_start)
            if (arrivals[-1] >= min_seconds and len(arrivals) >= min_batches) or len(
                arrivals
            ) >= max_batches:
                break
        cpu_end = cpu_seconds()
    finally:
        if hasattr(iterator, "close"):
            iterator.close()
    elapsed = arrivals[-1]
    cpu = {k: cpu_end[k] - cpu_start[k] for k in cpu_start if k in cpu_end}
    if cpu:
        cpu["other_s"] = cpu["machine_busy_s"] - cpu["own_tree_s"]
    return {
        "first_batch_s": t_start - t0,
        "batch_shape": list(first.shape),
        "timed_batches": len(arrivals),
        "timed_images": count,
        "timed_s": elapsed,
        "images_per_s": count / elapsed,
        # CPU seconds in the timed window: machine, this process + workers, everything else.
        "cpu_s": cpu,
        **thin_arrivals(arrivals),
    }


def _versions() -> dict:
    from importlib.metadata import version

    import jax
    import PIL

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": version("jaxlib"),
        "grain": version("grain"),
        "pillow": PIL.__version__,
        "numpy": np.__version__,
    }


def cpu_model() -> str:
    """The first 'model name' of /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def git_commit() -> str:
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=root
    )
    return out.stdout.strip() or "unknown"


def machine_info() -> dict:
    """Date, commit, versions, CPU model and count: the labels every measurement carries."""
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "versions": _versions(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }


def run(
    out_dir,
    *,
    sizes=(32, 224),
    threads=(1, 2, 4),
    workers=(0, 2),
    num_images: int = 512,
    batch_size: int = 64,
    min_seconds: float = 5.0,
    min_batches: int = 3,
    width: int = 500,
    height: int = 375,
    quality: int = 90,
    log=print,
) -> dict:
    """Writes the JPEG folder under ``out_dir`` and times every (source, size, threads, workers)
    cell; returns the report (see the module docstring)."""
    from gradmix_jax.data.images import ImageFiles

    paths = write_jpegs(
        Path(out_dir) / "jpeg", num_images, width=width, height=height, quality=quality
    )
    file_bytes = [os.path.getsize(p) for p in paths]
    labels = np.zeros(num_images, np.int32)
    report = {
        **machine_info(),
        "config": {
            "sizes": list(sizes),
            "threads": list(threads),
            "workers": list(workers),
            "num_images": num_images,
            "batch_size": batch_size,
            "min_seconds": min_seconds,
            "min_batches": min_batches,
            "prefetch_batches": 4,
            "jpeg": {"width": width, "height": height, "quality": quality},
        },
        "jpeg_mean_bytes": float(np.mean(file_bytes)),
        "jpeg_min_bytes": int(np.min(file_bytes)),
        "jpeg_max_bytes": int(np.max(file_bytes)),
        "cells": [],
    }
    log(f"{num_images} JPEGs, mean {report['jpeg_mean_bytes'] / 1e3:.1f} kB")
    for size in sizes:
        sources = {
            "jpeg": ImageFiles(paths, size),
            "memory": np.random.default_rng(0).integers(
                0, 256, (num_images, size, size, 3), dtype=np.uint8
            ),
        }
        for source, images in sources.items():
            for n_workers in workers:
                for n_threads in threads:
                    busy = busy_processes()
                    cell = time_stream(
                        images,
                        labels,
                        batch_size=batch_size,
                        num_threads=n_threads,
                        num_workers=n_workers,
                        min_seconds=min_seconds,
                        min_batches=min_batches,
                    )
                    cell = {
                        "source": source,
                        "size": size,
                        "threads": n_threads,
                        "workers": n_workers,
                        "busy_at_start": busy,
                        **cell,
                    }
                    report["cells"].append(cell)
                    log(
                        f"{source:6s} {size:4d}px threads={n_threads} workers={n_workers}: "
                        f"{cell['images_per_s']:10.1f} images/s"
                    )
    return report


def table(report: dict) -> str:
    """Markdown table: images/s by size x workers x threads, decoded files and in-memory array."""
    cells = {(c["source"], c["size"], c["threads"], c["workers"]): c for c in report["cells"]}
    lines = [
        "| size | workers | threads | JPEG files: images/s | in-memory array: images/s |",
        "|---|---|---|---|---|",
    ]
    cfg = report["config"]
    for size in cfg["sizes"]:
        for w in cfg["workers"]:
            for t in cfg["threads"]:
                row = [
                    f"{cells[(s, size, t, w)]['images_per_s']:,.0f}"
                    if (s, size, t, w) in cells
                    else "-"
                    for s in ("jpeg", "memory")
                ]
                lines.append(f"| {size} | {w} | {t} | {row[0]} | {row[1]} |")
    return "\n".join(lines)


def int_list(text: str) -> list[int]:
    """``"32,224"`` -> ``[32, 224]`` (a comma-list flag)."""
    return [int(x) for x in text.split(",") if x.strip()]


def write_report(report: dict, path, table_text: str) -> None:
    """Writes the JSON report to ``path`` and prints the table and where the report is."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(table_text)
    print(f"report: {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="working folder (JPEGs, default report)")
    parser.add_argument(
        "--json", default=None, help="report path (default OUT/input_throughput.json)"
    )
    parser.add_argument("--sizes", type=int_list, default=[32, 224])
    parser.add_argument("--threads", type=int_list, default=[1, 2, 4])
    parser.add_argument("--workers", type=int_list, default=[0, 2])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per cell")
    parser.add_argument("--min_batches", type=int, default=3)
    parser.add_argument(
        "--wait_quiet",
        type=float,
        default=0.0,
        help="wait up to this many seconds for no pytest/gradmix_jax.train process (0: don't)",
    )
    args = parser.parse_args(argv)
    quiet = wait_until_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
    report = run(
        args.out,
        sizes=args.sizes,
        threads=args.threads,
        workers=args.workers,
        num_images=args.images,
        batch_size=args.batch,
        min_seconds=args.seconds,
        min_batches=args.min_batches,
    )
    report["quiet_before"] = quiet
    report["busy_after"] = busy_processes()
    write_report(report, args.json or Path(args.out) / "input_throughput.json", table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
