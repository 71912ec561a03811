"""experiments/side_by_side.py: paired differences per run over the common cells, against values
worked out by hand."""

import json
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from experiments import side_by_side  # noqa: E402

T_975_2 = 4.302653  # Student's t, 0.975 quantile, 2 degrees of freedom (table value)


def _write_cell(folder, method, split, seed, nno, steps, area=None, evaluated_area=None):
    workdir = folder / "proto" / method / f"split{split}" / f"seed{seed}"
    workdir.mkdir(parents=True)
    result = {
        "auroc": nno,
        "auroc_nno": nno,
        "auroc_knn_encoder": 0.5,
        "closed_set_accuracy": 0.9,
        "intrinsic_dimension": 8.0 + (0.5 if method == "gradmix" else 0.0),
        "num_steps": steps,
        "config": {
            "num_steps": steps,
            "seed": seed,
            "objective": "supcon_ssl",
            "mixing": {"method": method},
            "data": {"split": split, "data_dir": str(folder)},  # data_dir changes no number
            "eval": {"features": "encoder"},
        },
    }
    if area is not None:
        result["activated_area"] = area
    (workdir / "results.json").write_text(json.dumps(result))
    if evaluated_area is not None:
        (workdir / "eval_results.json").write_text(
            json.dumps({"step": steps, "activated_area": evaluated_area})
        )


def _area(known):
    return {
        "thresholds": [0.1, 0.2, 0.5],
        "known": [known, 0.75 * known, known / 2],
        "unknown": [0.2, 0.15, 0.1],
        "images": {"known": 8, "unknown": 8},
        "layers": ["conv3_2"],
        "batch_size": 8,
    }


@pytest.fixture
def two_runs(tmp_path):
    short, long = tmp_path / "short", tmp_path / "long"
    # Short run: NNO differences +1, +2, +3 points on splits 0-2 (no area).
    for split, d in enumerate([0.01, 0.02, 0.03]):
        _write_cell(short, "none", split, 0, 0.8, 800)
        _write_cell(short, "gradmix", split, 0, 0.8 + d, 800)
    # Long run: -1, -2, -4 points on the same cells, plus split 3 (not in the short run) and a
    # GradMix cell without its baseline; areas, one of them measured later by evaluate.
    for split, d in enumerate([-0.01, -0.02, -0.04, 0.5]):
        _write_cell(long, "none", split, 0, 0.8, 3200, area=_area(0.4))
        if split == 1:
            _write_cell(long, "gradmix", split, 0, 0.8 + d, 3200, evaluated_area=_area(0.5))
        else:
            _write_cell(long, "gradmix", split, 0, 0.8 + d, 3200, area=_area(0.4 + 0.1 * split))
    _write_cell(long, "gradmix", 4, 0, 0.9, 3200)
    return [("800 steps", str(short)), ("3,200 steps", str(long))]


def test_paired_differences_per_run_over_the_common_cells(two_runs):
    report = side_by_side.side_by_side(two_runs, "proto", "none", "gradmix", [0, 1, 2, 3, 4], [0])
    assert report["cells"] == [(0, 0), (1, 0), (2, 0)]
    assert report["left_out"]["800 steps"] == []
    assert report["left_out"]["3,200 steps"] == [
        "gradmix/split3/seed0",
        "gradmix/split4/seed0",
        "none/split3/seed0",
    ]
    assert report["config_differences"] == {"num_steps": {"800 steps": 800, "3,200 steps": 3200}}

    short = report["runs"]["800 steps"]["paired"]["auroc_nno"]
    half = T_975_2 * 0.01 / math.sqrt(3)  # sd of (1, 2, 3) points is 1 point
    assert short["mean"] == pytest.approx(0.02)
    assert short["ci_low"] == pytest.approx(0.02 - half, rel=1e-6)
    assert short["ci_high"] == pytest.approx(0.02 + half, rel=1e-6)
    # t with 2 degrees of freedom is wide: +2 ± 2.48 points includes 0.
    verdict = f"no effect detected (|effect| above {100 * (0.02 + half):.2f} pts excluded)"
    assert (short["positive"], short["cells"], short["verdict"]) == (3, 3, verdict)
    assert short["p_signed_rank"] == pytest.approx(2 / 8)  # exact: 2 of 2^3 sign patterns

    long = report["runs"]["3,200 steps"]["paired"]["auroc_nno"]
    sd = math.sqrt(((4 / 3) ** 2 + (1 / 3) ** 2 + (5 / 3) ** 2) / 2) / 100  # about the mean -7/3
    assert long["mean"] == pytest.approx(-0.07 / 3)
    assert long["ci_high"] == pytest.approx(-0.07 / 3 + T_975_2 * sd / math.sqrt(3), rel=1e-6)
    assert long["positive"] == 0 and long["cells"] == 3
    # ID: +0.5 on every cell of both runs.
    for label in ("800 steps", "3,200 steps"):
        assert report["runs"][label]["paired"]["intrinsic_dimension"]["mean"] == pytest.approx(0.5)
    # The area: only the long run has it; split 1's comes from eval_results.json (0.5 - 0.4).
    assert "area_known@0.1" not in report["runs"]["800 steps"]["paired"]
    area = report["runs"]["3,200 steps"]["paired"]["area_known@0.1"]
    assert area["mean"] == pytest.approx((0.0 + 0.1 + 0.2) / 3)
    assert report["runs"]["3,200 steps"]["means"]["none"]["area_known@0.1"][0] == pytest.approx(0.4)


def test_command_writes_the_table_and_refuses_bad_flags(two_runs, tmp_path, capsys):
    out = tmp_path / "sbs.md"
    argv = ["--protocol", "proto", "--methods", "none,gradmix", "--seeds", "0", "--out", str(out)]
    argv += [f"--run={label}={folder}" for label, folder in two_runs]
    assert side_by_side.main(argv) == 0
    text = out.read_text()
    assert "| measure | 800 steps | 3,200 steps |" in text
    assert "| AUROC NNO (headline) | +2.00 [" in text
    assert "- `num_steps`: 800 (800 steps), 3200 (3,200 steps)" in text
    row = next(
        line for line in text.splitlines() if line.startswith("| activated area, known, τ=0.1 |")
    )
    assert row.split(" | ")[1] == "-"  # the short run has no area
    report = json.loads((tmp_path / "sbs.json").read_text())
    assert report["cells"] == [[0, 0], [1, 0], [2, 0]]
    # Every τ is in the JSON; the table shows those compare.md shows (0.1, 0.3, 0.5, 0.7, 0.9).
    assert report["runs"]["3,200 steps"]["paired"]["area_known@0.2"]["mean"] == pytest.approx(0.075)
    assert "τ=0.2" not in text and "| activated area, known, τ=0.5 |" in text

    with pytest.raises(SystemExit, match="--methods entries must be in"):
        side_by_side.main([*argv, "--methods", "raw,gradmix"])
    with pytest.raises(SystemExit, match="--run takes LABEL=FOLDER"):
        side_by_side.main([*argv, "--run", "nolabel"])
    with pytest.raises(SystemExit, match="no folder"):
        side_by_side.main([*argv, "--run", f"x={tmp_path / 'missing'}"])
