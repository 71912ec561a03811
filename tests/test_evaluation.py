"""Tables 4-6 evaluations: golden values from independent formulas (NumPy loops, sklearn, scipy,
Pillow, colorsys), corruption loaders on mock / temp-folder data, and the three runners."""

import colorsys
import io
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from gradmix_jax import evaluation as ev
from gradmix_jax import metrics
from gradmix_jax.data import DatasetNotPreparedError, corruptions, sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _knn_loop(train, train_labels, test, num_classes, k):
    """Algorithm 1 one sample and one class at a time (float64): (scores, predictions)."""
    train = np.asarray(train, np.float64)
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    scores, preds = [], []
    for t in np.asarray(test, np.float64):
        t = t / np.linalg.norm(t)
        d = [np.sort(train[train_labels == c] @ t)[::-1][:k].sum() for c in range(num_classes)]
        preds.append(int(np.argmax(d)))
        scores.append(max(d) / sum(d))
    return np.array(scores), np.array(preds)


def _blobs(seed, n_train=60, n_in=30, n_out=25, dim=8, num_classes=3):
    rng = np.random.default_rng(seed)
    centres = np.abs(rng.normal(size=(num_classes, dim))) * 3
    y = np.arange(n_train) % num_classes
    train = np.abs(centres[y] + rng.normal(size=(n_train, dim)))
    inside = np.abs(centres[np.arange(n_in) % num_classes] + rng.normal(size=(n_in, dim)))
    out = np.abs(rng.normal(size=(n_out, dim)) * 2)
    return train.astype(np.float32), y, inside.astype(np.float32), out.astype(np.float32)


# ----------------------------------------------------------------------------- Table 4


def test_ood_evaluation_matches_loop_scores_and_sklearn_auroc():
    from sklearn.metrics import roc_auc_score

    train, y, inside, out = _blobs(0)
    far = np.abs(np.random.default_rng(1).normal(size=(20, 8))).astype(np.float32) + 5.0
    res = ev.ood_evaluation(jnp.asarray(train), y, inside, {"near": out, "far": far}, 3, k=3)
    s_in, _ = _knn_loop(train, y, inside, 3, 3)
    assert set(res) == {"near", "far"}
    for name, x in (("near", out), ("far", far)):
        s_out, _ = _knn_loop(train, y, x, 3, 3)
        want = metrics.ood_metrics(s_in, s_out)
        for key in ev.OOD_METRICS:
            assert res[name][key] == pytest.approx(want[key], abs=1e-5)
        labels = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
        assert res[name]["auroc"] == pytest.approx(
            roc_auc_score(labels, np.r_[s_in, s_out]), abs=1e-5
        )


def test_ood_evaluation_perfect_separation_by_hand():
    # Train: class 0 = e1, class 1 = e2 (3 each). In-samples on the axes: d = (3, 0) -> score 1.
    # Out-samples on the diagonal: d = (3/sqrt2, 3/sqrt2) -> score 1/2. Every threshold in between
    # separates them, so TNR@95TPR = AUROC = DTACC = 1.
    e1, e2 = np.eye(2, dtype=np.float32)
    train = np.stack([e1, e1, e1, e2, e2, e2])
    y = np.array([0, 0, 0, 1, 1, 1])
    inside = np.stack([e1, e2] * 10)
    out = np.tile((e1 + e2) / np.sqrt(2), (15, 1))
    res = ev.ood_evaluation(train, y, inside, {"diag": out}, num_classes=2, k=3)["diag"]
    assert res["tnr"] == 1.0 and res["auroc"] == pytest.approx(1.0) and res["dtacc"] == 1.0


def test_ood_evaluation_bad_inputs():
    train, y, inside, out = _blobs(0)
    with pytest.raises(ValueError, match="out_features_by_name"):
        ev.ood_evaluation(train, y, inside, {}, 3)
    with pytest.raises(ValueError, match="out_features_by_name\\['x'\\].*dimension"):
        ev.ood_evaluation(train, y, inside, {"x": out[:, :4]}, 3)
    with pytest.raises(ValueError, match="train_labels"):
        ev.ood_evaluation(train, y + 1, inside, {"x": out}, 3)


