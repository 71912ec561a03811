"""Attribution analysis of trained models (paper §5, Fig. 7/8/10) and its two experiment scripts."""

import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _reference import add_at_paths

from gradmix_jax import attribution_analysis as aa
from gradmix_jax import losses
from gradmix_jax.models import create_model, resnet_tap_paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from experiments import plots  # noqa: E402

LAYERS = ("conv3_2", "conv4_2", "conv5_2")
STATIC = ("model", "layers", "target", "temperature", "normalize")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny():
    """A tiny ResNet18 with non-trivial BatchNorm running averages, and a batch of 16x16 images."""
    model = create_model("resnet18", width=2, feature_dim=8)
    images = jax.random.uniform(jax.random.key(0), (4, 16, 16, 3))
    variables = model.init(jax.random.key(1), images, train=False)
    # Random running statistics: a forward in train mode (batch statistics) would differ clearly.
    leaves, treedef = jax.tree.flatten(variables["batch_stats"])
    keys = jax.random.split(jax.random.key(2), len(leaves))
    leaves = [
        jax.random.uniform(k, leaf.shape, minval=0.5, maxval=2.0)
        if i % 2
        else 0.2 * jax.random.normal(k, leaf.shape)
        for i, (k, leaf) in enumerate(zip(keys, leaves))
    ]
    variables = {"params": variables["params"], "batch_stats": jax.tree.unflatten(treedef, leaves)}
    return model, variables, images


def reference_maps(model, variables, images, layers, score_fn, flip_view, normalize):
    """Independent reference: activations recorded at the tap blocks; each layer's gradient from
    its OWN ``jax.grad`` w.r.t. an offset added at that block's output; LayerCAM, upsampling and min-max in
    NumPy / jax.image.resize."""
    n = images.shape[0]
    x = jnp.concatenate([images, images[:, :, ::-1]]) if flip_view else images
    total = np.zeros(images.shape[:3])
    for layer in layers:
        path, record = resnet_tap_paths("resnet18")[layer], {}
        with add_at_paths({path: None}, record):
            model.apply(variables, x, train=False)
        act = np.asarray(record[path][:n], np.float64)

        def f(p, path=path):
            with add_at_paths({path: p}):
                z, _ = model.apply(variables, x, train=False)
            return score_fn(z)

        grad = np.asarray(jax.grad(f)(jnp.zeros_like(record[path]))[:n], np.float64)
        cam = np.maximum((np.maximum(grad, 0) * act).sum(-1), 0)  # [n, h, w]
        up = np.asarray(
            jax.image.resize(
                jnp.asarray(cam, jnp.float32), images.shape[:3], "bilinear", antialias=False
            ),
            np.float64,
        )
        if normalize == "image":
            lo = up.min(axis=(1, 2), keepdims=True)
            hi = up.max(axis=(1, 2), keepdims=True)
            up = (up - lo) / (hi - lo + 1e-8)
        total += up
    return total


def simclr_score(n, temperature):
    return lambda z: losses.simclr_loss(jnp.stack([z[:n], z[n:]], axis=1), temperature=temperature)


def test_simclr_maps_equal_independent_reference_under_jit(tiny):
    model, variables, images = tiny
    f = jax.jit(aa.attribution_maps, static_argnames=STATIC)
    for normalize in ("image", "none"):
        got = np.asarray(
            f(
                model,
                variables,
                images,
                layers=LAYERS,
                target="simclr",
                temperature=0.1,
                normalize=normalize,
            )
        )
        want = reference_maps(
            model, variables, images, LAYERS, simclr_score(4, 0.1), True, normalize
        )
        assert got.shape == (4, 16, 16) and got.dtype == np.float32
        assert want.max() > 0  # the comparison is not between two all-zero maps
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * want.max())
    # Normalised per image and per layer, so the sum lies in [0, number of layers].
    maps = np.asarray(aa.attribution_maps(model, variables, images, layers=LAYERS, temperature=0.1))
    assert maps.min() >= 0 and maps.max() <= len(LAYERS) + 1e-5
    per_layer = aa.layer_maps(model, variables, images, layers=LAYERS, temperature=0.1)
    assert {k: v.shape for k, v in per_layer.items()} == {
        "conv3_2": (4, 8, 8),
        "conv4_2": (4, 4, 4),
        "conv5_2": (4, 2, 2),
    }


