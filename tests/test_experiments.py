"""Experiment runners in --smoke mode (tiny model, same code path)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_osr_table_smoke_is_resumable(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "experiments.osr_table",
        "--protocols",
        "digits",
        "--splits",
        "0-1",
        "--out",
        str(tmp_path),
        "--smoke",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    table = (tmp_path / "table2.md").read_text()
    assert "| digits | 2 |" in table and "SMOKE" in table
    assert (tmp_path / "table2.csv").read_text().startswith("protocol,splits")
    mtime = (tmp_path / "digits" / "split1" / "results.json").stat().st_mtime
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0
    assert (tmp_path / "digits" / "split1" / "results.json").stat().st_mtime == mtime  # not rerun


@pytest.mark.slow
def test_closed_set_table_smoke(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "experiments.closed_set_table",
        "--datasets",
        "digits",
        "--out",
        str(tmp_path),
        "--smoke",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| digits |" in (tmp_path / "table3.md").read_text()


@pytest.mark.parametrize(
    "module,args,message",
    [
        ("compare", ["--splits", "abc"], "error: --splits takes e.g. '0-4' or '0,2,3', got 'abc'"),
        ("compare", ["--splits", "9"], "data.split must be an integer in 0..4, got 9"),
        (
            "osr_table",
            ["--protocols", "bogus"],
            "error: --protocols: no configs/<name>.py for ['bogus']",
        ),
        (
            "table1_objectives",
            ["--set", "batchsize=3"],
            "error: --set batchsize=3: no field 'batchsize'",
        ),
        ("table5_corruptions", ["--severities", "x"], "error: --severities takes e.g."),
        ("fig7_attribution_maps", ["--split", "9"], "error: data.split must be an integer in 0..4"),
        (
            "fig8_activated_fraction",
            ["--split", "abc"],
            "error: argument --split: invalid int value",
        ),
        ("table4_ood", ["--splits", "9"], "error: unrecognized arguments: --splits 9"),
    ],
)
def test_runner_bad_input_is_one_line_exit_2(tmp_path, module, args, message):
    """Checked before any data is loaded or cell trained: nothing is written under --out."""
    cmd = [sys.executable, "-m", f"experiments.{module}", *args, "--out", str(tmp_path / "out")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_runners_do_not_edit_sys_path():
    """The runners are modules (``python -m experiments.<name>`` from the repository root): none
    edits ``sys.path`` to find ``gradmix_jax`` or ``experiments``."""
    names = [n for n in sorted(os.listdir(os.path.join(ROOT, "experiments"))) if n.endswith(".py")]
    assert "compare.py" in names
    for name in names:
        with open(os.path.join(ROOT, "experiments", name)) as f:
            assert "sys.path" not in f.read(), name


@pytest.mark.slow
def test_gradmix_views_figure_of_a_finished_run(tmp_path, run_cli):
    import json

    run_cli(tmp_path / "run")
    out = tmp_path / "fig" / "views.png"
    cmd = [
        sys.executable,
        "-m",
        "experiments.fig_gradmix_views",
        "--workdir",
        str(tmp_path / "run"),
        "--out",
        str(out),
        "--num_images",
        "4",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.read_bytes().startswith(b"\x89PNG")
    info = json.loads((tmp_path / "fig" / "views.json").read_text())
    assert len(info["test_indices"]) == 4 and len(info["masked_fraction"]) == 4
    # Box side ratios in gradmix.ratio_range: pasted areas between lo^2 and hi^2 (before clipping
    # at the border, which only the "clip" placement does).
    lo, hi = info["gradmix"]["ratio_range"]
    assert all(0.0 < m <= hi**2 + 1e-6 for m in info["masked_fraction"])
