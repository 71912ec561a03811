"""IDX reader (MNIST / Fashion-MNIST files the tests write), the fashion_mnist protocol, the
validation hold-out, and the real Debian `dataset-fashion-mnist` package."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from gradmix_jax.data import (
    DatasetNotPreparedError,
    IdxError,
    idx,
    load_openset,
    protocol_classes,
    validation_holdout,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_DIR = idx.DEBIAN_FASHION_MNIST_DIR
FASHION_SPLITS = [
    [1, 4, 5, 7, 8, 9],
    [3, 4, 6, 7, 8, 9],
    [0, 1, 2, 3, 6, 8],
    [0, 1, 2, 5, 7, 9],
    [2, 3, 4, 5, 6, 8],
]


@pytest.fixture(autouse=True)
def _fresh_cache():
    idx.load_idx_split.cache_clear()
    yield
    idx.load_idx_split.cache_clear()


@pytest.mark.parametrize("gz", [False, True])
def test_reads_plain_and_gzipped_files(write_idx_set, tmp_path, gz):
    want = write_idx_set(tmp_path, gz=gz)
    for split in ("train", "test"):
        images, labels = idx.load_idx_split(str(tmp_path), split)
        assert images.shape == (*want[split][0].shape, 1) and images.dtype == np.uint8
        np.testing.assert_array_equal(images[..., 0], want[split][0])
        np.testing.assert_array_equal(labels, want[split][1])
    assert idx.has_idx_files(str(tmp_path))


def test_decoded_once_per_process(write_idx_set, tmp_path):
    write_idx_set(tmp_path)
    first = idx.load_idx_split(str(tmp_path), "train")
    assert idx.load_idx_split(str(tmp_path), "train") is first


def test_truncated_file_names_the_file_and_the_package(write_idx_set, tmp_path):
    write_idx_set(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(IdxError) as err:
        idx.load_idx_split(str(tmp_path), "train")
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "truncated" in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_truncated_gzip_stream(write_idx_set, tmp_path):
    write_idx_set(tmp_path, gz=True)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(IdxError, match="t10k-labels-idx1-ubyte.gz"):
        idx.load_idx_split(str(tmp_path), "test")


def test_wrong_magic_labels_file_in_place_of_images(write_idx_set, tmp_path):
    write_idx_set(tmp_path)
    labels = (tmp_path / "train-labels-idx1-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(labels)
    with pytest.raises(IdxError, match=r"magic number 0x00000801, expected 0x00000803 \(images\)"):
        idx.load_idx_split(str(tmp_path), "train")


def test_count_mismatch_and_bad_label(write_idx_set, encode_idx, tmp_path):
    write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(encode_idx(np.zeros(19, np.uint8)))
    with pytest.raises(IdxError, match="20 images but .* 19 labels"):
        idx.load_idx_split(str(tmp_path), "test")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(encode_idx(np.full(20, 10, np.uint8)))
    with pytest.raises(IdxError, match="label 10, outside 0..9"):
        idx.load_idx_split(str(tmp_path), "test")


def test_longer_than_header(write_idx_set, tmp_path):
    write_idx_set(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(IdxError, match="longer than its header says"):
        idx.load_idx_split(str(tmp_path), "train")


def test_missing_file_is_a_dataset_error_naming_it(write_idx_set, tmp_path):
    write_idx_set(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    assert not idx.has_idx_files(str(tmp_path))
    with pytest.raises(DatasetNotPreparedError, match=r"t10k-images-idx3-ubyte\[.gz\] not found"):
        idx.load_idx_split(str(tmp_path), "test", "mnist")


def test_fashion_mnist_protocol_from_a_folder(write_idx_set, tmp_path):
    raw = write_idx_set(tmp_path, n_train=60, n_test=30)
    for split in range(5):
        d = load_openset("fashion_mnist", split, data_dir=str(tmp_path))
        known, unknown = protocol_classes("fashion_mnist", split)
        assert known == FASHION_SPLITS[split] and unknown == [
            c for c in range(10) if c not in known
        ]
        keep = np.isin(raw["train"][1], known)
        np.testing.assert_array_equal(d.train_images[..., 0], raw["train"][0][keep])
        np.testing.assert_array_equal(np.asarray(known)[d.train_labels], raw["train"][1][keep])
        want = np.array([known.index(c) if c in known else -1 for c in raw["test"][1]])
        np.testing.assert_array_equal(d.test_labels, want)  # the whole test set, unknowns -1
        np.testing.assert_array_equal(d.test_images[..., 0], raw["test"][0])


def test_mnist_reads_idx_folder_and_torchvision_layout(write_idx_set, tmp_path):
    raw = write_idx_set(tmp_path / "MNIST" / "raw", gz=True)
    for folder in (
        tmp_path / "MNIST" / "raw",
        tmp_path,
    ):  # the folder itself, or torchvision's root
        idx.load_idx_split.cache_clear()
        d = load_openset("mnist", 0, data_dir=str(folder))
        known, _ = protocol_classes("mnist", 0)
        keep = np.isin(raw["train"][1], known)
        np.testing.assert_array_equal(d.train_images[..., 0], raw["train"][0][keep])
        assert len(d.test_images) == 20


def test_fashion_mnist_not_found_is_one_line(tmp_path):
    with pytest.raises(IdxError) as err:
        load_openset("fashion_mnist", 0, data_dir=str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "zalandoresearch/fashion-mnist" in msg


def test_cli_without_data_fails_in_seconds_with_one_line(tmp_path):
    t0 = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gradmix_jax.train",
            "--config",
            os.path.join(ROOT, "configs", "fashion_mnist_cpu.py"),
            "--workdir",
            str(tmp_path / "w"),
            f"--config.data.data_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert time.perf_counter() - t0 < 60
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "dataset-fashion-mnist" in errors[0]
    assert not (tmp_path / "w" / "checkpoints").exists()  # nothing trained


def test_validation_holdout_is_disjoint_fixed_and_leaves_the_test_set(write_idx_set, tmp_path):
    raw = write_idx_set(tmp_path, n_train=60, n_test=30)
    images, labels = raw["train"][0][..., None], raw["train"][1]
    (rest_x, rest_y), (held_x, held_y) = validation_holdout(images, labels)
    assert len(held_x) == 10 and len(rest_x) == 50
    # every training image lands in exactly one part
    rows = {r.tobytes() for r in images}
    assert {r.tobytes() for r in rest_x} | {r.tobytes() for r in held_x} == rows
    assert not ({r.tobytes() for r in rest_x} & {r.tobytes() for r in held_x})
    d = load_openset("fashion_mnist", 0, data_dir=str(tmp_path), validation=True)
    test_rows = {r.tobytes() for r in raw["test"][0][..., None]}
    assert not ({r.tobytes() for r in d.test_images} & test_rows)  # the test set is never read
    np.testing.assert_array_equal(d.test_images, held_x)
    again = load_openset("fashion_mnist", 0, data_dir=str(tmp_path), validation=True)
    np.testing.assert_array_equal(again.train_images, d.train_images)
    with pytest.raises(ValueError, match="data.validation=True needs data.protocol in"):
        load_openset("cifar_plus10", 0, validation=True)


def _require_real_package():
    if not idx.has_idx_files(REAL_DIR):
        if os.environ.get("CI"):
            pytest.fail(
                f"{REAL_DIR} is missing: .ci/run must `apt-get install dataset-fashion-mnist`"
            )
        pytest.skip(f"Debian package dataset-fashion-mnist not installed ({REAL_DIR})")


def test_real_debian_package():
    _require_real_package()
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = idx.load_idx_split(REAL_DIR, split)
        assert images.shape == (n, 28, 28, 1) and images.dtype == np.uint8
        np.testing.assert_array_equal(np.bincount(labels), [n // 10] * 10)
        assert 60 < images.mean() < 90  # Fashion-MNIST's mean pixel is about 72.9
    d = load_openset("fashion_mnist", 2, data_dir=REAL_DIR)
    assert d.train_images.shape == (36000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(d.train_labels), [6000] * 6)
    assert d.test_is_known.sum() == 6000 and (~d.test_is_known).sum() == 4000
    v = load_openset("fashion_mnist", 2, data_dir=REAL_DIR, validation=True)
    assert len(v.test_images) == 10000 and len(v.train_images) + (v.test_labels >= 0).sum() == 36000


def test_real_data_trains_end_to_end(tmp_path):
    """The CPU config on the real files, tiny overrides: trains, evaluates every score, writes results."""
    _require_real_package()
    import importlib.util

    from gradmix_jax.training import trainer

    spec = importlib.util.spec_from_file_location(
        "c", os.path.join(ROOT, "configs", "fashion_mnist_cpu.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.num_steps, c.batch_size, c.model.width, c.model.feature_dim = 2, 16, 4, 8
    c.data.image_size, c.eval.id_samples, c.data.data_dir = 8, 0, REAL_DIR
    c.gradmix.layers = ("conv3_2", "conv4_2")
    summary = trainer.train_and_evaluate(c, str(tmp_path / "run"))
    assert summary["num_train_images"] == 36000 and summary["num_test_unknown"] == 4000
    for key in ("auroc", "auroc_knn_encoder", "auroc_knn_projection", "auroc_nno", "auroc_gda"):
        assert 0.0 <= summary[key] <= 1.0
    # The config headlines NNO (eval.score); Algorithm 1 stays under its own key.
    assert summary["score"] == "nno" and summary["auroc"] == summary["auroc_nno"]
    assert summary["auroc_knn_encoder"] != summary["auroc_nno"]
    assert (tmp_path / "run" / "results.json").exists()


def test_fashion_mnist_reads_prepared_tfds_when_no_idx_files(tmp_path):
    import tensorflow_datasets as tfds

    from gradmix_jax.data import sources

    sources.load_tfds_split.cache_clear()
    with tfds.testing.mock_data(num_examples=120):
        d = load_openset("fashion_mnist", 4, data_dir=str(tmp_path))
        raw_y = sources.load_tfds_split("fashion_mnist", "train", str(tmp_path))[1]
    sources.load_tfds_split.cache_clear()
    known, _ = protocol_classes("fashion_mnist", 4)
    assert d.image_shape == (28, 28, 1) and len(d.train_labels) == np.isin(raw_y, known).sum()


@pytest.mark.parametrize("name", ["fashion_mnist", "fashion_mnist_cpu"])
def test_fashion_mnist_configs_validate(name):
    import importlib.util

    from gradmix_jax.training.validation import validate_config

    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    validate_config(config)
    assert config.data.protocol == "fashion_mnist" and config.eval.k == 3
    assert config.augment.preset == "rgb" and config.augment.flip_prob in (None, 0.5)
    if name == "fashion_mnist":  # the paper's scale
        assert (config.model.width, config.data.image_size, config.batch_size) == (64, 32, 256)
    assert "python -m gradmix_jax.train --config configs/" + name + ".py" in module.__doc__
