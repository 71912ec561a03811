"""Files on any filesystem ``etils.epath`` supports (local, ``gs://``, ...), written atomically.

``as_path`` turns a user-given path into an ``epath.Path``; the ``write_*`` functions write a
temporary file and rename it over the target, so a kill during a write leaves the previous file
intact; JSON is strict (NaN and ±Inf are written as null, so every file parses with a strict JSON
parser). The data loaders, the trainer and the experiment scripts all write through here.
"""

from __future__ import annotations

import io
import json
import math
import os
from typing import Any

from etils import epath

__all__ = [
    "strict",
    "is_local",
    "as_path",
    "write_bytes_atomic",
    "write_text_atomic",
    "write_csv",
    "write_json",
    "read_json",
    "save_figure",
]


def strict(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (containers recursively)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def is_local(path: str | os.PathLike) -> bool:
    """False for URI paths (``gs://``, ``s3://``, ...), True for the local filesystem."""
    return "://" not in os.fspath(path)


def as_path(path: str | os.PathLike) -> epath.Path:
    """``path`` as an ``epath.Path``: absolute when local, unchanged when a URI such as ``gs://``.

    Every file the program reads or writes under a user-given folder goes through this, so a
    workdir or data directory can live on any filesystem ``etils.epath`` supports.
    """
    p = epath.Path(path)
    return p.absolute() if is_local(path) else p


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``path.tmp`` and renames it over ``path`` (made durable first when local); the
    folder is made if needed."""
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        if is_local(path):
            f.flush()
            os.fsync(f.fileno())
    tmp.replace(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_csv(path: str | os.PathLike, header: list, rows: list[list]) -> None:
    """A CSV file (header row, then ``rows``), written atomically."""
    import csv

    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def write_json(path: str | os.PathLike, payload: dict) -> None:
    """Strict JSON (no NaN/Infinity), written to ``path.tmp`` and renamed over ``path``."""
    write_text_atomic(path, json.dumps(strict(payload), indent=2, sort_keys=True, allow_nan=False))


def read_json(path: str | os.PathLike) -> dict | None:
    """The parsed file, or None when it does not exist."""
    path = as_path(path)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> None:
    """``fig.savefig`` to any epath filesystem (the format comes from the file's suffix)."""
    path = as_path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", **savefig_kwargs)
    write_bytes_atomic(path, buf.getvalue())
