"""Shared pieces of the grid runners (Table 1, Fig. 4): flag parsing, up-front config checks,
resumable cells that refuse a stale results.json, mean ± std formatting and a grouped bar plot."""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from experiments.common import mean_std, parse_splits, run_cell, write_table
from gradmix_jax.files import save_figure
from gradmix_jax.training.workdir import config_differences


def comma_list(text: str, flag: str, allowed: Sequence[str] | None = None) -> list[str]:
    """'a,b' -> ['a', 'b']; one-line SystemExit on empty entries, repeats or values outside ``allowed``."""
    items = [s.strip() for s in text.split(",")]
    if not all(items):
        raise SystemExit(f"error: {flag} has an empty entry: {text!r}")
    if len(set(items)) != len(items):
        raise SystemExit(f"error: {flag} repeats an entry: {text!r}")
    if allowed is not None:
        bad = [s for s in items if s not in allowed]
        if bad:
            raise SystemExit(f"error: {flag} entries must be in {list(allowed)}, got {bad}")
    return items


def float_list(text: str, flag: str) -> list[float]:
    """'0.2,1.0' -> [0.2, 1.0] (each > 0)."""
    out = []
    for item in comma_list(text, flag):
        try:
            value = float(item)
        except ValueError:
            raise SystemExit(f"error: {flag} takes comma-separated numbers, got {item!r}") from None
        if not value > 0:
            raise SystemExit(f"error: {flag} values must be > 0, got {item!r}")
        if value in out:
            raise SystemExit(f"error: {flag} repeats a value: {text!r}")
        out.append(value)
    return out


def split_list(text: str) -> list[int]:
    splits = parse_splits(text)
    if not splits or len(set(splits)) != len(splits):
        raise SystemExit(f"error: --splits must name distinct splits, got {text!r}")
    return splits


def check_protocols(protocols: Sequence[str]) -> None:
    from experiments.common import ROOT

    missing = [p for p in protocols if not os.path.exists(os.path.join(ROOT, "configs", f"{p}.py"))]
    if missing:
        names = sorted(
            n[:-3] for n in os.listdir(os.path.join(ROOT, "configs")) if n.endswith(".py")
        )
        raise SystemExit(
            f"error: --protocols: no configs/<name>.py for {missing}; the configs are {names}"
        )


def add_protocol_split_args(parser) -> None:
    """--protocols and --splits, shared by the grid runners."""
    parser.add_argument(
        "--protocols",
        default=None,
        help="comma list of config names (default cifar10,tinyimagenet; digits with --smoke)",
    )
    parser.add_argument(
        "--splits", default=None, help="e.g. 0-4 or 0,2 (default 0-4; 0 with --smoke)"
    )


def protocols_and_splits(args) -> tuple[list[str], list[int]]:
    """The checked --protocols and --splits (paper defaults, or digits split 0 with --smoke)."""
    protocols = comma_list(
        args.protocols or ("digits" if args.smoke else "cifar10,tinyimagenet"), "--protocols"
    )
    check_protocols(protocols)
    return protocols, split_list(args.splits or ("0" if args.smoke else "0-4"))


# §4.1 Ablations: "We fix k = 10 in each study for fair comparison."
ABLATION_K = 10


def ablation_config_fn(overrides: dict) -> Callable:
    """``make_config(protocol, extra, split)`` of the Fig. 4 ablations: the protocol's config with
    k = ABLATION_K, then the --set overrides, then the cell's own fields and split."""
    from experiments.common import apply_overrides, load_config

    def make_config(protocol: str, extra: dict, split: int):
        config = load_config(protocol)
        config.eval.k = ABLATION_K
        apply_overrides(config, overrides)
        apply_overrides(config, extra)
        config.data.split = split
        return config

    return make_config


def refuse_overrides(overrides: dict, fields: Sequence[str], script: str) -> None:
    """One-line error when --set names a field the script sets per cell (its ablation variable)."""
    bad = [f for f in overrides if f in fields]
    if bad:
        raise SystemExit(
            f"error: --set {bad} is not allowed: {script} sets {list(fields)} per cell "
            "(use its own flags)"
        )


def validate_all(cells: Sequence[tuple[str, Any]]) -> None:
    """Checks every cell's config before anything trains (one-line error naming the cell)."""
    import jax

    from gradmix_jax.training.validation import ConfigError, validate_config

    for workdir, config in cells:
        try:
            validate_config(config, jax.device_count())
        except ConfigError as e:
            raise SystemExit(f"error: cell {workdir}: {e}") from None


def run_checked_cell(workdir: str, config, train: Callable[[Any, str], dict]) -> dict:
    """``common.run_cell`` (resumable), with a one-line error for a results.json of another config
    (e.g. the same --out reused with other --set values or without --smoke) and for the trainer's
    config/data errors."""
    from gradmix_jax.data import DatasetNotPreparedError
    from gradmix_jax.training.validation import ConfigError

    try:
        result = run_cell(workdir, config, train)
    except (ConfigError, DatasetNotPreparedError) as e:
        raise SystemExit(f"error: cell {workdir}: {e}") from None
    diff = config_differences(result.get("config"), config)
    if diff:
        raise SystemExit(
            f"error: {os.path.join(workdir, 'results.json')} was made with another config "
            f"(differs in {diff[:6]}{' ...' if len(diff) > 6 else ''}); use another --out "
            "or delete that cell"
        )
    return result


