"""One method against a baseline under several runs of a protocol, paired differences side by side.

    python -m experiments.side_by_side --protocol fashion_mnist_cpu --methods none,gradmix \
        --run "800 steps=docs/results/fashion_mnist_cpu" \
        --run "3,200 steps=docs/results/fashion_mnist_cpu_3200" \
        --splits 0-4 --seeds 0,1 --out docs/results/fashion_mnist_cpu_3200/side_by_side.md

Each ``--run LABEL=FOLDER`` is the ``--out`` folder of ``experiments.compare`` (cells in
``FOLDER/<protocol>/<method>/split<k>/seed<s>``), e.g. the same protocol trained for another number
of steps. Nothing is trained and no checkpoint is read: every finished cell (``results.json``) is
read as stored, with its activated area from ``eval_results.json`` where it was measured later
(``python -m gradmix_jax.evaluate``). Only the (split, seed) cells that both methods finished in
every run are used, so every column pairs the same cells; the others are listed as left out.

For every measure of ``experiments.compare.MEASURES`` (each AUROC, closed-set accuracy, the
intrinsic dimension, the activated area) and the headline score: the paired difference
``method - baseline`` per run, with its 95 % t-interval, Wilcoxon signed-rank p, positive count and
verdict (``experiments/paired.py``), then each method's mean ± sample std per run. The config
fields in which the runs' baseline cells differ are listed above the tables (outside the fields a
cell owns and those that change no number).

Writes OUT (markdown) and OUT with a ``.json`` suffix.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

from experiments.common import ArgumentParser
from experiments.compare import (
    AREA_TAUS_SHOWN,
    CELL_FIELDS,
    MEASURES,
    METHODS,
    cell_dir,
    headline,
    statistics,
    with_evaluated_area,
)
from experiments.grid_common import comma_list, split_list
from experiments.paired import fmt_interval, fmt_p

HEADLINE_KEY = "headline"


def read_cells(
    folder: str, protocol: str, methods: list[str], splits: list[int], seeds: list[int]
) -> dict[tuple[str, int, int], dict]:
    """The finished cells of one compare folder, ``{(method, split, seed): results}``."""
    from gradmix_jax.files import as_path, read_json
    from gradmix_jax.training.workdir import RESULTS

    cells = {}
    for method in methods:
        for split in splits:
            for seed in seeds:
                workdir = cell_dir(folder, protocol, method, split, seed)
                stored = read_json(as_path(workdir) / RESULTS)
                if stored is not None:
                    cells[(method, split, seed)] = with_evaluated_area(workdir, stored)
    return cells


def config_differences(configs: dict[str, dict | None]) -> dict[str, dict[str, Any]]:
    """``{field: {run label: value}}`` for the config fields whose values differ between runs.

    Stored configs are read with the fields added since they were written (at the values that
    reproduce them); fields a cell owns (method, split, seed) and those that change no number
    (``NON_SEMANTIC_FIELDS``) are left out.
    """
    from gradmix_jax.training.workdir import NON_SEMANTIC_FIELDS, flatten, with_added_fields

    flats = {
        label: flatten(with_added_fields(c)) if c is not None else {}
        for label, c in configs.items()
    }
    fields = sorted(set().union(*flats.values()) - set(NON_SEMANTIC_FIELDS) - set(CELL_FIELDS))
    return {
        f: {label: fl.get(f) for label, fl in flats.items()}
        for f in fields
        if len({json.dumps(fl[f]) if f in fl else "<absent>" for fl in flats.values()}) > 1
    }


def side_by_side(
    runs: list[tuple[str, str]],
    protocol: str,
    baseline: str,
    method: str,
    splits: list[int],
    seeds: list[int],
) -> dict[str, Any]:
    """Paired statistics of ``method - baseline`` per run over the cells common to every run.

    ``runs``: (label, compare folder) pairs. Returns {'cells': [(split, seed)], 'left_out':
    {label: [...]}, 'config_differences': {...}, 'runs': {label: {'paired': {measure: stats},
    'means': {method: {measure: (mean, sd)}}}}}; measure keys as in ``MEASURES`` plus
    ``'headline'`` (the method's headline score against the baseline's).
    """
    methods = [baseline, method]
    per_run = {
        label: read_cells(folder, protocol, methods, splits, seeds) for label, folder in runs
    }
    common = [
        (sp, se)
        for sp in splits
        for se in seeds
        if all((m, sp, se) in cells for cells in per_run.values() for m in methods)
    ]
    out: dict[str, Any] = {
        "protocol": protocol,
        "baseline": baseline,
        "method": method,
        "cells": common,
        "left_out": {
            label: sorted(
                f"{m}/split{sp}/seed{se}" for (m, sp, se) in cells if (sp, se) not in common
            )
            for label, cells in per_run.items()
        },
        "config_differences": config_differences(
            {
                label: cells.get((baseline, *common[0]), {}).get("config") if common else None
                for label, cells in per_run.items()
            }
        ),
        "runs": {},
    }
    for label, folder in runs:
        cells = {k: v for k, v in per_run[label].items() if (k[1], k[2]) in common}
        stats = statistics(cells, methods, splits, seeds, baseline) if common else {}
        paired = {}
        if stats.get("paired", {}).get(method):
            paired = {HEADLINE_KEY: stats["paired"][method], **stats["paired_scores"][method]}
        means = {
            m: {
                HEADLINE_KEY: stats["methods"][m]["auroc"],
                **{k: v for k, v in stats["methods"][m]["scores"].items() if not math.isnan(v[0])},
            }
            for m in methods
            if m in stats.get("methods", {})
        }
        out["runs"][label] = {"folder": folder, "paired": paired, "means": means}
    return out


def _rows(baseline: str, method: str) -> list[tuple[str, str, float]]:
    """(measure key, name, scale) in table order: ``MEASURES`` (the area at the thresholds
    compare.md shows; every one is in the JSON), the headline marked; the headline gets a row of
    its own where the two methods' headline scores differ."""
    key, name, _ = headline(method)
    base_key, base_name, _ = headline(baseline)
    rows = [
        (k, f"{label} (headline)" if k == key == base_key else label, scale)
        for k, label, scale, _ in MEASURES
        if "@" not in k or float(k.partition("@")[2]) in AREA_TAUS_SHOWN
    ]
    if key != base_key:
        rows.insert(0, (HEADLINE_KEY, f"headline: AUROC {name} − {base_name}", 100.0))
    return rows


