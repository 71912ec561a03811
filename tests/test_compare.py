"""experiments/compare.py: cell layout, seed statistics against numpy, resumability, refusals, and
a real smoke run (slow)."""

import csv
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from experiments import compare  # noqa: E402

# Stand-in AUROCs: base per split, a seed effect and a method effect that varies with the seed.
EFFECT = {"none": (0.0, 0.0), "gradmix": (0.01, 0.004), "cutmix": (-0.02, 0.03)}


def _fake_auroc(method, split, seed):
    a, b = EFFECT.get(method, (0.05, 0.0))
    return 0.6 + 0.02 * split + 0.003 * seed + a + b * seed * (split + 1)


def _stand_in(config, workdir):
    method = "ce" if config.objective == "ce" else config.mixing.method
    value = _fake_auroc(method, config.data.split, config.seed)
    result = {
        "auroc": value - 0.05,
        "auroc_knn_encoder": value - 0.05,
        "auroc_knn_projection": value - 0.1,
        "auroc_nno": value,
        "auroc_gda": value - 0.02,
        "auroc_msp": value if method == "ce" else None,
        "auroc_max_logit": value - 0.01 if method == "ce" else None,
        "closed_set_accuracy": 0.9,
        "closed_set_accuracy_logits": 0.95 if method == "ce" else None,
        "train_seconds": 1.0,
        "config": config.to_dict(),
    }
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(result, f)
    return result


def _no_training(config, workdir):
    raise AssertionError(f"cell {workdir} was retrained")


def test_statistics_layout_and_resume(tmp_path):
    splits, seeds = [0, 1, 2], [0, 1, 2]
    argv = [
        "--out",
        str(tmp_path),
        "--protocols",
        "digits",
        "--splits",
        "0-2",
        "--seeds",
        "0,1,2",
        "--methods",
        "raw,ce,none,gradmix,cutmix",
    ]
    assert compare.main(argv, train_fn=_stand_in) == 0
    for method in ("ce", "none", "gradmix", "cutmix"):
        for sp in splits:
            for se in seeds:
                assert (
                    tmp_path / "digits" / method / f"split{sp}" / f"seed{se}" / "results.json"
                ).exists()
    assert (tmp_path / "digits" / "none" / "split0" / "seed0" / "cell_seconds.json").exists()
    for sp in splits:  # raw pixels: computed for real, once per split
        assert (tmp_path / "digits" / "raw" / f"split{sp}" / "results.json").exists()
    report = json.loads((tmp_path / "compare.json").read_text())
    stats = report["protocols"]["digits"]

    # per-method mean and sample std over all cells, against numpy
    for method in ("none", "gradmix", "cutmix", "ce"):
        values = [_fake_auroc(method, sp, se) for sp in splits for se in seeds]
        mean, sd = stats["methods"][method]["auroc"]
        assert mean == pytest.approx(np.mean(values)) and sd == pytest.approx(
            np.std(values, ddof=1)
        )
    assert stats["methods"]["ce"]["headline_score"] == "MSP"
    assert stats["methods"]["gradmix"]["headline_score"] == "NNO on encoder"
    # paired differences to 'none' over the same (split, seed) cells
    for method in ("gradmix", "cutmix", "ce"):
        diffs = np.array(
            [
                _fake_auroc(method, sp, se) - _fake_auroc("none", sp, se)
                for sp in splits
                for se in seeds
            ]
        )
        p = stats["paired"][method]
        assert p["mean"] == pytest.approx(diffs.mean()) and p["sd"] == pytest.approx(
            diffs.std(ddof=1)
        )
        assert p["positive"] == int((diffs > 0).sum()) and p["cells"] == 9
    assert stats["paired"]["gradmix"]["verdict"] == "higher"  # its 95 % interval excludes 0
    assert stats["paired"]["cutmix"]["verdict"].startswith("no effect detected")
    # difference to the raw-pixel floor, per split
    raw = {
        sp: json.loads((tmp_path / "digits" / "raw" / f"split{sp}" / "results.json").read_text())
        for sp in splits
    }
    for sp in splits:
        want = np.mean([_fake_auroc("gradmix", sp, se) for se in seeds]) - raw[sp]["auroc"]
        assert stats["vs_raw"]["gradmix"]["per_split"][str(sp)] == pytest.approx(want)
    with open(tmp_path / "compare.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 + 4 * 9
    md = (tmp_path / "compare.md").read_text()
    assert "| SupCon+SimCLR + GradMix | NNO on encoder | 9 |" in md and "raw pixels" in md
    assert (tmp_path / "compare_digits.png").stat().st_size > 1000

    # resumable: nothing retrained, nothing rewritten; another config is refused
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("results.json")}
    assert compare.main(argv, train_fn=_no_training) == 0
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("results.json")} == mtimes
    with pytest.raises(SystemExit, match="another config"):
        compare.main(argv + ["--set", "temperature=0.5"], train_fn=_no_training)
    with pytest.raises(SystemExit, match="other data settings or k"):
        compare.main(argv + ["--set", "eval.k=2", "--methods", "raw"], train_fn=_no_training)


