"""scikit-learn's bundled handwritten digits (8x8, 1797 images): the offline protocol."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from gradmix_jax.data.base import OpenSetData, remap_labels


def load_digits_openset(known_classes, unknown_classes) -> OpenSetData:
    """The digits protocol: stratified 2/3 train, 1/3 test (random_state=0).

    Train keeps only known classes; the test set keeps every image (unknown ones labelled -1).
    Pixel values 0..16 are scaled to uint8 0..255; images are [8, 8, 1].
    """
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=1 / 3, stratify=labels, random_state=0
    )
    keep = np.isin(y_train, known_classes)
    return OpenSetData(
        name="digits",
        train_images=x_train[keep],
        train_labels=remap_labels(y_train[keep], known_classes),
        test_images=x_test,
        test_labels=remap_labels(y_test, known_classes),
        known_classes=tuple(int(c) for c in known_classes),
        unknown_classes=tuple(int(c) for c in unknown_classes),
    )
