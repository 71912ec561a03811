"""Table 1 / Fig. 4 runners: real --smoke runs (tiny model, same trainer), resumability, refusal of
stale cells and bad flags, and the full-scale grids with a stand-in trainer (cell configs, table
arithmetic, plots) so the 40-60-cell layouts are checked without training."""

import csv
import json
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from experiments import fig4_layer_ablation, fig4_mixing_ablation, table1_objectives  # noqa: E402


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _mean_std(cell: str) -> tuple[float, float]:
    m, s = cell.split(" ± ")
    return float(m), float(s)


def _no_training(config, workdir):
    raise AssertionError(f"cell {workdir} was retrained")


def _results_mtimes(out):
    found = {}
    for dirpath, _, files in os.walk(out):
        if "results.json" in files:
            path = os.path.join(dirpath, "results.json")
            found[path] = os.stat(path).st_mtime_ns
    return found


def _assert_resumes(module, argv, out):
    """A second run reads every finished cell back (no training, files untouched) and the same
    --out with a different config is refused instead of silently reused."""
    before = _results_mtimes(out)
    assert before
    assert module.main(argv, train_fn=_no_training) == 0
    assert _results_mtimes(out) == before
    with pytest.raises(SystemExit, match="another config.*eval.k"):
        module.main(argv + ["--set", "eval.k=2"], train_fn=_no_training)


# --- real smoke runs (the trainer, tiny overrides) ---------------------------------------------------


def test_table1_smoke_head_and_headless_objectives(tmp_path):
    argv = ["--out", str(tmp_path), "--smoke", "--objectives", "ce,supcon_ssl"]
    assert table1_objectives.main(argv) == 0
    rows = _rows(tmp_path / "table1.csv")
    assert [(r["objective"], r["protocol"], r["splits"]) for r in rows] == [
        ("CE", "digits", "1"),
        ("SupCon + SSL", "digits", "1"),
    ]
    for row, objective in zip(rows, ("ce", "supcon_ssl")):
        with open(tmp_path / "digits" / objective / "split0" / "results.json") as f:
            result = json.load(f)
        assert result["config"]["objective"] == objective
        assert result["config"]["mixing"]["method"] == "none"
        assert result["config"]["num_steps"] == 3  # smoke overrides reached the trainer
        id_mean, id_std = _mean_std(row["ID (ours)"])
        assert id_mean == pytest.approx(result["intrinsic_dimension"], abs=0.006) and id_std == 0
        assert id_mean > 0
        for column, key in (("A_nno % (ours)", "auroc_nno"), ("A_kNN % (ours, Alg. 1)", "auroc")):
            m, s = _mean_std(row[column])
            assert 0 <= m <= 100 and s == 0
            assert m == pytest.approx(100 * result[key], abs=0.006)
        assert row["ID (paper)"] == "-"  # digits is not in the paper's table
        if objective == "ce":
            for column, key in (
                ("A_enp % (ours)", "auroc_entropy"),
                ("A_msp % (ours)", "auroc_msp"),
            ):
                assert _mean_std(row[column])[0] == pytest.approx(100 * result[key], abs=0.006)
        else:
            assert row["A_enp % (ours)"] == row["A_msp % (ours)"] == "-"
            assert result["auroc_entropy"] is None and result["auroc_msp"] is None
    assert "SMOKE" in (tmp_path / "table1.md").read_text()
    _assert_resumes(table1_objectives, argv, tmp_path)


def test_fig4_mixing_smoke_none_and_mixup(tmp_path):
    argv = ["--out", str(tmp_path), "--smoke", "--methods", "none,mixup", "--mixup_alphas", "0.5"]
    assert fig4_mixing_ablation.main(argv) == 0
    rows = _rows(tmp_path / "fig4_mixing.csv")
    assert [(r["variant"], r["protocol"]) for r in rows] == [
        ("w/o extra aug.", "digits"),
        ("Mixup α=0.5", "digits"),
    ]
    with open(tmp_path / "digits" / "mixup_a0.5" / "split0" / "results.json") as f:
        result = json.load(f)
    assert result["config"]["mixing"] == {"method": "mixup", "alpha": 0.5}
    assert result["config"]["eval"]["k"] == 10  # the paper's ablation k
    means = [_mean_std(r["AUROC % (ours, mean ± std)"])[0] for r in rows]
    assert means[1] == pytest.approx(100 * result["auroc"], abs=0.006)
    assert all(0 <= m <= 100 for m in means)
    delta = float(rows[1]["Δ AUROC vs w/o extra aug. (points)"])
    assert delta == pytest.approx(means[1] - means[0], abs=0.011)
    assert (tmp_path / "fig4_mixing.png").stat().st_size > 1000
    assert "GradMix improves AUROC by over 3%" in (tmp_path / "fig4_mixing.md").read_text()
    _assert_resumes(fig4_mixing_ablation, argv, tmp_path)


