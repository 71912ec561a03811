"""TFDS protocols with tfds.testing.mock_data (no downloads), the TinyImageNet reader, offline errors."""

import os
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from gradmix_jax.data import DatasetNotPreparedError, load_openset, protocol_classes, sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(autouse=True)
def _fresh_caches():
    sources.load_tfds_split.cache_clear()
    sources.load_tinyimagenet_split.cache_clear()
    yield
    sources.load_tfds_split.cache_clear()
    sources.load_tinyimagenet_split.cache_clear()


@pytest.mark.parametrize("protocol", ["mnist", "svhn", "cifar10"])
def test_complement_protocols(protocol, tmp_path):
    with tfds.testing.mock_data(num_examples=300):
        for split in (0, 3):
            d = load_openset(protocol, split, data_dir=str(tmp_path))
            known, unknown = protocol_classes(protocol, split)
            raw_train = sources.load_tfds_split(
                sources.TFDS_NAMES[protocol], "train", str(tmp_path)
            )
            raw_test = sources.load_tfds_split(sources.TFDS_NAMES[protocol], "test", str(tmp_path))
            # train: exactly the known classes' images, label j <-> source class known[j]
            keep = np.isin(raw_train[1], known)
            np.testing.assert_array_equal(d.train_images, raw_train[0][keep])
            np.testing.assert_array_equal(np.asarray(known)[d.train_labels], raw_train[1][keep])
            # test: every image, unknown classes -> -1
            assert len(d.test_images) == len(raw_test[0])
            src = raw_test[1]
            want = np.array([known.index(c) if c in known else -1 for c in src])
            np.testing.assert_array_equal(d.test_labels, want)
            assert set(src[d.test_labels == -1]) <= set(unknown)
            assert (
                d.image_shape
                == {"mnist": (28, 28, 1), "svhn": (32, 32, 3), "cifar10": (32, 32, 3)}[protocol]
            )


@pytest.mark.parametrize("protocol,num_unknown", [("cifar_plus10", 10), ("cifar_plus50", 50)])
def test_cifar_plus_draws_unknowns_from_cifar100_test(protocol, num_unknown, tmp_path):
    with tfds.testing.mock_data(num_examples=400):
        d = load_openset(protocol, 1, data_dir=str(tmp_path))
        known, unknown = protocol_classes(protocol, 1)
        c10_test = sources.load_tfds_split("cifar10", "test", str(tmp_path))
        c100_test = sources.load_tfds_split("cifar100", "test", str(tmp_path))
    assert len(known) == 4 and len(unknown) == num_unknown
    n_known = np.isin(c10_test[1], known).sum()
    unk_images = c100_test[0][np.isin(c100_test[1], unknown)]
    assert (d.test_labels >= 0).sum() == n_known
    np.testing.assert_array_equal(d.test_images[d.test_labels == -1], unk_images)
    assert set(d.train_labels) <= set(range(4))


def _write_tiny_imagenet(root, wnids, per_class=3, val_per_class=2, as_zip=False):
    rng = np.random.default_rng(0)
    base = root / "tiny-imagenet-200"
    files = {}
    files["wnids.txt"] = "\n".join(wnids[::-1]).encode()  # unsorted on purpose
    lines = []
    for w in wnids:
        for i in range(per_class):
            files[f"train/{w}/images/{w}_{i}.JPEG"] = rng.integers(
                0, 256, (64, 64, 3), dtype=np.uint8
            )
        for i in range(val_per_class):
            name = f"val_{w}_{i}.JPEG"
            files[f"val/images/{name}"] = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            lines.append(f"{name}\t{w}\t0\t0\t63\t63")
    files["val/val_annotations.txt"] = "\n".join(lines).encode()

    def encode(v):
        if isinstance(v, bytes):
            return v
        import io

        buf = io.BytesIO()
        Image.fromarray(v).save(buf, format="PNG")  # lossless, so the test can compare pixels
        return buf.getvalue()

    if as_zip:
        with zipfile.ZipFile(root / "tiny-imagenet-200.zip", "w") as z:
            for k, v in files.items():
                z.writestr(f"tiny-imagenet-200/{k}", encode(v))
    else:
        for k, v in files.items():
            path = base / k
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode(v))
    return files


@pytest.mark.parametrize("as_zip", [False, True])
def test_tinyimagenet_reader(tmp_path, as_zip):
    wnids = [f"n{i:08d}" for i in range(5)]
    files = _write_tiny_imagenet(tmp_path, wnids, as_zip=as_zip)
    x, y = sources.load_tinyimagenet_split("train", str(tmp_path))
    assert x.shape == (15, 64, 64, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(y), [3] * 5)  # index = position in sorted wnids
    np.testing.assert_array_equal(x[y == 2][0], files[f"train/{wnids[2]}/images/{wnids[2]}_0.JPEG"])
    xv, yv = sources.load_tinyimagenet_split("val", str(tmp_path))
    assert xv.shape == (10, 64, 64, 3)
    np.testing.assert_array_equal(xv[0], files[f"val/images/val_{wnids[0]}_0.JPEG"])
    assert yv[0] == 0
    # decoded once: the second call in a fresh process reads the cache file
    assert (tmp_path / "gradmix_jax_cache" / "tinyimagenet-train.npz").exists()


