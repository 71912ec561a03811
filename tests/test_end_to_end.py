"""The CLI on digits with a tiny config: results.json, resume from checkpoint, NaN stop."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gradmix_jax.training import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # also used in parametrize


@pytest.mark.slow
def test_cli_end_to_end_and_resume(tmp_path, run_cli):
    workdir = tmp_path / "run"
    out = run_cli(workdir, "--config.num_steps=4")
    assert "open-set AUROC" in out.stdout and "results.json" in out.stdout
    results = json.loads((workdir / "results.json").read_text())
    for key in (
        "auroc",
        "closed_set_accuracy",
        "num_steps",
        "final_train_loss",
        "train_seconds",
        "protocol",
        "split",
        "known_classes",
        "config",
    ):
        assert key in results, key
    assert results["num_steps"] == 4 and results["resumed_from_step"] == 0
    assert results["train_step_compilations"] == 1
    assert results["protocol"] == "digits" and results["known_classes"] == [2, 4, 5, 9, 8, 3]
    assert 0.0 <= results["auroc"] <= 1.0 and 0.0 <= results["closed_set_accuracy"] <= 1.0
    assert results["config"]["mixing"]["method"] == "gradmix"
    assert (workdir / "checkpoints" / "4").is_dir()
    assert any(p.name.startswith("events") for p in (workdir / "tensorboard").iterdir())

    # The same command again: nothing is retrained or rewritten.
    before = {p: (workdir / p).read_bytes() for p in ("results.json", "train_history.json")}
    again = run_cli(workdir, "--config.num_steps=4")
    assert f"already finished at step 4: {workdir / 'results.json'}" in again.stdout
    assert {p: (workdir / p).read_bytes() for p in before} == before

    # Same workdir, longer run: resumes from the step-4 checkpoint instead of starting over.
    longer = run_cli(workdir, "--config.num_steps=6")
    assert "resumed from step 4" in longer.stdout
    results = json.loads((workdir / "results.json").read_text())
    assert results["resumed_from_step"] == 4 and results["num_steps"] == 6
    assert results["train_step_compilations"] == 1  # the restored state does not retrace


def test_nan_loss_stops_with_clear_message(tmp_path, digits_config):
    config = digits_config
    config.model.width = 4
    config.model.feature_dim = 8
    config.data.image_size = 8
    config.batch_size = 16
    config.num_steps = 3
    config.progress_bar = False
    config.temperature = 1e-45  # logits overflow to inf -> NaN loss
    with pytest.raises(trainer.NonFiniteLossError, match=r"training loss is nan at step 1"):
        trainer.train_and_evaluate(config, str(tmp_path / "nan"))
    assert not (tmp_path / "nan" / "results.json").exists()


def test_print_config_prints_the_resolved_config_and_exits(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gradmix_jax.train",
            "--config",
            os.path.join(ROOT, "configs", "digits.py"),
            "--workdir",
            str(tmp_path / "w"),
            "--config.temperature=0.3",
            "--print_config",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "temperature: 0.3" in out.stdout and "protocol: digits" in out.stdout
    assert not (tmp_path / "w").exists()  # nothing created, loaded or trained


def test_print_config_shows_what_the_recipe_set(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gradmix_jax.train",
            "--config",
            os.path.join(ROOT, "configs", "digits.py"),
            "--config.gradmix.recipe=authors",
            "--config.gradmix.fill=sample",
            "--print_config",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    for line in ("box_size: floor_even", "mixed_loss: clean_anchors", "base_temperature: 0.07"):
        assert line in out.stdout
    assert "fill: sample" in out.stdout
    # configs/digits.py sets eval.features itself; the override is listed beside the recipe's.
    assert (
        "# gradmix.recipe='authors' set the fields left unset; set otherwise: "
        "{'gradmix.fill': 'sample', 'eval.features': 'encoder'}"
    ) in out.stdout


def _two_tiny_steps(config):
    """``config`` shrunk to two steps of a width-4 model on 8 px images, no TwoNN."""
    config.model.width = 4
    config.model.feature_dim = 8
    config.data.image_size = 8
    config.batch_size = 16
    config.num_steps = 2
    config.progress_bar = False
    config.eval.id_samples = 0
    return config


def test_authors_recipe_trains_evaluates_and_reloads(tmp_path, digits_config):
    """One tiny run of the authors' recipe: the training split's mean/std normalise the views and
    the evaluation, results.json records them, and the reloaded model uses them."""
    from gradmix_jax.training import pipeline
    from gradmix_jax.training.trained import load_trained

    config = _two_tiny_steps(digits_config)
    config.gradmix.recipe = "authors"
    config.gradmix.layers = ("conv4_2", "conv5_2")
    summary = trainer.train_and_evaluate(config, str(tmp_path / "authors"))
    assert np.isfinite(summary["auroc"]) and np.isfinite(summary["final_train_loss"])
    assert summary["config"]["gradmix"]["mixed_loss"] == "clean_anchors"
    assert summary["config"]["eval"]["features"] == "encoder"  # configs/digits.py sets it
    data = pipeline.load_data(config)
    mean, std = pipeline.input_stats(data.train_images)
    assert summary["input_norm"] == {"mean": list(mean), "std": list(std)}
    trained = load_trained(str(tmp_path / "authors"))
    assert trained.input_norm == (mean, std)
    x = np.asarray(trained.preprocess(data.test_images[:4]))
    want = (data.test_images[:4].astype(np.float32) / 255 - np.asarray(mean)) / np.asarray(std)
    np.testing.assert_allclose(x, want, atol=1e-5)  # digits are 8 px: no resize
    # The same config again is a finished run (the recipe's fields compare as resolved).
    again = trainer.train_and_evaluate(config, str(tmp_path / "authors"))
    assert again["already_finished"] is True


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--config", os.path.join(ROOT, "configs", "digits.py"), "--config.batchsize=64"],
            'Did you mean "batch_size"',
        ),
        (["--config", os.path.join(ROOT, "configs", "nothere.py")], "No such file or directory"),
        (["--config", os.path.join(ROOT, "configs", "digits.py"), "stray"], "unexpected arguments"),
    ],
)
def test_cli_input_errors_are_one_line_exit_2(tmp_path, args, message):
    import time

    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "gradmix_jax.train", "--workdir", str(tmp_path / "w"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert time.perf_counter() - t0 < 30
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
    assert not (tmp_path / "w").exists()


def test_eval_score_names_the_headline_and_a_finished_run_rereads_it(tmp_path, digits_config):
    config = _two_tiny_steps(digits_config)
    config.eval.score = "nno"
    workdir = str(tmp_path / "nno")
    summary = trainer.train_and_evaluate(config, workdir)
    assert summary["score"] == "nno" and summary["auroc"] == summary["auroc_nno"]
    assert summary["auroc_knn_encoder"] is not None  # Algorithm 1 beside it, under its own key
    stored = json.loads((tmp_path / "nno" / "results.json").read_text())
    assert stored["auroc"] == stored["auroc_nno"] and stored["score"] == "nno"
    # Another headline is the same finished run, read with that score: nothing is retrained.
    config.eval.score = "gda"
    again = trainer.train_and_evaluate(config, workdir)
    assert again["already_finished"] and again["auroc"] == stored["auroc_gda"]
    assert json.loads((tmp_path / "nno" / "results.json").read_text()) == stored
