"""Shared pieces of the experiment runners: configs by name, overrides, resumable cells, tables."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import math
import os
import sys
from typing import Any, Callable, Iterable

import ml_collections

from gradmix_jax.files import as_path, read_json, write_csv, write_text_atomic
from gradmix_jax.training.workdir import RESULTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tiny overrides for --smoke: same code path, minutes on a CPU.
SMOKE_OVERRIDES = {
    "num_steps": 3,
    "batch_size": 32,
    "model.width": 4,
    "model.feature_dim": 16,
    "data.image_size": 16,
    "log_every_steps": 1,
    "checkpoint_every_steps": 3,
    "eval.batch_size": 256,
    "progress_bar": False,
    "eval.area_images": 0,  # a compilation per cell; full-scale cells measure it
}


def add_common_args(parser) -> None:
    """--out, --smoke and --set, shared by every runner."""
    parser.add_argument("--out", required=True, help="output folder (tables, per-cell workdirs)")
    parser.add_argument("--smoke", action="store_true", help="tiny overrides: minutes on a CPU")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field in every cell",
    )


def overrides_from_args(args) -> dict[str, Any]:
    return {**(SMOKE_OVERRIDES if args.smoke else {}), **parse_overrides(args.set)}


def scale_note(args, overrides) -> list[str]:
    scale = (
        "SMOKE scale (tiny model, 3 steps): not comparable to the paper"
        if args.smoke
        else "full configs"
    )
    return [f"Scale: {scale}.", f"Overrides: {overrides or 'none'}."]


def load_config(name: str) -> ml_collections.ConfigDict:
    """``configs/<name>.py``'s get_config()."""
    path = os.path.join(ROOT, "configs", f"{name}.py")
    if not os.path.exists(path):
        raise SystemExit(f"error: no config {path}")
    spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.lock()  # as the train CLI does: an override of a field that does not exist is an error
    return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> None:
    """Sets each dotted field; a field the config does not have, or a value of the wrong type, is
    one error line (SystemExit) naming the field."""
    for dotted, value in overrides.items():
        node = config
        *path, leaf = dotted.split(".")
        if isinstance(value, str):
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                pass
        try:
            for p in path:
                node = node[p]
            if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
                raise KeyError(f"no field {dotted!r}")
            node[leaf] = value
        except (KeyError, AttributeError, TypeError, ValueError) as e:
            text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)  # no repr quotes
            message = " ".join(str(text).split())
            raise SystemExit(f"error: --set {dotted}={value!r}: {message}") from None


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit status 2, like the train CLI's; run as
    ``python -m experiments.<name>``, its usage line names that command."""

    def __init__(self, *args, **kwargs):
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if "prog" not in kwargs and spec is not None and spec.name.startswith("experiments."):
            kwargs["prog"] = f"python -m {spec.name}"
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message} (--help lists the arguments)\n")


def main_guard(main: Callable[[], int]) -> int:
    """Runs a runner's ``main`` the way the train CLI runs training: a SIGTERM (the trainer saved
    the cell's state) ends it with the resume line and exit status 0, so the same command resumes
    it; a bad input (``SystemExit("error: ...")``, a config, data or checkpoint error) is one line
    on stderr and exit status 2."""
    from gradmix_jax.data import DatasetNotPreparedError
    from gradmix_jax.training.checkpoint import CheckpointError
    from gradmix_jax.training.trainer import NonFiniteLossError, TrainingPreempted
    from gradmix_jax.training.validation import ConfigError

    try:
        return main()
    except TrainingPreempted as e:
        print(str(e), file=sys.stderr)
        return 0
    except SystemExit as e:
        if not isinstance(e.code, str):
            raise
        print(e.code, file=sys.stderr)
        return 2
    except (ConfigError, DatasetNotPreparedError, CheckpointError, NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --set takes key=value, got {item!r}")
        out[key] = value
    return out


def parse_splits(text: str, flag: str = "--splits") -> list[int]:
    """'0-4' or '0,2,3' -> list of integers; anything else is ``SystemExit`` naming ``flag``."""
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise SystemExit(f"error: {flag} takes e.g. '0-4' or '0,2,3', got {text!r}") from None
    return out


def run_cell(
    workdir: str,
    config: ml_collections.ConfigDict,
    train: Callable[[ml_collections.ConfigDict, str], dict],
) -> dict:
    """Runs one cell unless ``workdir/results.json`` exists (then it is read back: resumable)."""
    stored = read_json(as_path(workdir) / RESULTS)
    return stored if stored is not None else train(config, workdir)


def mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    return mean, std


def write_table(
    path_stem: str, header: list[str], rows: list[list[Any]], title: str, notes: list[str] = ()
) -> None:
    """Writes ``<stem>.md`` (markdown) and ``<stem>.csv`` and prints the markdown."""
    write_csv(f"{path_stem}.csv", header, rows)
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    write_text_atomic(f"{path_stem}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