def test_prototype_maps_equal_reference_and_are_per_image(tiny):
    model, variables, images = tiny
    protos = aa.class_prototypes(
        np.random.default_rng(0).normal(size=(30, 8)), np.arange(30) % 3, 3
    )
    pn = jnp.asarray(protos)

    def score(z):  # cosine to the nearest prototype, summed over images
        sims = z @ pn.T
        return jnp.sum(jnp.take_along_axis(sims, jnp.argmax(sims, -1)[:, None], -1))

    layers = ("conv4_2",)
    got = np.asarray(
        aa.attribution_maps(
            model,
            variables,
            images,
            layers=layers,
            target="prototype",
            prototypes=protos,
            normalize="none",
        )
    )
    want = reference_maps(model, variables, images, layers, score, False, "none")
    assert want.max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * want.max())
    # Eval mode + a per-image score: an image's map does not depend on its batch mates.
    alone = np.asarray(
        aa.attribution_maps(
            model,
            variables,
            images[1:2],
            layers=layers,
            target="prototype",
            prototypes=protos,
            normalize="none",
        )
    )
    np.testing.assert_allclose(alone[0], got[1], rtol=1e-4, atol=1e-6 * want.max())


def test_bad_arguments_raise_one_clear_value_error(tiny):
    model, variables, images = tiny
    cases = [
        (dict(target="logits"), "target must be one of"),
        (dict(layers=("conv9_9",)), "tap .conv9_9. .path .conv9_9.. matched no Linen submodule"),
        (dict(layers=()), "layers must be a non-empty sequence of tap names"),
        (dict(normalize="max"), "normalize must be one of"),
        (dict(target="prototype"), "prototypes must be"),
        (dict(temperature=0.0), "temperature must be"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(ValueError, match=msg):
            aa.attribution_maps(model, variables, images, **kwargs)
    with pytest.raises(ValueError, match="images must be"):
        aa.attribution_maps(model, variables, images[0])
    with pytest.raises(ValueError, match="labels must contain every class"):
        aa.class_prototypes(np.ones((4, 2)), np.array([0, 0, 2, 2]), 3)
    with pytest.raises(ValueError, match="thresholds must be"):
        aa.activated_fraction_curve(np.ones((2, 3, 3)), [])
    with pytest.raises(ValueError, match="num_images must be"):
        aa.pick_known_unknown(np.array([0, -1]), 0, seed=0)


def test_class_prototypes_are_normalised_class_means():
    rng = np.random.default_rng(1)
    feats, labels = rng.normal(size=(12, 5)), np.array([0, 1, 2] * 4)
    got = aa.class_prototypes(feats, labels, 3)
    for c in range(3):
        mean = feats[labels == c].mean(0)
        np.testing.assert_allclose(got[c], mean / np.linalg.norm(mean), rtol=1e-5)


def test_activated_fraction_curve_matches_numpy():
    taus = aa.default_thresholds()
    np.testing.assert_allclose(taus[[0, 4, -1]], [1e-5, 1e-4, 1e-3], rtol=1e-12)
    assert np.all(np.diff(np.log10(taus)) > 0) and len(taus) == 9
    rng = np.random.default_rng(0)
    maps = (10.0 ** rng.uniform(-6, -2, size=(5, 7, 6))).astype(np.float32)
    maps[0] = 0.0  # an all-zero map counts 0 at every τ
    want = np.array([np.mean([(m > t).mean() for m in maps]) for t in taus])
    got = aa.activated_fraction_curve(maps, taus)
    np.testing.assert_allclose(got, want, atol=1e-7)
    assert np.all(np.diff(got) <= 0) and 0 < got[-1] < got[0] < 1


def test_pick_known_unknown_is_seeded_and_balanced():
    labels = np.array([0, 1, -1, 2, -1, 0, -1, 1, 2, -1])
    idx = aa.pick_known_unknown(labels, 5, seed=3)
    assert len(idx) == 5 and len(set(idx.tolist())) == 5
    assert (labels[idx[:3]] >= 0).all() and (labels[idx[3:]] == -1).all()  # known first
    np.testing.assert_array_equal(idx, aa.pick_known_unknown(labels, 5, seed=3))
    # Too few unknown: the rest comes from the known images.
    idx = aa.pick_known_unknown(np.array([0, 1, 2, 3, -1]), 4, seed=0)
    assert (np.array([0, 1, 2, 3, -1])[idx] == -1).sum() == 1


def test_figures_are_written(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(3, 8, 8, 1)).astype(np.float32)
    maps = {"none": rng.uniform(size=(3, 8, 8)), "gradmix": rng.uniform(size=(3, 8, 8))}
    grid = tmp_path / "grid.png"
    plots.save_map_grid(str(grid), images, maps, title="t", column_titles=["a", "b", "c"])
    plot = tmp_path / "curve.png"
    taus = aa.default_thresholds()
    plots.save_activated_fraction_plot(
        str(plot), taus, {"none": np.linspace(1, 0, 9), "gradmix": np.linspace(1, 0.2, 9)}
    )
    for path in (grid, plot):
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000
    with pytest.raises(ValueError, match="must have shape"):
        plots.save_map_grid(str(grid), images, {"x": np.zeros((3, 4, 4))})


def _run(module, out, *extra):
    cmd = [sys.executable, "-m", f"experiments.{module}", "--out", str(out), "--smoke", *extra]
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return time.time() - start


@pytest.mark.slow  # ~60-80 s on a 2-core CPU: fig7 trains two smoke cells, fig8 reuses them (~10 s)
def test_fig7_and_fig8_smoke_share_their_cells(tmp_path):
    _run("fig7_attribution_maps", tmp_path, "--num_images", "4")
    stem = tmp_path / "fig7_digits_split0"
    assert stem.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC
    meta = json.loads(stem.with_suffix(".json").read_text())
    assert meta["scale"].startswith("SMOKE") and set(meta["models"]) == {"none", "gradmix"}
    assert sum(meta["known"]) == 2 and len(meta["test_indices"]) == 4
    raw = np.load(stem.with_suffix(".npz"))
    assert raw["maps_gradmix"].shape == raw["images"].shape[:3] == (4, 16, 16)
    assert not np.allclose(raw["maps_gradmix"], raw["maps_none"])  # two different models

    results = tmp_path / "digits" / "split0" / "gradmix" / "results.json"
    mtime = results.stat().st_mtime
    _run("fig8_activated_fraction", tmp_path, "--batch_size", "128")
    assert results.stat().st_mtime == mtime  # the cells fig7 trained are reused, not retrained
    stem = tmp_path / "fig8_digits_split0"
    data = json.loads(stem.with_suffix(".json").read_text())
    taus = np.asarray(data["thresholds"])
    np.testing.assert_allclose(taus, aa.default_thresholds())
    for kind in ("raw", "normalized"):
        for model in ("none", "gradmix"):
            curve = np.asarray(data["curves"][kind][model]["all"])
            assert curve.shape == taus.shape and np.all((curve >= 0) & (curve <= 1))
            assert np.all(np.diff(curve) <= 1e-12)  # S_M cannot grow with τ
        assert isinstance(data["gradmix_higher_at_every_tau"][kind], bool)
        assert (tmp_path / f"fig8_digits_split0_{kind}.png").read_bytes()[:8] == PNG_MAGIC
    assert data["num_images"] % 128 == 0 and data["num_images"] > 0
    table = (tmp_path / "fig8_digits_split0.md").read_text()
    assert "SMOKE" in table and "| raw |" in table
    assert (
        (tmp_path / "fig8_digits_split0_curves.csv").read_text().startswith("maps,model,group,tau")
    )


def test_activated_area_of_a_run_equals_an_independent_computation(tiny):
    """openset_eval.activated_area: fixed known / unknown test images in batches of one group;
    maps of the reference (own jax.grad per tap), normalised per image, averaged over the layers,
    thresholded at τ = 0.1 ... 0.9 in NumPy."""
    import types

    import ml_collections

    from gradmix_jax.training import openset_eval

    model, variables, _ = tiny
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    labels = np.array([0, 1, -1, 2, -1, 0, -1, 1, -1, -1, 2, 0, -1, 1, 2, -1, 0, -1, 1, 2])
    data = types.SimpleNamespace(test_images=images, test_labels=labels)
    config = ml_collections.ConfigDict(
        {
            "eval": {"area_images": 4},
            "gradmix": {"layers": LAYERS},
            "batch_size": 2,
            "temperature": 0.1,
            "data": {"num_threads": 1},
        }
    )
    got = openset_eval.activated_area(model, variables, data, config, (16, 16))
    groups = openset_eval.area_indices(labels, 4, 2)
    assert got["images"] == {"known": 4, "unknown": 4} and got["batch_size"] == 2
    assert all(labels[groups["known"]] >= 0) and all(labels[groups["unknown"]] < 0)
    taus = np.arange(1, 10) / 10
    assert got["thresholds"] == pytest.approx(taus.tolist())
    for group, idx in groups.items():
        fractions = []
        for start in (0, 2):
            x = jnp.asarray(images[idx[start : start + 2]], jnp.float32) / 255.0
            maps = reference_maps(
                model, variables, x, LAYERS, simclr_score(2, 0.1), True, "image"
            ) / len(LAYERS)
            fractions.append((maps[:, None] > taus[None, :, None, None]).mean(axis=(2, 3)))
        want = np.concatenate(fractions).mean(axis=0)
        assert 0 < want[0] and want[-1] < want[0]  # not a constant curve
        np.testing.assert_allclose(got[group], want, atol=1e-6)
    config.eval.area_images = 0
    assert openset_eval.activated_area(model, variables, data, config, (16, 16)) is None


def test_area_indices_are_fixed_and_whole_batches():
    from gradmix_jax.training.openset_eval import area_indices

    labels = np.array([0] * 30 + [-1] * 7)
    a, b = area_indices(labels, 16, 4), area_indices(labels, 16, 4)
    assert all(np.array_equal(a[g], b[g]) for g in a)
    assert len(a["known"]) == 16 and len(a["unknown"]) == 4  # 7 unknown: one whole batch of 4
    assert len(area_indices(labels, 16, 8)["unknown"]) == 7  # fewer than a batch: all of them
    assert len(area_indices(labels[:30], 16, 4)["unknown"]) == 0
