"""Image splits that need not fit in memory: lazy, random-access image sources.

Every loader returns the images of a split either as a uint8 array ``[N, H, W, C]`` or as an
*image source*: any object with ``shape`` (``(N, H, W, C)``), ``__len__`` and
``__getitem__(i) -> uint8 [H, W, C]`` that reads and decodes record ``i`` when asked (the
random-access protocol Grain's ``MapDataset.source`` reads). Arrays are sources too, so code that
reads a split one record or one batch at a time serves both. The functions here select
(``take``), join (``concat``), measure (``nbytes``), read in parallel (``read``, ``iter_batches``,
with Grain's reader threads) and materialise (``as_array``) either kind.
"""

from __future__ import annotations

import io
import math
from typing import Iterator, Protocol, Sequence

import numpy as np
from etils import epath

#: File name endings the image-folder readers accept (compared lower-case).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".ppm")


class DataError(ValueError):
    """A record that cannot be read or decoded; the message names the file or record."""


class ImageSource(Protocol):
    """Random access to a split's images, all of one shape, decoded on demand."""

    @property
    def shape(self) -> tuple[int, int, int, int]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...


def is_lazy(images) -> bool:
    """True for a source that decodes on demand, False for an array already in memory."""
    return not isinstance(images, np.ndarray)


def nbytes(images) -> int:
    """Bytes of the decoded uint8 split (what it would take on a device)."""
    return int(math.prod(images.shape))


class Subset:
    """Records ``indices`` of ``base``, in that order (a lazy ``base[indices]``)."""

    def __init__(self, base, indices: np.ndarray):
        self.base = base
        self.indices = np.asarray(indices, np.int64)

    @property
    def shape(self):
        return (len(self.indices), *self.base.shape[1:])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.base[int(self.indices[index])]

    def to_array(self) -> np.ndarray:
        return as_array(self.base)[self.indices]


class Concat:
    """The records of ``parts`` one after the other (a lazy ``np.concatenate(parts)``)."""

    def __init__(self, parts: Sequence):
        shapes = {tuple(p.shape[1:]) for p in parts}
        if len(shapes) != 1:
            raise DataError(f"cannot join image splits of different shapes {sorted(shapes)}")
        self.parts = list(parts)
        self._ends = np.cumsum([len(p) for p in parts])

    @property
    def shape(self):
        return (int(self._ends[-1]), *self.parts[0].shape[1:])

    def __len__(self) -> int:
        return int(self._ends[-1])

    def __getitem__(self, index: int) -> np.ndarray:
        part = int(np.searchsorted(self._ends, index, side="right"))
        start = int(self._ends[part - 1]) if part else 0
        return self.parts[part][index - start]

    def to_array(self) -> np.ndarray:
        return np.concatenate([as_array(p) for p in self.parts])


def take(images, indices) -> "np.ndarray | Subset":
    """``images[indices]``: an array for an array, a lazy ``Subset`` for a source."""
    indices = np.asarray(indices, np.int64)
    if not is_lazy(images):
        return images[indices]
    if isinstance(images, Subset):  # keep one level: a subset of a subset reads its base directly
        return Subset(images.base, images.indices[indices])
    return Subset(images, indices)


def concat(parts: Sequence) -> "np.ndarray | Concat":
    """``np.concatenate(parts)``: an array when every part is one, else a lazy ``Concat``."""
    if not any(is_lazy(p) for p in parts):
        return np.concatenate(parts)
    return Concat(parts)


def iter_batches(
    images, indices: np.ndarray, batch_size: int, num_threads: int = 16
) -> Iterator[np.ndarray]:
    """``images[indices]`` in consecutive batches of ``batch_size`` (the last may be shorter).

    Arrays are sliced; sources are read by ``num_threads`` Grain reader threads (decoding in
    PIL releases the GIL, so threads scale with cores) in order, at most two batches ahead, so
    memory stays at a few batches whatever the split's size.
    """
    indices = np.asarray(indices, np.int64)
    if not is_lazy(images):
        for start in range(0, len(indices), batch_size):
            yield images[indices[start : start + batch_size]]
        return
    if len(indices) == 0:
        return
    import grain

    # Threads read single records in order, at most two batches ahead.
    options = grain.ReadOptions(
        num_threads=max(num_threads, 1), prefetch_buffer_size=max(2 * batch_size, 1)
    )
    dataset = grain.MapDataset.source(Subset(images, indices)).to_iter_dataset(options)
    yield from dataset.batch(batch_size, batch_fn=np.stack)


def read(images, indices, num_threads: int = 16) -> np.ndarray:
    """``images[indices]`` as one uint8 array, read in parallel for a source."""
    indices = np.asarray(indices, np.int64)
    out = np.empty((len(indices), *images.shape[1:]), np.uint8)
    start = 0
    for batch in iter_batches(images, indices, 256, num_threads):
        out[start : start + len(batch)] = batch
        start += len(batch)
    return out


def as_array(images, num_threads: int = 16) -> np.ndarray:
    """The whole split as a uint8 array: an array as it is; a source's own ``to_array`` when it
    has one (e.g. a decoded cache on disk), else every record read in parallel."""
    if not is_lazy(images):
        return images
    if hasattr(images, "to_array"):
        return images.to_array()
    return read(images, np.arange(len(images)), num_threads)


# ----------------------------------------------------------------------------- image files


def decode_image(data: bytes, size: int | None, name: str, channels: int = 3) -> np.ndarray:
    """Encoded bytes -> uint8 ``[size, size, channels]`` (RGB, or grayscale for ``channels=1``):
    the shorter side resized to ``size`` (antialiased bilinear), then the centre square;
    ``size=None`` keeps the decoded size.

    JPEGs are decoded at the smallest DCT scale that still covers ``size`` (PIL's ``draft``),
    which makes decoding a 500-px ImageNet photo for 224 px several times cheaper.
    Raises DataError naming ``name`` when the bytes are not an image PIL can decode.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    mode = {1: "L", 3: "RGB"}[channels]
    try:
        with Image.open(io.BytesIO(data)) as im:
            if size is not None:
                im.draft(mode, (size, size))
            im = im.convert(mode)
            if size is not None and im.size != (size, size):
                im = ImageOps.fit(im, (size, size), Image.Resampling.BILINEAR)
            return np.asarray(im, np.uint8).reshape(im.size[1], im.size[0], channels)
    except UnidentifiedImageError:
        # PIL names the in-memory buffer, not the file: say what it means instead.
        raise DataError(
            f"cannot decode image {name}: not an image file PIL can read (delete or replace it)"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot decode image {name}: {e}") from None


class ImageFiles:
    """Image files (local or ``gs://``, read through ``etils.epath``) decoded to ``[size, size, 3]``."""

    def __init__(self, paths: Sequence[str], size: int):
        self.paths = list(paths)
        self.size = int(size)

    @property
    def shape(self):
        return (len(self.paths), self.size, self.size, 3)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        path = self.paths[index]
        try:
            data = epath.Path(path).read_bytes()
        except OSError as e:
            raise DataError(f"cannot read image {path}: {e}") from None
        return decode_image(data, self.size, path)