# ----------------------------------------------------------------------------- Table 5


def test_knn_accuracy_matches_loop():
    train, y, inside, _ = _blobs(2)
    test_y = np.arange(len(inside)) % 3
    test_y[:4] = (test_y[:4] + 1) % 3  # some certainly-wrong labels
    _, preds = _knn_loop(train, y, inside, 3, 3)
    assert ev.knn_accuracy(train, y, inside, test_y, 3, k=3) == pytest.approx(
        np.mean(preds == test_y)
    )
    with pytest.raises(ValueError, match="test_labels"):
        ev.knn_accuracy(train, y, inside, test_y[:-1], 3)


def test_corruption_accuracy_drops_by_hand():
    acc = {("a", 1): 0.8, ("a", 2): 0.6, ("b", 1): 0.7, ("b", 2): 0.5}
    out = ev.corruption_accuracy_drops(0.9, acc)
    want = {("a", 1): 0.1, ("a", 2): 0.3, ("b", 1): 0.2, ("b", 2): 0.4}
    assert out["drops"].keys() == want.keys()
    for cell, v in want.items():
        assert out["drops"][cell] == pytest.approx(v)
    assert out["per_corruption"] == pytest.approx({"a": 0.2, "b": 0.3})
    assert out["per_severity"] == pytest.approx({1: 0.15, 2: 0.35})
    assert out["mean"] == pytest.approx(0.25)


def test_corruption_accuracy_drops_paper_table5_avg_is_mean_of_severities():
    # Table 5's Avg. is the mean of its D̄_s column: rebuild a grid whose D̄_s are the paper's.
    per_sev = [0.0701, 0.1118, 0.1593, 0.2301, 0.3329]
    acc = {
        (c, s + 1): 0.95 - d + dc
        for s, d in enumerate(per_sev)
        for c, dc in (("x", 0.01), ("y", -0.01))
    }
    out = ev.corruption_accuracy_drops(0.95, acc)
    assert [out["per_severity"][s] for s in range(1, 6)] == pytest.approx(per_sev)
    assert 100 * out["mean"] == pytest.approx(18.08, abs=0.01)


def test_corruption_accuracy_drops_bad_inputs():
    with pytest.raises(ValueError, match="missing \\[\\('b', 2\\)\\]"):
        ev.corruption_accuracy_drops(0.9, {("a", 1): 0.8, ("a", 2): 0.6, ("b", 1): 0.7})
    with pytest.raises(ValueError, match="clean_accuracy"):
        ev.corruption_accuracy_drops(90.0, {("a", 1): 0.8})
    with pytest.raises(ValueError, match="keys"):
        ev.corruption_accuracy_drops(0.9, {"a": 0.8})


# ----------------------------------------------------------------------------- Table 6


def test_topk_accuracy_by_hand():
    logits = np.array(
        [
            [0.1, 0.9, 0.5, 0.3],  # ranking 1, 2, 3, 0
            [0.8, 0.1, 0.2, 0.7],  # ranking 0, 3, 2, 1
            [0.2, 0.3, 0.4, 0.1],
        ]
    )  # ranking 2, 1, 0, 3
    labels = np.array([2, 1, 3])  # ranks 2, 4, 4
    assert ev.topk_accuracy(logits, labels, 1) == 0.0
    assert ev.topk_accuracy(logits, labels, 2) == pytest.approx(1 / 3)
    assert ev.topk_accuracy(jnp.asarray(logits), labels, 3) == pytest.approx(1 / 3)
    assert ev.topk_accuracy(logits, labels, 4) == 1.0
    with pytest.raises(ValueError, match="k must be"):
        ev.topk_accuracy(logits, labels, 5)


