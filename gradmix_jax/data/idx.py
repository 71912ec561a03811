"""MNIST-format IDX files (MNIST, Fashion-MNIST): a validating reader and the folder lookup.

The format (http://yann.lecun.com/exdb/mnist/, "FILE FORMATS"): a big-endian header of two zero
bytes, a type byte (0x08 = unsigned byte), a dimension count ``d``, then ``d`` big-endian uint32
sizes, then the data, row-major. Images are ``[N, 28, 28]`` (magic 0x00000803), labels ``[N]``
(magic 0x00000801). Each file may be gzipped (``<name>.gz``), as the Debian package ships them.

Every problem (missing, truncated, wrong magic, mismatched counts, a label outside the classes) is an
``IdxError`` whose one-line message names the file and how to get the dataset; it subclasses
``DatasetNotPreparedError`` so the CLI turns it into ``error: ...`` and exit code 2. Each folder's
split is decoded once per process (``functools.cache``).
"""

from __future__ import annotations

import functools
import gzip

import numpy as np
from etils import epath

from gradmix_jax.data.sources import DatasetNotPreparedError

# (images file, labels file) of each split, without the optional '.gz'.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
NUM_CLASSES = 10
# Where Debian's `dataset-fashion-mnist` package installs the four gzipped files.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# How to get each dataset's four files (the end of every error message).
GET_HINTS = {
    "fashion_mnist": (
        "install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, "
        f"files in {DEBIAN_FASHION_MNIST_DIR}) or download the four files from "
        "https://github.com/zalandoresearch/fashion-mnist (data/fashion) into "
        "data.data_dir"
    ),
    "mnist": (
        "download the four files from http://yann.lecun.com/exdb/mnist/ (torchvision keeps "
        "them in MNIST/raw) into data.data_dir, or prepare TFDS's mnist"
    ),
}


class IdxError(DatasetNotPreparedError):
    """An IDX file is missing or malformed (one-line message naming the file)."""


def _locate(folder: epath.Path, name: str) -> epath.Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def has_idx_files(folder: str) -> bool:
    """True when ``folder`` holds all four files (plain or .gz)."""
    if not folder:
        return False
    root = epath.Path(folder)
    return all(_locate(root, n) is not None for pair in IDX_FILES.values() for n in pair)


def _read_bytes(path: epath.Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)  # EOFError / BadGzipFile are reported by the caller
    return data


def read_idx(path: str | epath.Path, magic: int, hint: str = "") -> np.ndarray:
    """The uint8 array of one IDX file, checked against ``magic`` and its header's sizes.

    Args:
      path: the file (``.gz`` is decompressed).
      magic: IMAGES_MAGIC ([N, rows, cols]) or LABELS_MAGIC ([N]).
      hint: appended to error messages (how to get the files).
    Returns:
      uint8 array of the header's shape.
    """
    path = epath.Path(path)
    suffix = f"; {hint}" if hint else ""
    try:
        data = _read_bytes(path)
    except (OSError, EOFError) as e:
        raise IdxError(f"cannot read IDX file {path}: {e}{suffix}") from None
    if len(data) < 4:
        raise IdxError(f"IDX file {path} is truncated ({len(data)} bytes, no header){suffix}")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise IdxError(
            f"IDX file {path} has magic number 0x{found:08x}, expected 0x{magic:08x} "
            f"({'images' if magic == IMAGES_MAGIC else 'labels'}){suffix}"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxError(
            f"IDX file {path} is truncated (header needs {header} bytes, file has "
            f"{len(data)}){suffix}"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "longer than its header says"
        raise IdxError(
            f"IDX file {path} is {state}: header {shape} needs {expected} bytes, file "
            f"has {len(data)}{suffix}"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


@functools.cache
def load_idx_split(
    folder: str, split: str, dataset: str = "fashion_mnist"
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28, 1], labels int64 [N]) of ``split`` ('train' | 'test') in ``folder``.

    ``dataset`` ('fashion_mnist' | 'mnist') only chooses how error messages say to get the files.
    """
    if split not in IDX_FILES:
        raise ValueError(f"IDX split must be one of {list(IDX_FILES)}, got {split!r}")
    hint = GET_HINTS.get(dataset, GET_HINTS["fashion_mnist"])
    root = epath.Path(folder)
    paths = []
    for name in IDX_FILES[split]:
        path = _locate(root, name)
        if path is None:
            raise IdxError(f"{dataset} file {name}[.gz] not found in {folder}: {hint}")
        paths.append(path)
    images = read_idx(paths[0], IMAGES_MAGIC, hint)
    labels = read_idx(paths[1], LABELS_MAGIC, hint)
    if len(images) != len(labels):
        raise IdxError(
            f"{paths[0]} holds {len(images)} images but {paths[1]} holds {len(labels)} "
            f"labels; {hint}"
        )
    if len(labels) and labels.max() >= NUM_CLASSES:
        raise IdxError(
            f"{paths[1]} has label {int(labels.max())}, outside 0..{NUM_CLASSES - 1}; {hint}"
        )
    return images[..., None], labels.astype(np.int64)


def idx_folder(dataset: str, data_dir: str | None) -> str | None:
    """The folder to read ``dataset``'s ('mnist' | 'fashion_mnist') IDX files from, or None to
    read TFDS instead.

    ``data_dir`` set: itself, or its torchvision layout ``MNIST/raw`` / ``FashionMNIST/raw``, when
    it holds the four files. Unset (fashion_mnist only): Debian's package folder when TFDS's
    default folder has no prepared ``fashion_mnist``.
    """
    from gradmix_jax.data.sources import TFDS_NAMES, default_data_dir

    if data_dir:
        raw = "FashionMNIST" if dataset == "fashion_mnist" else "MNIST"
        for folder in (data_dir, str(epath.Path(data_dir) / raw / "raw")):
            if has_idx_files(folder):
                return folder
        return None
    if (
        dataset == "fashion_mnist"
        and has_idx_files(DEBIAN_FASHION_MNIST_DIR)
        and not (epath.Path(default_data_dir()) / TFDS_NAMES[dataset]).is_dir()
    ):
        return DEBIAN_FASHION_MNIST_DIR
    return None


def not_found_error(dataset: str, data_dir: str | None) -> IdxError:
    """The one-line error when neither IDX files nor a prepared TFDS copy were found."""
    from gradmix_jax.data.sources import TFDS_NAMES, default_data_dir

    where = (
        f"data.data_dir={data_dir}"
        if data_dir
        else f"data.data_dir (unset), {default_data_dir()} (TFDS) and {DEBIAN_FASHION_MNIST_DIR}"
    )
    files = ", ".join(n for pair in IDX_FILES.values() for n in pair)
    return IdxError(
        f"{dataset} not found: {where} holds neither the four IDX files ({files}, plain "
        f"or .gz) nor TFDS's prepared {TFDS_NAMES[dataset]}; {GET_HINTS[dataset]}"
    )