def test_finished_only_tabulates_a_method_run_on_fewer_splits(tmp_path):
    """CutMix on split 0 only beside three full methods: its statistics, paired difference and
    raw-pixel gap cover its own cells; nothing is trained; the other cells are listed as missing."""
    base = ["--out", str(tmp_path), "--protocols", "digits", "--seeds", "0,1"]
    assert (
        compare.main(
            base + ["--splits", "0-2", "--methods", "raw,none,gradmix"], train_fn=_stand_in
        )
        == 0
    )
    assert compare.main(base + ["--splits", "0", "--methods", "cutmix"], train_fn=_stand_in) == 0
    argv = base + ["--splits", "0-2", "--methods", "raw,none,cutmix,gradmix", "--finished-only"]
    assert compare.main(argv, train_fn=_no_training) == 0
    stats = json.loads((tmp_path / "compare.json").read_text())["protocols"]["digits"]
    cut = [_fake_auroc("cutmix", 0, se) for se in (0, 1)]
    assert stats["methods"]["cutmix"]["cells"] == 2
    assert stats["methods"]["cutmix"]["auroc"][0] == pytest.approx(np.mean(cut))
    assert list(stats["methods"]["cutmix"]["per_split"]) == ["0"]
    diffs = [c - _fake_auroc("none", 0, se) for se, c in zip((0, 1), cut)]
    p = stats["paired"]["cutmix"]
    assert p["cells"] == 2 and p["mean"] == pytest.approx(np.mean(diffs))
    assert p["sd"] == pytest.approx(np.std(diffs, ddof=1))
    assert stats["paired"]["gradmix"]["cells"] == 6  # the full methods are unaffected
    raw0 = json.loads((tmp_path / "digits" / "raw" / "split0" / "results.json").read_text())
    v = stats["vs_raw"]["cutmix"]
    assert list(v["per_split"]) == ["0"] and v["above_on_every_split"] is False
    assert v["per_split"]["0"] == pytest.approx(np.mean(cut) - raw0["auroc"])
    assert sorted(stats["missing_cells"]) == sorted(
        f"digits/cutmix/split{sp}/seed{se}" for sp in (1, 2) for se in (0, 1)
    )
    md = (tmp_path / "compare.md").read_text()
    assert "| SupCon+SimCLR + CutMix | NNO on encoder | 2 |" in md
    assert "Not every split has a cell for: SupCon+SimCLR + CutMix" in md
    assert "0 of 1 splits |" in md and "Cells not finished, left out (4)" in md


def test_ce_cells_pin_the_inert_simclr_weight():
    """The CE objective has no SimCLR term: its cells keep λ = 1 whatever --set gives the contrastive
    rows, so a retuned λ does not invalidate them; the contrastive cells take the --set value."""
    from gradmix_jax.training.objectives import StepConfig

    ce = compare.cell_config("digits", "ce", 0, 0, {"simclr_weight": 0.3})
    none = compare.cell_config("digits", "none", 0, 0, {"simclr_weight": 0.3})
    assert ce.simclr_weight == 1.0 and none.simclr_weight == 0.3
    assert StepConfig.from_config(ce).lam == 0.0 and StepConfig.from_config(none).lam == 0.3


