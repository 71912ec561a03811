"""Shared pieces of the attribution figures (fig7_attribution_maps.py, fig8_activated_fraction.py).

Both scripts train the same two cells, ``mixing.method`` = ``none`` and ``gradmix`` with everything
else equal, in ``OUT/<protocol>/split<k>/<method>`` (resumable: a cell with results.json is not
retrained), so running one script after the other with the same ``--out`` trains only once.
"""

from __future__ import annotations

import os
from typing import Any

from experiments.common import (  # noqa: F401
    add_common_args,
    apply_overrides,
    load_config,
    overrides_from_args,
    run_cell,
    scale_note,
)

#: The two models compared in Fig. 7/8/10: without and with GradMix.
METHODS = ("none", "gradmix")


def add_attribution_args(parser, num_images: int, num_images_help: str) -> None:
    """--protocol, --split, --target, --layers, --num_images, --seed plus --out/--smoke/--set."""
    from gradmix_jax.attribution_analysis import TARGETS

    parser.add_argument(
        "--protocol",
        default=None,
        help="config name in configs/ (default cifar10; digits with --smoke)",
    )
    parser.add_argument("--split", type=int, default=0, help="open-set split index")
    parser.add_argument(
        "--target",
        choices=TARGETS,
        default="simclr",
        help="scalar the maps explain (see gradmix_jax.attribution_analysis)",
    )
    parser.add_argument(
        "--layers",
        default=None,
        help="comma-separated taps, e.g. conv3_2,conv4_2 (default: the config's "
        "gradmix.layers, i.e. the layers GradMix trained with)",
    )
    parser.add_argument("--num_images", type=int, default=num_images, help=num_images_help)
    parser.add_argument("--seed", type=int, default=0, help="seed of the image choice")
    add_common_args(parser)


def protocol_of(args) -> str:
    return args.protocol or ("digits" if args.smoke else "cifar10")


def train_pair(args) -> tuple[str, dict[str, Any], dict[str, str], dict[str, dict]]:
    """Trains (or reads back) the none / gradmix cells.

    Returns ``(protocol, overrides, workdirs, results)`` with dicts keyed by method.
    """
    from gradmix_jax.training import trainer

    protocol = protocol_of(args)
    overrides = overrides_from_args(args)
    workdirs, results = {}, {}
    for method in METHODS:
        config = load_config(protocol)
        apply_overrides(config, {**overrides, "data.split": args.split, "mixing.method": method})
        workdirs[method] = os.path.join(args.out, protocol, f"split{args.split}", method)
        results[method] = run_cell(workdirs[method], config, trainer.train_and_evaluate)
        print(
            f"{protocol} split {args.split} {method}: AUROC {results[method]['auroc']:.4f}",
            flush=True,
        )
    return protocol, overrides, workdirs, results


def load_test_data(config):
    """The open-set split the cell was trained on (uint8 images, unknown test labels = -1)."""
    from gradmix_jax.data import load_openset

    return load_openset(
        config.data.protocol,
        int(config.data.split),
        tuple(config.data.known_classes),
        config.data.data_dir or None,
    )


def map_settings(args, trained, data) -> dict[str, Any]:
    """Keyword arguments of ``attribution_analysis.layer_maps`` for one trained model."""
    from gradmix_jax.attribution_analysis import class_prototypes

    config = trained.config
    layers = tuple(args.layers.split(",")) if args.layers else tuple(config.gradmix.layers)
    kwargs = dict(layers=layers, target=args.target, temperature=float(config.temperature))
    if args.target == "prototype":
        # Class-mean projection of the known-class training images.
        feats = trained.features(data.train_images, which="projection")
        kwargs["prototypes"] = class_prototypes(feats, data.train_labels, len(data.known_classes))
    return kwargs


def scale_label(args) -> str:
    return "SMOKE scale (tiny model, 3 steps)" if args.smoke else "full config"
