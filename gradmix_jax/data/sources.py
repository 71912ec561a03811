"""Source datasets decoded once into host uint8 arrays: TFDS (array_record) and TinyImageNet.

TFDS sets are read with ``tfds.data_source`` (random access over array_record files, no TensorFlow
at run time, no network: ``download=False``). Each (dataset, split) is decoded once per process
(``functools.cache``) and, where the data directory is writable, once per machine: the decoded
arrays are kept in ``<data_dir>/gradmix_jax_cache/<name>-<split>.npz``. A data directory on an
object store (``gs://``...) is read through ``etils.epath``; its cache lives in a local folder
(``cache_root()``), since decoded arrays are worth keeping next to the compute, not in the bucket.
"""

from __future__ import annotations

import functools
import io
import os
import zipfile

import numpy as np
from etils import epath

from gradmix_jax.training.workdir import as_path, is_local, write_bytes_atomic

TFDS_NAMES = {
    "mnist": "mnist",
    "fashion_mnist": "fashion_mnist",
    "svhn": "svhn_cropped",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
}
TINYIMAGENET_DIR = "tiny-imagenet-200"


class DatasetNotPreparedError(FileNotFoundError):
    """The dataset is not on disk and this program does not download it."""


def default_data_dir() -> str:
    """TFDS's own default (``TFDS_DATA_DIR`` or ``~/tensorflow_datasets``)."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(
        os.path.expanduser("~"), "tensorflow_datasets"
    )


def cache_root() -> epath.Path:
    """Local folder for the decoded arrays of non-local data directories: ``GRADMIX_JAX_CACHE``,
    else ``$XDG_CACHE_HOME/gradmix_jax``, else ``~/.cache/gradmix_jax``."""
    root = os.environ.get("GRADMIX_JAX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "gradmix_jax",
    )
    return epath.Path(root)


def cache_folder(data_dir: str) -> epath.Path:
    """``<data_dir>/gradmix_jax_cache`` for a local ``data_dir``; for a URI such as
    ``gs://bucket/tfds``, ``cache_root()/gs/bucket/tfds``."""
    if is_local(data_dir):
        return as_path(data_dir) / "gradmix_jax_cache"
    scheme, rest = os.fspath(data_dir).split("://", 1)
    return cache_root() / scheme / rest.strip("/")


def _cache_path(data_dir: str, name: str, split: str) -> epath.Path:
    return cache_folder(data_dir) / f"{name}-{split}.npz"


def _load_cached(path: epath.Path):
    if path.exists():
        with path.open("rb") as f, np.load(f) as arrays:
            return arrays["images"], arrays["labels"]
    return None


def _store_cached(path: epath.Path, images: np.ndarray, labels: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, images=images, labels=labels)
        write_bytes_atomic(path, buf.getvalue())
    except OSError:
        pass  # read-only data_dir: decode again next time, still correct


def _prepare_hint(tfds_name: str, data_dir: str) -> str:
    return (
        f"dataset {tfds_name!r} is not prepared in {data_dir} (array_record format) and runs never "
        f"download. Prepare it once on a machine with internet: "
        f"tfds build {tfds_name} --data_dir={data_dir} --file_format=array_record "
        f"(then copy {data_dir}/{tfds_name} here), or set data.data_dir / TFDS_DATA_DIR to where it is."
    )


@functools.cache
def load_tfds_split(
    name: str, split: str, data_dir: str | None = None, use_disk_cache: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, H, W, C], labels int64 [N]) of TFDS dataset ``name``'s ``split``."""
    import tensorflow_datasets as tfds

    data_dir = data_dir or default_data_dir()
    cache = _cache_path(data_dir, name, split)
    cached = _load_cached(cache) if use_disk_cache else None
    if cached is not None:
        return cached
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except (
        Exception
    ) as e:  # NotImplementedError/AssertionError/DatasetNotFoundError by TFDS version
        raise DatasetNotPreparedError(_prepare_hint(name, data_dir)) from e
    n = len(source)
    first = source[0]
    images = np.empty((n, *np.shape(first["image"])), np.uint8)
    labels = np.empty((n,), np.int64)
    for i in range(n):
        example = first if i == 0 else source[i]
        images[i] = example["image"]
        labels[i] = example["label"]
    if use_disk_cache:
        _store_cached(cache, images, labels)
    return images, labels


# ----------------------------------------------------------------------------- TinyImageNet


class _TinyImageNetFiles:
    """Uniform access to the standard layout, unpacked or as ``tiny-imagenet-200.zip``."""

    def __init__(self, data_dir: str):
        folder = as_path(data_dir) / TINYIMAGENET_DIR
        archive = folder.parent / (TINYIMAGENET_DIR + ".zip")
        self.zip = None
        if (folder / "wnids.txt").is_file():
            self.root = folder
        elif archive.is_file():
            # The archive is read into memory: zipfile needs random access, which object-store
            # file objects do not all offer efficiently.
            self.zip = zipfile.ZipFile(io.BytesIO(archive.read_bytes()))
            self.root = TINYIMAGENET_DIR
        else:
            raise DatasetNotPreparedError(
                f"TinyImageNet not found: expected {folder}/wnids.txt or {archive} (the standard "
                f"tiny-imagenet-200.zip from http://cs231n.stanford.edu/tiny-imagenet-200.zip) under "
                f"data.data_dir={data_dir}"
            )

    def read(self, relative: str) -> bytes:
        if self.zip is not None:
            return self.zip.read(f"{self.root}/{relative}")
        return (self.root / relative).read_bytes()

    def listdir(self, relative: str) -> list[str]:
        if self.zip is not None:
            prefix = f"{self.root}/{relative}/"
            return sorted(
                {
                    n[len(prefix) :].split("/")[0]
                    for n in self.zip.namelist()
                    if n.startswith(prefix) and len(n) > len(prefix)
                }
            )
        return sorted(p.name for p in (self.root / relative).iterdir())


def _decode_rgb(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), np.uint8)


@functools.cache
def load_tinyimagenet_split(
    split: str, data_dir: str | None = None, use_disk_cache: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 64, 64, 3], labels [N]) of TinyImageNet 'train' or 'val' (the test split).

    Class index = position of the wnid in SORTED ``wnids.txt``, the convention of the split lists.
    """
    if split not in ("train", "val"):
        raise ValueError(f"TinyImageNet split must be 'train' or 'val', got {split!r}")
    data_dir = data_dir or default_data_dir()
    cache = _cache_path(data_dir, "tinyimagenet", split)
    cached = _load_cached(cache) if use_disk_cache else None
    if cached is not None:
        return cached
    files = _TinyImageNetFiles(data_dir)
    wnids = sorted(w for w in files.read("wnids.txt").decode().split() if w)
    index = {w: i for i, w in enumerate(wnids)}
    paths, labels = [], []
    if split == "train":
        for wnid in wnids:
            for name in files.listdir(f"train/{wnid}/images"):
                paths.append(f"train/{wnid}/images/{name}")
                labels.append(index[wnid])
    else:
        for line in files.read("val/val_annotations.txt").decode().splitlines():
            fields = line.split("\t")
            if len(fields) >= 2:
                paths.append(f"val/images/{fields[0]}")
                labels.append(index[fields[1]])
    images = (
        np.stack([_decode_rgb(files.read(p)) for p in paths])
        if paths
        else np.zeros((0, 64, 64, 3), np.uint8)
    )
    labels = np.asarray(labels, np.int64)
    if use_disk_cache:
        _store_cached(cache, images, labels)
    return images, labels
