"""A run's workdir records: strict, atomic JSON files and the check for an already finished run.

``results.json`` (the summary) and ``train_history.json`` (logged scalars, plus the train time
spent so far, so a resumed run reports the whole run's time) are written to a temporary file and
renamed over the old one: a kill during a write leaves the previous file intact. NaN and ±Inf are
written as null, so every file parses with a strict JSON parser.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any

RESULTS = "results.json"
HISTORY = "train_history.json"
# Config fields that do not change what a run computes (a finished run is still the same run when
# only these differ, e.g. after moving the data or changing the logging cadence).
NON_SEMANTIC_FIELDS = ("progress_bar", "log_every_steps", "checkpoint_every_steps", "max_to_keep",
                       "data.data_dir", "eval.batch_size")


def strict(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (containers recursively)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def write_json(path: str, payload: dict) -> None:
    """Strict JSON (no NaN/Infinity), written to ``path.tmp`` and renamed over ``path``."""
    text = json.dumps(strict(payload), indent=2, sort_keys=True, allow_nan=False)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str) -> dict | None:
    """The parsed file, or None when it does not exist."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(stored: dict | None, config) -> list[str]:
    """Fields (outside NON_SEMANTIC_FIELDS) whose value in a stored results.json's config differs."""
    if stored is None:
        return ["<no config in results.json>"]
    # JSON round trip on both sides: tuples -> lists (a freshly trained cell returns its summary
    # with the config's tuples, one read back from results.json has lists).
    now = _flatten(json.loads(json.dumps(strict(config.to_dict()))))
    old = _flatten(json.loads(json.dumps(strict(stored))))
    return sorted(k for k in set(now) | set(old)
                  if k not in NON_SEMANTIC_FIELDS and now.get(k, "<missing>") != old.get(k, "<missing>"))


def finished_run(workdir: str, config) -> dict | None:
    """The stored summary when ``workdir`` holds a finished run of ``config`` (same values in every
    field outside NON_SEMANTIC_FIELDS), else None (no results.json, or one of another config: a
    longer schedule or other evaluation settings continue from the run's checkpoint)."""
    stored = read_json(os.path.join(workdir, RESULTS))
    if stored is None or config_differences(stored.get("config"), config):
        return None
    return stored


class WorkdirError(ValueError):
    """The workdir cannot be created or written (one line)."""


def check_writable(workdir: str) -> None:
    """Checks, without creating anything, that ``workdir`` can be created and written.

    An existing workdir must be a writable directory (a probe file is created and removed); a new
    one needs its nearest existing ancestor to be a writable directory. Raises WorkdirError naming
    the workdir and the reason (a file in the way, a read-only filesystem, no permission), so a
    run fails before loading data or compiling.
    """
    path = os.path.abspath(workdir)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise WorkdirError(f"--workdir {workdir} is not a directory")
        try:
            with tempfile.NamedTemporaryFile(dir=path, prefix=".write_check"):
                pass
        except OSError as e:
            raise WorkdirError(f"--workdir {workdir} is not writable: {e.strerror or e}") from None
        return
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise WorkdirError(f"--workdir {workdir} cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):  # also false on a read-only filesystem
        raise WorkdirError(f"--workdir {workdir} cannot be created: {parent} is not writable")
