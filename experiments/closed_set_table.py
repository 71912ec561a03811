"""Regenerates the paper's Table 3 (closed-set accuracy of the k-NN prediction, all classes).

    python -m experiments.closed_set_table --datasets cifar10,cifar100,tinyimagenet --out runs/table3
    python -m experiments.closed_set_table --datasets digits --out runs/t3 --smoke

CIFAR10 and CIFAR100 train with the CIFAR10 protocol's settings, TinyImageNet (first 100 classes)
with its protocol's settings (paper App. D.2), all with ``data.closed_set=True``. ``digits``
(smoke/offline) trains on the digits protocol's known classes and reports their accuracy. A cell with
results.json is not rerun. Writes ``OUT/table3.md`` and ``OUT/table3.csv``.
"""

from __future__ import annotations

import os
import sys

from experiments.common import (
    ArgumentParser,
    add_common_args,
    apply_overrides,
    load_config,
    overrides_from_args,
    run_cell,
    scale_note,
    write_table,
)

PAPER_ACCURACY = {"cifar10": 0.941, "cifar100": 0.78, "tinyimagenet": 0.7246}
CONFIG_OF = {
    "cifar10": "cifar10",
    "cifar100": "cifar10",
    "tinyimagenet": "tinyimagenet",
    "digits": "digits",
}


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="cifar10,cifar100,tinyimagenet")
    add_common_args(parser)
    args = parser.parse_args(argv)

    from gradmix_jax.training import trainer

    overrides = overrides_from_args(args)
    rows = []
    for dataset in args.datasets.split(","):
        if dataset not in CONFIG_OF:
            raise SystemExit(
                f"error: --datasets entries must be in {list(CONFIG_OF)}, got {dataset!r}"
            )
        config = load_config(CONFIG_OF[dataset])
        cell = dict(overrides)
        if dataset != "digits":
            cell.update({"data.protocol": dataset, "data.closed_set": True})
        apply_overrides(config, cell)
        result = run_cell(os.path.join(args.out, dataset), config, trainer.train_and_evaluate)
        acc = result["closed_set_accuracy"]
        print(f"{dataset}: accuracy {acc:.4f}", flush=True)
        paper = PAPER_ACCURACY.get(dataset)
        rows.append([dataset, f"{100 * acc:.2f}", f"{100 * paper:.2f}" if paper else "-"])
    write_table(
        os.path.join(args.out, "table3"),
        ["dataset", "accuracy % (ours, k-NN)", "accuracy % (paper, GradMix)"],
        rows,
        "Table 3: closed-set classification",
        scale_note(args, overrides),
    )
    return 0


if __name__ == "__main__":
    from experiments.common import main_guard

    sys.exit(main_guard(main))
