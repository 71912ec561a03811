"""Open-set data: protocol class splits and host-memory loaders."""

from __future__ import annotations

import numpy as np

from gradmix_jax.data.base import OpenSetData, remap_labels
from gradmix_jax.data.protocols import (CLOSED_SET_CLASSES, PROTOCOLS, openness,
                                        protocol_classes, resolve_known_classes)
from gradmix_jax.data.sources import (TFDS_NAMES, DatasetNotPreparedError, default_data_dir,
                                      load_tfds_split, load_tinyimagenet_split)


def _keep(images, labels, classes):
    mask = np.isin(labels, classes)
    return images[mask], labels[mask]


def _source_splits(dataset: str, data_dir: str):
    if dataset == "tinyimagenet":
        return load_tinyimagenet_split("train", data_dir), load_tinyimagenet_split("val", data_dir)
    name = TFDS_NAMES[dataset]
    return load_tfds_split(name, "train", data_dir), load_tfds_split(name, "test", data_dir)


def load_closed_set(dataset: str, data_dir: str | None = None, num_classes: int = 0) -> OpenSetData:
    """Closed-set classification data: the first ``num_classes`` classes of the dataset (0 = Table
    3's choice: every class of cifar10/cifar100, the first 100 TinyImageNet classes); no unknown
    test samples."""
    classes = list(range(num_classes or CLOSED_SET_CLASSES[dataset]))
    (x_train, y_train), (x_test, y_test) = _source_splits(dataset, data_dir or default_data_dir())
    x_train, y_train = _keep(x_train, y_train, classes)
    x_test, y_test = _keep(x_test, y_test, classes)
    return OpenSetData(name=f"{dataset}-closed", train_images=x_train,
                       train_labels=y_train.astype(np.int32), test_images=x_test,
                       test_labels=y_test.astype(np.int32), known_classes=tuple(classes),
                       unknown_classes=())


def load_openset(protocol: str, split: int, known_classes=(), data_dir: str | None = None
                 ) -> OpenSetData:
    """Loads one open-set split of ``protocol`` into host memory (uint8 images).

    Train: the known classes' training images, labels remapped to 0..K-1 in the order of the split
    list. Test: the known classes' test images plus the unknown ones (label -1); for cifar_plus10/50
    the unknown images are CIFAR-100 test images of the listed classes.
    """
    known, unknown = resolve_known_classes(protocol, split, known_classes)
    if protocol == "digits":
        from gradmix_jax.data.digits import load_digits_openset
        return load_digits_openset(known, unknown)
    data_dir = data_dir or default_data_dir()
    train, test = _source_splits("cifar10" if protocol.startswith("cifar") else protocol, data_dir)
    x_train, y_train = _keep(*train, known)
    if protocol in ("cifar_plus10", "cifar_plus50"):
        x_known, y_known = _keep(*test, known)
        x_unk, _ = _keep(*load_tfds_split("cifar100", "test", data_dir), unknown)
        x_test = np.concatenate([x_known, x_unk])
        y_test = np.concatenate([remap_labels(y_known, known), np.full(len(x_unk), -1, np.int32)])
    else:
        x_test, y_test_src = _keep(*test, known + unknown)
        y_test = remap_labels(y_test_src, known)
    return OpenSetData(name=protocol, train_images=x_train, train_labels=remap_labels(y_train, known),
                       test_images=x_test, test_labels=y_test.astype(np.int32),
                       known_classes=tuple(known), unknown_classes=tuple(unknown))


__all__ = ["DatasetNotPreparedError", "OpenSetData", "PROTOCOLS", "load_closed_set", "load_openset",
           "openness",
           "protocol_classes", "remap_labels", "resolve_known_classes"]
