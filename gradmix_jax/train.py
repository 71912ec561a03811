"""Command line: ``python -m gradmix_jax.train --config configs/digits.py [--workdir DIR]``.

Only parses flags; the work is ``gradmix_jax.trainer.train_and_evaluate``. Override any config
field with ``--config.a.b=value`` (e.g. ``--config.mixing.method=cutmix``); ``--print_config``
prints the resolved config and exits; ``--reevaluate`` evaluates a finished run again.
"""

from __future__ import annotations

import datetime
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default: runs/<config>-<time>).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-process runs: host:port of process 0 (not needed on "
    "Cloud TPU or SLURM, where JAX finds it).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process runs: process count.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index.")
_REEVALUATE = flags.DEFINE_bool(
    "reevaluate", False, "The workdir holds a finished run of this config: evaluate its final "
    "checkpoint again and rewrite results.json (without it such a run is left untouched).")
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False, "Print the resolved config (file + --config.* overrides) and exit.")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _PRINT_CONFIG.value:
        print(_CONFIG.value)
        return
    if not flags.FLAGS["verbosity"].present:
        # Orbax and JAX log every save and backend probe at INFO; keep the terminal to the progress
        # bar and results unless --verbosity asks for more.
        logging.set_verbosity(logging.WARNING)
    from gradmix_jax import parallel, trainer  # imported late so --help stays fast
    from gradmix_jax.checkpoint import CheckpointError
    from gradmix_jax.data import DatasetNotPreparedError
    from gradmix_jax.validation import ConfigError

    parallel.maybe_initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    config = _CONFIG.value
    workdir = _WORKDIR.value
    import jax
    if workdir is None and jax.process_count() > 1:
        print("error: --workdir is required with several processes (they must share it)",
              file=sys.stderr)
        sys.exit(2)
    if workdir is None:
        name = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
        workdir = os.path.join("runs", f"{name}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    try:
        summary = trainer.train_and_evaluate(config, workdir, reevaluate=_REEVALUATE.value)
    except (ConfigError, DatasetNotPreparedError, CheckpointError, trainer.NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except trainer.TrainingPreempted as e:
        print(str(e), file=sys.stderr)
        sys.exit(0)
    if jax.process_index() != 0:
        return
    if summary.get("already_finished"):
        print(f"already finished at step {summary['num_steps']}: "
              f"{os.path.join(workdir, 'results.json')} (--reevaluate evaluates it again)")
        return
    auroc = "n/a (closed set)" if summary["auroc"] is None else f"{summary['auroc']:.4f}"
    print(f"open-set AUROC {auroc}, closed-set accuracy {summary['closed_set_accuracy']:.4f}, "
          f"{summary['num_steps']} steps in {summary['train_seconds']:.1f} s")
    print(f"results: {os.path.join(workdir, 'results.json')}")


if __name__ == "__main__":
    app.run(main)
