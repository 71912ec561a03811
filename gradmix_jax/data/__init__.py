"""Open-set data: protocol class splits and their loaders.

A loader returns an ``OpenSetData`` whose images are uint8 arrays in host memory or, with
``lazy=True`` where the source allows it (TFDS array_record splits, image folders), lazy image
sources (``data.images``) that decode a record when it is read.
"""

from __future__ import annotations

import numpy as np

from gradmix_jax.data import images as image_sources
from gradmix_jax.data.base import OpenSetData, remap_labels
from gradmix_jax.data.folder import FolderNotFoundError, class_folders, list_split, test_split_name
from gradmix_jax.data.idx import IdxError, idx_folder, load_idx_split, not_found_error
from gradmix_jax.data.protocols import (
    CLOSED_SET_CLASSES,
    PROTOCOLS,
    openness,
    protocol_classes,
    resolve_known_classes,
)
from gradmix_jax.data.sources import (
    TFDS_NAMES,
    DatasetNotPreparedError,
    default_data_dir,
    load_tfds_split,
    load_tinyimagenet_split,
)


def _keep(images, labels, classes):
    mask = np.isin(labels, classes)
    return image_sources.take(images, np.flatnonzero(mask)), labels[mask]


def _tfds(name: str, split: str, folder: str, lazy: bool):
    """(images, labels) of a TFDS split: a lazy source over its array_record files, or decoded."""
    if lazy:
        from gradmix_jax.data.sources import tfds_split

        return tfds_split(name, split, folder)
    return load_tfds_split(name, split, folder)


def _source_splits(dataset: str, data_dir: str | None, lazy: bool = False, size: int = 0):
    """((train images, labels), (test images, labels)) of a source dataset, from the folder
    ``data_dir`` (None: TFDS's default, or for fashion_mnist also Debian's package folder).
    ``lazy``: TFDS splits as lazy sources read from their array_record files. ImageNet100 is
    always lazy, decoded to ``size`` px."""
    if dataset in ("mnist", "fashion_mnist"):
        folder = idx_folder(dataset, data_dir)
        if folder is not None:
            return load_idx_split(folder, "train", dataset), load_idx_split(folder, "test", dataset)
    folder = data_dir or default_data_dir()
    if dataset == "tinyimagenet":
        return load_tinyimagenet_split("train", folder), load_tinyimagenet_split("val", folder)
    if dataset == "imagenet100":
        from gradmix_jax.data.imagenet100 import load_imagenet100_split

        return (
            load_imagenet100_split("train", data_dir, size),
            load_imagenet100_split("test", data_dir, size),
        )
    name = TFDS_NAMES[dataset]
    try:
        return _tfds(name, "train", folder, lazy), _tfds(name, "test", folder, lazy)
    except DatasetNotPreparedError:
        if dataset == "fashion_mnist":  # say where the IDX files were looked for, too
            raise not_found_error(dataset, data_dir) from None
        raise


def load_closed_set(
    dataset: str,
    data_dir: str | None = None,
    num_classes: int = 0,
    *,
    image_size: int = 0,
    lazy: bool = False,
) -> OpenSetData:
    """Closed-set classification data: the first ``num_classes`` classes of the dataset (0 = Table
    3's choice: every class of cifar10/cifar100, the first 100 TinyImageNet classes, the 100
    classes of ImageNet100); no unknown test samples. ``imagefolder``: every class folder of
    ``data_dir/train``. ``image_size``: the size lazily decoded images get (image folders,
    ImageNet100); ``lazy``: see ``load_openset``."""
    if dataset == "imagefolder":
        return load_imagefolder(data_dir, (), image_size, closed_set=True)
    classes = list(range(num_classes or CLOSED_SET_CLASSES[dataset]))
    (x_train, y_train), (x_test, y_test) = _source_splits(dataset, data_dir, lazy, image_size)
    x_train, y_train = _keep(x_train, y_train, classes)
    x_test, y_test = _keep(x_test, y_test, classes)
    return OpenSetData(
        name=f"{dataset}-closed",
        train_images=x_train,
        train_labels=y_train.astype(np.int32),
        test_images=x_test,
        test_labels=y_test.astype(np.int32),
        known_classes=tuple(classes),
        unknown_classes=(),
    )


# Protocols whose unknown classes come from the same source dataset (so a validation split can be
# carved out of the training set: data.validation).
VALIDATION_PROTOCOLS = ("mnist", "fashion_mnist", "svhn", "cifar10", "tinyimagenet")
VALIDATION_FRACTION = 1 / 6  # of the source training set (Fashion-MNIST/MNIST: 10,000 images)


def validation_holdout(
    images: np.ndarray, labels: np.ndarray, fraction: float = VALIDATION_FRACTION
):
    """Splits a source training set into (rest, held out): a fixed random ``fraction`` (seed 0,
    independent of the run's seed) becomes the validation 'test' set, all classes included."""
    order = np.random.default_rng(0).permutation(len(images))
    cut = int(round(fraction * len(images)))
    held, rest = np.sort(order[:cut]), np.sort(order[cut:])
    take = image_sources.take
    return (take(images, rest), labels[rest]), (take(images, held), labels[held])


