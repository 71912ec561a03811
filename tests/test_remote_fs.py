"""Workdirs, data directories and experiment outputs on a non-local filesystem.

``gs://`` is served by the ``fake_gcs`` fixture (epath backend and Orbax's TensorStore store on a
local folder standing in for the bucket), so every ``gs://`` code path runs offline. The test
process works in an empty current directory: anything written outside the bucket and the local
data cache would show up there.
"""

import os

import numpy as np
import pytest

from gradmix_jax import evaluate
from gradmix_jax.data import idx, sources
from gradmix_jax.training import trainer, workdir

RUN = "gs://bucket/runs/fmnist"
DATA = "gs://bucket/data/fashion"


def _files(folder) -> dict[str, bytes]:
    return {
        os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
        for d, _, files in os.walk(folder)
        for f in files
    }


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.setenv("GRADMIX_JAX_CACHE", str(tmp_path / "cache"))
    idx.load_idx_split.cache_clear()
    sources.load_tfds_split.cache_clear()
    yield here
    idx.load_idx_split.cache_clear()
    sources.load_tfds_split.cache_clear()


def _tiny_fashion_config(config):
    config.data.protocol, config.data.split, config.data.data_dir = "fashion_mnist", 0, DATA
    config.augment.preset = "rgb"
    config.num_steps, config.batch_size = 3, 16
    config.model.width, config.model.feature_dim = 4, 8
    config.data.image_size, config.eval.id_samples = 8, 0
    config.checkpoint_every_steps, config.progress_bar = 2, False
    return config


def test_run_rerun_and_evaluate_with_workdir_and_data_in_a_bucket(
    fake_gcs, cwd, digits_config, write_idx_set
):
    from etils import epath

    write_idx_set(epath.Path(DATA), n_train=120, n_test=40, gz=True)
    config = _tiny_fashion_config(digits_config)

    summary = trainer.train_and_evaluate(config, RUN)
    assert summary["num_train_images"] == 72 and 0.0 <= summary["auroc"] <= 1.0
    run = fake_gcs / "bucket" / "runs" / "fmnist"
    written = _files(run)
    for name in ("results.json", "train_history.json", "checkpoints/3/_CHECKPOINT_METADATA"):
        assert name in written, sorted(written)
    assert any(n.startswith("tensorboard/events.out.tfevents") for n in written)
    assert workdir.read_json(f"{RUN}/results.json")["auroc"] == summary["auroc"]
    assert not [n for n in written if n.endswith(".tmp") or ".write_check" in n]

    # A rerun reads the finished run from the bucket and touches nothing.
    again = trainer.train_and_evaluate(config, RUN)
    assert again["already_finished"] and _files(run) == written

    # The evaluate command restores the bucket's checkpoint and reproduces the AUROC.
    evaluated = evaluate.evaluate_run(RUN)
    assert evaluated["auroc"] == pytest.approx(summary["auroc"], abs=1e-6)
    assert "eval_results.json" in _files(run)

    assert list(cwd.iterdir()) == []  # nothing written beside the process


def test_tfds_cache_of_a_bucket_data_dir_is_local(fake_gcs, cwd, tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        images, labels = sources.load_tfds_split("mnist", "train", "gs://bucket/tfds")
    cached = tmp_path / "cache" / "gs" / "bucket" / "tfds" / "mnist-train.npz"
    assert cached.exists()
    assert not (fake_gcs / "bucket" / "tfds" / "gradmix_jax_cache").exists()
    sources.load_tfds_split.cache_clear()
    again = sources.load_tfds_split("mnist", "train", "gs://bucket/tfds")  # no mock: the cache
    np.testing.assert_array_equal(again[0], images)
    np.testing.assert_array_equal(again[1], labels)


def test_cache_folder_mapping(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADMIX_JAX_CACHE", str(tmp_path / "c"))
    assert str(sources.cache_folder("gs://b/x/")) == str(tmp_path / "c" / "gs" / "b" / "x")
    assert str(sources.cache_folder(str(tmp_path / "d"))) == str(
        tmp_path / "d" / "gradmix_jax_cache"
    )


def test_check_writable_in_a_bucket(fake_gcs, cwd):
    from etils import epath

    workdir.check_writable("gs://bucket/new/run")  # an object store needs no folder first
    assert _files(fake_gcs) == {}  # the probe is gone
    epath.Path("gs://bucket/afile").write_text("x")
    with pytest.raises(workdir.WorkdirError, match="gs://bucket/afile is not a directory"):
        workdir.check_writable("gs://bucket/afile")


def test_experiment_tables_and_figures_in_a_bucket(fake_gcs, cwd):
    from experiments.common import write_table
    from experiments.grid_common import plot_grouped_bars

    write_table("gs://bucket/out/table", ["a", "b"], [[1, 2]], "t")
    plot_grouped_bars(
        "gs://bucket/out/fig.png",
        ["g"],
        ["s"],
        {("g", "s"): 50.0},
        {("g", "s"): 1.0},
        "AUROC %",
        "title",
    )
    out = _files(fake_gcs / "bucket" / "out")
    assert out["table.csv"].decode().splitlines() == ["a,b", "1,2"]
    assert out["table.md"].startswith(b"# t")
    assert out["fig.png"].startswith(b"\x89PNG")
    assert list(cwd.iterdir()) == []
