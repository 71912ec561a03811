"""python -m gradmix_jax.evaluate: a finished run evaluated again reproduces its scores; only
evaluation fields may change; a workdir without a run is one line, exit 2."""

import json
import subprocess
import sys

import pytest

from gradmix_jax import evaluate
from gradmix_jax.training import trainer


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, make_digits_config):
    workdir = tmp_path_factory.mktemp("run")
    c = make_digits_config()
    c.num_steps, c.batch_size, c.model.width, c.model.feature_dim = 2, 16, 4, 8
    c.data.image_size, c.progress_bar, c.eval.id_samples = 8, False, 0
    c.objective, c.mixing.method = "ce_ssl", "none"  # a classifier head: MSP and max-logit too
    c.eval.area_images = 16
    summary = trainer.train_and_evaluate(c, str(workdir))
    return workdir, summary


def test_evaluate_reproduces_the_run_and_leaves_results_json(finished_run, capsys):
    workdir, summary = finished_run
    before = (workdir / "results.json").read_bytes()
    assert evaluate.main(["--workdir", str(workdir)]) == 0
    got = json.loads((workdir / "eval_results.json").read_text())
    for key in (
        "auroc",
        "auroc_knn_encoder",
        "auroc_knn_projection",
        "auroc_nno",
        "auroc_gda",
        "auroc_msp",
        "auroc_max_logit",
        "closed_set_accuracy",
    ):
        assert got[key] == pytest.approx(summary[key], abs=1e-6), key
    assert got["step"] == 2 and (workdir / "results.json").read_bytes() == before
    # The activated area: the same images, layers and maps as the run's own evaluation.
    assert got["activated_area"] == summary["activated_area"]
    assert got["activated_area"]["images"] == {"known": 16, "unknown": 16}
    assert "open-set AUROC" in capsys.readouterr().out


def test_a_run_saved_before_the_activated_area_gets_it(finished_run, tmp_path, capsys):
    """An older run (results.json without the measurement or its config field) is measured on
    eval.area_images known and unknown test images from its final checkpoint."""
    import shutil

    workdir, summary = finished_run
    old = tmp_path / "old"
    shutil.copytree(workdir, old)
    stored = json.loads((old / "results.json").read_text())
    del stored["activated_area"], stored["config"]["eval"]["area_images"]
    (old / "results.json").write_text(json.dumps(stored))
    assert evaluate.main(["--workdir", str(old), "--config.eval.area_images=16"]) == 0
    got = json.loads((old / "eval_results.json").read_text())["activated_area"]
    assert got == summary["activated_area"]
    assert "activated area S(0.5): known" in capsys.readouterr().out


def test_evaluation_fields_may_change(finished_run):
    workdir, _ = finished_run
    got = evaluate.evaluate_run(
        str(workdir),
        evaluate.parse_overrides(["--config.eval.k=5", "--config.eval.features='projection'"]),
    )
    assert got["config"]["eval"]["k"] == 5 and got["overrides"] == {
        "eval.k": 5,
        "eval.features": "projection",
    }
    assert got["auroc"] == pytest.approx(got["auroc_knn_projection"])


@pytest.mark.parametrize(
    "args,message",
    [
        (["--config.model.width=8"], "cannot change at evaluation: only eval.*"),
        (["--config.eval.nope=1"], "--config.eval.nope: no such field"),
        (["--bogus"], "unknown argument '--bogus'"),
        (["--config.eval.k=0"], "eval.k must be > 0"),
    ],
)
def test_bad_overrides_are_one_line(finished_run, capsys, args, message):
    workdir, _ = finished_run
    assert evaluate.main(["--workdir", str(workdir), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]


def test_workdir_without_a_run_is_one_line_exit_2(tmp_path, repo_root):
    out = subprocess.run(
        [sys.executable, "-m", "gradmix_jax.evaluate", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=repo_root,
        timeout=120,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds no finished run" in lines[0]
