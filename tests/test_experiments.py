"""Experiment runners in --smoke mode (tiny model, same code path)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_osr_table_smoke_is_resumable(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "experiments", "osr_table.py"), "--protocols", "digits",
           "--splits", "0-1", "--out", str(tmp_path), "--smoke"]
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
    cmd = [sys.executable, os.path.join(ROOT, "experiments", "closed_set_table.py"), "--datasets", "digits",
           "--out", str(tmp_path), "--smoke"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| digits |" in (tmp_path / "table3.md").read_text()
