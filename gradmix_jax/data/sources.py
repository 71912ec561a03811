"""Source datasets decoded once into host uint8 arrays: TFDS (array_record) and TinyImageNet;
and TFDS splits read lazily, one record at a time (``TfdsImages``, ``tfds_split``).

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
import threading
import zipfile

import numpy as np
from etils import epath

from gradmix_jax.data import images as image_sources
from gradmix_jax.files import as_path, is_local, write_bytes_atomic

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


# ----------------------------------------------------------------------------- lazy TFDS splits

#: Serialises the first opening of a ``TfdsImages``'s data source among reader threads.
_OPEN_LOCK = threading.Lock()
#: Records read per ``__getitems__`` call when scanning a split's labels.
_SCAN_CHUNK = 1024


def _open_data_source(name: str, split: str, data_dir: str):
    """``tfds.data_source`` of the split with the image bytes left encoded (``SkipDecoding``)."""
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(
            name,
            split=split,
            data_dir=data_dir,
            download=False,
            decoders={"image": tfds.decode.SkipDecoding()},
        )
    # NotImplementedError/AssertionError/DatasetNotFoundError by TFDS version
    except Exception as e:
        raise DatasetNotPreparedError(_prepare_hint(name, data_dir)) from e


class TfdsImages:
    """The images of a prepared TFDS split (array_record), decoded when a record is read.

    Record ``i`` is record ``i`` of ``load_tfds_split(name, split, data_dir)`` (the same
    ``tfds.data_source`` order); its stored PNG/JPEG bytes are decoded here, not by TFDS.
    ``size=None`` keeps the dataset's fixed shape (single-channel datasets such as MNIST stay
    ``[H, W, 1]``); an integer ``size`` gives RGB ``[size, size, 3]`` (``images.decode_image``: the
    shorter side resized to ``size``, then the centre square).

    The data source is opened on first use in each process, so the object pickles without it
    (Grain sends sources to its worker processes).
    """

    def __init__(self, name: str, split: str, data_dir: str | None = None, size: int | None = None):
        self.name, self.split = name, split
        self.data_dir = data_dir or default_data_dir()
        self.size = None if size is None else int(size)
        source = self._source  # opens it now: a split that is not prepared fails here, not later
        self._len = len(source)
        native = tuple(source.dataset_info.features["image"].shape)
        if self.size is not None:
            self._image_shape = (self.size, self.size, 3)
        elif None in native or len(native) != 3:
            raise image_sources.DataError(
                f"TFDS dataset {name!r} has images of varying size {native}: set data.image_size "
                f"to read it at one square size"
            )
        else:
            self._image_shape = native

    @property
    def _source(self):
        source = self.__dict__.get("_opened")
        if source is None:
            with _OPEN_LOCK:
                source = self.__dict__.get("_opened")
                if source is None:
                    source = _open_data_source(self.name, self.split, self.data_dir)
                    self._opened = source
        return source

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_opened", None)
        return state

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self._len, *self._image_shape)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> np.ndarray:
        index = int(index)
        if not -self._len <= index < self._len:
            raise IndexError(
                f"record {index} out of range for {self.name}/{self.split} ({self._len})"
            )
        index %= self._len
        data = self._source[index]["image"]
        where = f"{self.name}/{self.split}[{index}]"
        channels = 1 if self.size is None and self._image_shape[-1] == 1 else 3
        image = image_sources.decode_image(data, self.size, where, channels)
        if image.shape != self._image_shape:
            raise image_sources.DataError(
                f"image {where} decodes to shape {image.shape}, expected {self._image_shape}"
            )
        return image

    def to_array(self) -> np.ndarray:
        """The whole split decoded: ``load_tfds_split``'s (cached) array at the native size,
        else every record read in parallel."""
        if self.size is None:
            return load_tfds_split(self.name, self.split, self.data_dir)[0]
        return image_sources.read(self, np.arange(self._len))

    def __repr__(self) -> str:
        return f"TfdsImages({self.name!r}, {self.split!r}, {self.data_dir!r}, size={self.size})"


def _labels_path(data_dir: str, name: str, split: str) -> epath.Path:
    return cache_folder(data_dir) / f"{name}-{split}-labels.npy"


def _cached_labels(data_dir: str, name: str, split: str, n: int) -> np.ndarray | None:
    """The split's labels from the decoded-array cache or the labels cache, if either holds
    ``n`` of them."""
    for path, member in (
        (_cache_path(data_dir, name, split), "labels"),
        (_labels_path(data_dir, name, split), None),
    ):
        try:
            if not path.exists():
                continue
            with path.open("rb") as f:
                if member is None:
                    labels = np.load(f)
                else:
                    with np.load(f) as arrays:
                        labels = arrays[member]
        except (OSError, ValueError, KeyError):
            continue  # unreadable or partial cache: scan again
        if labels.shape == (n,):
            return labels.astype(np.int64)
    return None


def _scan_labels(source) -> np.ndarray:
    """Every record's label, in record order; the image bytes are not decoded."""
    n = len(source)
    labels = np.empty((n,), np.int64)
    for start in range(0, n, _SCAN_CHUNK):
        keys = list(range(start, min(start + _SCAN_CHUNK, n)))
        for i, example in zip(keys, source.__getitems__(keys)):
            labels[i] = example["label"]
    return labels


def tfds_split(
    name: str, split: str, data_dir: str | None = None, size: int | None = None
) -> tuple[TfdsImages, np.ndarray]:
    """(lazy images, labels int64 ``[N]``) of a prepared TFDS split, in record order.

    Labels come from the decoded-array cache (``load_tfds_split``'s npz) when there is one, else
    from one pass over the records without decoding images, kept in
    ``<cache folder>/<name>-<split>-labels.npy`` so later runs do not read the split again.
    A split that is not prepared raises ``DatasetNotPreparedError`` (one line).
    """
    images = TfdsImages(name, split, data_dir, size)
    labels = _cached_labels(images.data_dir, name, split, len(images))
    if labels is None:
        labels = _scan_labels(images._source)
        try:
            buf = io.BytesIO()
            np.save(buf, labels)
            write_bytes_atomic(_labels_path(images.data_dir, name, split), buf.getvalue())
        except OSError:
            pass  # read-only data_dir: scan again next time, still correct
    return images, labels


def tfds_label_names(name: str, data_dir: str | None = None) -> list[str]:
    """The ``label`` ClassLabel names of TFDS dataset ``name`` (e.g. imagenet2012's wnids)."""
    import tensorflow_datasets as tfds

    data_dir = data_dir or default_data_dir()
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # DatasetNotFoundError: neither in TFDS's code nor in data_dir
        raise DatasetNotPreparedError(_prepare_hint(name, data_dir)) from e
    return list(builder.info.features["label"].names)


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
