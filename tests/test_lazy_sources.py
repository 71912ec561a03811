"""Lazy TFDS splits (sources.TfdsImages / tfds_split) on real array_record files written without
TensorFlow (tests/_mock_tfds.py), and ImageNet-100 from class folders and from TFDS imagenet2012."""

import io
import os
import pickle
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from gradmix_jax.data import imagenet100, images, sources
from gradmix_jax.data.folder import FolderNotFoundError
from gradmix_jax.data.sources import DatasetNotPreparedError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _mock_tfds import write_mock_imagenet2012, write_mock_tfds  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_caches():
    sources.load_tfds_split.cache_clear()
    yield
    sources.load_tfds_split.cache_clear()


@pytest.fixture(scope="module")
def _written(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    written = {
        "mock_cifar": write_mock_tfds(root, "mock_cifar", label_names=["cat", "dog", "ship"]),
        "mock_gray": write_mock_tfds(root, "mock_gray", num_train=7, shape=(8, 8, 1), seed=1),
        "mock_sizes": write_mock_tfds(root, "mock_sizes", shape=(None, None, 3), seed=2),
    }
    return root, written


@pytest.fixture
def mock(_written, tmp_path):
    """(data_dir, {name: {split: (images, labels)}}): a fresh copy per test (no cache files)."""
    root, written = _written
    data_dir = tmp_path / "tfds"
    shutil.copytree(root, data_dir)
    return str(data_dir), written


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_records_equal_the_written_ones_and_load_tfds_split(mock):
    data_dir, written = mock
    for split in ("train", "test"):
        want_images, want_labels = written["mock_cifar"][split]
        lazy, labels = sources.tfds_split("mock_cifar", split, data_dir)
        assert lazy.shape == want_images.shape == (len(want_labels), 8, 8, 3)
        assert len(lazy) == len(want_labels) and labels.dtype == np.int64
        np.testing.assert_array_equal(labels, want_labels)
        for i in range(len(lazy)):
            np.testing.assert_array_equal(lazy[i], want_images[i])
        np.testing.assert_array_equal(lazy[-1], want_images[-1])
        with pytest.raises(IndexError):
            lazy[len(lazy)]
        # same index = same image as the whole-split decoder, and to_array is that decoder's array
        eager_images, eager_labels = sources.load_tfds_split(
            "mock_cifar", split, data_dir, use_disk_cache=False
        )
        np.testing.assert_array_equal(np.stack([lazy[i] for i in range(len(lazy))]), eager_images)
        np.testing.assert_array_equal(labels, eager_labels)
        np.testing.assert_array_equal(images.as_array(lazy), eager_images)
        np.testing.assert_array_equal(images.read(lazy, [3, 0, 3]), want_images[[3, 0, 3]])
    assert sources.tfds_label_names("mock_cifar", data_dir) == ["cat", "dog", "ship"]


def test_single_channel_keeps_its_native_shape(mock):
    data_dir, written = mock
    want_images, want_labels = written["mock_gray"]["train"]
    lazy, labels = sources.tfds_split("mock_gray", "train", data_dir)
    assert lazy.shape == (7, 8, 8, 1)
    np.testing.assert_array_equal(np.stack([lazy[i] for i in range(7)]), want_images)
    np.testing.assert_array_equal(lazy.to_array(), want_images)
    np.testing.assert_array_equal(labels, want_labels)
    resized, _ = sources.tfds_split("mock_gray", "train", data_dir, size=6)
    assert resized.shape == (7, 6, 6, 3) and resized[0].shape == (6, 6, 3)
    # RGB from grey: three equal channels
    np.testing.assert_array_equal(resized[0][..., 0], resized[0][..., 2])


def test_size_decodes_every_record_to_one_square(mock):
    data_dir, written = mock
    want_images, want_labels = written["mock_sizes"]["train"]
    assert len({im.shape for im in want_images}) > 1  # the mock really varies
    lazy, labels = sources.tfds_split("mock_sizes", "train", data_dir, size=5)
    assert lazy.shape == (len(want_labels), 5, 5, 3)
    np.testing.assert_array_equal(labels, want_labels)
    for i, want in enumerate(want_images):
        expected = images.decode_image(_png(want), 5, "x")
        np.testing.assert_array_equal(lazy[i], expected)
    np.testing.assert_array_equal(lazy.to_array(), np.stack([lazy[i] for i in range(len(lazy))]))


def test_varying_sizes_need_a_size(mock):
    data_dir, _ = mock
    with pytest.raises(images.DataError, match="mock_sizes.*data.image_size"):
        sources.tfds_split("mock_sizes", "train", data_dir)


def test_labels_cache_is_written_and_reused(mock, monkeypatch):
    data_dir, written = mock
    want = written["mock_cifar"]["train"][1]
    cached = sources.cache_folder(data_dir) / "mock_cifar-train-labels.npy"
    assert not cached.exists()
    _, labels = sources.tfds_split("mock_cifar", "train", data_dir)
    assert cached.exists()
    np.testing.assert_array_equal(np.load(cached), want)

    def no_scan(source):
        raise AssertionError("scanned the split again")

    monkeypatch.setattr(sources, "_scan_labels", no_scan)
    _, again = sources.tfds_split("mock_cifar", "train", data_dir)
    np.testing.assert_array_equal(again, want)
    # the decoded-array cache serves the labels too
    cached.unlink()
    sources.load_tfds_split("mock_cifar", "train", data_dir)
    _, from_npz = sources.tfds_split("mock_cifar", "train", data_dir)
    np.testing.assert_array_equal(from_npz, want)
    assert not cached.exists()
    # another split has no cache: it is scanned
    with pytest.raises(AssertionError, match="scanned"):
        sources.tfds_split("mock_cifar", "test", data_dir)


def test_labels_cache_ignores_a_read_only_folder(mock, monkeypatch):
    data_dir, written = mock

    def refuse(path, data):
        raise PermissionError(f"read-only: {path}")

    monkeypatch.setattr(sources, "write_bytes_atomic", refuse)
    _, labels = sources.tfds_split("mock_cifar", "test", data_dir)
    np.testing.assert_array_equal(labels, written["mock_cifar"]["test"][1])


def test_pickles_without_the_open_source(mock):
    data_dir, written = mock
    lazy, _ = sources.tfds_split("mock_cifar", "train", data_dir, size=4)
    lazy[0]  # opened
    assert "_opened" in lazy.__dict__
    assert "_opened" not in lazy.__getstate__()
    copy = pickle.loads(pickle.dumps(lazy))
    assert "_opened" not in copy.__dict__ and copy.shape == lazy.shape
    np.testing.assert_array_equal(copy[2], lazy[2])
    subset = pickle.loads(pickle.dumps(images.take(lazy, [5, 1])))
    np.testing.assert_array_equal(subset[0], lazy[5])


def test_not_prepared_is_one_line_naming_the_folder(tmp_path):
    with pytest.raises(DatasetNotPreparedError) as err:
        sources.tfds_split("mock_absent", "train", str(tmp_path))
    message = str(err.value)
    assert "\n" not in message and str(tmp_path) in message and "mock_absent" in message
    with pytest.raises(DatasetNotPreparedError):
        sources.tfds_label_names("mock_absent", str(tmp_path))


# ----------------------------------------------------------------------------- ImageNet-100


def test_imagenet100_list():
    wnids = imagenet100.IMAGENET100_WNIDS
    assert len(wnids) == 100 and len(set(wnids)) == 100
    assert wnids[:3] == ("n02869837", "n01749939", "n02488291") and wnids[-1] == "n02090622"
    assert list(imagenet100.CLASSES) == sorted(wnids)


def _write_folder(root, wnids, per_class=1, split_dirs=("train", "val")):
    rng = np.random.default_rng(0)
    for split in split_dirs:
        for wnid in wnids:
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                pixels = rng.integers(0, 256, (10, 12, 3)).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{wnid}_{k}.JPEG", quality=90)
            (folder / "notes.txt").write_text("not an image")


@pytest.mark.parametrize("where", ["", "imagenet100", "imagenet"])
def test_imagenet100_from_class_folders(tmp_path, where):
    extra = "n01440764"  # an ImageNet class outside the 100
    assert extra not in imagenet100.IMAGENET100_WNIDS
    _write_folder(tmp_path / where, [*imagenet100.IMAGENET100_WNIDS, extra])
    for split, folder_name in (("train", "train"), ("test", "val")):
        data, labels = imagenet100.load_imagenet100_split(split, str(tmp_path), 6)
        assert data.shape == (100, 6, 6, 3) and labels.dtype == np.int64
        np.testing.assert_array_equal(labels, np.arange(100))  # one image per class, sorted
        for i in (0, 57, 99):
            wnid = imagenet100.CLASSES[labels[i]]
            assert f"/{folder_name}/{wnid}/" in data.paths[i]
        assert not any(extra in p for p in data.paths)
        assert data[0].shape == (6, 6, 3)


def test_imagenet100_folder_missing_a_class(tmp_path):
    wnids = sorted(imagenet100.IMAGENET100_WNIDS)
    _write_folder(tmp_path / "imagenet100", [w for w in wnids if w not in (wnids[3], wnids[40])])
    with pytest.raises(FolderNotFoundError) as err:
        imagenet100.load_imagenet100_split("train", str(tmp_path), 8)
    message = str(err.value)
    assert str(tmp_path / "imagenet100" / "train" / wnids[3]) in message
    assert wnids[40] not in message and "\n" not in message


def test_imagenet100_from_tfds_imagenet2012(tmp_path):
    kept = ["n02869837", "n13037406", "n01558993"]  # 3 of the 100
    others = ["n01440764", "n15075141"]  # 2 ImageNet classes outside them
    train = [kept[0], others[0], kept[1], kept[0], others[1], kept[2], others[0]]
    validation = [others[1], kept[2], kept[1]]
    written = write_mock_imagenet2012(tmp_path, train, validation)
    classes = list(imagenet100.CLASSES)
    names = sources.tfds_label_names("imagenet2012", str(tmp_path))
    assert len(names) == 1000  # TFDS's own imagenet2012 builder reads the files
    for split, tfds_name in (("train", "train"), ("test", "validation")):
        data, labels = imagenet100.load_imagenet100_split(split, str(tmp_path), 7)
        stored = [names[label] for label in written[tfds_name][1]]  # wnids in record order
        want = [classes.index(w) for w in stored if w in kept]
        np.testing.assert_array_equal(labels, want)
        assert data.shape == (len(want), 7, 7, 3) and data[len(want) - 1].shape == (7, 7, 3)
        assert set(labels) <= {classes.index(w) for w in kept}
        # the records kept are the ones of the 100 classes, in record order
        np.testing.assert_array_equal(
            data.indices, [i for i, w in enumerate(stored) if w in imagenet100.CLASSES]
        )


def test_imagenet100_not_found_is_one_line(tmp_path):
    with pytest.raises(DatasetNotPreparedError) as err:
        imagenet100.load_imagenet100_split("train", str(tmp_path), 8)
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "imagenet100") in message and str(tmp_path / "imagenet") in message
    assert "imagenet2012" in message and "array_record" in message
    with pytest.raises(ValueError, match="'train' or 'test'"):
        imagenet100.load_imagenet100_split("val", str(tmp_path), 8)
