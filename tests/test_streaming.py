"""The streaming input path: image folders, lazy sources, Grain batches, auto choice, resume."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from gradmix_jax.data import images as image_sources
from gradmix_jax.data import load_imagefolder, load_openset
from gradmix_jax.data.folder import FolderNotFoundError
from gradmix_jax.training import parallel, pipeline, trainer
from gradmix_jax.training.openset_eval import extract_features


def write_image_folder(root, layout, shape=(14, 18), seed=0, fmt="JPEG"):
    """Writes ``root/<split>/<class>/<i>.<fmt>`` random RGB images of ``shape`` (H, W);
    ``layout = {split: {class: count}}``. Returns ``root`` as a string."""
    rng = np.random.default_rng(seed)
    for split, classes in layout.items():
        for name, count in classes.items():
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(os.path.join(folder, f"{i:03d}.{fmt.lower()}"), fmt)
    return str(root)


LAYOUT = {
    "train": {"cat": 12, "dog": 10, "fox": 11},
    "test": {"cat": 4, "dog": 3, "fox": 2, "owl": 5, "yak": 3},
}


@pytest.fixture
def folder(tmp_path):
    return write_image_folder(tmp_path / "images", LAYOUT)


# ----------------------------------------------------------------------------- image folders


def test_image_folder_classes_labels_and_unknowns(folder):
    d = load_imagefolder(folder, (), image_size=8)
    assert d.class_names == ("cat", "dog", "fox", "owl", "yak")
    assert d.known_classes == (0, 1, 2) and d.unknown_classes == (3, 4)
    assert image_sources.is_lazy(d.train_images) and d.train_images.shape == (33, 8, 8, 3)
    np.testing.assert_array_equal(np.bincount(d.train_labels), [12, 10, 11])
    np.testing.assert_array_equal(d.test_labels, [0] * 4 + [1] * 3 + [2] * 2 + [-1] * 8)
    # known classes by name (in the given order) or by index into the sorted train folders
    by_name = load_imagefolder(folder, ("fox", "cat"), image_size=8)
    by_index = load_imagefolder(folder, (2, 0), image_size=8)
    for d in (by_name, by_index):
        assert d.known_classes == (2, 0) and d.unknown_classes == (1, 3, 4)
        np.testing.assert_array_equal(np.bincount(d.train_labels), [11, 12])
        assert (d.test_labels == -1).sum() == 3 + 5 + 3
    closed = load_imagefolder(folder, (), image_size=8, closed_set=True)
    assert closed.unknown_classes == () and (closed.test_labels >= 0).all()
    assert len(closed.test_labels) == 9
    # the protocol entry point routes here
    assert load_openset("imagefolder", 0, ("dog", "fox"), folder, image_size=8).known_classes == (
        1,
        2,
    )


def test_image_folder_decodes_shorter_side_then_centre(tmp_path):
    root = write_image_folder(tmp_path / "f", {"train": {"a": 1, "b": 1}, "test": {"a": 1}},
                              shape=(20, 40), fmt="PNG")  # fmt: skip
    d = load_imagefolder(root, (), image_size=10)
    img = d.train_images[0]
    assert img.shape == (10, 10, 3) and img.dtype == np.uint8
    with Image.open(os.path.join(root, "train", "a", "000.png")) as im:
        want = np.asarray(im.resize((20, 10), Image.Resampling.BILINEAR))[:, 5:15]
    np.testing.assert_allclose(img.astype(int), want.astype(int), atol=2)


def test_image_folder_errors_name_the_file_or_folder(folder, tmp_path):
    with pytest.raises(FolderNotFoundError, match="train"):
        load_imagefolder(str(tmp_path / "missing"), (), image_size=8)
    no_test = write_image_folder(tmp_path / "nt", {"train": {"a": 2, "b": 2}})
    with pytest.raises(FolderNotFoundError, match="no test split.*test.*or.*val"):
        load_imagefolder(no_test, (), image_size=8)
    with pytest.raises(ValueError, match="data.known_classes must be class folder names"):
        load_imagefolder(folder, ("cat", "owl"), image_size=8)  # owl has no train folder
    with pytest.raises(ValueError, match="data.data_dir must be the image folder"):
        load_imagefolder("", (), image_size=8)
    bad = os.path.join(folder, "train", "dog", "005.jpeg")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8 not really a jpeg")
    d = load_imagefolder(folder, (), image_size=8)
    with pytest.raises(image_sources.DataError, match="cannot decode image .*005.jpeg") as e:
        image_sources.read(d.train_images, np.arange(len(d.train_images)), num_threads=2)
    assert "\n" not in str(e.value)
    # the same error through the streamed batches
    with pytest.raises(image_sources.DataError, match="005.jpeg"):
        for _ in pipeline.stream_batches(d.train_images, d.train_labels, seed=0, batch_size=33,
                                         start_step=0, num_steps=1, num_threads=2):  # fmt: skip
            pass


# ----------------------------------------------------------------------------- streamed batches


def _stream(images, labels, start, steps, batch=8, seed=5, **kw):
    return list(
        pipeline.stream_batches(
            images,
            labels,
            seed=seed,
            batch_size=batch,
            start_step=start,
            num_steps=steps,
            num_threads=3,
            **kw,
        )  # fmt: skip
    )


def test_stream_batches_are_the_device_paths_batches(folder):
    d = load_imagefolder(folder, (), image_size=8)
    pixels = image_sources.as_array(d.train_images, num_threads=2)
    n = len(pixels)
    for source in (pixels, d.train_images):  # in host memory and decoded from JPEG files
        got = _stream(source, d.train_labels, 0, 9)  # 9 steps: crosses two epoch boundaries
        assert len(got) == 9
        for step, (x, y) in enumerate(got):
            idx = pipeline.batch_indices(5, step, n, 8)
            np.testing.assert_array_equal(x, pixels[idx])
            np.testing.assert_array_equal(y, d.train_labels[idx])
    # a stream started at step 4 (a resumed run) continues exactly
    again = _stream(d.train_images, d.train_labels, 4, 5)
    for (x0, y0), (x1, y1) in zip(got[4:], again):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(y0, y1)


def test_stream_with_worker_processes_equals_threads():
    images = np.random.default_rng(1).integers(0, 256, (40, 6, 6, 3), dtype=np.uint8)
    labels = np.arange(40) % 4
    threads = _stream(images, labels, 2, 6)
    workers = _stream(images, labels, 2, 6, num_workers=2)
    assert len(workers) == 6
    for (x0, y0), (x1, y1) in zip(threads, workers):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(y0, y1)


@pytest.mark.parametrize("lazy", [False, True])
def test_each_process_reads_only_its_rows(monkeypatch, lazy):
    """Process p reads rows [p*rows, (p+1)*rows) of every global batch: disjoint shards whose
    union, over an epoch, is every training record once (in host memory and through Grain)."""
    images = np.arange(48, dtype=np.uint8).reshape(48, 1, 1, 1) * np.ones((1, 2, 2, 3), np.uint8)
    if lazy:
        images = image_sources.Subset(images, np.arange(48))
    labels = np.arange(48)
    per_process = []
    for p in range(2):
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        monkeypatch.setattr(jax, "process_index", lambda p=p: p)
        per_process.append(_stream(images, labels, 0, 3, batch=16))
    monkeypatch.undo()
    epoch = []
    for step in range(3):
        (xa, a), (xb, b) = per_process[0][step], per_process[1][step]
        assert len(a) == len(b) == 8 and not set(a) & set(b)
        np.testing.assert_array_equal(
            np.concatenate([a, b]), pipeline.batch_indices(5, step, 48, 16)
        )
        np.testing.assert_array_equal(np.concatenate([xa, xb])[:, 0, 0, 0], np.concatenate([a, b]))
        epoch += [*a, *b]
    assert sorted(epoch) == list(range(48))


def test_auto_streams_when_the_split_exceeds_the_budget(folder, digits_config):
    d = load_imagefolder(folder, (), image_size=8)  # 33 x 8 x 8 x 3 bytes = 6336 B
    config = digits_config
    assert pipeline.choose_pipeline(config, d)[0] == "device"
    config.data.device_budget_mb = 6000 / 2**20
    mode, why = pipeline.choose_pipeline(config, d)
    assert mode == "stream" and "> data.device_budget_mb" in why
    config.data.pipeline = "device"
    assert pipeline.choose_pipeline(config, d) == ("device", "data.pipeline='device'")
    on_device = pipeline.for_device_path(d, num_threads=2)
    assert isinstance(on_device.train_images, np.ndarray)
    assert image_sources.is_lazy(on_device.test_images)  # evaluation reads them in batches


def test_features_of_a_lazy_split_equal_the_arrays(folder):
    d = load_imagefolder(folder, (), image_size=8)
    mesh = parallel.make_mesh()
    fn = jax.jit(lambda params, stats, x: {"f": x.astype(np.float32).mean((1, 2)) * params})
    variables = {"params": np.float32(2.0), "batch_stats": {}}
    lazy = extract_features(fn, variables, d.test_images, 5, mesh, num_threads=2)
    dense = extract_features(fn, variables, image_sources.as_array(d.test_images), 5, mesh)
    assert lazy["f"].shape == (17, 3)
    np.testing.assert_array_equal(lazy["f"], dense["f"])


# ----------------------------------------------------------------------------- the program


def _folder_config(config, folder, workdir_steps=4):
    config.data.protocol = "imagefolder"
    config.data.data_dir = folder
    config.data.image_size = 8
    config.augment.preset = "rgb"
    config.model.width = 4
    config.model.feature_dim = 8
    config.batch_size = 8
    config.num_steps = workdir_steps
    config.checkpoint_every_steps = 2
    config.log_every_steps = 2
    config.progress_bar = False
    config.eval.batch_size = 16
    config.eval.id_samples = 0
    config.data.num_threads = 2
    return config


def test_image_folder_streams_trains_resumes_and_evaluates(folder, tmp_path, make_digits_config):
    """A folder over the budget streams; its run equals the device-resident run of the same
    folder, and a run resumed from its step-2 checkpoint ends where the uninterrupted one does."""
    streamed = _folder_config(make_digits_config(), folder)
    streamed.data.device_budget_mb = 1e-3  # 33 images of 8x8x3 are 6.2 KiB > 1 KiB
    a = trainer.train_and_evaluate(streamed, str(tmp_path / "stream"))
    assert a["input_pipeline"] == "stream" and a["num_steps"] == 4
    assert a["known_classes"] == [0, 1, 2] and a["unknown_classes"] == [3, 4]
    assert a["class_names"] == {"known": ["cat", "dog", "fox"], "unknown": ["owl", "yak"]}
    assert a["num_test_unknown"] == 8 and 0.0 <= a["auroc"] <= 1.0

    on_device = _folder_config(make_digits_config(), folder)
    b = trainer.train_and_evaluate(on_device, str(tmp_path / "device"))
    assert b["input_pipeline"] == "device"
    assert a["final_train_loss"] == pytest.approx(b["final_train_loss"], rel=1e-6)
    assert a["auroc"] == pytest.approx(b["auroc"], abs=1e-6)

    # Lose everything after the step-2 checkpoint, as a kill would; the rerun resumes there.
    work = tmp_path / "stream"
    os.remove(work / "results.json")
    import shutil

    shutil.rmtree(work / "checkpoints" / "4")
    c = trainer.train_and_evaluate(streamed, str(work))
    assert c["resumed_from_step"] == 2 and c["input_pipeline"] == "stream"
    assert c["final_train_loss"] == pytest.approx(a["final_train_loss"], rel=1e-6)
    assert c["auroc"] == pytest.approx(a["auroc"], abs=1e-6)
    assert json.loads((work / "results.json").read_text())["input_pipeline"] == "stream"


def test_imagefolder_config_errors_are_one_line(tmp_path, make_digits_config):
    from gradmix_jax.training.validation import ConfigError, validate_config

    config = _folder_config(make_digits_config(), "")
    with pytest.raises(ConfigError, match="data.data_dir must be the image folder"):
        validate_config(config)
    config = make_digits_config()
    config.data.pipeline = "disk"
    with pytest.raises(ConfigError, match=r"data.pipeline must be one of \['auto', 'device', "):
        validate_config(config)
    config = make_digits_config()
    config.data.protocol = "imagenet100"
    with pytest.raises(ConfigError, match="imagenet100.*closed-set dataset only"):
        validate_config(config)
    config.data.closed_set = True
    validate_config(config)  # fine before any data is looked at


def test_table6_runs_imagenet100_with_table9s_setting(tmp_path, repo_root):
    import subprocess
    import sys

    from experiments import table6_ssl_linear_probe as t6

    c = t6.cell_config("imagenet100", "moco", "resnet18", "gradmix", {})
    assert (c.data.protocol, c.data.closed_set, c.data.image_size) == ("imagenet100", True, 224)
    assert (c.model.name, c.model.stem, c.model.feature_dim) == ("resnet18", "imagenet", 128)
    assert (c.num_epochs, c.batch_size, c.moco.queue_size, c.moco.momentum) == (
        100,
        256,
        4096,
        0.999,
    )
    assert (c.objective, c.mixing.method) == ("moco", "gradmix")
    # Without the data: one line naming where it was looked for and how to prepare it, exit 2.
    out = subprocess.run(
        [sys.executable, "-m", "experiments.table6_ssl_linear_probe", "--out", str(tmp_path),
         "--dataset", "imagenet100", "--archs", "resnet18", "--objectives", "simclr",
         "--mixings", "none", "--set", f"data.data_dir={tmp_path / 'nothing'}"],
        capture_output=True, text=True, cwd=repo_root, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "ImageNet-100 not found" in errors[0]
    assert str(tmp_path / "nothing" / "imagenet100") in errors[0] and "tfds build" in errors[0]


def test_cifar10_streams_from_array_record_files(tmp_path, make_digits_config):
    """protocol cifar10 over TFDS array_record files: streamed record by record, the run equals
    the device-resident run of the same files (decoded whole, as before)."""
    from _mock_tfds import write_mock_cifar10

    written = write_mock_cifar10(tmp_path / "tfds", num_train=60, num_test=30)
    results = {}
    for mode in ("stream", "device"):
        config = _folder_config(make_digits_config(), str(tmp_path / "tfds"))
        config.data.protocol = "cifar10"
        config.data.pipeline = mode
        data = pipeline.load_data(config)
        assert image_sources.is_lazy(data.train_images) == (mode == "stream")
        results[mode] = trainer.train_and_evaluate(config, str(tmp_path / mode))
    known = pipeline.load_data(config).known_classes
    train_images, train_labels = written["train"]
    assert results["stream"]["num_train_images"] == int(np.isin(train_labels, known).sum())
    assert results["stream"]["input_pipeline"] == "stream"
    a, b = results["stream"], results["device"]
    assert a["final_train_loss"] == pytest.approx(b["final_train_loss"], rel=1e-6)
    assert a["auroc"] == pytest.approx(b["auroc"], abs=1e-6)
    # record by record (decoded from the array_record files), the lazy split holds the pixels
    config.data.pipeline = "stream"
    lazy = pipeline.load_data(config).train_images
    keep = np.flatnonzero(np.isin(train_labels, known))
    got = image_sources.read(lazy, np.arange(len(lazy)), num_threads=2)
    np.testing.assert_array_equal(got, train_images[keep])


def test_image_folder_in_a_bucket_streams(fake_gcs):
    """A ``gs://`` image folder is listed and read through etils.epath, also by Grain threads."""
    local = write_image_folder(fake_gcs / "bucket" / "images", LAYOUT)
    d = load_imagefolder("gs://bucket/images", (), image_size=8)
    assert d.train_images.paths[0].startswith("gs://bucket/images/train/cat/")
    here = load_imagefolder(local, (), image_size=8)
    np.testing.assert_array_equal(d.train_labels, here.train_labels)
    (x, y), = _stream(d.train_images, d.train_labels, 2, 1)  # fmt: skip
    (x_here, y_here), = _stream(here.train_images, here.train_labels, 2, 1)  # fmt: skip
    np.testing.assert_array_equal(x, x_here)
    np.testing.assert_array_equal(y, y_here)


