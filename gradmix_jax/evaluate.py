"""Command line: ``python -m gradmix_jax.evaluate --workdir DIR [--config.eval.k=5 ...]``.

Evaluates a finished run again: rebuilds its model from ``DIR/results.json``, restores the newest
checkpoint, and writes ``DIR/eval_results.json`` with every open-set score (k-NN on encoder and
projection features, NNO, GDA, MSP / max-logit / entropy where there is a classifier), the
closed-set accuracy, the intrinsic dimension and the activated area of the attribution maps
(``activated_area``: a run saved before that measurement existed gets it here, on
``eval.area_images`` known and unknown test images). Only evaluation settings may change (``eval.*`` and ``data.data_dir``): the others define
the trained model. The run's own ``results.json`` is not touched.
"""

from __future__ import annotations

import argparse
import ast
import sys
from typing import Any

EVAL_RESULTS = "eval_results.json"
# Fields an evaluation may override; everything else belongs to the trained model.
OVERRIDABLE = ("eval.", "data.data_dir")


class EvaluateError(ValueError):
    """A bad workdir or override (one line)."""


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['--config.eval.k=5', ...] -> {'eval.k': 5}; values are Python literals or strings."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key.startswith("--config.") or not sep:
            raise EvaluateError(
                f"unknown argument {item!r}: expected --workdir DIR and "
                "--config.<field>=<value> overrides"
            )
        field = key[len("--config.") :]
        if not field.startswith(OVERRIDABLE):
            raise EvaluateError(
                f"--config.{field} cannot change at evaluation: only eval.* and "
                "data.data_dir (the rest defines the trained model)"
            )
        try:
            out[field] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[field] = value
    return out


def evaluate_run(workdir: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluates ``workdir``'s newest checkpoint; writes and returns ``eval_results.json``'s dict."""
    import jax

    from gradmix_jax.files import as_path, write_json
    from gradmix_jax.training import parallel, trainer
    from gradmix_jax.training.train_step import make_eval_fn
    from gradmix_jax.training.trained import load_trained
    from gradmix_jax.training.validation import (
        ConfigError,
        validate_config,
        validate_data_dependent,
    )
    from gradmix_jax.training.workdir import RESULTS

    if not (as_path(workdir) / RESULTS).exists():
        raise EvaluateError(
            f"{workdir} holds no finished run (no {RESULTS}); train first: "
            f"python -m gradmix_jax.train --config ... --workdir {workdir}"
        )
    trained = load_trained(workdir)
    config = trained.config
    for field, value in (overrides or {}).items():
        node = config
        *path, leaf = field.split(".")
        try:
            for p in path:
                node = node[p]
            if leaf not in node:
                raise KeyError(leaf)
            node[leaf] = value
        except (KeyError, TypeError) as e:
            raise EvaluateError(f"--config.{field}: no such field or wrong type ({e})") from None
    validate_config(config, 1)
    data = trainer.load_data(config)
    try:
        validate_data_dependent(config, data.min_class_count(), len(data.train_images))
    except ConfigError as e:
        raise EvaluateError(str(e)) from None
    mesh = parallel.make_mesh(jax.local_devices()[:1])
    eval_fn = jax.jit(
        make_eval_fn(trained.model, trained.image_size, config.eval.features, *trained.input_norm)
    )
    results = trainer.evaluate(eval_fn, trained.variables, data, config, mesh)
    results["activated_area"] = trainer.activated_area(
        trained.model, trained.variables, data, config, trained.image_size, *trained.input_norm
    )
    summary = {
        **results,
        "step": trained.step,
        "protocol": config.data.protocol,
        "split": config.data.split,
        "known_classes": list(trained.known_classes),
        "overrides": dict(overrides or {}),
        "config": config.to_dict(),
    }
    write_json(as_path(workdir) / EVAL_RESULTS, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a finished run's workdir")
    args, rest = parser.parse_known_args(argv)
    from gradmix_jax.data import DatasetNotPreparedError
    from gradmix_jax.training.checkpoint import CheckpointError
    from gradmix_jax.training.validation import ConfigError

    try:
        summary = evaluate_run(args.workdir, parse_overrides(rest))
    except (
        EvaluateError,
        ConfigError,
        DatasetNotPreparedError,
        CheckpointError,
        FileNotFoundError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def show(value):
        return "n/a (closed set)" if value is None else f"{value:.4f}"

    print(
        f"step {summary['step']}: open-set AUROC {show(summary['auroc'])} (k-NN, eval.features="
        f"{summary['config']['eval']['features']}), NNO {show(summary['auroc_nno'])}, "
        f"GDA {show(summary['auroc_gda'])}, "
        f"closed-set accuracy {summary['closed_set_accuracy']:.4f}"
    )
    area = summary.get("activated_area")
    if area:
        at = area["thresholds"].index(0.5)
        print(
            "activated area S(0.5): "
            + ", ".join(
                f"{g} {area[g][at]:.3f} ({area['images'][g]} images)"
                for g in ("known", "unknown")
                if area[g] is not None
            )
        )
    print(f"results: {args.workdir.rstrip('/')}/{EVAL_RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