def test_fig4_layers_smoke_aggregated_layers(tmp_path):
    argv = ["--out", str(tmp_path), "--smoke", "--layer_sets", "conv4_2+conv5_2"]
    assert fig4_layer_ablation.main(argv) == 0
    rows = _rows(tmp_path / "fig4_layers.csv")
    assert [(r["variant"], r["protocol"], r["splits"]) for r in rows] == [
        ("conv4_2+conv5_2", "digits", "1")
    ]
    with open(tmp_path / "digits" / "conv4_2+conv5_2" / "split0" / "results.json") as f:
        result = json.load(f)
    assert result["config"]["gradmix"]["layers"] == ["conv4_2", "conv5_2"]
    assert result["config"]["mixing"]["method"] == "gradmix"
    assert _mean_std(rows[0]["AUROC % (ours, mean ± std)"])[0] == pytest.approx(
        100 * result["auroc"], abs=0.006
    )
    assert (tmp_path / "fig4_layers.png").stat().st_size > 1000
    _assert_resumes(fig4_layer_ablation, argv, tmp_path)


# --- full-scale grids with a stand-in trainer ---------------------------------------------------------


class StandIn:
    """Records each cell's config and returns (and writes, like the trainer) results whose values
    depend only on the split, so the table's mean ± std is known in closed form."""

    def __init__(self):
        self.configs = {}

    def __call__(self, config, workdir):
        self.configs[os.path.relpath(workdir)] = config
        split = config.data.split
        head = config.objective in ("ce", "ce_ssl")
        result = {
            "auroc": 0.70 + 0.01 * split,
            "auroc_nno": 0.60 + 0.02 * split,
            "auroc_msp": 0.80 + 0.01 * split if head else None,
            "auroc_entropy": 0.75 if head else None,
            "intrinsic_dimension": 10.0 + split,
            "closed_set_accuracy": 0.9,
            "config": config.to_dict(),
        }
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(result, f)
        return result


def _std(values):
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def test_table1_full_grid_configs_and_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train = StandIn()
    assert table1_objectives.main(["--out", "t1"], train_fn=train) == 0
    assert len(train.configs) == 4 * 2 * 5
    for workdir, config in train.configs.items():
        _, protocol, objective, split = workdir.split(os.sep)
        assert (config.data.protocol, config.objective, f"split{config.data.split}") == (
            protocol,
            objective,
            split,
        )
        assert (
            config.mixing.method == "none"
            and config.simclr_weight == 1.0
            and config.supcon_weight == 1.0
        )
        assert config.num_epochs == 600 and config.num_steps == 0  # protocol config, not smoke
    rows = _rows(tmp_path / "t1" / "table1.csv")
    assert [(r["objective"], r["protocol"]) for r in rows] == [
        (label, p)
        for p in ("cifar10", "tinyimagenet")
        for label in ("CE", "CE + SSL", "SupCon", "SupCon + SSL")
    ]
    splits = range(5)
    for row in rows:
        assert _mean_std(row["ID (ours)"]) == (12.0, round(_std([10.0 + s for s in splits]), 2))
        assert _mean_std(row["A_nno % (ours)"]) == (
            64.0,
            round(_std([60.0 + 2 * s for s in splits]), 2),
        )
        assert _mean_std(row["A_kNN % (ours, Alg. 1)"]) == (
            72.0,
            round(_std([70.0 + s for s in splits]), 2),
        )
        head = row["objective"].startswith("CE")
        assert (row["A_enp % (ours)"] == "75.00 ± 0.00") == head
        assert (row["A_msp % (ours)"] == "82.00 ± 1.41") == head
        if not head:
            assert row["A_enp % (ours)"] == row["A_msp % (ours)"] == row["A_enp % (paper)"] == "-"
    by_key = {(r["objective"], r["protocol"]): r for r in rows}
    assert [
        by_key[("CE", "cifar10")][c]
        for c in ("ID (paper)", "A_nno % (paper)", "A_enp % (paper)", "A_msp % (paper)")
    ] == ["16.68", "74.11", "80.76", "82.83"]
    assert by_key[("SupCon + SSL", "tinyimagenet")]["A_nno % (paper)"] == "77.48"
    assert table1_objectives.main(["--out", "t1"], train_fn=_no_training) == 0


