"""Command line: ``python -m gradmix_jax.train --config configs/digits.py [--workdir DIR]``.

Only parses flags; the work is ``gradmix_jax.training.trainer.train_and_evaluate``. Override any config
field with ``--config.a.b=value`` (e.g. ``--config.mixing.method=cutmix``); ``--print_config``
prints the resolved config and exits; ``--reevaluate`` evaluates a finished run again.
"""

from __future__ import annotations

import ast
import datetime
import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

#: The summary lines name the classes of a split with at most this many (known + unknown).
MAX_NAMED_CLASSES = 20

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default: runs/<config>-<time>).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "Multi-process runs: host:port of process 0 (not needed on "
    "Cloud TPU or SLURM, where JAX finds it).",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process runs: process count.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index.")
_REEVALUATE = flags.DEFINE_bool(
    "reevaluate",
    False,
    "The workdir holds a finished run of this config: evaluate its final "
    "checkpoint again and rewrite results.json (without it such a run is left untouched).",
)
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False, "Print the resolved config (file + --config.* overrides) and exit."
)
flags.mark_flags_as_required(["config"])


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _one_line(error: Exception) -> str:
    """An exception's message on one line (ml_collections nests a KeyError's repr in it)."""
    text = str(error)
    if len(text) > 1 and text[0] == text[-1] == "'":
        try:
            text = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            pass
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def parse_flags(argv):
    """absl's flag parsing, with one error line and exit 2 instead of a traceback or usage text
    (an unknown --config.* field fails here: config_flags applies overrides while parsing)."""
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # flags.Error, or AttributeError/KeyError/TypeError from an override
        _fail(f"{_one_line(e)} (list the config fields with --print_config)")


def load_config():
    """The config file with its --config.* overrides, or one error line and exit 2 (a missing or
    broken file surfaces on first access: config_flags loads it lazily)."""
    try:
        config = _CONFIG.value
        config.to_dict()
        return config
    except Exception as e:  # OSError (file), errors raised by the file's get_config()
        _fail(f"--config {flags.FLAGS['config'].config_filename}: {_one_line(e)}")


def main(argv):
    t_start = time.perf_counter()
    if len(argv) > 1:
        _fail(f"unexpected arguments: {argv[1:]} (flags are --name=value)")
    from gradmix_jax.training.config_base import recipe_fields, resolve_recipe

    config = resolve_recipe(load_config())  # gradmix.recipe fills the fields left unset
    if _PRINT_CONFIG.value:
        print(config)
        overridden = recipe_fields(config)
        print(
            f"# gradmix.recipe={config.gradmix.get('recipe')!r} set the fields left unset; "
            f"set otherwise: {overridden or 'none'}"
        )
        return
    if not flags.FLAGS["verbosity"].present:
        # Orbax and JAX log every save and backend probe at INFO; keep the terminal to the progress
        # bar and results unless --verbosity asks for more.
        logging.set_verbosity(logging.WARNING)
    from gradmix_jax.data import DatasetNotPreparedError, FolderNotFoundError
    from gradmix_jax.data.images import DataError
    from gradmix_jax.training import parallel, trainer  # imported late so --help stays fast
    from gradmix_jax.training.checkpoint import CheckpointError
    from gradmix_jax.training.validation import ConfigError

    parallel.maybe_initialize_distributed(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
    )
    workdir = _WORKDIR.value
    import jax

    if workdir is None and jax.process_count() > 1:
        print(
            "error: --workdir is required with several processes (they must share it)",
            file=sys.stderr,
        )
        sys.exit(2)
    if workdir is None:
        name = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
        workdir = os.path.join("runs", f"{name}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    try:
        summary = trainer.train_and_evaluate(config, workdir, reevaluate=_REEVALUATE.value)
    except (
        ConfigError,
        DatasetNotPreparedError,
        FolderNotFoundError,
        DataError,
        CheckpointError,
        trainer.NonFiniteLossError,
    ) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except trainer.TrainingPreempted as e:
        print(str(e), file=sys.stderr)
        sys.exit(0)
    if jax.process_index() != 0:
        return
    if summary.get("already_finished"):
        print(
            f"already finished at step {summary['num_steps']}: "
            f"{os.path.join(workdir, 'results.json')} (--reevaluate evaluates it again)"
        )
        return
    from gradmix_jax.training.openset_eval import SCORES, score_key

    auroc = "n/a (closed set)" if summary["auroc"] is None else f"{summary['auroc']:.4f}"
    features = summary["config"]["eval"]["features"]
    others = ", ".join(
        f"{SCORES[s]} {summary[score_key(s, features)]:.4f}"
        for s in ("knn", "nno", "gda", "msp")
        if s != summary["score"] and summary.get(score_key(s, features)) is not None
    )
    print(
        f"open-set AUROC {auroc} ({SCORES[summary['score']]}"
        f"{'; also ' + others if others else ''}), "
        f"closed-set accuracy {summary['closed_set_accuracy']:.4f}; "
        f"{summary['num_steps']} steps: {summary['train_seconds']:.1f} s of training after "
        f"compilation, {time.perf_counter() - t_start:.1f} s for the whole command"
    )
    names = summary.get("class_names")
    if names and len(names["known"]) + len(names["unknown"]) <= MAX_NAMED_CLASSES:
        print(
            f"known classes: {', '.join(names['known'])}; "
            f"unknown: {', '.join(names['unknown']) or 'none (closed set)'}"
        )
    print(
        f"results: {os.path.join(workdir, 'results.json')} (history, checkpoints/ and "
        f"tensorboard/ beside it)"
    )


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