def test_raw_pixels_match_an_independent_knn(tmp_path):
    """The raw-pixel floor against a direct numpy implementation of Algorithm 1's score."""
    from sklearn.metrics import roc_auc_score

    from gradmix_jax.data import load_openset

    config = compare.cell_config("digits", "raw", 1, 0, {})
    r = compare.raw_pixel_results(config)
    d = load_openset("digits", 1)
    tr = d.train_images.reshape(len(d.train_images), -1).astype(np.float64)
    te = d.test_images.reshape(len(d.test_images), -1).astype(np.float64)
    tr /= np.linalg.norm(tr, axis=1, keepdims=True)
    te /= np.linalg.norm(te, axis=1, keepdims=True)
    sims = te @ tr.T
    d_c = np.stack(
        [np.sort(sims[:, d.train_labels == c], axis=1)[:, -3:].sum(1) for c in range(d.num_known)],
        axis=1,
    )
    score = d_c.max(1) / d_c.sum(1)
    want = roc_auc_score(d.test_is_known, score)
    assert r["auroc"] == pytest.approx(want, abs=1e-5)
    acc = (d_c.argmax(1)[d.test_is_known] == d.test_labels[d.test_is_known]).mean()
    assert r["closed_set_accuracy"] == pytest.approx(acc)


def test_raw_cell_saved_before_gda_gets_it_when_read_back(tmp_path):
    """A raw-pixel cell whose results.json predates GDA is recomputed on the same data and k."""
    from gradmix_jax import osr

    config = compare.cell_config("digits", "raw", 1, 0, {})
    workdir = str(tmp_path / "raw")
    first = json.loads(json.dumps(compare.run_raw_cell(workdir, config)))  # tuples -> lists
    stored = {k: v for k, v in first.items() if k != "auroc_gda"}
    (tmp_path / "raw" / "results.json").write_text(json.dumps(stored))
    again = json.loads(json.dumps(compare.run_raw_cell(workdir, config)))  # tuples -> lists
    assert again == json.loads((tmp_path / "raw" / "results.json").read_text())
    assert again["auroc_gda"] == pytest.approx(first["auroc_gda"])
    assert {k: v for k, v in again.items() if k != "auroc_gda"} == stored
    # GDA on raw pixels is the same rule as on features: osr.gaussian_scores of the flat pixels.
    from sklearn.metrics import roc_auc_score

    from gradmix_jax.data import load_openset

    d = load_openset("digits", 1)
    flat = lambda x: x.reshape(len(x), -1) / 255.0  # noqa: E731
    s = np.asarray(
        osr.gaussian_scores(flat(d.train_images), d.train_labels, flat(d.test_images), d.num_known)[
            0
        ]
    )
    assert again["auroc_gda"] == pytest.approx(roc_auc_score(d.test_is_known, s), abs=1e-6)


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--methods", "raw,bogus"], r"--methods entries must be in \['raw', 'ce'"),
        (["--seeds", "0,x"], "--seeds takes comma-separated integers"),
        (["--splits", "abc"], "--splits takes"),
        (["--protocols", "nothere"], "no configs/<name>.py"),
        (["--set", "seed=3"], r"--set \['seed'\] is not allowed"),
        (["--set", "batchsize=3"], "--set batchsize=3: no field 'batchsize'"),
        (["--set", "eval.k=abc"], "--set eval.k='abc'"),
        (["--protocols", "bogus"], r"the configs are \[.*'digits'.*'fashion_mnist_cpu'"),
        (["--splits", "9"], "data.split must be an integer in 0..4"),
    ],
)
def test_bad_flags_are_one_line(tmp_path, flags, message):
    with pytest.raises(SystemExit, match=message):
        compare.main(
            ["--out", str(tmp_path), "--protocols", "digits"] + flags, train_fn=_no_training
        )