def markdown(report: dict[str, Any]) -> list[str]:
    labels = list(report["runs"])
    base, method = report["baseline"], report["method"]
    cells = report["cells"]
    lines = [
        f"# {METHODS[method][0]} − {METHODS[base][0]}: {', '.join(labels)}",
        "",
        f"Protocol `{report['protocol']}`. Paired by split and seed over the {len(cells)} cells "
        "both methods finished in every run: "
        + (", ".join(f"split {sp} seed {se}" for sp, se in cells) or "none")
        + ". Each entry: the mean difference (AUROC, accuracy and area in points, ID in "
        "dimensions) with its 95 % confidence interval (Student's t over the cells), the "
        "two-sided Wilcoxon signed-rank p and the cells where it is positive; the verdict comes "
        "from the interval. A measure a run's cells lack shows '-'.",
        "",
    ]
    diffs = report["config_differences"]
    if diffs:
        lines += ["The runs' configs differ in:", ""]
        lines += [
            f"- `{field}`: " + ", ".join(f"{v} ({label})" for label, v in values.items())
            for field, values in diffs.items()
        ]
        lines += [""]
    lines += [
        "| measure | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for key, name, scale in _rows(base, method):
        entries = []
        for label in labels:
            p = report["runs"][label]["paired"].get(key)
            entries.append(
                "-"
                if p is None
                else f"{fmt_interval(p, scale)}; p {fmt_p(p['p_signed_rank'])}; "
                f"{p['positive']} of {p['cells']}; {p['verdict']}"
            )
        if any(e != "-" for e in entries):
            lines.append(f"| {name} | " + " | ".join(entries) + " |")
    lines += [
        "",
        "Means ± sample std over the same cells:",
        "",
        "| measure | method | " + " | ".join(labels) + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    for key, name, scale in _rows(base, method):
        for m in (base, method):
            entries = []
            for label in labels:
                v = report["runs"][label]["means"].get(m, {}).get(key)
                entries.append("-" if v is None else _mean_sd(v, scale))
            if any(e != "-" for e in entries):
                lines.append(f"| {name} | {METHODS[m][0]} | " + " | ".join(entries) + " |")
    left = {label: cells for label, cells in report["left_out"].items() if cells}
    if left:
        lines += [""] + [
            f"Left out of {label} (not finished in every run): {', '.join(cells)}."
            for label, cells in left.items()
        ]
    return lines


def _mean_sd(v: tuple[float, float], scale: float) -> str:
    mean, sd = v
    return f"{scale * mean:.2f}" + ("" if math.isnan(sd) else f" ± {scale * sd:.2f}")


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", required=True, help="config name, e.g. fashion_mnist_cpu")
    parser.add_argument(
        "--methods", required=True, help="BASELINE,METHOD: two trained methods, e.g. none,gradmix"
    )
    parser.add_argument(
        "--run",
        action="append",
        required=True,
        metavar="LABEL=FOLDER",
        help="a compare --out folder and its column label; give it once per run",
    )
    parser.add_argument("--splits", default="0-4", help="e.g. 0-4 or 0,2 (default 0-4)")
    parser.add_argument("--seeds", default="0,1", help="comma list of seeds (default 0,1)")
    parser.add_argument("--out", required=True, help="the markdown file to write (and .json)")
    args = parser.parse_args(argv)

    trained = [m for m, (_, overrides) in METHODS.items() if overrides is not None]
    methods = comma_list(args.methods, "--methods", trained)
    if len(methods) != 2:
        raise SystemExit(f"error: --methods takes BASELINE,METHOD, got {args.methods!r}")
    runs = []
    for run in args.run:
        label, sep, folder = run.partition("=")
        if not sep or not label or not folder:
            raise SystemExit(f"error: --run takes LABEL=FOLDER, got {run!r}")
        if not os.path.isdir(os.path.join(folder, args.protocol)):
            raise SystemExit(
                f"error: --run {label}: no folder {os.path.join(folder, args.protocol)}"
            )
        runs.append((label, folder))
    if len({label for label, _ in runs}) != len(runs):
        raise SystemExit("error: --run labels must be distinct")
    splits = split_list(args.splits)
    try:
        seeds = [int(s) for s in comma_list(args.seeds, "--seeds")]
    except ValueError:
        raise SystemExit(
            f"error: --seeds takes comma-separated integers, got {args.seeds!r}"
        ) from None

    report = side_by_side(runs, args.protocol, methods[0], methods[1], splits, seeds)
    from gradmix_jax.files import as_path, write_json, write_text_atomic

    lines = markdown(report)
    write_text_atomic(as_path(args.out), "\n".join(lines) + "\n")
    write_json(as_path(os.path.splitext(args.out)[0] + ".json"), report)  # NaN -> null
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    from experiments.common import main_guard

    sys.exit(main_guard(main))
