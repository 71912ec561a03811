"""The benchmark CLI runs with a tiny model and writes its JSON report."""

import json
import os
import statistics
import subprocess
import sys

from gradmix_jax import flops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_writes_report(tmp_path):
    out_json = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "gradmix_jax.benchmark", "--config", os.path.join(ROOT, "configs", "benchmark.py"),
           "--config.model.width=4", "--config.batch_size=8", "--config.data.image_size=16",
           "--config.bench.num_images=32", "--config.bench.methods=('none','gradmix')",
           "--config.bench.warmup_steps=1", "--config.bench.timed_steps=2",
           "--config.bench.stall_saves=3", f"--config.bench.profile_dir={tmp_path / 'profile'}", "--json", str(out_json)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out_json.read_text())
    for method in ("none", "gradmix"):
        r = report[method]
        assert r["step_seconds"] > 0 and len(r["step_seconds_all"]) == 2
        assert abs(r["images_per_second"] - 8 / r["step_seconds"]) < 1e-6 * r["images_per_second"]
    assert report["ratio_to_none"]["none"] == 1.0
    assert report["ratio_to_none"]["gradmix"] == report["gradmix"]["step_seconds"] / report["none"]["step_seconds"]
    assert report["device"] and report["batch_size"] == 8
    assert report["peak_flops_per_device"] > 0 and report["peak_source"]
    for method, images_trained in (("none", 2), ("gradmix", 3)):
        r = report[method]
        # Analytic model FLOPs: 3 x forward FLOPs per trained image (2N clean, +N mixed).
        assert r["model_flops_per_step"] == 3 * images_trained * 8 * flops.forward_flops(
            "resnet18", 4, 16, 3, "cifar", 128)
        assert r["xla_flops_per_step"] > r["model_flops_per_step"] / 2
        assert r["mfu_model"] == r["model_flops_per_step"] / r["step_seconds"] / report["peak_flops_per_device"]
        assert 0 < r["mfu_xla"] < 1
    # The profile runs after the stall timings on the state they hand back (the step donates it).
    profile = report["gradmix"]["profile"]
    assert profile["hlo_op_counts"]["convolution"] > 0
    assert os.path.isfile(os.path.join(profile["dir"], "train_step_gradmix.hlo.txt"))
    stall = report["gradmix"]["checkpoint_stall"]
    assert len(stall["saves"]) == 3 and stall["worst_ratio"] > 0
    pending = stall["save_pending_after_step"]
    assert len(pending) == len(stall["step_seconds_all"]) and not pending[-1]
    assert stall["saves"][0]["step"] == 5
    # Each window is the save step plus every step begun while that save was still in flight,
    # and the next save starts 5 clean steps after a window.
    for save in stall["saves"]:
        w = save["window_steps"]
        assert save["finished_in_window"]
        assert all(pending[save["step"]:save["step"] + w - 1]) and not pending[save["step"] + w - 1]
    for save, following in zip(stall["saves"], stall["saves"][1:]):
        assert following["step"] == save["step"] + save["window_steps"] + 5
    # As the trainer runs (no wait per step): a window is the steps after the save step until the
    # first one seen complete with the save finished; step times are gaps between completions.
    piped = report["gradmix"]["checkpoint_stall_pipelined"]
    assert piped["mode"] == "pipelined" and len(piped["saves"]) == 3
    times, pending = piped["step_seconds_all"], piped["save_pending_after_step"]
    assert len(times) == len(pending) and times[0] is None
    assert all(t > 0 for t in times[1:]) and not pending[-1]
    for save in piped["saves"]:
        s, w = save["step"], save["window_steps"]
        assert save["finished_in_window"] and all(pending[s + 1:s + w]) and not pending[s + w]
        window = times[s + 1:s + w + 1]
        assert abs(save["ratio"] - max(window) / piped["median_step_seconds"]) < 1e-9
        assert abs(save["excess_seconds"] - sum(t - piped["median_step_seconds"] for t in window)) < 1e-9
    for st in (stall, piped):
        outside = [t for i, t in enumerate(st["step_seconds_all"]) if t is not None and not any(
            s["step"] + (st is piped) <= i < s["step"] + (st is piped) + s["window_steps"]
            for s in st["saves"])]
        assert st["clean_steps"] == len(outside) >= 10
        assert st["median_step_seconds"] == statistics.median(outside)
        assert abs(st["clean_worst_ratio"] - max(outside) / st["median_step_seconds"]) < 1e-9
        # Over three saves the medians are the middle save's values.
        ratios = sorted(s["ratio"] for s in st["saves"])
        excess = sorted(s["excess_seconds"] for s in st["saves"])
        assert st["median_save_ratio"] == ratios[1] and st["median_excess_seconds"] == excess[1]
    assert piped["saves"][0]["step"] >= 5
    for save, following in zip(piped["saves"], piped["saves"][1:]):
        assert following["step"] >= save["step"] + save["window_steps"] + 5


def test_grid_and_hlo_op_counts():
    from gradmix_jax import benchmark
    from gradmix_jax.trainer import augment_params  # noqa: F401  (import order as the CLI)
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_cfg", os.path.join(ROOT, "configs", "benchmark.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.bench.grid = ("bfloat16/64/16", "float32/8/32")
    got = [(c.model.dtype, c.batch_size, c.data.image_size) for c in benchmark._grid_configs(config)]
    assert got == [("bfloat16", 64, 16), ("float32", 8, 32)]
    config.bench.grid = ("float32-8-32",)
    import pytest
    with pytest.raises(SystemExit, match="dtype/batch/size"):
        benchmark._grid_configs(config)
    # A bad save count is refused with one line naming the field, before anything compiles.
    for bad in (0, -1):  # (ml_collections itself refuses a float or bool for an int field)
        config.bench.stall_saves = bad
        with pytest.raises(SystemExit, match=r"bench.stall_saves must be an integer >= 1"):
            benchmark.run_benchmark(config)
    hlo = ("%a = f32[2,3]{1,0} transpose(%p), dimensions={1,0}\n"
           "%b = f32[2,3]{1,0} copy(%a)\n  ROOT %c = f32[2,2]{1,0} dot(%b, %a)\n"
           "%d = f32[2,3]{1,0} transpose(%b)\n")
    counts = benchmark.hlo_op_counts(hlo)
    assert counts["transpose"] == 2 and counts["copy"] == 1 and counts["dot"] == 1
    assert counts["convolution"] == 0
