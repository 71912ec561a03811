"""Regenerates the paper's Table 6 / Fig. 6 (linear probe of self-supervised encoders).

    python -m experiments.table6_ssl_linear_probe --out runs/table6          # TinyImageNet, 24 cells
    python -m experiments.table6_ssl_linear_probe --out runs/t6 --dataset imagenet100 \
        --archs resnet18 --set data.data_dir=/path/to/imagenet              # Table 6 itself, 8 cells
    python -m experiments.table6_ssl_linear_probe --out runs/t6 --objectives simclr --archs resnet18
    python -m experiments.table6_ssl_linear_probe --out runs/t6 --smoke     # digits, ~1-2 minutes

Paper setting (§4.5, App. G): SimCLR and MoCo v1 (queue 4096, momentum 0.999), ResNet18/34/50,
output dimension 128, 200 epochs, batch 256, trained without extra mixing and with Mixup, CutMix
or GradMix (L = L_ssl + γ²·L_ssl^aug); then a linear classifier on the frozen encoder features
(top-1 / top-5). Fig. 6 is TinyImageNet (no numbers in the text); Table 6 is ImageNet100 with
ResNet18: the paper columns are its numbers, the same setting for ``--dataset imagenet100``, for
reference only on the other datasets.

Data: full TinyImageNet (``data.closed_set=True``, ``data.closed_set_classes=200``, as App. G);
training images for both SSL and the probe, the 10,000 validation images as test set.
``--dataset imagenet100``: ``configs/imagenet100_ssl.py`` (CMC's 100 classes, 224 px, ImageNet
stem, 100 epochs; streamed from an ImageNet folder or TFDS imagenet2012 in ``data.data_dir``;
ImageNet's 5,000 validation images of those classes as test set). ``--smoke``: digits (known
classes of split 0), tiny model, 3 steps.

Linear probe (gradmix_jax.evaluation.linear_probe): standardised pooled encoder features, SGD with
momentum 0.9 and cosine decay, ``--probe-*`` flags. Each cell trains in
``OUT/<dataset>/<objective>/<arch>/<mixing>`` (skipped when results.json exists); the probe result is
cached in ``linear_probe.json`` there (recomputed when the probe settings change). Writes
``OUT/table6.{md,csv}`` and ``OUT/fig6.png``.
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
    scale_note,
    write_table,
)
from experiments.eval_common import Cell, cached_json, cell_data, pct
from gradmix_jax.files import save_figure

# Table 6 (ImageNet100, ResNet18), (Acc@1, Acc@5) in percent.
PAPER_TABLE6 = {
    ("simclr", "none"): (48.1, 75.78),
    ("simclr", "mixup"): (49.32, 77.43),
    ("simclr", "cutmix"): (50.61, 78.67),
    ("simclr", "gradmix"): (54.8, 81.36),
    ("moco", "none"): (40.31, 66.54),
    ("moco", "mixup"): (42.53, 67.1),
    ("moco", "cutmix"): (44.87, 69.21),
    ("moco", "gradmix"): (47.75, 72.37),
}
OBJECTIVES = ("simclr", "moco")
ARCHS = ("resnet18", "resnet34", "resnet50")
MIXINGS = ("none", "mixup", "cutmix", "gradmix")
DATASETS = ("tinyimagenet", "imagenet100", "digits")
MIXING_LABEL = {"none": "-", "mixup": "+ Mixup", "cutmix": "+ CutMix", "gradmix": "+ GradMix"}
SSL_EPOCHS = 200  # App. G, Table 9 (TinyImageNet, every architecture)
# The config file of each dataset (configs/<name>.py); imagenet100_ssl sets Table 9 itself.
CONFIGS = {"tinyimagenet": "tinyimagenet", "imagenet100": "imagenet100_ssl", "digits": "digits"}


def cell_config(dataset: str, objective: str, arch: str, mixing: str, overrides: dict):
    config = load_config(CONFIGS[dataset])
    config.objective = objective
    config.model.name = arch
    config.mixing.method = mixing
    if dataset == "tinyimagenet":
        config.data.closed_set = True
        config.data.closed_set_classes = 200  # full TinyImageNet (App. G)
        config.num_epochs = SSL_EPOCHS
        config.num_steps = 0
        if "moco" in config:  # App. G: queue 4096, key-encoder momentum 0.999
            config.moco.queue_size = 4096
            config.moco.momentum = 0.999
    apply_overrides(config, overrides)
    return config


def probe(cell: Cell, args, key_seed: int) -> dict:
    import jax
    import numpy as np

    from gradmix_jax.data import images as image_sources
    from gradmix_jax.evaluation import linear_probe

    data = cell_data(cell.config)
    known = data.test_is_known
    result = linear_probe(
        cell.features(data.train_images, args.features),
        data.train_labels,
        cell.features(image_sources.take(data.test_images, np.flatnonzero(known)), args.features),
        data.test_labels[known],
        data.num_known,
        key=jax.random.key(key_seed),
        epochs=args.probe_epochs,
        batch_size=args.probe_batch_size,
        learning_rate=args.probe_lr,
        weight_decay=args.probe_weight_decay,
        normalize=args.probe_normalize,
    )
    return {
        **result,
        "num_train": int(len(data.train_labels)),
        "num_test": int(known.sum()),
        "num_classes": data.num_known,
    }


def plot_fig6(path: str, results: dict, title: str) -> None:
    """Top-1 / top-5 bars per mixing method, one panel per (objective, architecture)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = list(dict.fromkeys((o, a) for o, a, _ in results))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.4), squeeze=False)
    for ax, (objective, arch) in zip(axes[0], panels):
        mixings = [m for m in MIXINGS if (objective, arch, m) in results]
        x = np.arange(len(mixings))
        for j, metric in enumerate(("top1", "top5")):
            ax.bar(
                x + (j - 0.5) * 0.4,
                [100 * results[(objective, arch, m)][metric] for m in mixings],
                0.4,
                label=f"Acc@{metric[3:]}",
            )
        ax.set_xticks(x, [MIXING_LABEL[m] for m in mixings])
        ax.set_title(f"{objective} {arch}")
        ax.set_ylabel("linear-probe accuracy (%)")
        ax.set_ylim(0, 118)  # room for the legend above 100%
        ax.legend(loc="upper center", ncol=2, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def main(argv=None, *, train_fn=None, load_fn=None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        default=None,
        help="default tinyimagenet; digits with --smoke",
    )
    parser.add_argument(
        "--objectives",
        default=None,
        help="comma list of simclr,moco (default: those the train step implements)",
    )
    parser.add_argument(
        "--archs",
        default=None,
        help="comma list (default: " + ",".join(ARCHS) + "; resnet18 with --smoke)",
    )
    parser.add_argument(
        "--mixings",
        default=None,
        help="comma list (default: " + ",".join(MIXINGS) + "; none,gradmix with --smoke)",
    )
    parser.add_argument(
        "--features",
        choices=("encoder", "projection"),
        default="encoder",
        help="probed features: pooled backbone (standard) or projection z",
    )
    parser.add_argument("--probe-epochs", type=int, default=100)
    parser.add_argument("--probe-batch-size", type=int, default=256)
    parser.add_argument("--probe-lr", type=float, default=0.1)
    parser.add_argument("--probe-weight-decay", type=float, default=0.0)
    parser.add_argument(
        "--probe-normalize", choices=("standardize", "l2", "none"), default="standardize"
    )
    parser.add_argument("--probe-seed", type=int, default=0)
    add_common_args(parser)
    args = parser.parse_args(argv)

    dataset = args.dataset or ("digits" if args.smoke else "tinyimagenet")
    objectives = (args.objectives or ",".join(OBJECTIVES)).split(",")
    archs = (args.archs or ("resnet18" if args.smoke else ",".join(ARCHS))).split(",")
    mixings = (args.mixings or ("none,gradmix" if args.smoke else ",".join(MIXINGS))).split(",")
    for name, values, allowed in (
        ("--objectives", objectives, OBJECTIVES),
        ("--archs", archs, ARCHS),
        ("--mixings", mixings, MIXINGS),
    ):
        bad = [v for v in values if v not in allowed]
        if bad:
            raise SystemExit(f"error: {name} entries must be in {list(allowed)}, got {bad}")

    overrides = overrides_from_args(args)
    settings = {
        "features": args.features,
        "epochs": args.probe_epochs,
        "batch_size": args.probe_batch_size,
        "learning_rate": args.probe_lr,
        "weight_decay": args.probe_weight_decay,
        "normalize": args.probe_normalize,
        "seed": args.probe_seed,
    }
    results, rows = {}, []
    for objective in objectives:
        for arch in archs:
            for mixing in mixings:
                config = cell_config(dataset, objective, arch, mixing, overrides)
                cell = Cell(
                    os.path.join(args.out, dataset, objective, arch, mixing),
                    config,
                    train_fn,
                    load_fn,
                )
                r = cached_json(
                    os.path.join(cell.workdir, "linear_probe.json"),
                    settings,
                    lambda: probe(cell, args, args.probe_seed),
                )
                results[(objective, arch, mixing)] = r
                print(
                    f"{objective} {arch} {mixing}: top1 {r['top1']:.4f} top5 {r['top5']:.4f}",
                    flush=True,
                )
                paper = PAPER_TABLE6.get((objective, mixing)) if arch == "resnet18" else None
                rows.append(
                    [
                        objective,
                        arch,
                        MIXING_LABEL[mixing],
                        pct(r["top1"]),
                        pct(r["top5"]),
                        pct(r["train_top1"]),
                        f"{paper[0]:.2f}" if paper else "-",
                        f"{paper[1]:.2f}" if paper else "-",
                    ]
                )
    first = next(iter(results.values()))
    notes = [
        f"Linear probe on {dataset} ({first['num_classes']} classes, {first['num_train']} train / "
        f"{first['num_test']} test images), {args.features} features, settings {settings}.",
        "Paper columns: Table 6 = ImageNet100, ResNet18"
        + (
            ", the same setting."
            if dataset == "imagenet100"
            else " (Fig. 6's TinyImageNet values are not given as numbers); reference only, "
            "not the same dataset."
        ),
    ]
    if first["num_classes"] < 5:
        notes.append(
            f"Acc@5 with {first['num_classes']} classes uses top-{first['num_classes']} (= 100%)."
        )
    write_table(
        os.path.join(args.out, "table6"),
        [
            "objective",
            "architecture",
            "augmentation",
            "Acc@1 % (ours)",
            "Acc@5 % (ours)",
            "train Acc@1 % (ours)",
            "Acc@1 % (paper, ImageNet100)",
            "Acc@5 % (paper, ImageNet100)",
        ],
        rows,
        "Table 6: linear probe of self-supervised encoders",
        notes + scale_note(args, overrides),
    )
    plot_fig6(
        os.path.join(args.out, "fig6.png"),
        results,
        f"Linear probe on {dataset} (Fig. 6)" + (" - smoke scale" if args.smoke else ""),
    )
    return 0


if __name__ == "__main__":
    from experiments.common import main_guard

    sys.exit(main_guard(main))
