"""AUROC of Gaussian open-set scores between NNO and GDA, read from finished runs' checkpoints.

    python -m experiments.covariance_shrinkage --weights 0,0.25,0.5,0.75,1 \
        --out docs/results/tuning_fashion_mnist/shrinkage.json \
        docs/results/tuning_fashion_mnist/recipe_seed1/fashion_mnist_cpu/none/split*/seed1 ...

Each workdir is a finished run (``results.json`` and its final checkpoint). Its features
(``eval.features``) of its own train and test data are scored by ``osr.gaussian_scores`` with
each ``class_weight`` (1 = GDA, each class its own covariance; 0 = one shared covariance, which
ranks as NNO does) and by NNO itself (``osr.mahalanobis_scores``), the evaluation's rule. Prints
one row per run and writes them as JSON (``--out``); nothing is trained and no workdir is changed.
Used to choose the headline score on the validation hold-out (docs/tuning_fashion_mnist.md).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from experiments.common import ArgumentParser, main_guard


def score_run(workdir: str, weights: list[float]) -> dict:
    """{'workdir', 'split', 'seed', 'nno', 'class_weight=<w>': AUROC ...} of one finished run."""
    from gradmix_jax import metrics, osr
    from gradmix_jax.training.trained import final_features

    trained, data, train_f, test_f = final_features(workdir)
    known = data.test_is_known

    def auroc(scores) -> float:
        scores = np.asarray(scores)
        return float(metrics.auroc(scores[known], scores[~known]))

    row = {
        "workdir": workdir,
        "split": trained.config.data.split,
        "seed": trained.config.seed,
        "validation": bool(trained.config.data.validation),
        "nno": auroc(osr.mahalanobis_scores(train_f, data.train_labels, test_f, data.num_known)[0]),
    }
    for w in weights:
        scores = osr.gaussian_scores(
            train_f, data.train_labels, test_f, data.num_known, class_weight=w
        )[0]
        row[f"class_weight={w:g}"] = auroc(scores)
    return row


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", help="finished runs")
    parser.add_argument("--weights", default="0,0.25,0.5,0.75,1", help="comma list in [0, 1]")
    parser.add_argument("--out", required=True, help="JSON file of the rows")
    args = parser.parse_args(argv)
    try:
        weights = [float(w) for w in args.weights.split(",")]
    except ValueError:
        parser.error(f"--weights must be a comma list of numbers in [0, 1], got {args.weights!r}")
    if not all(0.0 <= w <= 1.0 for w in weights):
        parser.error(f"--weights must be a comma list of numbers in [0, 1], got {args.weights!r}")
    for workdir in args.workdirs:
        if not os.path.isfile(os.path.join(workdir, "results.json")):
            parser.error(f"workdirs: {workdir} has no results.json (not a finished run)")
    rows = []
    for workdir in args.workdirs:
        rows.append(score_run(workdir, weights))
        print(
            " ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()
            )
        )
        sys.stdout.flush()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main_guard(main))