def test_missing_tfds_dataset_is_one_clear_error_within_seconds(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(DatasetNotPreparedError) as err:
        load_openset("cifar10", 0, data_dir=str(tmp_path))
    assert time.perf_counter() - t0 < 20
    msg = str(err.value)
    assert "'cifar10'" in msg and str(tmp_path) in msg and "tfds build cifar10" in msg


def test_missing_tinyimagenet_names_the_zip(tmp_path):
    with pytest.raises(DatasetNotPreparedError, match="tiny-imagenet-200.zip"):
        load_openset("tinyimagenet", 0, data_dir=str(tmp_path))


def test_cli_offline_message(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gradmix_jax.train",
            "--config",
            os.path.join(ROOT, "configs", "digits.py"),
            "--workdir",
            str(tmp_path / "w"),
            "--config.data.protocol=svhn",
            f"--config.data.data_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "svhn_cropped" in errors[0] and "tfds build" in errors[0]


@pytest.mark.parametrize(
    "name", ["mnist", "svhn", "cifar10", "cifar_plus10", "cifar_plus50", "tinyimagenet"]
)
def test_protocol_configs_validate(name):
    import importlib.util

    from experiments.osr_table import PAPER_AUROC
    from gradmix_jax.training.validation import validate_config

    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    validate_config(config)
    assert config.data.protocol == name and config.batch_size == 256 and config.eval.k == 3
    assert f"{PAPER_AUROC[name] * 100:g}%" in module.__doc__


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,closed_set",
    [
        ("cifar10", False),
        ("cifar10", True),
        ("mnist", False),
        ("cifar_plus10", False),
        ("tinyimagenet", False),
    ],
)
def test_protocol_config_two_steps_with_mock_data(tmp_path, name, closed_set):
    """configs/<protocol>.py end to end (tiny overrides) on mock data: writes results.json."""
    import importlib.util

    from gradmix_jax.training import trainer

    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.num_steps, c.batch_size, c.model.width, c.model.feature_dim = 2, 16, 4, 8
    c.data.image_size, c.progress_bar, c.data.data_dir = 16, False, str(tmp_path)
    c.data.closed_set = closed_set
    if name == "tinyimagenet":  # the standard folder layout, 200 classes x 3 train / 1 val image
        _write_tiny_imagenet(
            tmp_path, [f"n{i:08d}" for i in range(200)], per_class=3, val_per_class=1
        )
        c.eval.k = 3
    with tfds.testing.mock_data(num_examples=200):
        summary = trainer.train_and_evaluate(c, str(tmp_path / "run"))
    assert (tmp_path / "run" / "results.json").exists()
    assert summary["protocol"] == name and summary["num_steps"] == 2
    assert 0.0 <= summary["closed_set_accuracy"] <= 1.0
    if closed_set:
        assert summary["auroc"] is None and summary["known_classes"] == list(range(10))
    else:
        expected = {
            "cifar10": 0.2254,
            "mnist": 0.2254,
            "cifar_plus10": 0.4655,
            "tinyimagenet": 0.6838,
        }
        assert summary["openness"] == pytest.approx(expected[name], abs=1e-4)
        assert 0.0 <= summary["auroc"] <= 1.0


def test_closed_set_cifar100_with_mock_data(tmp_path):
    from gradmix_jax.data import load_closed_set

    with tfds.testing.mock_data(num_examples=300):
        d = load_closed_set("cifar100", str(tmp_path))
        raw = sources.load_tfds_split("cifar100", "train", str(tmp_path))
    assert d.num_known == 100 and d.unknown_classes == ()
    np.testing.assert_array_equal(d.train_labels, raw[1])
    assert (d.test_labels >= 0).all()


def test_closed_set_config_checks():
    from gradmix_jax.training.config_base import get_base_config
    from gradmix_jax.training.validation import ConfigError, validate_config

    c = get_base_config()
    c.data.protocol = "cifar100"
    with pytest.raises(ConfigError, match="closed-set dataset only"):
        validate_config(c)
    c.data.closed_set = True
    validate_config(c)
    c.data.protocol = "svhn"
    with pytest.raises(
        ConfigError,
        match=r"data.protocol must be one of \['cifar10', 'cifar100', 'tinyimagenet', 'imagenet100', 'imagefolder'\] when data.closed_set=True",
    ):
        validate_config(c)
    c.data.protocol = "tinyimagenet"
    c.data.closed_set_classes = 200
    validate_config(c)
    c.data.closed_set_classes = 201
    with pytest.raises(
        ConfigError, match=r"data.closed_set_classes must be 0 \(default\) or in \[2, 200\]"
    ):
        validate_config(c)


def test_closed_set_first_n_classes_with_mock_data(tmp_path):
    from gradmix_jax.data import load_closed_set

    with tfds.testing.mock_data(num_examples=300):
        d = load_closed_set("cifar100", str(tmp_path), num_classes=7)
        raw_x, raw_y = sources.load_tfds_split("cifar100", "train", str(tmp_path))
    assert d.known_classes == tuple(range(7)) and d.num_known == 7
    np.testing.assert_array_equal(d.train_labels, raw_y[raw_y < 7])
    assert d.test_labels.max() < 7