def test_fig4_mixing_full_grid_configs_table_and_plot(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train = StandIn()
    assert fig4_mixing_ablation.main(["--out", "f4m"], train_fn=train) == 0
    keys = ["none", "mixup_a0.2", "mixup_a1", "cutmix_a0.2", "cutmix_a1", "gradmix"]
    assert sorted(train.configs) == sorted(
        os.path.join("f4m", p, k, f"split{s}")
        for p in ("cifar10", "tinyimagenet")
        for k in keys
        for s in range(5)
    )
    for workdir, config in train.configs.items():
        key = workdir.split(os.sep)[2]
        assert config.mixing.method == key.split("_")[0] and config.eval.k == 10
        assert config.objective == "supcon_ssl"
        if "_a" in key:
            assert config.mixing.alpha == float(key.split("_a")[1])
        if key == "gradmix":
            assert tuple(config.gradmix.layers) == ("conv3_2", "conv4_2", "conv5_2")
    rows = _rows(tmp_path / "f4m" / "fig4_mixing.csv")
    assert [r["variant"] for r in rows[::2]] == [
        "w/o extra aug.",
        "Mixup α=0.2",
        "Mixup α=1",
        "CutMix α=0.2",
        "CutMix α=1",
        "GradMix",
    ]
    assert all(r["AUROC % (ours, mean ± std)"] == "72.00 ± 1.41" for r in rows)
    assert all(r["Δ AUROC vs w/o extra aug. (points)"] == "+0.00" for r in rows)
    assert rows[0]["AUROC % per split"] == "70.00 / 71.00 / 72.00 / 73.00 / 74.00"
    assert (tmp_path / "f4m" / "fig4_mixing.png").stat().st_size > 1000
    # Without the baseline the Δ column is left out.
    assert (
        fig4_mixing_ablation.main(
            ["--out", "f4m", "--methods", "gradmix,cutmix", "--cutmix_alphas", "1"],
            train_fn=_no_training,
        )
        == 0
    )
    assert (
        "Δ AUROC vs w/o extra aug. (points)" not in _rows(tmp_path / "f4m" / "fig4_mixing.csv")[0]
    )


def test_fig4_layers_full_grid_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train = StandIn()
    assert fig4_layer_ablation.main(["--out", "f4l", "--splits", "1,3"], train_fn=train) == 0
    assert len(train.configs) == 6 * 2 * 2
    for workdir, config in train.configs.items():
        _, protocol, key, split = workdir.split(os.sep)
        assert tuple(config.gradmix.layers) == tuple(key.split("+"))
        assert config.mixing.method == "gradmix" and config.eval.k == 10
        assert split in ("split1", "split3") and config.data.protocol == protocol
    rows = _rows(tmp_path / "f4l" / "fig4_layers.csv")
    assert [r["variant"] for r in rows[::2]] == list(fig4_layer_ablation.LAYER_SETS)
    assert all(r["AUROC % (ours, mean ± std)"] == "72.00 ± 1.00" for r in rows)
    assert (tmp_path / "f4l" / "fig4_layers.png").stat().st_size > 1000


# --- bad flags: one-line errors before anything trains --------------------------------------------------


@pytest.mark.parametrize(
    "module, argv, message",
    [
        (table1_objectives, ["--objectives", "ce,simclr"], r"--objectives entries must be in"),
        (table1_objectives, ["--protocols", "cifar11"], r"no configs/<name>.py for \['cifar11'\]"),
        (table1_objectives, ["--splits", "a-b"], r"--splits takes"),
        (table1_objectives, ["--splits", "7"], r"data.split must be an integer in 0..4"),
        (table1_objectives, ["--set", "objective=ce"], r"--set \['objective'\] is not allowed"),
        (table1_objectives, ["--set", "mixing.method=bogus"], r"mixing.method must be one of"),
        (fig4_mixing_ablation, ["--mixup_alphas", "0.2,0"], r"--mixup_alphas values must be > 0"),
        (
            fig4_mixing_ablation,
            ["--cutmix_alphas", "x"],
            r"--cutmix_alphas takes comma-separated numbers",
        ),
        (fig4_mixing_ablation, ["--methods", "none,none"], r"--methods repeats an entry"),
        (fig4_mixing_ablation, ["--mixup_alphas", "1,1.0"], r"--mixup_alphas repeats a value"),
        (
            fig4_mixing_ablation,
            ["--set", "mixing.alpha=2"],
            r"--set \['mixing.alpha'\] is not allowed",
        ),
        (
            fig4_layer_ablation,
            ["--layer_sets", "conv3_2+conv9_2"],
            r"--layer_sets entry 'conv3_2\+conv9_2'",
        ),
        (fig4_layer_ablation, ["--layer_sets", "conv3_2,"], r"--layer_sets has an empty entry"),
        (fig4_layer_ablation, ["--set", "gradmix.layers=('conv3_2',)"], r"is not allowed"),
    ],
)
def test_bad_flags_fail_before_training(tmp_path, module, argv, message):
    with pytest.raises(SystemExit, match=message):
        module.main(["--out", str(tmp_path)] + argv, train_fn=_no_training)
    assert not _results_mtimes(tmp_path)
