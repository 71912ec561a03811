"""Peak resident memory of a training run, streamed against device-resident, at two dataset sizes.

``python -m gradmix_jax.tools.rss_probe --out DIR [--train_images 2000,8000] [--json PATH]``

Writes image folders ``DIR/n<N>/{train,test}/<class>/*.jpg`` (4 training classes of N/4 images
each; 6 test classes of ``--test_per_class`` images, the last 2 unknown; photo-like JPEGs of
``--width`` x ``--height`` px, hard links into one pool ``DIR/pool`` so the sizes share files),
then for each size runs ``python -m gradmix_jax.train --config configs/digits.py`` on the folder
at 64 px (ResNet18 width 8, batch 32, 20 steps, ``data.num_threads=2``) twice, in a fresh process
each time: streamed (``data.device_budget_mb=8``, so ``pipeline='auto'`` streams) and
device-resident (``data.pipeline=device``). For each run it records the child's peak RSS
(``ru_maxrss`` from ``os.wait4`` on that child), its RSS sampled from /proc once a second, the
wall time and the run's ``results.json`` summary. ``--wait_quiet`` seconds (default 900): before
each run, wait until no other ``pytest`` or ``gradmix_jax.train`` process runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

from gradmix_jax.tools.input_benchmark import (
    int_list,
    machine_info,
    wait_until_quiet,
    write_jpegs,
    write_report,
)

ROOT = Path(__file__).resolve().parents[2]

TRAIN_CLASSES = 4
TEST_CLASSES = 6


def write_image_folder(
    out_dir, num_train: int, *, test_per_class: int = 25, width: int = 128, height: int = 96
) -> Path:
    """``out_dir/n<num_train>``: ``train/c0..c3`` with ``num_train`` images in all and
    ``test/c0..c5`` with ``test_per_class`` each, hard-linked from ``out_dir/pool``."""
    out_dir = Path(out_dir)
    per_class = num_train // TRAIN_CLASSES
    pool_train = write_jpegs(
        out_dir / "pool" / "train", per_class * TRAIN_CLASSES, width=width, height=height, seed=1
    )
    pool_test = write_jpegs(
        out_dir / "pool" / "test", test_per_class * TEST_CLASSES, width=width, height=height, seed=2
    )
    root = out_dir / f"n{num_train}"
    for split, pool, classes, per in (
        ("train", pool_train, TRAIN_CLASSES, per_class),
        ("test", pool_test, TEST_CLASSES, test_per_class),
    ):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for src in pool[c * per : (c + 1) * per]:
                dst = folder / Path(src).name
                if not dst.exists():
                    os.link(src, dst)
    return root


def train_command(folder, workdir, mode: str) -> list[str]:
    """The training command on image folder ``folder``; ``mode``: 'stream' or 'device'."""
    cmd = [
        sys.executable,
        "-m",
        "gradmix_jax.train",
        "--config",
        str(ROOT / "configs" / "digits.py"),
        "--workdir",
        str(workdir),
        "--config.data.protocol=imagefolder",
        f"--config.data.data_dir={folder}",
        "--config.augment.preset=rgb",
        "--config.data.image_size=64",
        "--config.model.width=8",
        "--config.batch_size=32",
        "--config.num_steps=20",
        "--config.progress_bar=False",
        "--config.eval.id_samples=0",
        "--config.data.num_threads=2",
    ]
    if mode == "stream":
        return cmd + ["--config.data.device_budget_mb=8"]
    if mode == "device":
        return cmd + ["--config.data.pipeline=device"]
    raise ValueError(f"mode must be 'stream' or 'device', got {mode!r}")


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def measure(cmd: list[str], log_path, sample_seconds: float = 1.0) -> dict:
    """Runs ``cmd`` in a fresh process; its peak RSS (``ru_maxrss`` of ``os.wait4``, KiB on
    Linux), RSS samples from /proc, wall time and exit code."""
    import subprocess

    with open(log_path, "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        samples: list[tuple[float, int]] = []
        done = threading.Event()

        def sample():
            while not done.wait(sample_seconds):
                rss = _rss_kib(proc.pid)
                if rss is not None:
                    samples.append((round(time.perf_counter() - start, 2), rss))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "returncode": proc.returncode,
        "wall_s": wall,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "rss_samples_s_kib": samples,
    }


def run(
    out_dir,
    train_sizes=(2000, 8000),
    modes=("stream", "device"),
    *,
    test_per_class: int = 25,
    wait_quiet: float = 900,
    log=print,
) -> dict:
    out_dir = Path(out_dir)
    report = {
        **machine_info(),
        "config": {
            "train_sizes": list(train_sizes),
            "modes": list(modes),
            "test_per_class": test_per_class,
            "image_size": 64,
            "wait_quiet_s": wait_quiet,
        },
        "runs": [],
    }
    for n in train_sizes:
        folder = write_image_folder(out_dir, n, test_per_class=test_per_class)
        for mode in modes:
            workdir = out_dir / "runs" / f"n{n}_{mode}"
            cmd = train_command(folder, workdir, mode)
            quiet = wait_until_quiet(wait_quiet) if wait_quiet > 0 else None
            result = measure(cmd, out_dir / f"n{n}_{mode}.log")
            summary_path = workdir / "results.json"
            summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
            entry = {
                "train_images": n,
                "decoded_train_mib": n * 64 * 64 * 3 / 2**20,
                "mode": mode,
                "command": cmd,
                "quiet_before": quiet,
                **result,
                "summary": {
                    k: summary.get(k)
                    for k in (
                        "input_pipeline",
                        "num_train_images",
                        "train_seconds",
                        "train_images_per_second",
                        "eval_seconds",
                        "auroc",
                    )
                },
            }
            report["runs"].append(entry)
            log(
                f"n={n:6d} {mode:6s}: peak RSS {entry['peak_rss_mib']:8.1f} MiB, "
                f"wall {entry['wall_s']:6.1f} s, rc {entry['returncode']}, "
                f"pipeline {entry['summary']['input_pipeline']}"
            )
    return report


def table(report: dict) -> str:
    lines = [
        "| training images | decoded MiB | mode | pipeline | peak RSS MiB | wall s | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        s = r["summary"]
        train_s = f"{s['train_seconds']:.1f}" if s.get("train_seconds") else "-"
        lines.append(
            f"| {r['train_images']:,} | {r['decoded_train_mib']:.1f} | {r['mode']} | "
            f"{s.get('input_pipeline')} | {r['peak_rss_mib']:,.0f} | {r['wall_s']:.1f} | "
            f"{train_s} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="working folder (images, runs, logs)")
    parser.add_argument("--json", default=None, help="report path (default OUT/stream_rss.json)")
    parser.add_argument("--train_images", type=int_list, default=[2000, 8000])
    parser.add_argument("--modes", default="stream,device")
    parser.add_argument("--test_per_class", type=int, default=25)
    parser.add_argument("--wait_quiet", type=float, default=900.0)
    args = parser.parse_args(argv)
    report = run(
        args.out,
        args.train_images,
        tuple(m for m in args.modes.split(",") if m),
        test_per_class=args.test_per_class,
        wait_quiet=args.wait_quiet,
    )
    write_report(report, args.json or Path(args.out) / "stream_rss.json", table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