@pytest.mark.slow
def test_smoke_run_trains_every_method(tmp_path):
    argv = ["--out", str(tmp_path), "--smoke", "--methods", "raw,ce,none,gradmix", "--seeds", "0"]
    assert compare.main(argv) == 0
    report = json.loads((tmp_path / "compare.json").read_text())
    stats = report["protocols"]["digits"]
    ce = json.loads((tmp_path / "digits" / "ce" / "split0" / "seed0" / "results.json").read_text())
    assert ce["config"]["objective"] == "ce" and ce["auroc_msp"] is not None
    assert ce["auroc_max_logit"] is not None
    gm = json.loads(
        (tmp_path / "digits" / "gradmix" / "split0" / "seed0" / "results.json").read_text()
    )
    assert gm["config"]["mixing"]["method"] == "gradmix" and gm["auroc_msp"] is None
    assert stats["methods"]["gradmix"]["auroc"][0] == pytest.approx(gm["auroc_nno"])
    assert stats["methods"]["ce"]["auroc"][0] == pytest.approx(ce["auroc_msp"])


def test_main_guard_turns_preemption_into_the_resume_line(capsys):
    from experiments.common import main_guard
    from gradmix_jax.training.trainer import TrainingPreempted

    def preempted():
        raise TrainingPreempted(40, "/tmp/cell")

    assert main_guard(preempted) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "preempted at step 40: checkpoint saved in /tmp/cell/checkpoints; run the same "
        "command again to resume"
    ]
    with open(os.path.join(ROOT, "experiments", "compare.py")) as f:
        assert "sys.exit(main_guard(main))" in f.read()  # how every runner's __main__ ends


def test_paired_differences_per_score_compare_like_with_like():
    """Against another baseline (--baseline), each score is paired with the same score; NNO and
    GDA only where both cells read the same eval.features."""
    from experiments import compare

    def cell(knn_enc, knn_proj, nno, features):
        return {
            "auroc_knn_encoder": knn_enc,
            "auroc_knn_projection": knn_proj,
            "auroc_nno": nno,
            "auroc_gda": nno,
            "closed_set_accuracy": 0.9,
            "config": {"eval": {"features": features}},
        }

    cells = {}
    for split, (a, b) in enumerate([(0.80, 0.70), (0.60, 0.65)]):
        cells[("gradmix", split, 0)] = cell(a, 0.5, 0.9, "encoder")
        cells[("gradmix_authors", split, 0)] = cell(b, 0.6, 0.8, "projection")
    stats = compare.statistics(
        cells, ["gradmix", "gradmix_authors"], [0, 1], [0], baseline="gradmix"
    )
    per_score = stats["paired_scores"]["gradmix_authors"]
    assert per_score["auroc_knn_encoder"]["mean"] == pytest.approx((-0.10 + 0.05) / 2)
    assert per_score["auroc_knn_encoder"]["positive"] == 1
    assert per_score["auroc_knn_projection"]["mean"] == pytest.approx(0.1)
    assert "auroc_nno" not in per_score and "auroc_gda" not in per_score  # other features
    # The headline pairing: their testing script's score against the paper recipe's NNO.
    assert stats["paired"]["gradmix_authors"]["mean"] == pytest.approx(0.6 - 0.9)
    lines = compare.markdown("p", stats, ["gradmix", "gradmix_authors"], [0, 1], [0], "gradmix")
    assert any(line.startswith("| SupCon+SimCLR + GradMix, authors' recipe | ") for line in lines)


def _area(known, unknown, images=(256, 128)):
    taus = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    return {
        "thresholds": taus,
        "known": [known * (1 - t) for t in taus],
        "unknown": [unknown * (1 - t) for t in taus],
        "images": {"known": images[0], "unknown": images[1]},
        "layers": ["conv3_2", "conv4_2"],
        "batch_size": 128,
    }


