"""Test-wide settings: cheap XLA compiles (the suite is compile-bound on CPU)."""

import os

# Backend optimisation level 0 roughly halves CPU compile time; results are the same computations.
# Subprocesses started by the tests (the CLI) inherit it.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
).strip()


# ----------------------------------------------------------------------------- a stand-in bucket

import contextlib  # noqa: E402
import types  # noqa: E402

import pytest  # noqa: E402


class _FolderBucketBackend:
    """etils.epath backend serving ``gs://<bucket>/<key>`` from ``<root>/<bucket>/<key>``.

    Everything the program does through epath on ``gs://`` paths (and Orbax's metadata files,
    TensorBoard events, the data reader) lands in ``root``, so a test can run a whole training
    job "in a bucket" offline and list what was written there.
    """

    def __init__(self, root):
        from etils.epath import backend

        self.root, self.os = str(root), backend.os_backend

    def local(self, path) -> str:
        path = os.fspath(path)
        assert path.startswith("gs://"), path
        return os.path.join(self.root, path[len("gs://") :])

    def uri(self, local) -> str:
        return "gs://" + os.path.relpath(os.fspath(local), self.root)

    def open(self, path, mode):
        if "w" in mode or "a" in mode:  # an object store has no folders to create first
            os.makedirs(os.path.dirname(self.local(path)), exist_ok=True)
        return self.os.open(self.local(path), mode)

    def exists(self, path):
        return self.os.exists(self.local(path))

    def isdir(self, path):
        return self.os.isdir(self.local(path))

    def listdir(self, path):
        return self.os.listdir(self.local(path))

    def glob(self, path):
        return [self.uri(p) for p in self.os.glob(self.local(path))]

    def walk(self, top, *, top_down=True, on_error=None):
        for d, dirs, files in self.os.walk(self.local(top), top_down=top_down, on_error=on_error):
            yield self.uri(d), dirs, files

    def makedirs(self, path, *, exist_ok=False, mode=None):
        self.os.makedirs(self.local(path), exist_ok=exist_ok)

    def mkdir(self, path, *, exist_ok=False, mode=None):
        self.os.mkdir(self.local(path), exist_ok=exist_ok)

    def rmtree(self, path):
        self.os.rmtree(self.local(path))

    def remove(self, path):
        self.os.remove(self.local(path))

    def rename(self, path, dst):
        self.os.rename(self.local(path), self.local(dst))

    def replace(self, path, dst):
        self.os.replace(self.local(path), self.local(dst))

    def copy(self, path, dst, overwrite):
        self.os.copy(self.local(path), self.local(dst), overwrite=overwrite)

    def stat(self, path):
        return self.os.stat(self.local(path))


@pytest.fixture
def fake_gcs(tmp_path):
    """``gs://`` URIs served from ``tmp_path/"gcs"`` in this process; yields that folder.

    epath's ``gs`` backend is swapped for a folder-backed one and Orbax's TensorStore key-value
    store for ``gs://`` paths becomes TensorStore's file driver on the same folder, so code under
    test takes every ``gs://`` branch it has without a network. (A real bucket also needs
    ``gcsfs`` for epath and ``google-cloud-storage`` for Orbax: the ``gcs`` extra.)
    """
    from unittest import mock

    from etils.epath import gpath
    from orbax.checkpoint._src.path import gcs_utils

    root = tmp_path / "gcs"
    root.mkdir()
    fake = _FolderBucketBackend(root)

    def kvstore(path):
        return {
            "driver": "file",
            "path": fake.local(
                path if str(path).startswith("gs://") else "gs://" + str(path).lstrip("/")
            ),
        }

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.dict(gpath._PREFIX_TO_BACKEND, {"gs": fake}))
        if hasattr(gpath, "_is_tf_installed"):
            stack.enter_context(mock.patch.object(gpath, "_is_tf_installed", lambda: False))
        stack.enter_context(mock.patch.object(gcs_utils, "get_kvstore_for_gcs", kvstore))
        # Orbax asks the bucket (google-cloud-storage) whether it has a hierarchical namespace:
        # the stand-in is a flat bucket, GCS's default.
        stack.enter_context(
            mock.patch.object(
                gcs_utils,
                "get_bucket",
                lambda name: types.SimpleNamespace(name=name, hierarchical_namespace_enabled=False),
            )
        )
        yield root


