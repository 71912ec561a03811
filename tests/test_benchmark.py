"""The benchmark CLI runs with a tiny model and writes its JSON report."""

import json
import os
import re
import subprocess
import sys

from gradmix_jax.tools import flops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_writes_report(tmp_path):
    out_json = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        "-m",
        "gradmix_jax.tools.benchmark",
        "--config",
        os.path.join(ROOT, "configs", "benchmark.py"),
        "--config.model.width=4",
        "--config.batch_size=8",
        "--config.data.image_size=16",
        "--config.bench.num_images=32",
        "--config.bench.methods=('none','gradmix')",
        "--config.bench.warmup_steps=1",
        "--config.bench.timed_steps=2",
        "--config.bench.checkpoint_saves=3",
        "--config.checkpoint_every_steps=50",
        f"--config.bench.profile_dir={tmp_path / 'profile'}",
        "--json",
        str(out_json),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    # Quiet unless -v: no absl/Orbax INFO lines (I1202 12:00:00.123 ...) around the timing lines.
    assert not re.search(r"^I\d{4} ", out.stderr, re.M), out.stderr[:2000]
    report = json.loads(out_json.read_text())
    for method in ("none", "gradmix"):
        r = report[method]
        assert r["step_seconds"] > 0 and len(r["step_seconds_all"]) == 2
        assert abs(r["images_per_second"] - 8 / r["step_seconds"]) < 1e-6 * r["images_per_second"]
    tc = report["taps_cost"]  # on by default in configs/benchmark.py
    assert tc["taps"] == ["conv3_2", "conv4_2", "conv5_2"]
    assert all(t > 0 for t in tc["seconds"].values())
    assert tc["taps_over_plain"] == tc["seconds"]["taps_vjp"] / tc["seconds"]["plain_vjp"]
    assert report["ratio_to_none"]["none"] == 1.0
    assert (
        report["ratio_to_none"]["gradmix"]
        == report["gradmix"]["step_seconds"] / report["none"]["step_seconds"]
    )
    assert report["device"] and report["batch_size"] == 8
    assert report["peak_flops_per_device"] > 0 and report["peak_source"]
    for method, images_trained in (("none", 2), ("gradmix", 3)):
        r = report[method]
        # Analytic model FLOPs: 3 x forward FLOPs per trained image (2N clean, +N mixed).
        assert r["model_flops_per_step"] == 3 * images_trained * 8 * flops.forward_flops(
            "resnet18", 4, 16, 3, "cifar", 128
        )
        assert r["xla_flops_per_step"] > r["model_flops_per_step"] / 2
        assert (
            r["mfu_model"]
            == r["model_flops_per_step"] / r["step_seconds"] / report["peak_flops_per_device"]
        )
        assert 0 < r["mfu_xla"] < 1
    # The profile runs after the checkpoint saves, on the same state (a save does not donate it).
    profile = report["gradmix"]["profile"]
    assert profile["hlo_op_counts"]["convolution"] > 0
    assert os.path.isfile(os.path.join(profile["dir"], "train_step_gradmix.hlo.txt"))
    # Checkpoint cost (gradmix only): the median of the three measured save times against a run
    # of 50 gradmix steps plus that save.
    assert "checkpoint" not in report["none"]
    ck = report["gradmix"]["checkpoint"]
    saves = ck["save_seconds_all"]
    assert len(saves) == 3 and all(t > 0 for t in saves) and ck["every_steps"] == 50
    assert ck["save_seconds"] == sorted(saves)[1]
    step = report["gradmix"]["step_seconds"]
    fraction = sorted(saves)[1] / (50 * step + sorted(saves)[1])
    assert abs(ck["run_fraction"] - fraction) < 1e-12 * fraction and 0 < fraction < 1
    assert f"{100 * fraction:.3f}% of a run's time at checkpoint_every_steps=50" in out.stderr


def test_grid_and_hlo_op_counts():
    import importlib.util

    from gradmix_jax.tools import benchmark
    from gradmix_jax.training.trainer import augment_params  # noqa: F401  (import order as the CLI)

    spec = importlib.util.spec_from_file_location(
        "bench_cfg", os.path.join(ROOT, "configs", "benchmark.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.bench.grid = ("bfloat16/64/16", "float32/8/32")
    got = [
        (c.model.dtype, c.batch_size, c.data.image_size) for c in benchmark._grid_configs(config)
    ]
    assert got == [("bfloat16", 64, 16), ("float32", 8, 32)]
    config.bench.grid = ("float32-8-32",)
    import pytest

    with pytest.raises(SystemExit, match="dtype/batch/size"):
        benchmark._grid_configs(config)
    # A bad save count is refused with one line naming the field, before anything compiles.
    config.bench.checkpoint_saves = -1  # (ml_collections itself refuses a float or bool for an int)
    with pytest.raises(SystemExit, match=r"bench.checkpoint_saves must be an integer >= 0"):
        benchmark.run_benchmark(config)
    hlo = (
        "%a = f32[2,3]{1,0} transpose(%p), dimensions={1,0}\n"
        "%b = f32[2,3]{1,0} copy(%a)\n  ROOT %c = f32[2,2]{1,0} dot(%b, %a)\n"
        "%d = f32[2,3]{1,0} transpose(%b)\n"
    )
    counts = benchmark.hlo_op_counts(hlo)
    assert counts["transpose"] == 2 and counts["copy"] == 1 and counts["dot"] == 1
    assert counts["convolution"] == 0
