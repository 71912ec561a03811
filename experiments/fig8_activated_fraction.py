"""Regenerates the paper's Fig. 8: activated fraction S_M of attribution maps against threshold τ.

    python -m experiments.fig8_activated_fraction --protocol cifar10 --out runs/fig8
    python -m experiments.fig8_activated_fraction --out runs/fig8 --smoke    # digits, tiny, ~1 min

S_M(τ) = fraction of map entries > τ, averaged over test images (known and unknown classes), for τ
log-spaced from 1e-5 to 1e-3 (the paper's range). Trains (or reuses) the cells of
fig7_attribution_maps.py: ``OUT/<protocol>/split<k>/{none,gradmix}``.

Which maps: the paper does not say; the authors' script thresholds RAW LayerCAM values, which is
what makes τ ~ 1e-4 meaningful. Both are reported from one gradient pass per batch:

* ``raw``: ``normalize='none'``, LayerCAM values upsampled and summed over ``--layers``. With the
  ``simclr`` target the loss is a batch mean, so values scale like 1/batch: every batch here has
  exactly ``--batch_size`` images (the remainder of the test set is dropped), both models see the
  same batches;
* ``normalized``: per-image min-max per layer, then summed (what GradMix trains with). At τ <= 1e-3
  this counts almost every pixel not at its layer's minimum, so it is close to 1 for most maps.

Writes, with ``TAG = <protocol>_split<k>`` (``+ _prototype`` for that target):
``OUT/fig8_TAG_raw.png`` and ``_normalized.png`` (log x),
``OUT/fig8_TAG.json`` (every curve, also split into known / unknown test images),
``OUT/fig8_TAG_curves.csv`` (maps, model, group, tau, S_M) and ``OUT/fig8_TAG.md`` / ``.csv`` (S_M in
% at a few τ). The paper's claim (no numbers): GradMix has the higher S_M at every τ. This script
reports whether our run shows it; it does not assert it.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from experiments.attribution_common import (
    METHODS,
    add_attribution_args,
    load_test_data,
    map_settings,
    scale_label,
    scale_note,
    train_pair,
)
from experiments.common import ArgumentParser, write_table
from experiments.plots import save_activated_fraction_plot
from gradmix_jax.files import write_csv, write_json

#: map kind -> aggregate_maps normalisation.
KINDS = {"raw": "none", "normalized": "image"}


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    add_attribution_args(parser, 0, "test images used (0 = all; seeded random subset otherwise)")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=256,
        help="images per attribution batch (the authors' script used 256)",
    )
    parser.add_argument("--num_thresholds", type=int, default=9, help="points on the τ grid")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.num_images < 0:
        raise SystemExit("error: --batch_size must be >= 1 and --num_images >= 0")

    import jax

    from gradmix_jax import attribution
    from gradmix_jax import attribution_analysis as aa
    from gradmix_jax.training.trained import load_trained

    protocol, overrides, workdirs, results = train_pair(args)
    trained = {m: load_trained(workdirs[m]) for m in METHODS}
    data = load_test_data(trained["gradmix"].config)
    taus = aa.default_thresholds(args.num_thresholds)

    # Seeded order, so every batch mixes known and unknown images (as a test set would).
    order = np.random.default_rng(args.seed).permutation(len(data.test_labels))
    if args.num_images:
        order = order[: args.num_images]
    batch = min(args.batch_size, len(order))
    order = order[: len(order) // batch * batch]
    known = data.test_labels[order] >= 0

    fractions = {k: {} for k in KINDS}  # kind -> method -> [N, T]
    settings = {}
    for method in METHODS:
        t = trained[method]
        settings = map_settings(args, t, data)
        out = {k: [] for k in KINDS}
        for start in range(0, len(order), batch):
            x = t.preprocess(data.test_images[order[start : start + batch]])
            per_layer = aa.layer_maps(t.model, t.variables, x, **settings)
            for kind, norm in KINDS.items():
                maps = attribution.aggregate_maps(
                    list(per_layer.values()), tuple(x.shape[1:3]), normalize=norm
                )
                out[kind].append(aa.activated_fractions(jax.device_get(maps), taus))
        for kind in KINDS:
            fractions[kind][method] = np.concatenate(out[kind])

    groups = {"all": np.ones_like(known), "known": known, "unknown": ~known}
    curves = {
        kind: {
            m: {
                g: fractions[kind][m][sel].mean(0).tolist() if sel.any() else None
                for g, sel in groups.items()
            }
            for m in METHODS
        }
        for kind in KINDS
    }
    higher = {
        kind: np.asarray(curves[kind]["gradmix"]["all"]) > np.asarray(curves[kind]["none"]["all"])
        for kind in KINDS
    }

    # Non-default targets get their own files, so both can sit in one --out.
    tag = f"{protocol}_split{args.split}" + ("" if args.target == "simclr" else f"_{args.target}")
    stem = os.path.join(args.out, f"fig8_{tag}")
    layers = "+".join(settings["layers"])
    for kind in KINDS:
        save_activated_fraction_plot(
            f"{stem}_{kind}.png",
            taus,
            {
                "without GradMix": np.asarray(curves[kind]["none"]["all"]),
                "with GradMix": np.asarray(curves[kind]["gradmix"]["all"]),
            },
            title=f"Fig. 8: S_M of {kind} LayerCAM maps ({args.target}, {layers})\n{protocol} "
            f"split {args.split}, {len(order)} test images [{scale_label(args)}]",
        )
    write_csv(
        f"{stem}_curves.csv",
        ["maps", "model", "group", "tau", "S_M"],
        [
            [kind, m, g, f"{tau:.6g}", f"{v:.6f}"]
            for kind in KINDS
            for m in METHODS
            for g in groups
            if curves[kind][m][g] is not None
            for tau, v in zip(taus, curves[kind][m][g])
        ],
    )
    summary = {
        "figure": "fig8",
        "scale": scale_label(args),
        "overrides": {k: str(v) for k, v in overrides.items()},
        "protocol": protocol,
        "split": args.split,
        "target": args.target,
        "layers": list(settings["layers"]),
        "temperature": settings["temperature"],
        "batch_size": batch,
        "num_images": len(order),
        "num_known": int(known.sum()),
        "seed": args.seed,
        "thresholds": taus.tolist(),
        "maps": KINDS,
        "curves": curves,
        "gradmix_higher_at_every_tau": {k: bool(v.all()) for k, v in higher.items()},
        "gradmix_higher_count": {k: int(v.sum()) for k, v in higher.items()},
        "models": {m: {"workdir": workdirs[m], "auroc": results[m]["auroc"]} for m in METHODS},
    }
    write_json(stem + ".json", summary)

    # A few τ of the grid (first, middle, last = 1e-5, 1e-4, 1e-3 on the default grid).
    cols = sorted({0, len(taus) // 2, len(taus) - 1})
    rows = [
        [kind, m, *(f"{100 * curves[kind][m]['all'][c]:.2f}" for c in cols)]
        for kind in KINDS
        for m in METHODS
    ]
    notes = scale_note(args, overrides) + [
        f"Target {args.target}, layers {layers}, {len(order)} test images ({int(known.sum())} known) "
        f"in batches of {batch}; S_M in % of map pixels above τ, mean over images.",
        "Paper (Fig. 8, no numbers): GradMix has the higher S_M at every τ.",
    ]
    notes += [
        f"Our run, {kind} maps: GradMix higher at every τ: "
        f"{'yes' if higher[kind].all() else 'no'} ({int(higher[kind].sum())} of {len(taus)} τ)."
        for kind in KINDS
    ]
    write_table(
        stem,
        ["maps", "model", *(f"S_M % @ τ={taus[c]:.0e}" for c in cols)],
        rows,
        f"Fig. 8: activated fraction S_M, {protocol} split {args.split}",
        notes,
    )
    return 0


if __name__ == "__main__":
    from experiments.common import main_guard

    sys.exit(main_guard(main))
