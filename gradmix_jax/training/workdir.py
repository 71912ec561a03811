"""A run's workdir records and the check for an already finished run.

``results.json`` (the summary) and ``train_history.json`` (logged scalars, plus the train time
spent so far, so a resumed run reports the whole run's time) are written with ``gradmix_jax.files``:
atomically (a kill during a write leaves the previous file intact) and as strict JSON.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from typing import Any

from etils import epath

from gradmix_jax.files import as_path, is_local, read_json, strict
from gradmix_jax.training.config_base import AREA_IMAGES

RESULTS = "results.json"
HISTORY = "train_history.json"
# Config fields that do not change what a run computes (a finished run is still the same run when
# only these differ, e.g. after moving the data or changing the logging cadence).
# Fields added after a run format was first written, with the value that reproduces runs whose
# stored config lacks them (so those runs still count as finished runs of the current config).
ADDED_FIELDS = {
    "label_smoothing": 0.0,
    "base_temperature": 0.0,
    "augment.normalize": "none",
    "augment.mean": None,
    "augment.std": None,
    "gradmix.recipe": "paper",
    "gradmix.box_size": "round",
    "gradmix.noise_channels": "independent",
    "gradmix.cam_relu": True,
    "gradmix.map_views": "view1",
    "gradmix.normalize_at": "output",
    "gradmix.weight_area": "masked",
    "gradmix.mixed_loss": "simclr",
    "eval.score": "knn",
    # Not part of what a run computes (NON_SEMANTIC_FIELDS): re-evaluating an older run measures it.
    "eval.area_images": AREA_IMAGES,
}
NON_SEMANTIC_FIELDS = (
    "progress_bar",
    "log_every_steps",
    "checkpoint_every_steps",
    "max_to_keep",
    "data.data_dir",
    "eval.batch_size",
    # The input path and its reader settings: both paths feed the same batches in the same order.
    "data.pipeline",
    "data.device_budget_mb",
    "data.num_threads",
    "data.num_workers",
    # Which stored score results.json's auroc names: every score is computed and kept anyway.
    "eval.score",
    # A measurement beside the scores (the activated area): it changes no score, and a run saved
    # before it existed gets it from `python -m gradmix_jax.evaluate`.
    "eval.area_images",
)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {"a.b.c": value}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def with_added_fields(stored: dict) -> dict:
    """A stored config dict with every ``ADDED_FIELDS`` field it lacks (nested, like the config)."""
    out = json.loads(json.dumps(stored))
    for dotted, value in ADDED_FIELDS.items():
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node.setdefault(leaf, value)
    return out


def config_differences(stored: dict | None, config) -> list[str]:
    """Fields (outside NON_SEMANTIC_FIELDS) whose value in a stored results.json's config differs
    from ``config``'s (after ``gradmix.recipe`` fills its unset fields)."""
    from gradmix_jax.training.config_base import RECIPES, resolve_recipe

    if stored is None:
        return ["<no config in results.json>"]
    # JSON round trip on both sides: tuples -> lists (a freshly trained cell returns its summary
    # with the config's tuples, one read back from results.json has lists).
    now = flatten(json.loads(json.dumps(strict(resolve_recipe(config).to_dict()))))
    old = {**ADDED_FIELDS, **flatten(json.loads(json.dumps(strict(stored))))}
    for field, value in RECIPES.get(old["gradmix.recipe"], {}).items():
        if old.get(field) is None:  # stored unresolved: its recipe's value
            old[field] = value
    return sorted(
        k
        for k in set(now) | set(old)
        if k not in NON_SEMANTIC_FIELDS and now.get(k, "<missing>") != old.get(k, "<missing>")
    )


def finished_run(workdir: str, config) -> dict | None:
    """The stored summary when ``workdir`` holds a finished run of ``config`` (same values in every
    field outside NON_SEMANTIC_FIELDS), else None (no results.json, or one of another config: a
    longer schedule or other evaluation settings continue from the run's checkpoint)."""
    stored = read_json(as_path(workdir) / RESULTS)
    if stored is None or config_differences(stored.get("config"), config):
        return None
    return stored


class WorkdirError(ValueError):
    """The workdir cannot be created or written (one line)."""


def check_writable(workdir: str | os.PathLike) -> None:
    """Checks, without leaving anything behind, that ``workdir`` can be created and written.

    An existing workdir must be a writable directory (a probe file is created and removed); a new
    local one needs its nearest existing ancestor to be a writable directory. On an object store
    (``gs://``...) a probe file is written and removed under the workdir. Raises WorkdirError
    naming the workdir and the reason (a file in the way, a read-only filesystem, no permission,
    a missing bucket), so a run fails before loading data or compiling.
    """
    path = as_path(workdir)
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"--workdir {workdir} is not a directory")
    if path.exists() or not is_local(path):
        probe = path / f".write_check-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except Exception as e:  # OSError locally; object-store clients raise their own types
            reason = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
            raise WorkdirError(f"--workdir {workdir} is not writable: {reason}") from None
        return
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise WorkdirError(f"--workdir {workdir} cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):  # also false on a read-only filesystem
        raise WorkdirError(f"--workdir {workdir} cannot be created: {parent} is not writable")


class _EpathEventFile:
    """A TensorBoard event file on an epath filesystem. Object stores cannot append, so the whole
    file is rewritten at each flush (scalars only: a few kB per run)."""

    def __init__(self, path: str):
        self.path = epath.Path(path)
        self.buffer = io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        self.path.write_bytes(self.buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _EpathEventFiles:
    """tensorboardX writer factory for the URI schemes epath serves."""

    def open(self, path: str) -> _EpathEventFile:
        return _EpathEventFile(path)

    def directory_check(self, path: str) -> None:
        epath.Path(path).mkdir(parents=True, exist_ok=True)


def register_tensorboard_filesystems() -> None:
    """Routes tensorboardX's event files under ``gs://``, ``s3://``... through epath (its own
    writers need google-cloud-storage / boto3, which this package does not depend on)."""
    from tensorboardX import record_writer

    for scheme in ("gs", "s3", "az"):
        record_writer.register_writer_factory(scheme, _EpathEventFiles())
