"""load_trained(workdir) rebuilds a finished run: same features, logits and scores as its evaluation."""

import numpy as np
import pytest

from gradmix_jax import metrics, osr
from gradmix_jax.data import load_openset
from gradmix_jax.training import trainer
from gradmix_jax.training.trained import add_missing_scores, load_trained


def test_load_trained_reproduces_the_runs_evaluation(tmp_path, digits_config):
    config = digits_config
    config.objective = "ce_ssl"  # a classifier head, so logits exist
    config.num_steps = 2
    config.model.width = 4
    config.model.feature_dim = 16
    config.data.image_size = 8
    config.batch_size = 32
    config.checkpoint_every_steps = 2
    config.eval.id_samples = 0
    config.progress_bar = False
    summary = trainer.train_and_evaluate(config, str(tmp_path))

    trained = load_trained(str(tmp_path))
    assert trained.step == 2 and trained.known_classes == tuple(summary["known_classes"])
    data = load_openset("digits", config.data.split)
    train_f = trained.features(data.train_images, batch_size=100)  # 100 does not divide the sizes
    test_f = trained.features(data.test_images)
    scores, _ = osr.knn_scores(train_f, data.train_labels, test_f, data.num_known, k=config.eval.k)
    scores = np.asarray(scores)
    known = data.test_is_known
    np.testing.assert_allclose(
        metrics.auroc(scores[known], scores[~known]), summary["auroc"], atol=1e-6
    )
    logits = trained.logits(data.test_images[:7])
    assert logits.shape == (7, data.num_known)
    msp = np.asarray(osr.msp_score(trained.logits(data.test_images)))
    np.testing.assert_allclose(
        metrics.auroc(msp[known], msp[~known]), summary["auroc_msp"], atol=1e-6
    )
    mls = np.asarray(osr.max_logit_score(trained.logits(data.test_images)))
    np.testing.assert_allclose(
        metrics.auroc(mls[known], mls[~known]), summary["auroc_max_logit"], atol=1e-6
    )
    assert summary["auroc_knn_encoder"] == summary["auroc"]  # eval.features = encoder
    train_z = trained.features(data.train_images, which="projection")
    test_z = trained.features(data.test_images, which="projection")
    zs = np.asarray(
        osr.knn_scores(train_z, data.train_labels, test_z, data.num_known, k=config.eval.k)[0]
    )
    np.testing.assert_allclose(
        metrics.auroc(zs[known], zs[~known]), summary["auroc_knn_projection"], atol=1e-6
    )
    z = trained.features(data.test_images[:5], which="projection")
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="which must be one of"):
        trained.features(data.test_images[:5], which="logits")


def test_load_trained_without_a_run_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.json not found"):
        load_trained(str(tmp_path))


def test_add_missing_scores_recomputes_a_score_the_run_lacks(tmp_path, digits_config):
    import json

    config = digits_config
    config.num_steps, config.checkpoint_every_steps = 2, 2
    config.model.width, config.model.feature_dim, config.data.image_size = 4, 16, 8
    config.batch_size, config.eval.id_samples, config.progress_bar = 32, 0, False
    summary = trainer.train_and_evaluate(config, str(tmp_path))
    path = tmp_path / "results.json"
    assert add_missing_scores(str(tmp_path)) == json.loads(path.read_text())  # nothing missing
    old = json.loads(path.read_text())
    del old["auroc_gda"]  # as saved before GDA joined the evaluation
    path.write_text(json.dumps(old))
    got = add_missing_scores(str(tmp_path))
    assert got["auroc_gda"] == pytest.approx(summary["auroc_gda"], abs=1e-6)
    assert got["added_scores"] == ["auroc_gda"]
    assert json.loads(path.read_text()) == got
    assert {k: v for k, v in got.items() if k not in ("auroc_gda", "added_scores")} == old
    # Without its checkpoint the score cannot be added: one error, and no empty folder left behind.
    import shutil

    shutil.rmtree(tmp_path / "checkpoints")
    path.write_text(json.dumps(old))
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        add_missing_scores(str(tmp_path))
    assert not (tmp_path / "checkpoints").exists() and json.loads(path.read_text()) == old


def test_covariance_shrinkage_reads_the_runs_own_nno_and_gda(tmp_path, digits_config, repo_root):
    """The score-choice tool on a finished run: its NNO and its class_weight = 1 (GDA) rows are
    the run's own evaluation numbers; bad input is one line, exit 2, nothing written."""
    import json
    import subprocess
    import sys

    from experiments import covariance_shrinkage

    config = digits_config
    config.num_steps, config.checkpoint_every_steps = 2, 2
    config.model.width, config.model.feature_dim, config.data.image_size = 4, 16, 8
    config.batch_size, config.eval.id_samples, config.progress_bar = 32, 0, False
    summary = trainer.train_and_evaluate(config, str(tmp_path / "run"))
    out = tmp_path / "rows.json"
    assert (
        covariance_shrinkage.main(["--weights", "0.5,1", "--out", str(out), str(tmp_path / "run")])
        == 0
    )
    (row,) = json.loads(out.read_text())
    assert row["split"] == config.data.split and row["seed"] == config.seed
    assert row["nno"] == pytest.approx(summary["auroc_nno"], abs=1e-6)
    assert row["class_weight=1"] == pytest.approx(summary["auroc_gda"], abs=1e-6)
    assert 0.0 <= row["class_weight=0.5"] <= 1.0
    for flags, message in (
        (["--weights", "0.5,2"], "--weights must be a comma list of numbers in [0, 1]"),
        ([], "has no results.json"),
    ):
        cmd = [sys.executable, "-m", "experiments.covariance_shrinkage", *flags,
               "--out", str(tmp_path / "bad.json"), str(tmp_path)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=repo_root)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
        assert not (tmp_path / "bad.json").exists()