def test_linear_probe_separable_is_perfect_and_deterministic():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16)) * 4
    y = np.arange(200) % 5
    x = centres[y] + rng.normal(size=(200, 16)) * 0.3
    yt = np.arange(50) % 5
    xt = centres[yt] + rng.normal(size=(50, 16)) * 0.3
    kw = dict(key=jax.random.key(3), epochs=10, batch_size=32, learning_rate=0.1)
    out = ev.linear_probe(jnp.asarray(x), y, xt, yt, 5, **kw)
    assert out == {"top1": 1.0, "top5": 1.0, "train_top1": 1.0}
    assert ev.linear_probe(x, y, xt, yt, 5, **kw, normalize="l2")["top1"] == 1.0


def test_linear_probe_top5_by_hand():
    """Orthogonal classes, full batches: by symmetry the learnt map is W = a*I + b*11^T, bias equal,
    a > 0, so a test vector's logits rank its components. The label's rank is set by hand."""
    num_classes = 8
    train = np.repeat(np.eye(num_classes, dtype=np.float32), 4, axis=0)
    train_y = np.repeat(np.arange(num_classes), 4)
    weights = np.array([0.30, 0.25, 0.20, 0.15, 0.10, 0.0, 0.0, 0.0])
    label_ranks = [1, 1, 2, 3, 5, 6, 2, 7, 4, 1]  # 1-based rank of the label among the logits
    rng = np.random.default_rng(0)
    test, test_y = [], []
    for rank in label_ranks:
        order = rng.permutation(num_classes)  # order[i] gets the i-th largest weight
        x = np.zeros(num_classes, np.float32)
        x[order] = weights
        x[order[5:]] = [0.04, 0.02, 0.0]  # distinct tail so ranks 6..8 are defined
        test.append(x)
        test_y.append(order[rank - 1])
    out = ev.linear_probe(
        train,
        train_y,
        np.stack(test),
        np.array(test_y),
        num_classes,
        key=jax.random.key(0),
        epochs=30,
        batch_size=32,
        learning_rate=0.5,
        normalize="none",
    )
    assert out["top1"] == pytest.approx(3 / 10)  # ranks 1, 1, 1
    assert out["top5"] == pytest.approx(8 / 10)  # all but ranks 6 and 7
    assert out["train_top1"] == 1.0


def test_linear_probe_close_to_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 10)) * 1.2
    y = rng.integers(0, 4, 400)
    x = centres[y] + rng.normal(size=(400, 10))
    yt = rng.integers(0, 4, 600)
    xt = centres[yt] + rng.normal(size=(600, 10))
    wd = 1e-3
    ours = ev.linear_probe(
        x,
        y,
        xt,
        yt,
        4,
        key=jax.random.key(1),
        epochs=60,
        batch_size=32,
        learning_rate=0.1,
        weight_decay=wd,
    )
    mean, std = x.mean(0), x.std(0)
    # sklearn minimises sum(loss) + ||w||^2 / (2C); ours mean(loss) + wd/2 ||w||^2 -> C = 1/(wd*n).
    clf = LogisticRegression(C=1.0 / (wd * len(x)), max_iter=5000).fit((x - mean) / std, y)
    assert 0.6 < ours["top1"] < 1.0  # an overlapping problem, not a trivial one
    assert ours["top1"] == pytest.approx(clf.score((xt - mean) / std, yt), abs=0.02)
    assert ours["train_top1"] == pytest.approx(clf.score((x - mean) / std, y), abs=0.02)


def test_linear_probe_bad_inputs():
    x, y = np.ones((8, 3), np.float32), np.arange(8) % 2
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="normalize must be one of"):
        ev.linear_probe(x, y, x, y, 2, key=key, normalize="zscore")
    with pytest.raises(ValueError, match="epochs"):
        ev.linear_probe(x, y, x, y, 2, key=key, epochs=0)
    with pytest.raises(ValueError, match="test_features must have the feature dimension"):
        ev.linear_probe(x, y, x[:, :2], y, 2, key=key)