def test_id_and_activated_area_are_paired_like_the_scores(tmp_path):
    """ID and the activated area (per τ and its mean over τ) are paired between the cells that
    have them, on the same images; a cell measured later takes its area from eval_results.json."""
    cells = {}
    for split, (d_id, d_area) in enumerate([(-0.2, 0.05), (-0.1, 0.03), (-0.3, 0.04)]):
        base = {"auroc_nno": 0.8, "closed_set_accuracy": 0.9, "intrinsic_dimension": 8.0}
        cells[("none", split, 0)] = {**base, "activated_area": _area(0.5, 0.4)}
        cells[("gradmix", split, 0)] = {
            **base,
            "intrinsic_dimension": 8.0 + d_id,
            "activated_area": _area(0.5 + d_area, 0.4),
        }
    # A cell measured on other images is not paired for the area (its ID still is).
    cells[("none", 3, 0)] = {**cells[("none", 0, 0)], "activated_area": _area(0.5, 0.4, (64, 64))}
    cells[("gradmix", 3, 0)] = {**cells[("gradmix", 0, 0)]}
    stats = compare.statistics(cells, ["none", "gradmix"], [0, 1, 2, 3], [0])
    per = stats["paired_scores"]["gradmix"]
    assert per["intrinsic_dimension"]["cells"] == 4
    assert per["intrinsic_dimension"]["mean"] == pytest.approx((-0.2 - 0.1 - 0.3 - 0.2) / 4)
    assert per["intrinsic_dimension"]["verdict"] == "lower"
    # mean over τ of 0.05 * (1 - τ) etc.: the factor is the mean of (1 - τ) = 0.5
    assert per["area_known_mean"]["cells"] == 3
    assert per["area_known_mean"]["mean"] == pytest.approx(0.5 * (0.05 + 0.03 + 0.04) / 3)
    assert per["area_known@0.1"]["mean"] == pytest.approx(0.9 * 0.04)
    assert per["area_unknown_mean"]["mean"] == pytest.approx(0.0)
    lines = "\n".join(compare.markdown("p", stats, ["none", "gradmix"], [0, 1, 2, 3], [0]))
    assert "| activated area, known (mean over τ) | 3 |" in lines
    assert "| activated area, known, τ=0.5 | 3 |" in lines
    assert "τ=0.2" not in lines  # every τ is in compare.json, five of them in the table

    # eval_results.json of the final step supplies the area of a cell saved without it.
    (tmp_path / "eval_results.json").write_text(
        json.dumps({"step": 600, "activated_area": _area(0.3, 0.2)})
    )
    got = compare.with_evaluated_area(str(tmp_path), {"num_steps": 600})
    assert got["activated_area"]["known"][0] == pytest.approx(0.27)
    assert "activated_area" not in compare.with_evaluated_area(str(tmp_path), {"num_steps": 800})


def test_finished_only_reads_a_cell_without_checkpoint_as_stored(tmp_path, capsys):
    """A stored cell that predates GDA and kept no checkpoint: --finished-only tabulates it without
    GDA; a run that would train refuses it with one line."""
    argv = ["--out", str(tmp_path), "--protocols", "digits", "--splits", "0", "--seeds", "0"]
    argv += ["--methods", "none,gradmix"]
    assert compare.main(argv, train_fn=_stand_in) == 0
    for method in ("none", "gradmix"):
        path = tmp_path / "digits" / method / "split0" / "seed0" / "results.json"
        stored = json.loads(path.read_text())
        del stored["auroc_gda"]
        path.write_text(json.dumps({**stored, "image_shape": [8, 8, 1], "num_steps": 2}))
    assert compare.main(argv + ["--finished-only"], train_fn=_no_training) == 0
    report = json.loads((tmp_path / "compare.json").read_text())["protocols"]["digits"]
    assert report["methods"]["gradmix"]["scores"]["auroc_gda"] == [None, None]
    assert "auroc_gda" not in report["paired_scores"]["gradmix"]
    with pytest.raises(SystemExit, match="was saved without"):
        compare.main(argv, train_fn=_no_training)
