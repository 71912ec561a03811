"""Protocol splits, openness and the digits loader."""

import json
from importlib import resources

import numpy as np
import pytest

from gradmix_jax.data import load_openset, openness, protocol_classes, resolve_known_classes


def test_bundled_splits_are_complete():
    splits = json.loads(resources.files("gradmix_jax.data").joinpath("osr_splits.json").read_text())
    for name in ("mnist", "svhn", "cifar10", "tinyimagenet"):
        assert len(splits[name]["known"]) == 5
    assert len(splits["cifar_plus10_unknown_cifar100"][0]) == 10
    assert len(splits["cifar_plus50_unknown_cifar100"][0]) == 50


@pytest.mark.parametrize(
    "protocol,k,u",
    [
        ("digits", 6, 4),
        ("mnist", 6, 4),
        ("svhn", 6, 4),
        ("cifar10", 6, 4),
        ("cifar_plus10", 4, 10),
        ("cifar_plus50", 4, 50),
        ("tinyimagenet", 20, 180),
    ],
)
def test_protocol_sizes(protocol, k, u):
    for split in range(5):
        known, unknown = protocol_classes(protocol, split)
        assert len(known) == k and len(set(known)) == k
        assert len(unknown) == u and len(set(unknown)) == u
        if not protocol.startswith("cifar_plus"):
            assert not set(known) & set(unknown)


def test_first_splits_match_the_published_lists():
    assert protocol_classes("mnist", 0)[0] == [2, 4, 5, 9, 8, 3]
    assert protocol_classes("digits", 0) == ([2, 4, 5, 9, 8, 3], [0, 1, 6, 7])
    assert protocol_classes("cifar10", 0)[0] == [0, 6, 4, 9, 1, 7]
    assert protocol_classes("cifar_plus10", 0) == (
        [4, 7, 9, 1],
        [30, 25, 1, 9, 8, 0, 46, 52, 49, 71],
    )


def test_openness_matches_paper_table7():
    # Table 7 of the paper, in percent.
    assert openness(6, 4) * 100 == pytest.approx(22.54, abs=0.01)
    assert openness(4, 10) * 100 == pytest.approx(46.55, abs=0.01)
    assert openness(4, 50) * 100 == pytest.approx(72.784, abs=0.01)
    assert openness(20, 180) * 100 == pytest.approx(68.37, abs=0.01)


def test_digits_split():
    d = load_openset("digits", 0)
    assert d.train_images.shape[1:] == (8, 8, 1) and d.train_images.dtype == np.uint8
    assert len(d.train_images) + len(d.test_images) < 1797  # unknown train images dropped
    assert len(d.test_images) == 599  # one third of 1797, stratified
    assert set(np.unique(d.train_labels)) == set(range(6))
    # label j of the remapped set is source class known_classes[j]
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    raw = load_digits()
    _, x_test, _, y_test = train_test_split(
        raw.images, raw.target, test_size=1 / 3, stratify=raw.target, random_state=0
    )
    expected = np.array([d.known_classes.index(c) if c in d.known_classes else -1 for c in y_test])
    np.testing.assert_array_equal(d.test_labels, expected)
    assert (~d.test_is_known).sum() == np.isin(y_test, [0, 1, 6, 7]).sum()
    np.testing.assert_array_equal(
        d.test_images[..., 0], np.round(x_test * 255 / 16).astype(np.uint8)
    )


def test_known_classes_override():
    known, unknown = resolve_known_classes("digits", 0, (0, 1, 2))
    assert known == [0, 1, 2] and unknown == list(range(3, 10))
    for bad in [(1, 1, 2), (0, 10), (-1, 2), (3,)]:
        with pytest.raises(ValueError, match="data.known_classes"):
            resolve_known_classes("digits", 0, bad)


def test_batch_order_is_a_pure_function_of_seed_and_step():
    from gradmix_jax.training.trainer import batch_indices

    n, b = 100, 32  # 3 steps per epoch, 4 images dropped each epoch
    epoch0 = np.concatenate([batch_indices(7, s, n, b) for s in range(3)])
    assert len(np.unique(epoch0)) == 96 and epoch0.max() < n
    np.testing.assert_array_equal(batch_indices(7, 4, n, b), batch_indices(7, 4, n, b))
    assert not np.array_equal(
        batch_indices(7, 3, n, b), batch_indices(7, 0, n, b)
    )  # new epoch order
    assert not np.array_equal(batch_indices(8, 0, n, b), batch_indices(7, 0, n, b))


def test_on_device_batches_pick_the_host_order():
    import jax
    import jax.numpy as jnp

    from gradmix_jax.training.train_step import TrainState
    from gradmix_jax.training.trainer import batch_indices, epoch_index_matrix, on_device_batches

    n, b = 50, 8
    spe = n // b

    def fake_step(state, images, labels, idx):
        return state.replace(step=state.step + 1), {"idx": idx, "first": images[idx][:, 0]}

    step = jax.jit(on_device_batches(fake_step, spe))
    state = TrainState(
        step=jnp.asarray(0, jnp.int32),
        params={},
        batch_stats={},
        opt_state=(),
        key=jnp.zeros(2, jnp.uint32),
    )
    images = jnp.arange(n)[:, None]
    for s in range(2 * spe + 2):
        state, m = step(state, images, images, epoch_index_matrix(3, s // spe, n, b))
        np.testing.assert_array_equal(m["idx"], batch_indices(3, s, n, b))
        np.testing.assert_array_equal(m["first"], batch_indices(3, s, n, b))


def test_class_names_of_the_protocols():
    """Names in label order; Fashion-MNIST's are TFDS's own ClassLabel names (read offline from
    its builder), CIFAR-100's the 100 fine labels in their (alphabetical) id order."""
    import tensorflow_datasets as tfds

    from gradmix_jax.data import protocols

    builder = tfds.builder("fashion_mnist", data_dir="/nonexistent")
    assert list(protocols.FASHION_MNIST_NAMES) == builder.info.features["label"].names
    cifar100 = protocols.CIFAR100_NAMES
    assert len(set(cifar100)) == 100 and list(cifar100) == sorted(cifar100)
    known, unknown = protocols.protocol_classes("fashion_mnist", 0)
    names = protocols.class_names("fashion_mnist", known, unknown)
    assert names["known"] == ["Trouser", "Coat", "Sandal", "Sneaker", "Bag", "Ankle boot"]
    assert names["unknown"] == ["T-shirt/top", "Pullover", "Dress", "Shirt"]
    plus = protocols.class_names("cifar_plus10", [0, 9], [27, 99])
    assert plus == {"known": ["airplane", "truck"], "unknown": ["crocodile", "worm"]}
    # An image folder's own names win; a source without names has none.
    assert protocols.class_names("imagefolder", [1], [0], ("a", "b")) == {
        "known": ["b"],
        "unknown": ["a"],
    }
    assert protocols.class_names("tinyimagenet", [0], [1]) is None