def load_openset(
    protocol: str,
    split: int,
    known_classes=(),
    data_dir: str | None = None,
    validation: bool = False,
    *,
    image_size: int = 0,
    lazy: bool = False,
) -> OpenSetData:
    """Loads one open-set split of ``protocol`` (uint8 images).

    Train: the known classes' training images, labels remapped to 0..K-1 in the order of the split
    list. Test: the known classes' test images plus the unknown ones (label -1); for cifar_plus10/50
    the unknown images are CIFAR-100 test images of the listed classes.
    ``validation=True`` (VALIDATION_PROTOCOLS only) never touches the test set: a fixed sixth of the
    source training set (every class) plays the test set and the rest is trained on; for tuning.
    ``lazy=True``: TFDS splits stay lazy sources over their array_record files (nothing decoded
    until read). ``imagefolder`` (always lazy): ``load_imagefolder(data_dir, known_classes,
    image_size)``.
    """
    if protocol == "imagefolder":
        return load_imagefolder(data_dir, known_classes, image_size)
    known, unknown = resolve_known_classes(protocol, split, known_classes)
    if validation and protocol not in VALIDATION_PROTOCOLS:
        raise ValueError(
            f"data.validation=True needs data.protocol in {list(VALIDATION_PROTOCOLS)}, "
            f"got {protocol!r}"
        )
    if protocol == "digits":
        from gradmix_jax.data.digits import load_digits_openset

        return load_digits_openset(known, unknown)
    train, test = _source_splits(
        "cifar10" if protocol.startswith("cifar") else protocol, data_dir, lazy, image_size
    )
    if validation:
        train, test = validation_holdout(*train)
    x_train, y_train = _keep(*train, known)
    if protocol in ("cifar_plus10", "cifar_plus50"):
        x_known, y_known = _keep(*test, known)
        x_unk, _ = _keep(*_tfds("cifar100", "test", data_dir or default_data_dir(), lazy), unknown)
        x_test = image_sources.concat([x_known, x_unk])
        y_test = np.concatenate([remap_labels(y_known, known), np.full(len(x_unk), -1, np.int32)])
    else:
        x_test, y_test_src = _keep(*test, known + unknown)
        y_test = remap_labels(y_test_src, known)
    return OpenSetData(
        name=protocol + ("-validation" if validation else ""),
        train_images=x_train,
        train_labels=remap_labels(y_train, known),
        test_images=x_test,
        test_labels=y_test.astype(np.int32),
        known_classes=tuple(known),
        unknown_classes=tuple(unknown),
    )


def _resolve_folder_classes(train_names: list[str], known_classes) -> list[str]:
    """``data.known_classes`` of an image folder (names, or indices into the sorted train class
    folders) as class names; empty: every train class folder."""
    if not known_classes:
        return list(train_names)
    known = []
    for c in known_classes:
        if isinstance(c, str) and c in train_names:
            known.append(c)
        elif not isinstance(c, str) and 0 <= int(c) < len(train_names):
            known.append(train_names[int(c)])
        else:
            raise ValueError(
                f"data.known_classes must be class folder names under train/ or indices in "
                f"0..{len(train_names) - 1} of their sorted list {train_names[:5]}"
                f"{'...' if len(train_names) > 5 else ''}, got {c!r}"
            )
    if len(set(known)) != len(known) or len(known) < 2:
        raise ValueError(
            f"data.known_classes must name at least 2 distinct classes, got {list(known_classes)}"
        )
    return known


def load_imagefolder(
    data_dir: str | None, known_classes=(), image_size: int = 0, closed_set: bool = False
) -> OpenSetData:
    """An open-set split of an image folder ``data_dir``: ``train/<class>/*`` and ``test/<class>/*``
    (or ``val/``), every image decoded lazily to ``[image_size, image_size, 3]``.

    Known classes: ``known_classes`` (class folder names, or indices into the sorted train class
    folders), default every train class; train labels 0..K-1 in that order. Test: every test
    class folder; classes that are not known are unknown (label -1). ``closed_set=True``: every
    train class is known and the test set keeps the known classes only. Class index (for
    ``known_classes``/``unknown_classes``) = position in the sorted union of train and test
    class folder names (``class_names``).
    """
    if not data_dir:
        raise ValueError(
            "data.data_dir must be the image folder (with train/ and test/ or val/) "
            "for data.protocol='imagefolder'"
        )
    if not image_size:
        raise ValueError("data.image_size must be > 0 for data.protocol='imagefolder'")
    train_names = class_folders(data_dir, "train")
    test_name = test_split_name(data_dir)
    test_names = class_folders(data_dir, test_name)
    known = _resolve_folder_classes(train_names, () if closed_set else known_classes)
    test_classes = [c for c in test_names if c in known] if closed_set else test_names
    names = sorted(set(train_names) | set(test_names))
    x_train, y_train = list_split(data_dir, "train", known, image_size)
    x_test, y_test_pos = list_split(data_dir, test_name, test_classes, image_size)
    known_pos = {c: i for i, c in enumerate(known)}
    lut = np.asarray([known_pos.get(c, -1) for c in test_classes], np.int32)
    unknown = [c for c in test_classes if c not in known_pos]
    return OpenSetData(
        name="imagefolder" + ("-closed" if closed_set else ""),
        train_images=x_train,
        train_labels=y_train.astype(np.int32),
        test_images=x_test,
        test_labels=lut[y_test_pos],  # list_split refuses an empty split
        known_classes=tuple(names.index(c) for c in known),
        unknown_classes=tuple(names.index(c) for c in unknown),
        class_names=tuple(names),
    )


__all__ = [
    "DatasetNotPreparedError",
    "FolderNotFoundError",
    "IdxError",
    "OpenSetData",
    "PROTOCOLS",
    "load_closed_set",
    "load_imagefolder",
    "load_openset",
    "openness",
    "protocol_classes",
    "remap_labels",
    "resolve_known_classes",
]
