"""Regenerates the paper's Fig. 7/10: LayerCAM maps of a model trained without and with GradMix.

    python -m experiments.fig7_attribution_maps --protocol cifar10 --out runs/fig7
    python -m experiments.fig7_attribution_maps --out runs/fig7 --smoke      # digits, tiny, ~1 min

Trains two cells, ``mixing.method`` none and gradmix (everything else equal), in
``OUT/<protocol>/split<k>/<method>`` (resumable; fig8_activated_fraction.py with the same --out
reuses them), picks ``--num_images`` fixed, seeded test images (half known, half unknown classes,
like Fig. 1/7) and writes, with ``TAG = <protocol>_split<k>`` (``+ _prototype`` for that target):

* ``OUT/fig7_TAG.png``: row 1 the images, then one row per model with its map overlaid;
* ``OUT/fig7_TAG.npz``: the images and the raw numbers of the maps (``maps_none``, ``maps_gradmix``);
* ``OUT/fig7_TAG.json`` / ``.csv``: settings, chosen images and per-image map statistics.

The maps are ``attribution_analysis.attribution_maps`` (eval mode, per-image min-max per layer,
summed over ``--layers``; ``--target`` simclr or prototype). The paper's claim (qualitative, no
numbers): GradMix models show larger activated areas. This script shows the maps; it asserts nothing.
"""

from __future__ import annotations

import io
import os
import sys

import numpy as np

from experiments.attribution_common import (
    METHODS,
    add_attribution_args,
    load_test_data,
    map_settings,
    scale_label,
    train_pair,
)
from experiments.common import ArgumentParser
from experiments.plots import save_map_grid
from gradmix_jax.files import write_bytes_atomic, write_csv, write_json


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    add_attribution_args(parser, 8, "test images shown (half known, half unknown)")
    parser.add_argument(
        "--normalize",
        choices=("image", "batch", "none"),
        default="image",
        help="per-layer map normalisation before the sum over layers",
    )
    args = parser.parse_args(argv)

    from gradmix_jax import attribution_analysis as aa
    from gradmix_jax.training.trained import load_trained

    protocol, overrides, workdirs, results = train_pair(args)
    trained = {m: load_trained(workdirs[m]) for m in METHODS}
    data = load_test_data(trained["gradmix"].config)
    idx = aa.pick_known_unknown(data.test_labels, args.num_images, seed=args.seed)
    labels = data.test_labels[idx]

    maps, images, settings = {}, None, {}
    for method in METHODS:
        t = trained[method]
        x = np.asarray(t.preprocess(data.test_images[idx]))
        images = x if images is None else images  # same eval transform for both cells
        settings = map_settings(args, t, data)
        maps[method] = np.asarray(
            aa.attribution_maps(t.model, t.variables, x, normalize=args.normalize, **settings)
        )

    # Non-default targets get their own files, so both can sit in one --out.
    tag = f"{protocol}_split{args.split}" + ("" if args.target == "simclr" else f"_{args.target}")
    stem = os.path.join(args.out, f"fig7_{tag}")
    columns = [f"known {data.known_classes[y]}" if y >= 0 else "unknown" for y in labels]
    title = (
        f"Fig. 7: LayerCAM ({args.target}, {'+'.join(settings['layers'])}), {protocol} "
        f"split {args.split} [{scale_label(args)}]"
    )
    save_map_grid(
        stem + ".png",
        images,
        {"without GradMix": maps["none"], "with GradMix": maps["gradmix"]},
        title=title,
        column_titles=columns,
    )
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        images=images,
        test_indices=idx,
        labels=labels,
        **{f"maps_{m}": maps[m] for m in METHODS},
    )
    write_bytes_atomic(stem + ".npz", buf.getvalue())

    # Per-image statistics of the maps, so the figure has numbers behind it.
    rows = []
    for method in METHODS:
        m = maps[method].reshape(len(idx), -1)
        half = (m > 0.5 * m.max(axis=1, keepdims=True)).mean(axis=1)
        for i, j in enumerate(idx):
            rows.append(
                [
                    int(j),
                    int(labels[i]),
                    bool(labels[i] >= 0),
                    method,
                    float(m[i].mean()),
                    float(m[i].max()),
                    float(half[i]),
                ]
            )
    header = [
        "test_index",
        "label",
        "known",
        "model",
        "map_mean",
        "map_max",
        "fraction_above_half_max",
    ]
    write_csv(stem + ".csv", header, rows)
    summary = {
        "figure": "fig7",
        "scale": scale_label(args),
        "overrides": {k: str(v) for k, v in overrides.items()},
        "protocol": protocol,
        "split": args.split,
        "target": args.target,
        "layers": list(settings["layers"]),
        "normalize": args.normalize,
        "temperature": settings["temperature"],
        "seed": args.seed,
        "test_indices": idx.tolist(),
        "labels": labels.tolist(),
        "known": (labels >= 0).tolist(),
        "models": {
            m: {
                "workdir": workdirs[m],
                "auroc": results[m]["auroc"],
                "closed_set_accuracy": results[m]["closed_set_accuracy"],
                "mean_fraction_above_half_max": float(np.mean([r[6] for r in rows if r[3] == m])),
            }
            for m in METHODS
        },
        "per_image": [dict(zip(header, r)) for r in rows],
    }
    write_json(stem + ".json", summary)
    print(f"wrote {stem}.png/.npz/.json/.csv [{scale_label(args)}]")
    for m in METHODS:
        print(
            f"  {m}: mean fraction of pixels above half the map max "
            f"{summary['models'][m]['mean_fraction_above_half_max']:.3f}"
        )
    return 0


if __name__ == "__main__":
    from experiments.common import main_guard

    sys.exit(main_guard(main))
