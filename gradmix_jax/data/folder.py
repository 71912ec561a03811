"""Image folders: ``<root>/<split>/<class>/<image>`` (the ImageNet / torchvision ``ImageFolder``
layout), read lazily as ``images.ImageFiles`` at a fixed square size.

Class names are the class folders' names; class index = position in sorted order. The listing
reads directory entries only; no image is opened until a record is read.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from etils import epath

from gradmix_jax.data.images import IMAGE_EXTENSIONS, DataError, ImageFiles

#: Folder names accepted for the test split, in order of preference.
TEST_SPLITS: tuple[str, ...] = ("test", "val")


class FolderNotFoundError(FileNotFoundError):
    """An expected folder of the image-folder layout is missing."""


def class_folders(root, split: str) -> list[str]:
    """Sorted class folder names under ``<root>/<split>``."""
    folder = epath.Path(root) / split
    if not folder.is_dir():
        raise FolderNotFoundError(
            f"image folder {folder} not found: expected {folder}/<class>/<image files>"
        )
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def test_split_name(root) -> str:
    """``test`` if ``<root>/test`` exists, else ``val``; one line naming both when neither does."""
    for name in TEST_SPLITS:
        if (epath.Path(root) / name).is_dir():
            return name
    raise FolderNotFoundError(
        f"image folder {epath.Path(root)} has no test split: expected "
        + " or ".join(f"{epath.Path(root) / n}/<class>/<image files>" for n in TEST_SPLITS)
    )


def list_split(
    root, split: str, classes: Sequence[str], size: int
) -> tuple[ImageFiles, np.ndarray]:
    """(images ``[N, size, size, 3]``, labels int64 ``[N]``) of ``<root>/<split>/<c>/*`` for the
    class names ``classes``; label = position of the class in ``classes``. Files sorted by name
    within each class; files whose ending is not an image's (``IMAGE_EXTENSIONS``) are skipped.
    A listed class without a folder, or whose folder holds no image file, is an error naming the
    folder."""
    folder = epath.Path(root) / split
    paths, labels = [], []
    for label, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            raise FolderNotFoundError(f"class folder {class_dir} not found")
        files = sorted(
            p.name
            for p in class_dir.iterdir()
            if p.name.lower().endswith(IMAGE_EXTENSIONS) and not p.is_dir()
        )
        if not files:
            raise DataError(
                f"class folder {class_dir} has no image files ({', '.join(IMAGE_EXTENSIONS)})"
            )
        paths += [str(class_dir / f) for f in files]
        labels += [label] * len(files)
    if not paths:
        raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {folder}/<class>/")
    return ImageFiles(paths, size), np.asarray(labels, np.int64)