# ----------------------------------------------------------------------------- corruption data


def test_corruption_names_match_tfds_configs():
    from tensorflow_datasets.image_classification import cifar10_corrupted

    configs = {c.name for c in cifar10_corrupted.Cifar10Corrupted.BUILDER_CONFIGS}
    assert len(set(corruptions.CORRUPTIONS)) == 15
    for c in corruptions.CORRUPTIONS:
        for s in corruptions.SEVERITIES:
            assert corruptions.cifar10_corrupted_name(c, s).split("/")[1] in configs
    assert (
        corruptions.cifar10_corrupted_name("glass_blur", 2)
        == "cifar10_corrupted/frosted_glass_blur_2"
    )
    assert (
        corruptions.cifar10_corrupted_name("elastic_transform", 5) == "cifar10_corrupted/elastic_5"
    )
    with pytest.raises(ValueError, match="severity must be one of"):
        corruptions.cifar10_corrupted_name("fog", 6)


def test_load_cifar10_corrupted_mock_and_offline_error(tmp_path):
    sources.load_tfds_split.cache_clear()
    with tfds.testing.mock_data(num_examples=20):
        x, y = corruptions.load_cifar10_corrupted("glass_blur", 3, str(tmp_path))
    assert x.shape == (20, 32, 32, 3) and x.dtype == np.uint8
    assert y.shape == (20,) and 0 <= y.min() and y.max() < 10
    assert (
        tmp_path / "gradmix_jax_cache" / "cifar10_corrupted" / "frosted_glass_blur_3-test.npz"
    ).exists()
    sources.load_tfds_split.cache_clear()
    t0 = time.perf_counter()
    with pytest.raises(DatasetNotPreparedError) as err:
        corruptions.load_cifar10_corrupted("fog", 1, str(tmp_path / "empty"))
    assert time.perf_counter() - t0 < 20
    assert "cifar10_corrupted/fog_1" in str(err.value) and "tfds build cifar10_corrupted" in str(
        err.value
    )
    sources.load_tfds_split.cache_clear()