def summarize(values: list[float | None], scale: float = 100.0) -> tuple[str, float | None]:
    """'mean ± std' of the values times ``scale`` (and the mean); '-' when every value is None."""
    if all(v is None for v in values):
        return "-", None
    if any(v is None for v in values):
        raise ValueError(f"some splits have no value: {values}")
    m, s = mean_std([scale * v for v in values])
    return f"{m:.2f} ± {s:.2f}", m


def plot_grouped_bars(
    path: str,
    groups: Sequence[str],
    series: Sequence[str],
    means: dict[tuple[str, str], float],
    stds: dict[tuple[str, str], float],
    ylabel: str,
    title: str,
) -> None:
    """One group of bars per ``groups`` entry (e.g. protocol), one bar per ``series`` entry (e.g.
    augmentation), error bars = std over splits, value on each bar; y axis zoomed to the data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    width = 0.8 / len(series)
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(max(6.0, 3.0 + 0.45 * len(groups) * len(series)), 3.8))
    lows, highs = [], []
    for j, name in enumerate(series):
        m = [means.get((g, name), np.nan) for g in groups]
        s = [stds.get((g, name), 0.0) for g in groups]
        bars = ax.bar(
            x + (j - (len(series) - 1) / 2) * width, m, width, yerr=s, capsize=2, label=name
        )
        ax.bar_label(
            bars, labels=["" if np.isnan(v) else f"{v:.1f}" for v in m], fontsize=7, padding=2
        )
        lows += [a - b for a, b in zip(m, s) if not np.isnan(a)]
        highs += [a + b for a, b in zip(m, s) if not np.isnan(a)]
    if lows:
        lo, hi = min(lows), max(highs)
        pad = max(1.0, 0.15 * (hi - lo))
        ax.set_ylim(max(0.0, lo - pad), min(100.0, hi + 2 * pad))
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(
        fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0)
    )  # outside: never hides a bar
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def run_auroc_ablation(
    args,
    variants: Sequence[tuple[str, str, dict]],
    make_config: Callable,
    protocols: Sequence[str],
    splits: Sequence[int],
    train_fn: Callable | None,
    stem: str,
    title: str,
    notes: Sequence[str],
    baseline: str | None = None,
) -> dict[tuple[str, str], list[float]]:
    """Trains (or reads back) every (protocol, variant, split) cell in
    ``OUT/<protocol>/<variant key>/split<k>`` and writes ``OUT/<stem>.{md,csv,png}``: k-NN AUROC
    mean ± std over splits per (variant, protocol). ``variants``: (key, label, config overrides);
    ``make_config(protocol, variant_overrides, split)`` builds a cell's config. With ``baseline``
    (a variant key) the table gets the difference of each variant's mean to the baseline's.
    Returns {(protocol, key): [AUROC per split]}."""
    cells = {
        (p, key, s): (os.path.join(args.out, p, key, f"split{s}"), make_config(p, extra, s))
        for p in protocols
        for key, _, extra in variants
        for s in splits
    }
    validate_all(list(cells.values()))
    if train_fn is None:
        from gradmix_jax.training import trainer

        train_fn = trainer.train_and_evaluate
    aurocs: dict[tuple[str, str], list[float]] = {}
    accs: dict[tuple[str, str], list[float]] = {}
    for protocol in protocols:
        for key, label, _ in variants:
            for split in splits:
                workdir, config = cells[(protocol, key, split)]
                r = run_checked_cell(workdir, config, train_fn)
                aurocs.setdefault((protocol, key), []).append(r["auroc"])
                accs.setdefault((protocol, key), []).append(r["closed_set_accuracy"])
                print(f"{protocol} {label} split {split}: AUROC {r['auroc']:.4f}", flush=True)
    rows, means, stds = [], {}, {}
    for key, label, _ in variants:
        for protocol in protocols:
            values = [100 * v for v in aurocs[(protocol, key)]]
            m, s = mean_std(values)
            means[(protocol, label)], stds[(protocol, label)] = m, s
            row = [label, protocol, len(values), f"{m:.2f} ± {s:.2f}"]
            if baseline is not None:
                b, _ = mean_std([100 * v for v in aurocs[(protocol, baseline)]])
                row.append(f"{m - b:+.2f}")
            row += [
                f"{mean_std([100 * v for v in accs[(protocol, key)]])[0]:.2f}",
                " / ".join(f"{v:.2f}" for v in values),
            ]
            rows.append(row)
    header = (
        ["variant", "protocol", "splits", "AUROC % (ours, mean ± std)"]
        + (
            [f"Δ AUROC vs {dict((k, label) for k, label, _ in variants)[baseline]} (points)"]
            if baseline is not None
            else []
        )
        + ["closed-set acc. % (ours, mean)", "AUROC % per split"]
    )
    write_table(os.path.join(args.out, stem), header, rows, title, list(notes))
    plot_grouped_bars(
        os.path.join(args.out, stem + ".png"),
        list(protocols),
        [label for _, label, _ in variants],
        means,
        stds,
        "AUROC % (k-NN)",
        title + (" - SMOKE scale" if args.smoke else ""),
    )
    return aurocs
