"""The input-throughput tool on a tiny setting; the RSS probe's image folder and command."""

import json

import numpy as np

from gradmix_jax.data import load_imagefolder
from gradmix_jax.tools import input_benchmark, rss_probe


def test_input_benchmark_report(tmp_path):
    report = input_benchmark.run(
        tmp_path,
        sizes=(32,),
        threads=(1,),
        workers=(0,),
        num_images=16,
        batch_size=8,
        min_seconds=0.2,
        min_batches=2,
        log=lambda *_: None,
    )
    json.dumps(report)  # serialisable as written
    for key in ("date", "git_commit", "versions", "cpu_model", "cpu_count", "config", "cells"):
        assert key in report
    assert {"jax", "grain", "pillow"} <= set(report["versions"])
    assert report["jpeg_mean_bytes"] > 10_000  # photo-like, not a flat image
    assert [(c["source"], c["size"]) for c in report["cells"]] == [("jpeg", 32), ("memory", 32)]
    for cell in report["cells"]:
        assert cell["batch_shape"] == [8, 32, 32, 3]
        assert cell["images_per_s"] > 0 and cell["timed_batches"] >= 2
        stride = cell["arrival_stride"]  # every batch's time, or every k-th (and the last)
        assert len(cell["arrival_s"]) == -(-cell["timed_batches"] // stride) + (
            (cell["timed_batches"] - 1) % stride > 0
        )
        assert len(cell["arrival_s"]) <= input_benchmark.MAX_ARRIVALS + 1
        assert set(cell["cpu_s"]) >= {"machine_busy_s", "own_tree_s", "other_s"}
        assert cell["timed_images"] == 8 * cell["timed_batches"]
    assert "| 32 | 0 | 1 |" in input_benchmark.table(report)


def test_rss_probe_folder_and_command(tmp_path):
    root = rss_probe.write_image_folder(tmp_path, 8, test_per_class=1, width=64, height=48)
    data = load_imagefolder(str(root), (), 16)
    assert len(data.train_images) == 8 and data.train_images.shape[1:] == (16, 16, 3)
    assert len(data.known_classes) == 4 and len(data.unknown_classes) == 2
    assert np.asarray(data.train_images[0]).dtype == np.uint8
    stream = rss_probe.train_command(root, tmp_path / "w", "stream")
    device = rss_probe.train_command(root, tmp_path / "w", "device")
    assert "--config.data.device_budget_mb=8" in stream
    assert "--config.data.pipeline=device" in device
    assert f"--config.data.data_dir={root}" in stream