def _png_bytes(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")  # lossless; PIL reads by content, not suffix
    return buf.getvalue()


def test_tinyimagenet_c_reader(tmp_path):
    wnids = ["n03", "n01", "n04", "n02"]  # clean wnids.txt, unsorted on purpose
    clean = tmp_path / "data" / "tiny-imagenet-200"
    clean.mkdir(parents=True)
    (clean / "wnids.txt").write_text("\n".join(wnids))
    root = tmp_path / "Tiny-ImageNet-C"
    rng = np.random.default_rng(0)
    written = {}
    for w in ("n04", "n02"):  # a -C folder need not hold every class
        folder = root / "contrast" / "2" / w
        folder.mkdir(parents=True)
        for i in range(2):
            img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            (folder / f"{w}_{i}.JPEG").write_bytes(_png_bytes(img))
            written[(w, i)] = img
    x, y = corruptions.load_tinyimagenet_corrupted(
        str(root), "contrast", 2, data_dir=str(tmp_path / "data")
    )
    assert x.shape == (4, 64, 64, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(y, [1, 1, 3, 3])  # sorted(n01..n04): n02 -> 1, n04 -> 3
    np.testing.assert_array_equal(x[0], written[("n02", 0)])
    np.testing.assert_array_equal(x[3], written[("n04", 1)])
    assert (root / "gradmix_jax_cache" / "contrast-2.npz").exists()
    x2, y2 = corruptions.load_tinyimagenet_corrupted(str(root), "contrast", 2, wnids=wnids)  # cache
    np.testing.assert_array_equal(x2, x)
    (root / "fog" / "1" / "n99").mkdir(parents=True)
    (root / "fog" / "1" / "n99" / "a.JPEG").write_bytes(_png_bytes(written[("n02", 0)]))
    with pytest.raises(ValueError, match="n99"):
        corruptions.load_tinyimagenet_corrupted(str(root), "fog", 1, wnids=wnids)
    with pytest.raises(DatasetNotPreparedError, match="snow"):
        corruptions.load_tinyimagenet_corrupted(str(root), "snow", 1, wnids=wnids)


# ----------------------------------------------------------------------------- synthetic corruptions

KEY = jax.random.key(0)


def test_contrast_by_hand():
    # One channel, pixels 0 and 255: mean 0.5; severity 1 (c = 0.75): 0.5 -/+ 0.375 -> 0.125, 0.875
    # -> 31.875, 223.125 -> uint8 truncation 31, 223.
    x = np.array([0, 255], np.uint8).reshape(1, 1, 2, 1)
    np.testing.assert_array_equal(
        corruptions.synthetic_corruption(KEY, x, "contrast", 1).ravel(), [31, 223]
    )
    # severity 5 (c = 0.15): 0.5 -/+ 0.075 -> 108.375, 146.625 -> 108, 146
    np.testing.assert_array_equal(
        corruptions.synthetic_corruption(KEY, x, "contrast", 5).ravel(), [108, 146]
    )


def test_brightness_matches_colorsys():
    x = np.random.default_rng(0).integers(0, 256, (2, 6, 5, 3), dtype=np.uint8)
    for severity, c in ((1, 0.05), (5, 0.3)):
        out = corruptions.synthetic_corruption(KEY, x, "brightness", severity)
        ref = np.empty(x.shape)
        for idx in np.ndindex(x.shape[:3]):
            h, s, v = colorsys.rgb_to_hsv(*(x[idx] / 255.0))
            ref[idx] = colorsys.hsv_to_rgb(h, s, min(v + c, 1.0))
        ref = (np.clip(ref, 0, 1) * 255).astype(np.uint8)
        assert np.abs(out.astype(int) - ref).max() <= 1  # float32 vs float64 at truncation edges
        assert (out == ref).mean() > 0.9
    grey = x[..., :1]
    np.testing.assert_array_equal(
        corruptions.synthetic_corruption(KEY, grey, "brightness", 5),
        (np.minimum(grey / 255.0 + 0.3, 1.0) * 255).astype(np.uint8),
    )


@pytest.mark.parametrize("shape", [(32, 32, 3), (8, 8, 1), (13, 9, 3)])
def test_pixelate_equals_pillow_box(shape):
    x = np.random.default_rng(1).integers(0, 256, (3, *shape), dtype=np.uint8)
    for severity, c in enumerate((0.95, 0.9, 0.85, 0.75, 0.65), start=1):
        out = corruptions.synthetic_corruption(KEY, x, "pixelate", severity)
        h, w = shape[:2]
        for im, o in zip(x, out):
            pil = Image.fromarray(im[..., 0] if shape[2] == 1 else im)
            ref = np.asarray(
                pil.resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.BOX)
            )
            np.testing.assert_array_equal(o, ref.reshape(o.shape))


def test_defocus_kernel_by_hand():
    # Severity 1: radius 0.3 keeps only the centre; alias blur sigma 0.4 -> outer(g, g),
    # g = (e^{-1/(2*0.16)}, 1, e^{-1/(2*0.16)}) / sum.
    g = np.array([np.exp(-3.125), 1.0, np.exp(-3.125)])
    g /= g.sum()
    np.testing.assert_allclose(corruptions.defocus_kernel(1), np.outer(g, g), atol=1e-12)
    # Severity 5: radius 1.5 keeps the full 3x3 block (1 + 1 <= 2.25), sigma 0.1 hardly blurs.
    k5 = corruptions.defocus_kernel(5)
    assert k5.shape == (5, 5) and k5.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(k5[1:4, 1:4], np.full((3, 3), 1 / 9), atol=1e-6)


@pytest.mark.parametrize("name", ["defocus_blur", "gaussian_blur"])
def test_blurs_match_scipy(name):
    from scipy import ndimage

    x = np.random.default_rng(2).integers(0, 256, (2, 12, 10, 3), dtype=np.uint8)
    for severity in (1, 4, 5):
        out = corruptions.synthetic_corruption(KEY, x, name, severity)
        f = x / 255.0
        if name == "defocus_blur":  # cv2.filter2D = correlation with BORDER_REFLECT_101 ('mirror')
            k = corruptions.defocus_kernel(severity)
            ref = np.stack(
                [[ndimage.correlate(im[..., ch], k, mode="mirror") for ch in range(3)] for im in f]
            ).transpose(0, 2, 3, 1)
        else:  # skimage.filters.gaussian(multichannel=True) = scipy gaussian_filter, mode 'nearest'
            sigma = (0.4, 0.6, 0.7, 0.8, 1.0)[severity - 1]
            ref = np.stack(
                [
                    ndimage.gaussian_filter(im, (sigma, sigma, 0), mode="nearest", truncate=4.0)
                    for im in f
                ]
            )
        ref = (np.clip(ref, 0, 1) * 255).astype(np.uint8)
        assert np.abs(out.astype(int) - ref).max() <= 1
        assert (out == ref).mean() > 0.95


def test_noise_corruptions_statistics():
    x = np.full((4, 64, 64, 3), 128, np.uint8)
    v = 128 / 255.0
    for severity, c in ((1, 0.04), (5, 0.10)):
        out = corruptions.synthetic_corruption(KEY, x, "gaussian_noise", severity) / 255.0
        assert out.std() == pytest.approx(c, rel=0.05)
        assert out.mean() == pytest.approx(
            v - 0.5 / 255, abs=0.003
        )  # truncation lowers by 1/2 level
    for severity, c in ((1, 500), (5, 50)):  # Poisson(v c) / c: std sqrt(v / c)
        out = corruptions.synthetic_corruption(KEY, x, "shot_noise", severity) / 255.0
        assert out.std() == pytest.approx(np.sqrt(v / c), rel=0.05)
    out = corruptions.synthetic_corruption(KEY, x, "impulse_noise", 5)  # amount 0.07, half salt
    assert (out == 0).mean() == pytest.approx(0.035, abs=0.004)
    assert (out == 255).mean() == pytest.approx(0.035, abs=0.004)
    assert ((out == 0) | (out == 255) | (out == 128)).all()
    a = corruptions.synthetic_corruption(KEY, x, "gaussian_noise", 3)
    np.testing.assert_array_equal(a, corruptions.synthetic_corruption(KEY, x, "gaussian_noise", 3))
    assert (a != corruptions.synthetic_corruption(jax.random.key(1), x, "gaussian_noise", 3)).any()


def test_jpeg_is_pillow_and_inputs_are_checked():
    x = np.random.default_rng(3).integers(0, 256, (2, 16, 16, 1), dtype=np.uint8)
    out = corruptions.synthetic_corruption(KEY, x, "jpeg_compression", 5)
    buf = io.BytesIO()
    Image.fromarray(x[1, ..., 0]).save(buf, "JPEG", quality=40)
    np.testing.assert_array_equal(out[1, ..., 0], np.asarray(Image.open(buf)))
    with pytest.raises(ValueError, match="name must be one of|corruption must be one of"):
        corruptions.synthetic_corruption(KEY, x, "fog", 1)
    with pytest.raises(ValueError, match="severity must be one of"):
        corruptions.synthetic_corruption(KEY, x, "contrast", 0)
    with pytest.raises(ValueError, match="uint8"):
        corruptions.synthetic_corruption(KEY, x.astype(np.float32), "contrast", 1)


# ----------------------------------------------------------------------------- runners (fakes)


class _PixelModel:
    """Stand-in for a TrainedModel: features = flattened pixels (a fixed, model-free encoder)."""

    def __init__(self):
        self.calls = 0

    def features(self, images, which="encoder"):
        self.calls += 1
        return np.asarray(images, np.float32).reshape(len(images), -1) / 255.0 + 1e-3


class _Fakes:
    def __init__(self):
        self.trained, self.loaded = [], []

    def train(self, config, workdir):
        os.makedirs(workdir, exist_ok=True)
        summary = {"fake": True, "mixing": config.mixing.method}
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(summary, f)
        self.trained.append(workdir)
        return summary

    def load(self, workdir):
        self.loaded.append(workdir)
        return _PixelModel()


def _digits():
    from gradmix_jax.data import load_openset

    return load_openset("digits", 0)


def test_table4_runner_with_pixel_features(tmp_path):
    from experiments import table4_ood

    fakes = _Fakes()
    assert (
        table4_ood.main(
            ["--out", str(tmp_path), "--smoke"], train_fn=fakes.train, load_fn=fakes.load
        )
        == 0
    )
    d = _digits()
    known = d.test_is_known
    pix = _PixelModel().features
    noise = np.random.default_rng(0).integers(0, 256, (int(known.sum()), 8, 8, 1), dtype=np.uint8)
    want = ev.ood_evaluation(
        pix(d.train_images),
        d.train_labels,
        pix(d.test_images[known]),
        {"digits-unknown-classes": pix(d.test_images[~known]), "uniform-noise": pix(noise)},
        6,
        k=3,
    )
    stored = json.loads((tmp_path / "digits" / "ood.json").read_text())
    for name in want:
        assert stored["out_of_distribution"][name]["auroc"] == pytest.approx(want[name]["auroc"])
    table = (tmp_path / "table4.md").read_text()
    assert f"| uniform-noise | ours | {100 * want['uniform-noise']['tnr']:.2f} |" in table
    assert "| svhn | paper (GradMix, CIFAR10 in) | 80.50 | 96.70 | 96.82 | 96.90 | 95.30 |" in table
    assert "smoke stand-ins" in table and (tmp_path / "table4.csv").exists()
    # Rerun: neither trained nor loaded again (results.json and ood.json are reused).
    table4_ood.main(["--out", str(tmp_path), "--smoke"], train_fn=fakes.train, load_fn=fakes.load)
    assert len(fakes.trained) == 1 and len(fakes.loaded) == 1


def test_table5_runner_with_pixel_features(tmp_path):
    from experiments import table5_corruptions

    fakes = _Fakes()
    args = [
        "--out",
        str(tmp_path),
        "--smoke",
        "--corruptions",
        "contrast,pixelate",
        "--severities",
        "1-5",
    ]
    assert table5_corruptions.main(args, train_fn=fakes.train, load_fn=fakes.load) == 0
    assert sorted(os.path.basename(w) for w in fakes.trained) == ["gradmix", "none"]
    stored = json.loads((tmp_path / "digits" / "none" / "corruptions.json").read_text())
    assert stored["settings"]["source"] == "synthetic" and len(stored["accuracy"]) == 10
    # Independent recomputation of one cell: pixel features, contrast severity 5, k-NN accuracy.
    d = _digits()
    known = d.test_is_known
    pix = _PixelModel().features
    images = corruptions.synthetic_corruption(KEY, d.test_images[known], "contrast", 5)
    acc = ev.knn_accuracy(pix(d.train_images), d.train_labels, pix(images), d.test_labels[known], 6)
    assert stored["accuracy"]["contrast/5"] == pytest.approx(acc)
    drops = json.loads((tmp_path / "digits" / "none" / "corruption_drops.json").read_text())
    assert drops["synthetic"] is True
    assert drops["drops"]["contrast/5"] == pytest.approx(stored["clean_accuracy"] - acc)
    assert drops["per_severity"]["5"] == pytest.approx(
        stored["clean_accuracy"]
        - (stored["accuracy"]["contrast/5"] + stored["accuracy"]["pixelate/5"]) / 2
    )
    table = (tmp_path / "table5.md").read_text()
    assert "SYNTHETIC" in table and "| Avg. |" in table
    assert "SYNTHETIC" in (tmp_path / "table5_per_corruption.md").read_text()
    assert (tmp_path / "fig5.png").stat().st_size > 1000
    # Adding a corruption evaluates only the new cells; the model is loaded again, not retrained.
    table5_corruptions.main(
        args[:4] + ["contrast,pixelate,gaussian_noise"], train_fn=fakes.train, load_fn=fakes.load
    )
    assert len(fakes.trained) == 2
    stored = json.loads((tmp_path / "digits" / "none" / "corruptions.json").read_text())
    assert len(stored["accuracy"]) == 15 and stored["accuracy"]["contrast/5"] == pytest.approx(acc)
    with pytest.raises(SystemExit, match="synthetic corruptions"):
        table5_corruptions.main(args[:4] + ["fog"], train_fn=fakes.train, load_fn=fakes.load)


def test_table6_runner_with_pixel_features(tmp_path):
    from experiments import table6_ssl_linear_probe as t6

    fakes = _Fakes()
    args = [
        "--out",
        str(tmp_path),
        "--smoke",
        "--objectives",
        "simclr",
        "--mixings",
        "none,cutmix",
        "--probe-epochs",
        "5",
    ]
    assert t6.main(args, train_fn=fakes.train, load_fn=fakes.load) == 0
    assert len(fakes.trained) == 2
    d = _digits()
    known = d.test_is_known
    pix = _PixelModel().features
    want = ev.linear_probe(
        pix(d.train_images),
        d.train_labels,
        pix(d.test_images[known]),
        d.test_labels[known],
        6,
        key=jax.random.key(0),
        epochs=5,
        batch_size=256,
        learning_rate=0.1,
    )
    cell = tmp_path / "digits" / "simclr" / "resnet18" / "cutmix"
    got = json.loads((cell / "linear_probe.json").read_text())
    assert got["top1"] == pytest.approx(want["top1"]) and got["top5"] == pytest.approx(want["top5"])
    table = (tmp_path / "table6.md").read_text()
    assert f"| simclr | resnet18 | + CutMix | {100 * want['top1']:.2f} |" in table
    assert "| 50.61 | 78.67 |" in table and (tmp_path / "fig6.png").exists()
    t6.main(args, train_fn=fakes.train, load_fn=fakes.load)  # cached: nothing loaded again
    assert len(fakes.loaded) == 2
    t6.main(args[:-1] + ["6"], train_fn=fakes.train, load_fn=fakes.load)  # new probe settings
    assert len(fakes.loaded) == 4 and len(fakes.trained) == 2
    with pytest.raises(SystemExit, match="--archs"):
        t6.main(args + ["--archs", "vit"], train_fn=fakes.train, load_fn=fakes.load)


# ----------------------------------------------------------------------------- runners (real smoke)


def _run(module, out, *extra):
    cmd = [sys.executable, "-m", f"experiments.{module}", "--out", str(out), "--smoke", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return time.perf_counter() - t0


def test_table4_smoke(tmp_path):
    _run("table4_ood", tmp_path)
    table = (tmp_path / "table4.md").read_text()
    assert "| digits-unknown-classes | ours |" in table and "SMOKE" in table
    stored = json.loads((tmp_path / "digits" / "ood.json").read_text())
    assert all(0 <= m["auroc"] <= 1 for m in stored["out_of_distribution"].values())
    # (Resuming without retraining or reloading is tested with fakes above, at no compile cost.)


@pytest.mark.slow
def test_table5_smoke(tmp_path):
    _run("table5_corruptions", tmp_path)
    assert "SYNTHETIC" in (tmp_path / "table5.md").read_text()
    assert (tmp_path / "fig5.png").exists()
    assert (tmp_path / "digits" / "gradmix" / "corruption_drops.json").exists()


@pytest.mark.slow
def test_table6_smoke(tmp_path):
    _run("table6_ssl_linear_probe", tmp_path, "--objectives", "simclr")
    table = (tmp_path / "table6.md").read_text()
    assert "| simclr | resnet18 | - |" in table and "| simclr | resnet18 | + GradMix |" in table
