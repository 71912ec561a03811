"""The in-memory open-set dataset every protocol loader returns."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class OpenSetData:
    """One open-set split. Images are uint8 NHWC: arrays in host memory, or lazy image sources
    of that shape (``gradmix_jax.data.images``) that decode a record when it is read.

    train_images [N, H, W, C], train_labels [N] in 0..K-1 (known classes only, remapped in the order
    of ``known_classes``); test_images [T, H, W, C], test_labels [T] in 0..K-1 for known samples and
    -1 for unknown ones. ``class_names``: the source's class names where it has them (image
    folders), indexed like ``known_classes`` / ``unknown_classes``.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    known_classes: tuple[int, ...]
    unknown_classes: tuple[int, ...]
    class_names: tuple[str, ...] = ()

    @property
    def num_known(self) -> int:
        return len(self.known_classes)

    @property
    def test_is_known(self) -> np.ndarray:
        return self.test_labels >= 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    def min_class_count(self) -> int:
        return int(np.bincount(self.train_labels, minlength=self.num_known).min())


def remap_labels(labels: np.ndarray, known_classes) -> np.ndarray:
    """Source class ids -> 0..K-1 in the order of ``known_classes``; everything else -> -1."""
    top = max(int(labels.max()) if len(labels) else 0, max(known_classes))
    lut = np.full(top + 1, -1, np.int32)
    lut[np.asarray(known_classes)] = np.arange(len(known_classes), dtype=np.int32)
    return lut[labels]
