"""ImageNet-100: the 100-class ImageNet subset of CMC (Tian, Krishnan, Isola, 2019), read lazily.

The classes are the wnids of ``imagenet100.txt`` (CMC's list, in CMC's order); class index =
position in SORTED wnid order, the index torchvision's ``ImageFolder`` gives on an ImageNet-100
folder (as CMC and solo-learn train). The test split is ImageNet's validation set.

Two sources are read, tried in order:

* an ImageNet-style folder ``<root>/train/<wnid>/*`` and ``<root>/val/<wnid>/*`` (validation
  images sorted into wnid folders), where ``<root>`` is ``data_dir``, ``data_dir/imagenet100``
  or ``data_dir/imagenet``; it may hold all 1000 classes or only the 100;
* TFDS ``imagenet2012`` prepared in ``data_dir`` in array_record format: its records of the 100
  classes, labels remapped to the sorted-wnid index.
"""

from __future__ import annotations

import importlib.resources

import numpy as np
from etils import epath

from gradmix_jax.data import folder, images
from gradmix_jax.data.sources import (
    DatasetNotPreparedError,
    default_data_dir,
    tfds_label_names,
    tfds_split,
)

#: Folders under ``data_dir`` (besides ``data_dir`` itself) searched for the ImageNet layout.
FOLDER_NAMES: tuple[str, ...] = ("imagenet100", "imagenet")
#: Split name -> (class-folder split, TFDS imagenet2012 split).
SPLITS: dict[str, tuple[str, str]] = {"train": ("train", "train"), "test": ("val", "validation")}


def _read_wnids() -> tuple[str, ...]:
    text = importlib.resources.files("gradmix_jax.data").joinpath("imagenet100.txt").read_text()
    wnids = tuple(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )
    assert len(wnids) == 100 and len(set(wnids)) == 100, "imagenet100.txt must list 100 wnids"
    return wnids


#: The 100 wnids in CMC's order (``imagenet100.txt``).
IMAGENET100_WNIDS: tuple[str, ...] = _read_wnids()
#: The wnids in class-index order (sorted).
CLASSES: tuple[str, ...] = tuple(sorted(IMAGENET100_WNIDS))


def _folder_root(data_dir: str):
    """The first of ``data_dir``, ``data_dir/imagenet100``, ``data_dir/imagenet`` holding a
    ``train/`` or ``val/`` folder, or None."""
    base = epath.Path(data_dir)
    for root in (base, *(base / name for name in FOLDER_NAMES)):
        if (root / "train").is_dir() or (root / "val").is_dir():
            return root
    return None


def _from_folder(root, split_dir: str, size: int):
    if not (root / split_dir).is_dir():
        raise folder.FolderNotFoundError(
            f"ImageNet-100 folder {root} has no {split_dir}/: expected "
            f"{root / split_dir}/<wnid>/<image files> for the 100 wnids"
        )
    try:
        return folder.list_split(root, split_dir, CLASSES, size)
    except folder.FolderNotFoundError as e:
        raise folder.FolderNotFoundError(
            f"{e}: ImageNet-100 needs a folder for each of its 100 wnids under "
            f"{root / split_dir}/ (validation images sorted into wnid folders)"
        ) from None


def _from_tfds(tfds_split_name: str, data_dir: str, size: int):
    source, labels = tfds_split("imagenet2012", tfds_split_name, data_dir, size)
    index = {wnid: i for i, wnid in enumerate(CLASSES)}
    lookup = np.array([index.get(n, -1) for n in tfds_label_names("imagenet2012", data_dir)])
    mapped = lookup[labels]
    keep = np.flatnonzero(mapped >= 0)
    if len(keep) == 0:
        raise images.DataError(
            f"TFDS imagenet2012/{tfds_split_name} in {data_dir} has no image of the ImageNet-100 "
            f"classes"
        )
    return images.take(source, keep), mapped[keep].astype(np.int64)


def load_imagenet100_split(split: str, data_dir: str | None, size: int):
    """(images ``[N, size, size, 3]`` as a lazy image source, labels int64 ``[N]``) of
    ImageNet-100's ``split``: 'train' or 'test' (ImageNet's validation set).

    Label = index of the wnid in sorted order (``CLASSES``). Reads the first ImageNet-style
    folder found (see the module docstring), else TFDS ``imagenet2012`` in ``data_dir``; raises
    ``DatasetNotPreparedError`` (one line) when neither is there, and ``FolderNotFoundError``
    naming the first missing class folder when a folder lacks some of the 100 wnids.
    """
    if split not in SPLITS:
        raise ValueError(f"ImageNet-100 split must be 'train' or 'test', got {split!r}")
    split_dir, tfds_name = SPLITS[split]
    data_dir = data_dir or default_data_dir()
    root = _folder_root(data_dir)
    if root is not None:
        return _from_folder(root, split_dir, size)
    try:
        return _from_tfds(tfds_name, data_dir, size)
    except DatasetNotPreparedError as e:
        base = epath.Path(data_dir)
        looked = ", ".join(str(p) for p in (base, *(base / n for n in FOLDER_NAMES)))
        raise DatasetNotPreparedError(
            f"ImageNet-100 not found: no train/ or val/ class folders in {looked}, and no TFDS "
            f"imagenet2012 (array_record) in {base}. Put ImageNet's train/ and val/ class folders "
            f"(val sorted into wnid folders; the 100 classes suffice) under {base / 'imagenet100'}, "
            f"or prepare TFDS imagenet2012 there: tfds build imagenet2012 --data_dir={base} "
            f"--file_format=array_record (ImageNet's archives in its manual_dir)"
        ) from e
