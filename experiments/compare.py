"""Open-set comparison against baselines, with seed statistics (AUROC per split, method and seed).

    python -m experiments.compare --protocols fashion_mnist_cpu --splits 0-4 --seeds 0,1 \
        --methods raw,ce,none,gradmix --out docs/results/fashion_mnist_cpu
    python -m experiments.compare --protocols digits --splits 0-4 --seeds 0,1,2 --out runs/digits
    python -m experiments.compare --protocols digits --out runs/cmp --smoke     # tiny, ~2 minutes
    # CutMix and Mixup on two splits, then one table of every finished cell:
    python -m experiments.compare --methods cutmix,mixup --splits 0,1 --seeds 0,1 \
        --out docs/results/fashion_mnist_cpu
    python -m experiments.compare --methods raw,ce,none,cutmix,mixup,gradmix --finished-only \
        --out docs/results/fashion_mnist_cpu

Methods (every trained one shares the protocol config's model, schedule and view augmentation):

- ``raw``: no training; Algorithm 1's k-NN score on L2-normalised raw pixels (the floor).
- ``ce``: a cross-entropy classifier (``objective=ce``, no mixing), scored by MSP (Vaze et al. 2022:
  "a good closed-set classifier is all you need"), also max-logit.
- ``none``: SupCon + SimCLR (``supcon_ssl``) without mixing; ``cutmix``, ``mixup``, ``gradmix``: the
  same objective with that mixing method.

Every cell reports every score it supports (k-NN on encoder and on projection features, NNO, GDA,
MSP and max-logit where there is a classifier). The headline score of a row: for the contrastive
rows NNO (Mahalanobis distance to the closest class mean, one shared covariance) on encoder
features, chosen on the Fashion-MNIST validation hold-out (``data.validation``, never the test set;
docs/tuning_fashion_mnist.md): there the paper's Algorithm 1 ratio score read the encoder below
raw pixels and NNO far above it, and GDA (one covariance per class) had the lower mean over the
five splits. Algorithm 1 and GDA stay beside it in every table. MSP for the classifier (Vaze et al.'s
baseline), the k-NN score of Algorithm 1 on pixels for ``raw`` (the floor as defined by the
protocol's baseline). A cell saved before GDA joined the evaluation gets it from its final
checkpoint when it is read back (``trained.add_missing_scores``).

Cells live in ``OUT/<protocol>/<method>/split<k>/seed<s>`` (``raw``: ``.../raw/split<k>``, it has no
seed); a finished cell is read back, an interrupted one resumes from its checkpoint, and one made
with another config is refused; ``--finished-only`` trains nothing and tabulates the finished cells
(the rest are listed as missing). Writes ``OUT/compare.{md,csv,json}`` and ``OUT/compare_<protocol>.png``.

Statistics: per method, mean ± sample std (ddof 1) of the headline AUROC over all (split, seed) cells;
per split, mean ± std over seeds; per trained method, paired differences to the baseline (``none``,
or ``--baseline``) over the (split, seed) cells both have: the headline score, and every measure
(each AUROC, closed-set accuracy, the intrinsic dimension of the training features, the activated
area of the attribution maps per τ and its mean over τ) against the same measure. Each paired
difference has its mean, sample std, 95 % t-interval over the cells, Wilcoxon signed-rank p and
count of positive cells (``experiments/paired.py``); the verdict comes from the interval. A cell
saved before the activated area existed takes it from its ``eval_results.json``
(``python -m gradmix_jax.evaluate --workdir CELL``) when that evaluated its final step. The
difference to the raw-pixel floor is taken per split.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Callable

from experiments.common import (
    ArgumentParser,
    add_common_args,
    apply_overrides,
    load_config,
    overrides_from_args,
    run_cell,
    scale_note,
)
from experiments.grid_common import (
    check_protocols,
    comma_list,
    plot_grouped_bars,
    refuse_overrides,
    run_checked_cell,
    split_list,
    validate_all,
)
from experiments.paired import fmt_interval, fmt_p, mean_sd, paired_stats
from gradmix_jax.training.openset_eval import AREA_THRESHOLDS

# method -> (label, config overrides; None = no training)
METHODS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "raw": ("raw pixels", None),
    # The CE objective has no SimCLR term, so λ is inert there; pinning it keeps the CE cells (and
    # their stored config) valid when the protocol's λ is retuned for the contrastive rows.
    "ce": ("CE classifier", {"objective": "ce", "mixing.method": "none", "simclr_weight": 1.0}),
    "none": ("SupCon+SimCLR, no mixing", {"objective": "supcon_ssl", "mixing.method": "none"}),
    "cutmix": ("SupCon+SimCLR + CutMix", {"objective": "supcon_ssl", "mixing.method": "cutmix"}),
    "mixup": ("SupCon+SimCLR + Mixup", {"objective": "supcon_ssl", "mixing.method": "mixup"}),
    "gradmix": ("SupCon+SimCLR + GradMix", {"objective": "supcon_ssl", "mixing.method": "gradmix"}),
    # The authors' code's GradMix step (gradmix.recipe='authors', docs/design.md).
    "gradmix_authors": (
        "SupCon+SimCLR + GradMix, authors' recipe",
        {"objective": "supcon_ssl", "mixing.method": "gradmix", "gradmix.recipe": "authors"},
    ),
}
# method -> (results key of the headline AUROC, its name, closed-set accuracy key)
HEADLINE = {
    "raw": ("auroc", "k-NN on pixels", "closed_set_accuracy"),
    "ce": ("auroc_msp", "MSP", "closed_set_accuracy_logits"),
    # The authors' testing script: Algorithm 1 on the normalised projection.
    "gradmix_authors": ("auroc_knn_projection", "k-NN on projection", "closed_set_accuracy"),
}
CONTRASTIVE_HEADLINE = ("auroc_nno", "NNO on encoder", "closed_set_accuracy")
# Every score column of the table (results key, column name).
SCORES = (
    ("auroc_knn_encoder", "k-NN enc."),
    ("auroc_knn_projection", "k-NN proj."),
    ("auroc_nno", "NNO"),
    ("auroc_gda", "GDA"),
    ("auroc_msp", "MSP"),
    ("auroc_max_logit", "max-logit"),
)
BASELINE = "none"
# Measures computed on a cell's eval.features (the k-NN columns name their features themselves).
FEATURE_SCORES = ("auroc_nno", "auroc_gda", "intrinsic_dimension")
#: Thresholds of the activated area listed one by one in compare.md (every one is in compare.json).
AREA_TAUS_SHOWN = (0.1, 0.3, 0.5, 0.7, 0.9)
# Every measure paired between methods: (key, name, scale to the unit shown, unit).
MEASURES = (
    *((key, f"AUROC {name}", 100.0, " pts") for key, name in SCORES),
    ("closed_set_accuracy", "closed-set acc. (k-NN)", 100.0, " pts"),
    ("intrinsic_dimension", "ID of train features", 1.0, ""),
    ("area_known_mean", "activated area, known (mean over τ)", 100.0, " pts"),
    ("area_unknown_mean", "activated area, unknown (mean over τ)", 100.0, " pts"),
    *(
        (f"area_{group}@{tau}", f"activated area, {group}, τ={tau}", 100.0, " pts")
        for group in ("known", "unknown")
        for tau in AREA_THRESHOLDS
    ),
)
DEFAULT_METHODS = "raw,ce,none,gradmix"
# Fields the per-cell settings own; --set may not change them.
CELL_FIELDS = ("objective", "mixing.method", "seed", "data.split")


def headline(method: str) -> tuple[str, str, str]:
    return HEADLINE.get(method, CONTRASTIVE_HEADLINE)


def cell_config(protocol: str, method: str, split: int, seed: int, overrides: dict):
    """The protocol's config with --set overrides, then the method's fields, split and seed."""
    config = load_config(protocol)
    apply_overrides(config, overrides)
    apply_overrides(config, METHODS[method][1] or {})
    config.data.split = split
    config.seed = seed
    return config


def cell_dir(out: str, protocol: str, method: str, split: int, seed: int) -> str:
    base = os.path.join(out, protocol, method, f"split{split}")
    return base if METHODS[method][1] is None else os.path.join(base, f"seed{seed}")


def raw_pixel_results(config) -> dict[str, Any]:
    """The untrained floor: Algorithm 1's k-NN score, NNO and GDA on raw pixels.

    Pixels at the dataset's own resolution, flattened to [N, H*W*C] in [0, 1]; k = ``eval.k``.
    """
    import numpy as np

    from gradmix_jax import metrics, osr
    from gradmix_jax.training.trainer import load_data

    data = load_data(config)
    train = data.train_images.reshape(len(data.train_images), -1).astype(np.float32) / 255.0
    test = data.test_images.reshape(len(data.test_images), -1).astype(np.float32) / 255.0
    scores, preds = osr.knn_scores(train, data.train_labels, test, data.num_known, k=config.eval.k)
    scores, preds = np.asarray(scores), np.asarray(preds)
    nno = np.asarray(osr.mahalanobis_scores(train, data.train_labels, test, data.num_known)[0])
    gda = np.asarray(osr.gaussian_scores(train, data.train_labels, test, data.num_known)[0])
    known = data.test_is_known
    auroc = float(metrics.auroc(scores[known], scores[~known]))
    return {
        "auroc": auroc,
        "auroc_knn_encoder": auroc,
        "auroc_knn_projection": None,
        "auroc_nno": float(metrics.auroc(nno[known], nno[~known])),
        "auroc_gda": float(metrics.auroc(gda[known], gda[~known])),
        "auroc_msp": None,
        "auroc_max_logit": None,
        "closed_set_accuracy": float(
            metrics.closed_set_accuracy(preds[known], data.test_labels[known])
        ),
        "protocol": config.data.protocol,
        "split": config.data.split,
        "known_classes": list(data.known_classes),
        "num_train_images": len(train),
        "raw_config": {"data": config.data.to_dict(), "eval.k": config.eval.k},
    }


def run_raw_cell(workdir: str, config) -> dict[str, Any]:
    """A resumable raw-pixel cell: results.json holds the data fields and k it was computed with."""

    from gradmix_jax.training.trained import LATER_SCORES
    from gradmix_jax.training.workdir import NON_SEMANTIC_FIELDS

    def compute(config, workdir):
        from gradmix_jax.files import as_path, write_json

        result = raw_pixel_results(config)
        write_json(as_path(workdir) / "results.json", result)
        return result

    result = run_cell(workdir, config, compute)
    stored = json.loads(json.dumps(result.get("raw_config")))
    now = json.loads(json.dumps({"data": config.data.to_dict(), "eval.k": config.eval.k}))
    # Where the data lives and how it is read do not change the numbers.
    for field in NON_SEMANTIC_FIELDS:
        if field.startswith("data."):
            stored.get("data", {}).pop(field[len("data.") :], None)
            now["data"].pop(field[len("data.") :], None)
    if stored != now:
        raise SystemExit(
            f"error: {os.path.join(workdir, 'results.json')} was made with other data "
            "settings or k; use another --out or delete that cell"
        )
    if any(key not in result for key in LATER_SCORES):  # saved before that score existed
        result = compute(config, workdir)  # the same data settings and k (checked above)
    return result


CELL_SECONDS = "cell_seconds.json"


def timed(train_fn: Callable) -> Callable:
    """``train_fn`` that also writes ``<workdir>/cell_seconds.json``: the cell's wall time in this
    process (data loading, compilation, training, evaluation; not the interpreter's start-up)."""

    def run(config, workdir):
        import time

        from gradmix_jax.files import as_path, write_json

        t0 = time.perf_counter()
        result = train_fn(config, workdir)
        write_json(as_path(workdir) / CELL_SECONDS, {"seconds": time.perf_counter() - t0})
        return result

    return run


def is_finished(workdir: str) -> bool:
    from gradmix_jax.files import as_path
    from gradmix_jax.training.workdir import RESULTS

    return (as_path(workdir) / RESULTS).exists()


def cell_seconds(workdir: str) -> float | None:
    from gradmix_jax.files import as_path, read_json

    stored = read_json(as_path(workdir) / CELL_SECONDS)
    return None if stored is None else stored["seconds"]


# ----------------------------------------------------------------------------- statistics


def fmt(mean: float, sd: float, scale: float = 100.0, signed: bool = False) -> str:
    if math.isnan(mean):
        return "-"
    m = f"{scale * mean:+.2f}" if signed else f"{scale * mean:.2f}"
    return m if math.isnan(sd) else f"{m} ± {scale * sd:.2f}"


def _features(cell: dict) -> str:
    """The eval.features a cell's NNO and GDA read (encoder for cells without a stored config)."""
    return ((cell.get("config") or {}).get("eval") or {}).get("features") or "encoder"


def measure(cell: dict, key: str) -> float | None:
    """A cell's value of a measure key (``MEASURES``), or None where the cell has none.

    ``area_<group>_mean`` is the activated area averaged over its thresholds,
    ``area_<group>@<τ>`` its value at one threshold.
    """
    if not key.startswith("area_"):
        return cell.get(key)
    area = cell.get("activated_area")
    if not area:
        return None
    name = key[len("area_") :]
    if name.endswith("_mean"):
        values = area.get(name[: -len("_mean")])
        return None if values is None else sum(values) / len(values)
    group, _, tau = name.partition("@")
    values = area.get(group)
    if values is None or float(tau) not in area["thresholds"]:
        return None
    return values[area["thresholds"].index(float(tau))]


def _comparable(key: str, a: dict, b: dict) -> bool:
    """Both cells have the measure, read on the same features where that matters (NNO, GDA, ID:
    eval.features) and on the same images and layers (the activated area)."""
    if measure(a, key) is None or measure(b, key) is None:
        return False
    if key in FEATURE_SCORES:
        return _features(a) == _features(b)
    if key.startswith("area_"):
        keep = ("images", "layers", "batch_size", "thresholds")
        return all(a["activated_area"].get(k) == b["activated_area"].get(k) for k in keep)
    return True


def statistics(
    cells: dict[tuple[str, int, int], dict],
    methods: list[str],
    splits: list[int],
    seeds: list[int],
    baseline: str = BASELINE,
) -> dict[str, Any]:
    """Per-method and paired statistics of one protocol's cells.

    ``cells[(method, split, seed)]`` is a results dict (raw: the same dict under every seed). A
    cell that is absent (``--finished-only``) is left out: a method's statistics cover the cells it
    has, a paired difference the cells both methods have, and a method with no cell is skipped.
    Returns {'methods': {method: {...}}, 'paired': {method: {...}}, 'vs_raw': {method: {...}}}.
    """
    out: dict[str, Any] = {"methods": {}, "paired": {}, "paired_scores": {}, "vs_raw": {}}

    def have(method: str) -> list[tuple[int, int]]:
        seeds_m = [seeds[0]] if METHODS[method][1] is None else seeds
        return [(sp, se) for sp in splits for se in seeds_m if (method, sp, se) in cells]

    for method in methods:
        present = have(method)
        if not present:
            continue
        key, score_name, acc_key = headline(method)
        rows = [cells[(method, sp, se)] for sp, se in present]
        values = [r[key] for r in rows]
        per_split = {
            sp: mean_sd([cells[(method, s, se)][key] for s, se in present if s == sp])
            for sp in splits
            if any(s == sp for s, _ in present)
        }
        scores = {}
        for skey, *_ in MEASURES:
            vals = [measure(r, skey) for r in rows]
            scores[skey] = (
                mean_sd(vals) if all(v is not None for v in vals) else (math.nan, math.nan)
            )
        times = [r.get("cell_seconds") for r in rows]
        times = [t for t in times if t is not None]
        out["methods"][method] = {
            "cell_seconds_max": max(times) if times else None,
            "cell_seconds_median": sorted(times)[len(times) // 2] if times else None,
            "label": METHODS[method][0],
            "headline_score": score_name,
            "headline_key": key,
            "cells": len(values),
            "auroc": mean_sd(values),
            "per_split": per_split,
            "closed_set_accuracy": mean_sd([r[acc_key] for r in rows]),
            "scores": scores,
            "values": values,
        }
    if baseline in out["methods"]:
        base_key = headline(baseline)[0]
        for method in out["methods"]:
            if method == baseline or METHODS[method][1] is None:
                continue
            key = headline(method)[0]
            diffs = [
                cells[(method, sp, se)][key] - cells[(baseline, sp, se)][base_key]
                for sp, se in have(method)
                if (baseline, sp, se) in cells
            ]
            if not diffs:
                continue
            out["paired"][method] = paired_stats(diffs, unit=" pts")
            # The same measure on both sides, for every measure both cells have (NNO, GDA and ID
            # read eval.features: only where both cells read the same features).
            per_measure = {}
            for mkey, _, scale, unit in MEASURES:
                pairs = [
                    (cells[(method, sp, se)], cells[(baseline, sp, se)])
                    for sp, se in have(method)
                    if (baseline, sp, se) in cells
                ]
                d = [
                    measure(a, mkey) - measure(b, mkey) for a, b in pairs if _comparable(mkey, a, b)
                ]
                if d:
                    per_measure[mkey] = paired_stats(d, scale, unit)
            out["paired_scores"][method] = per_measure
    if "raw" in out["methods"]:
        raw_splits = {sp for sp, _ in have("raw")}
        for method in out["methods"]:
            if method == "raw":
                continue
            key = headline(method)[0]
            per_split = {}
            for sp, (mean, _) in out["methods"][method]["per_split"].items():
                if sp in raw_splits:
                    per_split[sp] = mean - cells[("raw", sp, seeds[0])]["auroc"]
            if not per_split:
                continue
            gaps = list(per_split.values())
            out["vs_raw"][method] = {
                "per_split": per_split,
                "mean": sum(gaps) / len(gaps),
                "splits_above": sum(g > 0 for g in gaps),
                "above_on_every_split": len(gaps) == len(splits) and all(g > 0 for g in gaps),
            }
    return out


def markdown(
    protocol: str,
    stats: dict,
    methods: list[str],
    splits: list[int],
    seeds: list[int],
    baseline: str = BASELINE,
) -> list[str]:
    """The protocol's section of compare.md."""
    lines = [
        f"## {protocol}",
        "",
        f"Headline AUROC % per method: mean ± sample std over {len(splits)} split(s) x "
        f"{len(seeds)} seed(s) (raw pixels: one value per split); per split: mean ± std over "
        "seeds.",
        "",
    ]
    header = (
        ["method", "headline score", "cells", "AUROC %"]
        + [f"split {s}" for s in splits]
        + ["closed-set acc. %"]
        + [name for _, name in SCORES]
        + ["ID", "area known %", "area unknown %", "cell time, max"]
    )
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in [m for m in methods if m in stats["methods"]]:
        m = stats["methods"][method]
        row = [m["label"], m["headline_score"], str(m["cells"]), fmt(*m["auroc"])]
        row += [fmt(*m["per_split"][s]) if s in m["per_split"] else "-" for s in splits]
        row += [fmt(*m["closed_set_accuracy"])]
        row += [fmt(m["scores"][k][0], math.nan) for k, _ in SCORES]
        row += [fmt(m["scores"]["intrinsic_dimension"][0], math.nan, scale=1.0)]
        row += [fmt(m["scores"][f"area_{g}_mean"][0], math.nan) for g in ("known", "unknown")]
        row += ["-" if m["cell_seconds_max"] is None else f"{m['cell_seconds_max']:.0f} s"]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Score columns: mean AUROC % over the cells of each score the row supports "
        "(k-NN = Algorithm 1, k = eval.k; NNO = Mahalanobis distance to the closest class "
        "mean, one covariance shared by the classes; GDA = log-density of the most likely "
        "class-conditional Gaussian, one covariance per class; MSP / max-logit need a "
        "classifier head). Closed-set accuracy: k-NN prediction, "
        "or the classifier's argmax for the CE row. ID: TwoNN intrinsic dimension of the "
        "training features (eval.features). Area: activated area of the attribution maps, "
        "mean over τ = 0.1 ... 0.9, on known and on unknown test images (cells measured "
        "before it existed have none). Cell time: wall time of the slowest cell "
        "in the runner's process (data, compilation, training, evaluation; cells read back "
        "keep the time of their run).",
    ]
    partial = [
        stats["methods"][m]["label"]
        for m in methods
        if m in stats["methods"] and len(stats["methods"][m]["per_split"]) < len(splits)
    ]
    if partial:
        lines += [
            "",
            f"Not every split has a cell for: {', '.join(partial)}. Their AUROC column averages "
            "the splits they have, so it is not comparable with the other rows; the paired "
            "difference below uses the same cells on both sides.",
        ]
    if stats["paired"]:
        base = METHODS[baseline][0]
        lines += [
            "",
            f"Paired difference to {base} (same split and seed), headline AUROC points: mean with "
            "its 95 % confidence interval (Student's t over the cells), the two-sided Wilcoxon "
            "signed-rank p and the cells where it is positive. The verdict comes from the "
            "interval: higher or lower where it excludes 0, otherwise no effect detected, with "
            "the size of effect the interval excludes:",
            "",
            "| method | cells | mean [95 % CI] | std | signed-rank p | positive on | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for method, p in stats["paired"].items():
            lines.append(
                f"| {METHODS[method][0]} | {p['cells']} | {fmt_interval(p)} | "
                f"{fmt(p['sd'], math.nan)} | {fmt_p(p['p_signed_rank'])} | "
                f"{p['positive']} of {p['cells']} | {p['verdict']} |"
            )
        for method, per_measure in stats.get("paired_scores", {}).items():
            if not per_measure:
                continue
            lines += [
                "",
                f"{METHODS[method][0]} − {base}, the same measure on both sides (same split and "
                "seed; AUROC, accuracy and activated area in points, ID in dimensions). NNO, GDA "
                "and ID read each cell's eval.features and are paired only where both cells read "
                "the same features; the activated area (fraction of attribution-map pixels above "
                "τ, maps min-max normalised per image and averaged over the run's taps) only where "
                "both were measured on the same images:",
                "",
                "| measure | cells | mean [95 % CI] | signed-rank p | positive on | verdict |",
                "|---|---|---|---|---|---|",
            ]
            for mkey, name, scale, _ in MEASURES:
                p = per_measure.get(mkey)
                if p is None or (
                    mkey.startswith("area_")
                    and "@" in mkey
                    and (float(mkey.partition("@")[2]) not in AREA_TAUS_SHOWN)
                ):
                    continue
                lines.append(
                    f"| {name} | {p['cells']} | {fmt_interval(p, scale)} | "
                    f"{fmt_p(p['p_signed_rank'])} | {p['positive']} of {p['cells']} | "
                    f"{p['verdict']} |"
                )
    if stats["vs_raw"]:
        lines += [
            "",
            "Difference to the raw-pixel floor (k-NN on pixels), headline AUROC points, "
            "per split (mean over seeds) and their mean:",
            "",
            "| method | "
            + " | ".join(f"split {s}" for s in splits)
            + " | mean | above on every split |",
            "|---|" + "---|" * (len(splits) + 2),
        ]
        for method, v in stats["vs_raw"].items():
            n = len(v["per_split"])
            every = (
                ("yes" if v["above_on_every_split"] else "no")
                if n == len(splits)
                else f"{v['splits_above']} of {n} splits"
            )
            lines.append(
                f"| {METHODS[method][0]} | "
                + " | ".join(
                    f"{100 * v['per_split'][s]:+.2f}" if s in v["per_split"] else "-"
                    for s in splits
                )
                + f" | {100 * v['mean']:+.2f} | {every} |"
            )
    return lines


def plot(
    path: str, protocol: str, stats: dict, methods: list[str], splits: list[int], smoke: bool
) -> None:
    groups = [f"split {s}" for s in splits] + ["all"]
    methods = [m for m in methods if m in stats["methods"]]
    labels = [stats["methods"][m]["label"] for m in methods]
    if not labels:  # --finished-only with no finished cell: nothing to draw
        return
    means, sds = {}, {}
    for method, label in zip(methods, labels):
        st = stats["methods"][method]
        for s, g in zip(splits, groups):
            if s not in st["per_split"]:
                continue
            means[(g, label)] = 100 * st["per_split"][s][0]
            sds[(g, label)] = (
                0.0 if math.isnan(st["per_split"][s][1]) else 100 * st["per_split"][s][1]
            )
        if len(st["per_split"]) < len(splits):  # a mean over fewer splits is not comparable
            continue
        means[("all", label)] = 100 * st["auroc"][0]
        sds[("all", label)] = 0.0 if math.isnan(st["auroc"][1]) else 100 * st["auroc"][1]
    plot_grouped_bars(
        path,
        groups,
        labels,
        means,
        sds,
        "AUROC % (headline score)",
        f"{protocol}: open-set AUROC, error bars = std over seeds (all: over cells)"
        + (" - SMOKE scale" if smoke else ""),
    )


def main(argv=None, *, train_fn: Callable | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--protocols",
        default=None,
        help="comma list of config names (default fashion_mnist_cpu; digits with --smoke)",
    )
    parser.add_argument(
        "--splits", default=None, help="e.g. 0-4 or 0,2 (default 0-4; 0 with --smoke)"
    )
    parser.add_argument("--seeds", default=None, help="comma list of seeds (default 0,1)")
    parser.add_argument(
        "--methods", default=DEFAULT_METHODS, help="comma list of " + ",".join(METHODS)
    )
    parser.add_argument(
        "--baseline",
        default=BASELINE,
        help=f"the method the paired differences are taken against (default {BASELINE})",
    )
    parser.add_argument(
        "--finished-only",
        action="store_true",
        help="train nothing: make the tables from the cells already finished under --out and "
        "list the others as missing (e.g. a method run on fewer splits than the rest)",
    )
    add_common_args(parser)
    args = parser.parse_args(argv)

    protocols = comma_list(
        args.protocols or ("digits" if args.smoke else "fashion_mnist_cpu"), "--protocols"
    )
    check_protocols(protocols)
    splits = split_list(args.splits or ("0" if args.smoke else "0-4"))
    try:
        seeds = [int(s) for s in comma_list(args.seeds or "0,1", "--seeds")]
    except ValueError:
        raise SystemExit(
            f"error: --seeds takes comma-separated integers, got {args.seeds!r}"
        ) from None
    methods = comma_list(args.methods, "--methods", list(METHODS))
    comma_list(args.baseline, "--baseline", list(METHODS))
    overrides = overrides_from_args(args)
    refuse_overrides(overrides, CELL_FIELDS, "compare.py")

    # Seed-major, then split, then method: an interrupted table has whole (split, seed) groups,
    # so its paired differences are already usable.
    cells = {
        (p, m, sp, se): (cell_dir(args.out, p, m, sp, se), cell_config(p, m, sp, se, overrides))
        for p in protocols
        for se in seeds
        for sp in splits
        for m in methods
        if METHODS[m][1] is not None or se == seeds[0]
    }
    validate_all([c for key, c in cells.items() if METHODS[key[1]][1] is not None])
    if train_fn is None:
        from gradmix_jax.training import trainer

        train_fn = trainer.train_and_evaluate
    train_fn = timed(train_fn)

    report = {
        "protocols": {},
        "splits": splits,
        "seeds": seeds,
        "methods": methods,
        "overrides": overrides,
    }
    md = ["# Open-set comparison: baselines, mixing methods and seed statistics", ""]
    csv_rows = []
    for protocol in protocols:
        results: dict[tuple[str, int, int], dict] = {}
        missing = []
        for (p, method, split, seed), (workdir, config) in cells.items():
            if p != protocol:
                continue
            if args.finished_only and not is_finished(workdir):
                missing.append(os.path.relpath(workdir, args.out))
                continue
            if METHODS[method][1] is None:  # one cell per split, shared by every seed
                r = run_raw_cell(workdir, config)
                for s in seeds:
                    results[(method, split, s)] = r
                seed_txt = "-"
            else:
                r = run_checked_cell(workdir, config, train_fn)
                r = _add_missing_scores(workdir, args.finished_only)  # a cell saved before a score
                r = with_evaluated_area(workdir, r)
                results[(method, split, seed)] = {**r, "cell_seconds": cell_seconds(workdir)}
                seed_txt = str(seed)
            key = headline(method)[0]
            print(
                f"{protocol} {method} split {split} seed {seed_txt}: AUROC ({headline(method)[1]}) "
                f"{r[key]:.4f}",
                flush=True,
            )
            csv_rows.append(
                [protocol, method, split, seed_txt, r[key]]
                + [r.get(k) for k, _ in SCORES]
                + [r.get(headline(method)[2]), r.get("intrinsic_dimension")]
                + [measure(r, f"area_{g}_mean") for g in ("known", "unknown")]
                + [r.get("train_seconds"), cell_seconds(workdir)]
            )
        stats = statistics(results, methods, splits, seeds, args.baseline)
        stats["missing_cells"] = missing
        report["protocols"][protocol] = stats
        md += markdown(protocol, stats, methods, splits, seeds, args.baseline) + [""]
        if missing:
            md += [f"Cells not finished, left out ({len(missing)}): {', '.join(missing)}.", ""]
        plot(
            os.path.join(args.out, f"compare_{protocol}.png"),
            protocol,
            stats,
            methods,
            splits,
            args.smoke,
        )
    md += [f"- {n}" for n in scale_note(args, overrides)]
    _write_outputs(args.out, md, csv_rows, report)
    return 0


def with_evaluated_area(workdir: str, result: dict) -> dict:
    """A cell saved before the activated area existed, with the area its final checkpoint gave
    ``python -m gradmix_jax.evaluate --workdir CELL`` (``eval_results.json``) when it has one."""
    if result.get("activated_area"):
        return result
    from gradmix_jax.evaluate import EVAL_RESULTS
    from gradmix_jax.files import as_path, read_json

    stored = read_json(as_path(workdir) / EVAL_RESULTS)
    if stored and stored.get("activated_area") and stored.get("step") == result.get("num_steps"):
        return {**result, "activated_area": stored["activated_area"]}
    return result


def _add_missing_scores(workdir: str, finished_only: bool = False) -> dict:
    """``trained.add_missing_scores``, with one error line for a cell whose checkpoint is gone.

    With ``finished_only`` (a table of stored cells, nothing trained) such a cell is read as it
    was stored: the scores it lacks are left out of every mean and pairing that needs them.
    """
    from gradmix_jax.files import as_path, read_json
    from gradmix_jax.training.trained import LATER_SCORES, add_missing_scores
    from gradmix_jax.training.workdir import RESULTS

    try:
        return add_missing_scores(workdir)
    except FileNotFoundError as e:
        if finished_only:
            print(f"{workdir}: no checkpoint, read without {list(LATER_SCORES)}", flush=True)
            return read_json(as_path(workdir) / RESULTS)
        raise SystemExit(
            f"error: cell {workdir} was saved without {list(LATER_SCORES)}, which need its final "
            f"checkpoint ({e}); delete its results.json to train it again, or tabulate the "
            "stored cells as they are with --finished-only"
        ) from None


def _write_outputs(out: str, md: list[str], csv_rows: list[list], report: dict) -> None:
    from gradmix_jax.files import as_path, write_csv, write_json, write_text_atomic

    out = as_path(out)
    write_csv(
        out / "compare.csv",
        ["protocol", "method", "split", "seed", "headline_auroc"]
        + [k for k, _ in SCORES]
        + ["closed_set_accuracy", "intrinsic_dimension", "area_known_mean", "area_unknown_mean"]
        + ["train_seconds", "cell_seconds"],
        csv_rows,
    )
    write_json(out / "compare.json", report)  # NaN -> null
    write_text_atomic(out / "compare.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    from experiments.common import main_guard

    sys.exit(main_guard(main))
