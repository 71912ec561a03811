"""GradMix on a trained model's test images: the images, their LayerCAM maps and the mixed views.

    python -m experiments.fig_gradmix_views --workdir RUN --out docs/figures/gradmix_views.png

``RUN`` is any finished run (``results.json`` and a checkpoint). The maps are
``attribution_analysis.attribution_maps`` of the run's encoder in eval mode (SimCLR loss of the
image and its horizontal flip, the run's ``gradmix.layers``, ``temperature`` and
``gradmix.normalize``); the views are ``mixing.gradmix`` with the run's box settings, so each view
is an image with the region around its map's peak replaced by another image of the batch, shrunk.
In training the same happens to augmented views in train mode. Writes the PNG and a JSON of the
settings, the chosen test images and the pasted fractions.
"""

from __future__ import annotations

import sys

import numpy as np

from experiments.attribution_common import load_test_data
from experiments.common import ArgumentParser
from experiments.plots import save_gradmix_views
from gradmix_jax.files import as_path, write_json


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a finished run")
    parser.add_argument("--out", required=True, help="output PNG (a JSON goes beside it)")
    parser.add_argument("--num_images", type=int, default=8, help="test images (half known)")
    parser.add_argument("--seed", type=int, default=0, help="image choice and GradMix key")
    args = parser.parse_args(argv)
    if args.num_images < 2:
        raise SystemExit(f"error: --num_images must be >= 2, got {args.num_images}")
    if not (as_path(args.workdir) / "results.json").exists():
        raise SystemExit(f"error: --workdir {args.workdir} holds no finished run (no results.json)")

    import jax

    from gradmix_jax import attribution_analysis as aa
    from gradmix_jax import mixing
    from gradmix_jax.training.trained import load_trained

    trained = load_trained(args.workdir)
    config = trained.config
    data = load_test_data(config)
    idx = aa.pick_known_unknown(data.test_labels, args.num_images, seed=args.seed)
    x = trained.preprocess(data.test_images[idx])
    g = config.gradmix
    maps = aa.attribution_maps(
        trained.model,
        trained.variables,
        x,
        layers=tuple(g.layers),
        temperature=float(config.temperature),
        normalize=g.normalize,
    )
    mixed, masked = mixing.gradmix(
        jax.random.key(args.seed),
        x,
        maps,
        ratio_range=tuple(g.ratio_range),
        ratio_of=g.ratio_of,
        fill=g.fill,
        placement=g.placement,
        ratio_per=g.ratio_per,
    )
    labels = data.test_labels[idx]
    columns = [f"known {data.known_classes[y]}" if y >= 0 else "unknown" for y in labels]
    title = (
        f"GradMix views: {config.data.protocol} split {config.data.split}, "
        f"layers {'+'.join(g.layers)}, step {trained.step}"
    )
    save_gradmix_views(args.out, x, np.asarray(maps), mixed, np.asarray(masked), title, columns)
    stem = args.out.rsplit(".", 1)[0]
    write_json(
        stem + ".json",
        {
            "workdir": args.workdir,
            "step": trained.step,
            "seed": args.seed,
            "test_indices": np.asarray(idx).tolist(),
            "labels": labels.tolist(),
            "masked_fraction": np.asarray(masked).tolist(),
            "gradmix": g.to_dict(),
        },
    )
    print(f"wrote {args.out} and {stem}.json")
    return 0


if __name__ == "__main__":
    from experiments.common import main_guard

    sys.exit(main_guard(main))
