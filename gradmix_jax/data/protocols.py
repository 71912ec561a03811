"""Open-set class splits of the standard protocols (ARPL / Vaze et al. lists, bundled JSON)."""

from __future__ import annotations

import functools
import json
import math
from importlib import resources
from typing import Sequence

PROTOCOLS: tuple[str, ...] = (
    "digits",
    "mnist",
    "fashion_mnist",
    "svhn",
    "cifar10",
    "cifar_plus10",
    "cifar_plus50",
    "tinyimagenet",
)
NUM_SPLITS = 5
# Closed-set classification (Table 3): all classes of these datasets (TinyImageNet: the first 100).
# ImageNet100 (Table 6) and image folders (every class folder) are closed-set datasets too.
CLOSED_SET_CLASSES = {
    "cifar10": 10,
    "cifar100": 100,
    "tinyimagenet": 100,  # Table 3's defaults
    "imagenet100": 100,
    "imagefolder": 0,
}
CLOSED_SET_SOURCE_CLASSES = {
    "cifar10": 10,
    "cifar100": 100,
    "tinyimagenet": 200,
    "imagenet100": 100,
    "imagefolder": 0,
}


# Fashion-MNIST is not among the published OSR benchmarks; this project's 6 known / 4 unknown
# splits (class ids of the dataset: 0 T-shirt/top, 1 trouser, 2 pullover, 3 dress, 4 coat,
# 5 sandal, 6 shirt, 7 sneaker, 8 bag, 9 ankle boot), unknown = the complement.
FASHION_MNIST_SPLITS = {
    "known": [
        [1, 4, 5, 7, 8, 9],
        [3, 4, 6, 7, 8, 9],
        [0, 1, 2, 3, 6, 8],
        [0, 1, 2, 5, 7, 9],
        [2, 3, 4, 5, 6, 8],
    ],
    "num_classes": 10,
}


# Class names of the source datasets, indexed by their class ids (the TFDS ``label`` order; for
# MNIST and Fashion-MNIST the IDX files' order). TinyImageNet and ImageNet100 name their classes by
# WordNet ids, which only their files hold, so they have none here.
_DIGIT_NAMES = tuple(str(i) for i in range(10))
FASHION_MNIST_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
CIFAR10_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR100_NAMES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip
#: protocol -> (names of its known classes' ids, names of its unknown classes' ids).
SOURCE_CLASS_NAMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "digits": (_DIGIT_NAMES, _DIGIT_NAMES),
    "mnist": (_DIGIT_NAMES, _DIGIT_NAMES),
    "svhn": (_DIGIT_NAMES, _DIGIT_NAMES),
    "fashion_mnist": (FASHION_MNIST_NAMES, FASHION_MNIST_NAMES),
    "cifar10": (CIFAR10_NAMES, CIFAR10_NAMES),
    # CIFAR+N: known CIFAR-10 classes, unknown CIFAR-100 classes (ids of each dataset).
    "cifar_plus10": (CIFAR10_NAMES, CIFAR100_NAMES),
    "cifar_plus50": (CIFAR10_NAMES, CIFAR100_NAMES),
}


def class_names(
    protocol: str, known_classes: Sequence[int], unknown_classes: Sequence[int], names=()
) -> dict[str, list[str]] | None:
    """``{'known': [...], 'unknown': [...]}``: the names of a split's classes, in label order.

    ``names``: the data's own names indexed by class id (``OpenSetData.class_names``, image
    folders); otherwise the protocol's (``SOURCE_CLASS_NAMES``). None where neither has names.
    """
    if names:
        known_names = unknown_names = tuple(names)
    elif protocol in SOURCE_CLASS_NAMES:
        known_names, unknown_names = SOURCE_CLASS_NAMES[protocol]
    else:
        return None
    return {
        "known": [known_names[c] for c in known_classes],
        "unknown": [unknown_names[c] for c in unknown_classes],
    }


@functools.cache
def _splits() -> dict:
    published = json.loads(resources.files(__package__).joinpath("osr_splits.json").read_text())
    return {**published, "fashion_mnist": FASHION_MNIST_SPLITS}


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"data.protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")


def check_split(split: int) -> None:
    if not (isinstance(split, int) and 0 <= split < NUM_SPLITS):
        raise ValueError(f"data.split must be an integer in 0..{NUM_SPLITS - 1}, got {split!r}")


def protocol_classes(protocol: str, split: int) -> tuple[list[int], list[int]]:
    """Known and unknown class indices of ``protocol``'s ``split`` in the source datasets.

    digits/mnist/fashion_mnist/svhn/cifar10/tinyimagenet: unknown = complement of the known list.
    cifar_plus10/50: known are CIFAR10 indices, unknown are CIFAR-100 indices.
    """
    check_protocol(protocol)
    check_split(split)
    s = _splits()
    if protocol in ("cifar_plus10", "cifar_plus50"):
        known = list(s["cifar_plus_known"][split])
        unknown = list(s[f"{protocol}_unknown_cifar100"][split])
        return known, unknown
    table = s["mnist" if protocol == "digits" else protocol]
    known = list(table["known"][split])
    unknown = [c for c in range(table["num_classes"]) if c not in known]
    return known, unknown


def num_source_classes(protocol: str) -> int:
    """Number of classes of the protocol's (known-class) source dataset."""
    check_protocol(protocol)
    s = _splits()
    if protocol in ("cifar_plus10", "cifar_plus50"):
        return s["cifar10"]["num_classes"]
    return s["mnist" if protocol == "digits" else protocol]["num_classes"]


def resolve_known_classes(
    protocol: str, split: int, known_classes: Sequence[int] = ()
) -> tuple[list[int], list[int]]:
    """Protocol split, or the user's ``data.known_classes`` override (unknown = the rest)."""
    if not known_classes:
        return protocol_classes(protocol, split)
    check_protocol(protocol)
    if protocol in ("cifar_plus10", "cifar_plus50"):
        raise ValueError(
            "data.known_classes cannot override the cifar_plus protocols "
            "(their unknown classes come from CIFAR-100); leave it empty"
        )
    n = num_source_classes(protocol)
    known = [int(c) for c in known_classes]
    if len(set(known)) != len(known) or any(not 0 <= c < n for c in known) or len(known) < 2:
        raise ValueError(
            f"data.known_classes must be at least 2 distinct integers in 0..{n - 1}, "
            f"got {list(known_classes)}"
        )
    if len(known) == n:
        raise ValueError(f"data.known_classes must leave at least one of the {n} classes unknown")
    return known, [c for c in range(n) if c not in known]


def openness(num_known: int, num_unknown: int) -> float:
    """Openness as a fraction: 1 - sqrt(k / (k + u)).

    This is the form that reproduces every number of the paper's Table 7 (22.54%, 46.55%, 72.78%,
    68.37%); the equation printed in Appendix D.1 is garbled in extraction.
    """
    return 1.0 - math.sqrt(num_known / (num_known + num_unknown))
