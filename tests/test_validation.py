"""Bad input: one clear error naming the field and the allowed values, before any training."""

import os
import subprocess
import sys

import pytest

from gradmix_jax.training import trainer
from gradmix_jax.training.validation import ConfigError, validate_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("data.protocol", "imagenet", r"data.protocol must be one of \['digits'"),
        (
            "model.name",
            "resnet19",
            r"model.name must be one of \['resnet18', 'resnet34', 'resnet50'\]",
        ),
        ("objective", "triplet", r"objective must be one of \['ce', 'ce_ssl', 'supcon'"),
        (
            "mixing.method",
            "cutout",
            r"mixing.method must be one of \['none', 'gradmix', 'cutmix', 'mixup'\]",
        ),
        (
            "gradmix.layers",
            ("conv3_2", "conv9_9"),
            r"gradmix.layers must be a non-empty subset of \['conv2_2'",
        ),
        (
            "gradmix.ratio_range",
            (0.1, 1.5),
            r"gradmix.ratio_range must be \(lo, hi\) with 0 < lo <= hi < 1",
        ),
        (
            "gradmix.ratio_range",
            (0.5, 0.1),
            r"gradmix.ratio_range must be \(lo, hi\) with 0 < lo <= hi < 1",
        ),
        ("gradmix.ratio_range", (0.0, 0.5), r"gradmix.ratio_range must be"),
        (
            "data.known_classes",
            (2, 2, 3),
            r"data.known_classes must be at least 2 distinct integers in 0..9",
        ),
        (
            "data.known_classes",
            (2, 11),
            r"data.known_classes must be at least 2 distinct integers in 0..9",
        ),
        ("data.split", 7, r"data.split must be an integer in 0..4"),
        ("label_smoothing", 1.0, r"label_smoothing must be in \[0, 1\), got 1.0"),
        ("gradmix.fill", "zeros", r"gradmix.fill must be one of \['sample', 'noise'\]"),
        ("eval.features", "logits", r"eval.features must be one of"),
    ],
)
def test_bad_field(field, value, message, digits_config):
    config = digits_config
    node = config
    *path, leaf = field.split(".")
    for p in path:
        node = node[p]
    with config.unlocked():
        node[leaf] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_batch_size_not_divisible_by_devices(digits_config):
    config = digits_config
    config.batch_size = 100
    validate_config(config, num_devices=4)
    with pytest.raises(
        ConfigError, match=r"batch_size must be divisible by the number of devices \(8\), got 100"
    ):
        validate_config(config, num_devices=8)


def test_k_larger_than_smallest_class_is_refused_before_training(tmp_path, digits_config):
    config = digits_config
    config.eval.k = 500
    with pytest.raises(
        ConfigError, match=r"eval.k must be <= the smallest known class's training count \(116\)"
    ):
        trainer.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # nothing was started


def test_bad_augment_field_is_refused_before_loading(tmp_path, digits_config):
    config = digits_config
    config.augment.flip_prob = 1.5
    with pytest.raises(ConfigError, match=r"^augment.flip_prob=1.5 is invalid"):
        trainer.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_cli_prints_one_error_line(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gradmix_jax.train",
            "--config",
            os.path.join(ROOT, "configs", "digits.py"),
            "--workdir",
            str(tmp_path / "w"),
            "--config.mixing.method=cutout",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: mixing.method must be one of ['none', 'gradmix', 'cutmix', 'mixup'], got 'cutout'"
    ]


@pytest.mark.parametrize(
    "objective,field,value,message",
    [
        ("moco", "moco.queue_size", 64, r"moco.queue_size must be >= batch_size \(128\), got 64"),
        ("moco", "moco.momentum", 1.0, r"moco.momentum must be in \[0, 1\), got 1.0"),
        ("ce", "eval.id_samples", 2, r"eval.id_samples must be 0 \(skip\) or >= 3, got 2"),
    ],
)
def test_objective_specific_fields(objective, field, value, message, digits_config):
    config = digits_config
    config.objective = objective
    validate_config(config)  # the defaults are valid for every objective
    section, leaf = field.split(".")
    config[section][leaf] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_a_classifier_score_needs_a_classifier(digits_config):
    from gradmix_jax.training.validation import ConfigError, validate_config

    digits_config.eval.score = "msp"
    with pytest.raises(ConfigError, match=r"eval.score='msp' needs a classifier head"):
        validate_config(digits_config)
    digits_config.objective = "ce"
    validate_config(digits_config)


def test_the_headline_is_the_configured_score_and_old_runs_read_as_algorithm_1():
    from gradmix_jax.training.openset_eval import with_headline

    old = {"auroc": 0.43, "auroc_knn_encoder": 0.43, "auroc_nno": 0.88}  # no 'score': Algorithm 1
    assert with_headline(old, "knn", "encoder")["auroc"] == 0.43
    new = with_headline(old, "nno", "encoder")
    assert (new["auroc"], new["score"], new["auroc_knn_encoder"]) == (0.88, "nno", 0.43)
    # A run older than the per-feature keys: its auroc is kept as Algorithm 1's.
    older = with_headline({"auroc": 0.5, "auroc_nno": 0.7}, "knn", "projection")
    assert (older["auroc"], older["auroc_knn_projection"]) == (0.5, 0.5)
    assert with_headline(older, "nno", "projection")["auroc"] == 0.7
