"""Open-set data: protocol class splits and host-memory loaders."""

from __future__ import annotations

import numpy as np

from gradmix_jax.data.base import OpenSetData, remap_labels
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
    return images[mask], labels[mask]


def _source_splits(dataset: str, data_dir: str | None):
    """((train images, labels), (test images, labels)) of a source dataset, from the folder
    ``data_dir`` (None: TFDS's default, or for fashion_mnist also Debian's package folder)."""
    if dataset in ("mnist", "fashion_mnist"):
        folder = idx_folder(dataset, data_dir)
        if folder is not None:
            return load_idx_split(folder, "train", dataset), load_idx_split(folder, "test", dataset)
    folder = data_dir or default_data_dir()
    if dataset == "tinyimagenet":
        return load_tinyimagenet_split("train", folder), load_tinyimagenet_split("val", folder)
    name = TFDS_NAMES[dataset]
    try:
        return load_tfds_split(name, "train", folder), load_tfds_split(name, "test", folder)
    except DatasetNotPreparedError:
        if dataset == "fashion_mnist":  # say where the IDX files were looked for, too
            raise not_found_error(dataset, data_dir) from None
        raise


def load_closed_set(dataset: str, data_dir: str | None = None, num_classes: int = 0) -> OpenSetData:
    """Closed-set classification data: the first ``num_classes`` classes of the dataset (0 = Table
    3's choice: every class of cifar10/cifar100, the first 100 TinyImageNet classes); no unknown
    test samples."""
    classes = list(range(num_classes or CLOSED_SET_CLASSES[dataset]))
    (x_train, y_train), (x_test, y_test) = _source_splits(dataset, data_dir)
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
    return (images[rest], labels[rest]), (images[held], labels[held])


def load_openset(
    protocol: str,
    split: int,
    known_classes=(),
    data_dir: str | None = None,
    validation: bool = False,
) -> OpenSetData:
    """Loads one open-set split of ``protocol`` into host memory (uint8 images).

    Train: the known classes' training images, labels remapped to 0..K-1 in the order of the split
    list. Test: the known classes' test images plus the unknown ones (label -1); for cifar_plus10/50
    the unknown images are CIFAR-100 test images of the listed classes.
    ``validation=True`` (VALIDATION_PROTOCOLS only) never touches the test set: a fixed sixth of the
    source training set (every class) plays the test set and the rest is trained on; for tuning.
    """
    known, unknown = resolve_known_classes(protocol, split, known_classes)
    if validation and protocol not in VALIDATION_PROTOCOLS:
        raise ValueError(
            f"data.validation=True needs data.protocol in {list(VALIDATION_PROTOCOLS)}, "
            f"got {protocol!r}"
        )
    if protocol == "digits":
        from gradmix_jax.data.digits import load_digits_openset

        return load_digits_openset(known, unknown)
    train, test = _source_splits("cifar10" if protocol.startswith("cifar") else protocol, data_dir)
    if validation:
        train, test = validation_holdout(*train)
    x_train, y_train = _keep(*train, known)
    if protocol in ("cifar_plus10", "cifar_plus50"):
        x_known, y_known = _keep(*test, known)
        x_unk, _ = _keep(
            *load_tfds_split("cifar100", "test", data_dir or default_data_dir()), unknown
        )
        x_test = np.concatenate([x_known, x_unk])
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


__all__ = [
    "DatasetNotPreparedError",
    "IdxError",
    "OpenSetData",
    "PROTOCOLS",
    "load_closed_set",
    "load_openset",
    "openness",
    "protocol_classes",
    "remap_labels",
    "resolve_known_classes",
]