# ----------------------------------------------------------------------------- the repository

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Train-CLI flags for a tiny model on digits (same code path, seconds on a CPU).
_TINY_OVERRIDES = (
    "--config.model.width=4",
    "--config.model.feature_dim=16",
    "--config.data.image_size=8",
    "--config.batch_size=32",
    "--config.progress_bar=False",
    "--config.log_every_steps=2",
    "--config.checkpoint_every_steps=2",
    "--config.eval.batch_size=256",
    # The activated area costs a compilation per run; the tests of it ask for it.
    "--config.eval.area_images=0",
)


@pytest.fixture(scope="session")
def repo_root():
    """The repository root: where configs/ and experiments/ are, the CLIs' working directory."""
    return _ROOT


@pytest.fixture(scope="session")
def make_digits_config():
    """``make_digits_config()``: a fresh configs/digits.py ``get_config()`` on every call
    (unlocked: tests shrink it), without the activated-area measurement (``eval.area_images=0``:
    it costs a compilation per run; the tests of it set it)."""
    import importlib.util

    def make():
        spec = importlib.util.spec_from_file_location(
            "digits_cfg", os.path.join(_ROOT, "configs", "digits.py")
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config()
        config.eval.area_images = 0
        return config

    return make


@pytest.fixture
def digits_config(make_digits_config):
    """configs/digits.py's ``get_config()`` (unlocked copy: tests shrink it)."""
    return make_digits_config()


@pytest.fixture(scope="session")
def tiny_overrides():
    """The train CLI's ``--config.*`` flags for a tiny model on digits (a tuple of strings)."""
    return _TINY_OVERRIDES


@pytest.fixture(scope="session")
def train_cli_command(repo_root, tiny_overrides):
    """``train_cli_command(workdir, *extra)``: the argv of ``python -m gradmix_jax.train`` on
    configs/digits.py with ``tiny_overrides`` and then ``extra`` flags."""
    import sys

    def command(workdir, *extra):
        config = os.path.join(repo_root, "configs", "digits.py")
        return [sys.executable, "-m", "gradmix_jax.train", "--config", config,
                "--workdir", str(workdir), *tiny_overrides, *extra]  # fmt: skip

    return command


@pytest.fixture(scope="session")
def run_cli(repo_root, train_cli_command):
    """``run_cli(workdir, *extra)``: runs ``train_cli_command(workdir, *extra)``; asserts exit
    status 0 and returns the finished process (``stdout``, ``stderr``)."""
    import subprocess

    def run(workdir, *extra):
        cmd = train_cli_command(workdir, *extra)
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=repo_root, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        return out

    return run


# ----------------------------------------------------------------------------- IDX files


def idx_bytes(array):
    """The IDX encoding of a uint8 array, written out from the format's definition (magic
    0x0000 08 <ndim>, big-endian int32 sizes, then the bytes), independent of the reader."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + array.astype("uint8").tobytes()


def _write_idx_set(folder, n_train=40, n_test=20, gz=False, size=28, seed=0):
    """The four MNIST-format files in ``folder`` (a pathlib or epath folder), every class present;
    returns {split: (images [N,H,W], labels [N])}."""
    import gzip

    import numpy as np

    from gradmix_jax.data import idx

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        for name, arr in zip(idx.IDX_FILES[split], (images, labels)):
            data = idx_bytes(arr)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
        out[split] = (images, labels)
    return out


@pytest.fixture
def encode_idx():
    """``encode_idx(uint8 array) -> bytes`` in the IDX format (see ``idx_bytes``)."""
    return idx_bytes


@pytest.fixture
def write_idx_set():
    """``write_idx_set(folder, n_train=40, n_test=20, gz=False, size=28, seed=0)``: writes four
    IDX files with every class present; returns {split: (images, labels)}."""
    return _write_idx_set


@pytest.fixture(scope="session")
def run_on_fake_devices(repo_root):
    """``run(script, devices)``: a script of tests/ run with ``devices`` fake CPU devices; returns
    the JSON object its last stdout line holds (the test fails with its stderr otherwise)."""
    import json
    import subprocess
    import sys

    def run(script, devices, timeout=600):
        env = dict(os.environ)
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
        ).strip()
        out = subprocess.run(
            [sys.executable, os.path.join(repo_root, "tests", script)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=repo_root,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    return run
