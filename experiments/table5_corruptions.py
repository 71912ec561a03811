"""Regenerates the paper's Table 5 and Fig. 5 (accuracy drop under common corruptions).

    python -m experiments.table5_corruptions --out runs/table5 \
        --tinyimagenet-c-dir /data/Tiny-ImageNet-C                  # CIFAR-10-C (TFDS) + Tiny-ImageNet-C
    python -m experiments.table5_corruptions --out runs/t5 --smoke  # digits, SYNTHETIC corruptions

Paper setting (§4.4, App. F): SupCon+SimCLR models (ResNet18, 600 epochs, batch 256, k = 3) trained
on clean CIFAR10 (λ = 1.0) and TinyImageNet (λ = 1.2), without (mixing.method=none) and with GradMix;
accuracy = Algorithm 1's k-NN prediction with the clean training features. D_{c,s} = A_clean -
A_{c,s} for the 15 corruptions x 5 severities; Table 5 = D̄_s (mean over corruptions), Fig. 5 =
D̄_c (mean over severities).

Corruption sources (``--source``; auto picks the first that applies): CIFAR10 -> TFDS
``cifar10_corrupted`` (prepared once, never downloaded); TinyImageNet -> the Tiny-ImageNet-C folder
(``--tinyimagenet-c-dir``); digits (smoke) -> ``synthetic``, a JAX re-implementation of a subset of
Hendrycks' corruption functions applied to the clean test set. Synthetic results are labelled as
such in every output; they are not the benchmark.

TinyImageNet: ``data.closed_set`` with ``data.closed_set_classes=200`` trains on all 200 classes,
as Tiny-ImageNet-C covers them (the paper's §4.4 uses the full dataset).

Each (dataset, mixing) trains in ``OUT/<dataset>/<mixing>`` (skipped when results.json exists); the
accuracies are cached in ``OUT/<dataset>/<mixing>/corruptions.json`` after every corruption, so an
interrupted evaluation resumes. Writes ``OUT/table5.{md,csv}`` (D̄_s),
``OUT/table5_per_corruption.{md,csv}`` (D̄_c) and ``OUT/fig5.png``.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from experiments.common import (
    ArgumentParser,
    add_common_args,
    apply_overrides,
    load_config,
    overrides_from_args,
    parse_splits,
    scale_note,
    write_table,
)
from experiments.eval_common import Cell, cell_data, pct, read_json, write_json
from gradmix_jax.files import save_figure

# Table 5, D̄_s in percent for severities 1..5 and "Avg.".
PAPER_TABLE5 = {
    ("cifar10", "none"): [7.01, 11.18, 15.93, 23.01, 33.29, 18.08],
    ("cifar10", "gradmix"): [6.66, 10.04, 14.03, 20.49, 28.64, 15.97],
    ("tinyimagenet", "none"): [22.61, 37.02, 39.43, 46.23, 49.31, 38.81],
    ("tinyimagenet", "gradmix"): [25.25, 31.49, 38.91, 45.23, 48.91, 37.36],
}
DATASETS = ("cifar10", "tinyimagenet", "digits")
MIXINGS = ("none", "gradmix")
SOURCES = ("auto", "tfds", "folder", "synthetic")
SIMCLR_WEIGHT = {"cifar10": 1.0, "tinyimagenet": 1.2}  # App. F (λ), differs from Table 8
SMOKE_CORRUPTIONS = "gaussian_noise,defocus_blur,contrast,pixelate"  # noise, blur, digital
MIXING_LABEL = {"none": "w/o GradMix", "gradmix": "GradMix"}


def cell_config(dataset: str, mixing: str, overrides: dict):
    config = load_config(dataset)
    if dataset in SIMCLR_WEIGHT:
        config.data.closed_set = True
        if dataset == "tinyimagenet":
            config.data.closed_set_classes = 200  # all classes, as Tiny-ImageNet-C has
        config.simclr_weight = SIMCLR_WEIGHT[dataset]
    config.mixing.method = mixing
    apply_overrides(config, overrides)
    return config


def resolve_source(dataset: str, source: str) -> str:
    if source == "auto":
        return {"cifar10": "tfds", "tinyimagenet": "folder", "digits": "synthetic"}[dataset]
    allowed = {
        "cifar10": ("tfds", "synthetic"),
        "tinyimagenet": ("folder", "synthetic"),
        "digits": ("synthetic",),
    }[dataset]
    if source not in allowed:
        raise SystemExit(
            f"error: --source for {dataset} must be one of {list(allowed)}, got {source!r}"
        )
    return source


class CorruptedTestSets:
    """Corrupted versions of the cell's known-class test set, labels in the cell's 0..K-1 order."""

    def __init__(
        self, dataset: str, source: str, data, config, tinyimagenet_c_dir: str | None, seed: int
    ):
        self.dataset, self.source, self.data, self.config = dataset, source, data, config
        self.tinyimagenet_c_dir, self.seed = tinyimagenet_c_dir, seed
        known = data.test_is_known
        self.clean_images, self.clean_labels = data.test_images[known], data.test_labels[known]

    def get(self, corruption: str, severity: int) -> tuple[np.ndarray, np.ndarray]:
        from gradmix_jax.data import corruptions, remap_labels

        if self.source == "synthetic":
            import jax

            # One key per (seed, corruption, severity), independent of the order of --corruptions.
            index = corruptions.SYNTHETIC_CORRUPTIONS.index(corruption)
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), index), severity)
            return (
                corruptions.synthetic_corruption(key, self.clean_images, corruption, severity),
                self.clean_labels,
            )
        data_dir = self.config.data.data_dir or None
        if self.source == "tfds":
            images, labels = corruptions.load_cifar10_corrupted(corruption, severity, data_dir)
        else:
            if not self.tinyimagenet_c_dir:
                raise SystemExit(
                    "error: --tinyimagenet-c-dir is required for TinyImageNet "
                    "(or use --source synthetic)"
                )
            images, labels = corruptions.load_tinyimagenet_corrupted(
                self.tinyimagenet_c_dir, corruption, severity, data_dir=data_dir
            )
        # Keep the classes the cell was trained on; source ids -> the cell's label order.
        keep = np.isin(labels, self.data.known_classes)
        return images[keep], remap_labels(labels[keep], self.data.known_classes)


def evaluate_cell(
    cell: Cell,
    dataset: str,
    source: str,
    corruptions_: list[str],
    severities: list[int],
    k: int,
    tinyimagenet_c_dir: str | None,
    seed: int,
) -> dict:
    """Accuracies of one cell, cached in corruptions.json after every corruption."""
    from gradmix_jax.evaluation import knn_accuracy

    path = os.path.join(cell.workdir, "corruptions.json")
    settings = {"source": source, "k": k, "features": cell.config.eval.features, "seed": seed}
    stored = read_json(path)
    if stored is None or stored.get("settings") != settings:
        stored = {"settings": settings, "accuracy": {}}
    todo = [
        (c, s) for c in corruptions_ for s in severities if f"{c}/{s}" not in stored["accuracy"]
    ]
    if not todo and "clean_accuracy" in stored:
        return stored
    data = cell_data(cell.config)
    train_features = cell.features(data.train_images)
    tests = CorruptedTestSets(dataset, source, data, cell.config, tinyimagenet_c_dir, seed)

    def accuracy(test_features, labels):
        return knn_accuracy(
            train_features, data.train_labels, test_features, labels, data.num_known, k=k
        )

    if "clean_accuracy" not in stored:
        stored["clean_accuracy"] = accuracy(cell.features(tests.clean_images), tests.clean_labels)
        stored["num_test_images"] = int(len(tests.clean_labels))
        write_json(path, stored)
    for c in dict.fromkeys(c for c, _ in todo):
        # All missing severities of one corruption go through the encoder in one call (fewer
        # padded batches); the result is stored after each corruption.
        sets = {s: tests.get(c, s) for cc, s in todo if cc == c}
        features = cell.features(np.concatenate([images for images, _ in sets.values()]))
        start = 0
        for s, (images, labels) in sets.items():
            stored["accuracy"][f"{c}/{s}"] = accuracy(features[start : start + len(images)], labels)
            start += len(images)
            print(
                f"{cell.workdir}: {c} severity {s}: accuracy {stored['accuracy'][f'{c}/{s}']:.4f}",
                flush=True,
            )
        write_json(path, stored)
    return stored


def plot_fig5(path: str, per_corruption: dict, corruptions_: list[str], title: str) -> None:
    """Bar plot of D̄_c per corruption, without vs with GradMix, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(d for d, _ in per_corruption))
    size = (max(7.0, 0.7 * len(corruptions_)), 1.0 + 3.2 * len(datasets))
    fig, axes = plt.subplots(len(datasets), 1, figsize=size, squeeze=False)
    x = np.arange(len(corruptions_))
    for ax, dataset in zip(axes[:, 0], datasets):
        mixings = [m for m in MIXINGS if (dataset, m) in per_corruption]
        width = 0.8 / max(len(mixings), 1)
        for j, mixing in enumerate(mixings):
            values = [100 * per_corruption[(dataset, mixing)][c] for c in corruptions_]
            ax.bar(
                x + (j - (len(mixings) - 1) / 2) * width, values, width, label=MIXING_LABEL[mixing]
            )
        ax.set_xticks(x, [c.replace("_", " ") for c in corruptions_], rotation=45, ha="right")
        ax.set_ylabel("mean accuracy drop D̄_c (%)")
        ax.set_title(dataset)
        ax.legend()
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def main(argv=None, *, train_fn=None, load_fn=None) -> int:
    from gradmix_jax.data import corruptions as corruption_lib
    from gradmix_jax.evaluation import corruption_accuracy_drops

    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets",
        default=None,
        help="comma list of "
        + ",".join(DATASETS)
        + " (default: cifar10,tinyimagenet; digits with --smoke)",
    )
    parser.add_argument("--mixings", default="none,gradmix")
    parser.add_argument(
        "--corruptions",
        default=None,
        help="comma list (default: the 15 benchmark corruptions; with --smoke: "
        f"{SMOKE_CORRUPTIONS})",
    )
    parser.add_argument("--severities", default="1-5")
    parser.add_argument("--source", choices=SOURCES, default="auto")
    parser.add_argument(
        "--tinyimagenet-c-dir",
        default=None,
        help="Tiny-ImageNet-C folder (<dir>/<corruption>/<severity>/<wnid>/*.JPEG)",
    )
    parser.add_argument(
        "--k", type=int, default=None, help="k of Algorithm 1 (default: config.eval.k)"
    )
    parser.add_argument(
        "--corruption-seed", type=int, default=0, help="seed of synthetic corruptions"
    )
    add_common_args(parser)
    args = parser.parse_args(argv)

    datasets = (args.datasets or ("digits" if args.smoke else "cifar10,tinyimagenet")).split(",")
    mixings = args.mixings.split(",")
    default_corruptions = SMOKE_CORRUPTIONS if args.smoke else ",".join(corruption_lib.CORRUPTIONS)
    corruptions_ = (args.corruptions or default_corruptions).split(",")
    known_names = corruption_lib.CORRUPTIONS + corruption_lib.SYNTHETIC_CORRUPTIONS
    severities = parse_splits(args.severities, "--severities")
    for name, values, allowed in (
        ("--datasets", datasets, DATASETS),
        ("--mixings", mixings, MIXINGS),
        ("--corruptions", corruptions_, known_names),
        ("--severities", severities, corruption_lib.SEVERITIES),
    ):
        bad = [v for v in values if v not in allowed]
        if bad:
            raise SystemExit(
                f"error: {name} entries must be in {list(dict.fromkeys(allowed))}, got {bad}"
            )
    sources = {d: resolve_source(d, args.source) for d in datasets}
    if "folder" in sources.values() and not args.tinyimagenet_c_dir:
        raise SystemExit(
            "error: --tinyimagenet-c-dir is required for TinyImageNet (the Tiny-ImageNet-C "
            "folder), or use --source synthetic"
        )
    for d, source in sources.items():
        if source == "synthetic":
            bad = [c for c in corruptions_ if c not in corruption_lib.SYNTHETIC_CORRUPTIONS]
            if bad:
                raise SystemExit(
                    f"error: synthetic corruptions ({d}) must be in "
                    f"{list(corruption_lib.SYNTHETIC_CORRUPTIONS)}, got {bad}"
                )
        elif any(c not in corruption_lib.CORRUPTIONS for c in corruptions_):
            raise SystemExit(
                f"error: --corruptions for {source} must be in {list(corruption_lib.CORRUPTIONS)}"
            )

    overrides = overrides_from_args(args)
    drops, notes = {}, []
    for dataset in datasets:
        for mixing in mixings:
            config = cell_config(dataset, mixing, overrides)
            cell = Cell(os.path.join(args.out, dataset, mixing), config, train_fn, load_fn)
            k = args.k or config.eval.k
            stored = evaluate_cell(
                cell,
                dataset,
                sources[dataset],
                corruptions_,
                severities,
                k,
                args.tinyimagenet_c_dir,
                args.corruption_seed,
            )
            accuracy = {
                (c, s): stored["accuracy"][f"{c}/{s}"] for c in corruptions_ for s in severities
            }
            drops[(dataset, mixing)] = corruption_accuracy_drops(stored["clean_accuracy"], accuracy)
            summary = drops[(dataset, mixing)]
            write_json(
                os.path.join(cell.workdir, "corruption_drops.json"),
                {
                    "source": sources[dataset],
                    "synthetic": sources[dataset] == "synthetic",
                    "clean_accuracy": stored["clean_accuracy"],
                    "mean_drop": summary["mean"],
                    "per_severity": {str(s): v for s, v in summary["per_severity"].items()},
                    "per_corruption": summary["per_corruption"],
                    "drops": {f"{c}/{s}": v for (c, s), v in summary["drops"].items()},
                },
            )
            print(
                f"{dataset} {mixing}: clean {stored['clean_accuracy']:.4f}, mean drop "
                f"{summary['mean']:.4f}",
                flush=True,
            )
            notes.append(
                f"{dataset} {MIXING_LABEL[mixing]}: clean accuracy {pct(stored['clean_accuracy'])}% "
                f"on {stored['num_test_images']} test images (k-NN, k={k})."
            )

    synthetic = {d for d in datasets if sources[d] == "synthetic"}
    tag = {d: " SYNTHETIC" if d in synthetic else "" for d in datasets}
    if synthetic:
        notes.insert(
            0,
            f"SYNTHETIC corruptions for {sorted(synthetic)}: Hendrycks' formulas recomputed "
            "on the clean test set (gradmix_jax.data.corruptions.synthetic_corruption), not a "
            "released -C benchmark; not comparable to the paper.",
        )
    notes.insert(
        0,
        f"Corruptions ({len(corruptions_)}): {', '.join(corruptions_)}; severities {severities}. "
        "Sources: " + ", ".join(f"{d}: {s}" for d, s in sources.items()) + ".",
    )

    cells = list(drops)
    header = ["severity"] + [f"{d}{tag[d]} {MIXING_LABEL[m]} (ours)" for d, m in cells]
    paper_cells = [c for c in cells if c in PAPER_TABLE5]
    header += [f"{d} {MIXING_LABEL[m]} (paper)" for d, m in paper_cells]
    rows = []
    for i, s in enumerate(severities + ["Avg."]):
        row = [s] + [
            pct(drops[c]["mean"] if s == "Avg." else drops[c]["per_severity"][s]) for c in cells
        ]
        row += [f"{PAPER_TABLE5[c][5 if s == 'Avg.' else s - 1]:.2f}" for c in paper_cells]
        rows.append(row)
    title = "Table 5: mean accuracy drop D̄_s (%) per severity" + (
        " (SYNTHETIC corruptions)" if synthetic else ""
    )
    write_table(
        os.path.join(args.out, "table5"), header, rows, title, notes + scale_note(args, overrides)
    )

    header_c = ["corruption"] + [f"{d}{tag[d]} {MIXING_LABEL[m]} (ours)" for d, m in cells]
    rows_c = [[c] + [pct(drops[cell]["per_corruption"][c]) for cell in cells] for c in corruptions_]
    write_table(
        os.path.join(args.out, "table5_per_corruption"),
        header_c,
        rows_c,
        "Fig. 5 data: mean accuracy drop D̄_c (%) per corruption"
        + (" (SYNTHETIC corruptions)" if synthetic else ""),
        notes[: 2 if synthetic else 1],
    )
    fig_title = "Accuracy drop under corruption (Fig. 5)" + (
        "\nSYNTHETIC corruptions, smoke scale"
        if synthetic and args.smoke
        else "\nSYNTHETIC corruptions"
        if synthetic
        else ""
    )
    plot_fig5(
        os.path.join(args.out, "fig5.png"),
        {c: drops[c]["per_corruption"] for c in cells},
        corruptions_,
        fig_title,
    )
    return 0


if __name__ == "__main__":
    from experiments.common import main_guard

    sys.exit(main_guard(main))