def _break(root, how):
    """The image folder at ``root`` made wrong in one way."""
    import shutil

    if how == "missing folder":
        shutil.rmtree(root)
    elif how == "no test split":
        shutil.rmtree(os.path.join(root, "test"))
    elif how == "empty class":
        for name in os.listdir(os.path.join(root, "train", "dog")):
            os.remove(os.path.join(root, "train", "dog", name))
    elif how == "undecodable file":
        with open(os.path.join(root, "train", "cat", "000.jpeg"), "w") as f:
            f.write("not an image")


@pytest.mark.parametrize(
    "how,message",
    [
        ("missing folder", r"error: image folder .*/train not found"),
        ("no test split", r"error: image folder .* has no test split: expected .*/test/"),
        ("empty class", r"error: class folder .*/train/dog has no image files"),
        ("undecodable file", r"error: cannot decode image .*/train/cat/000.jpeg: not an image"),
    ],
)
def test_image_folder_errors_reach_the_cli_as_one_line(
    folder, tmp_path, train_cli_command, how, message
):
    import re
    import subprocess

    _break(folder, how)
    command = train_cli_command(
        tmp_path / "run",
        "--config.data.protocol=imagefolder",
        f"--config.data.data_dir={folder}",
        "--config.augment.preset=rgb",
    )
    out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    errors = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(errors) == 1, out.stderr[-2000:]
    assert re.match(message, errors[0]), errors[0]


def test_cli_summary_names_the_classes(folder, tmp_path, run_cli):
    done = run_cli(
        tmp_path / "run",
        "--config.data.protocol=imagefolder",
        f"--config.data.data_dir={folder}",
        "--config.augment.preset=rgb",
        "--config.num_steps=2",
        "--config.data.known_classes=('fox','cat')",
        "--config.batch_size=8",
    )
    assert "known classes: fox, cat; unknown: dog, owl, yak" in done.stdout
    stored = json.loads((tmp_path / "run" / "results.json").read_text())
    assert stored["class_names"] == {"known": ["fox", "cat"], "unknown": ["dog", "owl", "yak"]}
