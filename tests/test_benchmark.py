"""The benchmark CLI runs with a tiny model and writes its JSON report."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_writes_report(tmp_path):
    out_json = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "gradmix_jax.benchmark", "--config", os.path.join(ROOT, "configs", "benchmark.py"),
           "--config.model.width=4", "--config.batch_size=8", "--config.data.image_size=16",
           "--config.bench.num_images=32", "--config.bench.methods=('none','gradmix')",
           "--config.bench.warmup_steps=1", "--config.bench.timed_steps=2", "--json", str(out_json)]
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
    stall = report["gradmix"]["checkpoint_stall"]
    assert len(stall["step_seconds_all"]) == 12 and len(stall["saves"]) == 2 and stall["worst_ratio"] > 0
