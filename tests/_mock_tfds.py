"""Writes real TFDS datasets (array_record files) to a folder without TensorFlow, for tests.

A ``GeneratorBasedBuilder`` made on the fly yields images already encoded by PIL (a file
object: TFDS stores its bytes as they are, so no TensorFlow encoder runs) and
``download_and_prepare(file_format="array_record")`` writes ``<data_dir>/<name>/<version>/``
exactly as ``tfds build`` does. The builder classes are made inside
``tfds.core.registered.skip_registration()``, so nothing is added to TFDS's registry: a name
TFDS does not know (``mock_cifar``) is read back from its files, and ``imagenet2012`` is read by
TFDS's own ImageNet builder, which is why ``write_mock_imagenet2012`` writes that builder's
version and features (its 1000 class names come from TFDS's code, not from the files).
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image


def _encode(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format=fmt)
    return buf.getvalue()


def _record_order(data_dir, name: str, split: str, encoded: list[bytes]) -> np.ndarray:
    """Generation index of each stored record, in record order (TFDS shuffles by key)."""
    source = tfds.data_source(
        name,
        split=split,
        data_dir=str(data_dir),
        download=False,
        decoders={"image": tfds.decode.SkipDecoding()},
    )
    where = {data: i for i, data in enumerate(encoded)}
    assert len(where) == len(encoded), "mock images must be distinct"
    return np.array([where[bytes(source[i]["image"])] for i in range(len(source))], np.int64)


def _write(data_dir, name, version, features, splits, extra=None, fmt="PNG"):
    """Prepares dataset ``name`` with ``splits``: {split: (list of uint8 images, labels)}.
    Returns {split: (images in record order, labels in record order)}."""
    encoded = {s: [_encode(im, fmt) for im in ims] for s, (ims, _) in splits.items()}

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {s: self._generate_examples(s) for s in splits}

    def _generate_examples(self, split):
        for i, (data, label) in enumerate(zip(encoded[split], splits[split][1])):
            example = {"image": io.BytesIO(data), "label": int(label)}
            if extra:
                example.update(extra(split, i))
            yield f"{split}-{i}", example

    class_name = "".join(part.capitalize() for part in name.split("_"))
    with tfds.core.registered.skip_registration():
        builder_cls = type(
            class_name,
            (tfds.core.GeneratorBasedBuilder,),
            {
                "VERSION": tfds.core.Version(version),
                "_info": _info,
                "_split_generators": _split_generators,
                "_generate_examples": _generate_examples,
                "__module__": __name__,
            },
        )
    assert builder_cls.name == name, (builder_cls.name, name)
    builder_cls(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    out = {}
    for s, (ims, labels) in splits.items():
        order = _record_order(data_dir, name, s, encoded[s])
        stored = [ims[i] for i in order]
        if len({im.shape for im in ims}) == 1:
            stored = np.stack(stored) if stored else np.zeros((0, *ims[0].shape), np.uint8)
        out[s] = stored, np.asarray(labels, np.int64)[order]
    return out


def _random_images(rng, n, shape):
    if None in shape:  # varying sizes: 6..13 rows and columns
        return [
            rng.integers(
                0, 256, (int(rng.integers(6, 14)), int(rng.integers(6, 14)), shape[2])
            ).astype(np.uint8)
            for _ in range(n)
        ]
    return list(rng.integers(0, 256, (n, *shape)).astype(np.uint8))


def write_mock_tfds(
    data_dir,
    name: str = "mock_cifar",
    num_train: int = 12,
    num_test: int = 6,
    shape=(8, 8, 3),
    num_classes: int = 3,
    label_names=None,
    seed: int = 0,
):
    """Writes TFDS dataset ``name`` (splits 'train', 'test') of random PNG images of ``shape``
    (``(None, None, C)``: varying sizes) and random labels into ``data_dir``.

    Returns {split: (images, labels)} in record order: images a uint8 array (a list of arrays
    for varying sizes), labels int64. PNG is lossless, so decoded pixels equal these.
    """
    rng = np.random.default_rng(seed)
    names = list(label_names) if label_names else [f"class_{i}" for i in range(num_classes)]
    splits = {
        s: (_random_images(rng, n, shape), rng.integers(0, len(names), n))
        for s, n in (("train", num_train), ("test", num_test))
    }
    features = {
        "image": tfds.features.Image(shape=tuple(shape)),
        "label": tfds.features.ClassLabel(names=names),
    }
    return _write(data_dir, name, "1.0.0", features, splits)


def imagenet2012_label_names() -> list[str]:
    """The 1000 wnids of TFDS's imagenet2012, in its label order (from TFDS's code)."""
    from tensorflow_datasets.datasets.imagenet2012 import imagenet_common

    with open(imagenet_common.label_names_file()) as f:
        return [line.strip() for line in f if line.strip()]


def write_mock_imagenet2012(data_dir, train_wnids, validation_wnids, seed: int = 0):
    """Writes a TFDS ``imagenet2012`` read by TFDS's own builder: its version and features
    (JPEG image, 1000-class label, file_name), one random JPEG of varying size per wnid listed
    (a wnid may repeat). Returns {split: (list of images, labels)} in record order; JPEG is
    lossy, so compare labels, not pixels."""
    names = imagenet2012_label_names()
    version = str(tfds.builder_cls("imagenet2012").VERSION)
    rng = np.random.default_rng(seed)
    splits = {
        s: (_random_images(rng, len(w), (None, None, 3)), [names.index(x) for x in w])
        for s, w in (("train", train_wnids), ("validation", validation_wnids))
    }
    features = {
        "image": tfds.features.Image(encoding_format="jpeg"),
        "label": tfds.features.ClassLabel(names=names),
        "file_name": tfds.features.Text(),
    }

    def file_name(split, i):
        return {"file_name": f"{names[splits[split][1][i]]}_{i}.JPEG"}

    return _write(data_dir, "imagenet2012", version, features, splits, file_name, fmt="JPEG")


def write_mock_cifar10(data_dir, num_train: int = 60, num_test: int = 30, seed: int = 0):
    """Writes a TFDS ``cifar10`` read by TFDS's own builder (its version and features: 32x32x3
    PNG image, 10-class label, id), random images and labels cycling through the 10 classes.
    Returns {split: (images, labels)} in record order; PNG is lossless."""
    version = str(tfds.builder_cls("cifar10").VERSION)
    rng = np.random.default_rng(seed)
    splits = {
        s: (_random_images(rng, n, (32, 32, 3)), np.arange(n) % 10)
        for s, n in (("train", num_train), ("test", num_test))
    }
    features = {
        "id": tfds.features.Text(),
        "image": tfds.features.Image(shape=(32, 32, 3)),
        "label": tfds.features.ClassLabel(num_classes=10),
    }
    return _write(data_dir, "cifar10", version, features, splits, lambda s, i: {"id": f"{s}_{i}"})
