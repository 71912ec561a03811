"""Base ml_collections config (paper defaults, CIFAR-sized). Protocol configs override it.

Every field is documented in README.md ("Config"). `validate_config` checks a config against the
allowed values before any data is loaded or anything is compiled.

``gradmix.recipe`` chooses between the paper's GradMix step and the authors' code's: the fields in
``RECIPES`` are ``None`` in the base config and ``resolve_recipe`` fills each one that is still
``None`` from the recipe, so a field set in a config file or with ``--config.<field>=`` overrides
the recipe (docs/design.md, "The paper, the authors' code and this project").
"""

from __future__ import annotations

import copy

import ml_collections

from gradmix_jax.models import DEFAULT_TAPS

#: Default test images per group (known, unknown) of the activated-area measurement.
AREA_IMAGES = 256

#: Field values of each recipe (dotted config paths). 'paper': the step as the paper describes
#: it; 'authors': the authors' released code (box size, map normalisation, noise fill, loss
#: weight, mixed term, temperature scale, input normalisation, evaluation features).
RECIPES: dict[str, dict[str, object]] = {
    "paper": {
        "base_temperature": 0.0,
        "augment.normalize": "none",
        "gradmix.ratio_of": "side",
        "gradmix.ratio_per": "sample",
        "gradmix.box_size": "round",
        "gradmix.placement": "inside",
        "gradmix.fill": "sample",
        "gradmix.noise_channels": "independent",
        "gradmix.cam_relu": True,
        "gradmix.map_views": "view1",
        "gradmix.normalize": "image",
        "gradmix.normalize_at": "output",
        "gradmix.loss_weight": "area",
        "gradmix.weight_area": "masked",
        "gradmix.mixed_loss": "simclr",
        "gradmix.exact": False,
        "eval.features": "encoder",
    },
    "authors": {
        "base_temperature": 0.07,
        "augment.normalize": "dataset",
        "gradmix.ratio_of": "area",
        "gradmix.ratio_per": "batch",
        "gradmix.box_size": "floor_even",
        "gradmix.placement": "clip",
        "gradmix.fill": "noise",
        "gradmix.noise_channels": "shared",
        "gradmix.cam_relu": False,
        "gradmix.map_views": "both",
        "gradmix.normalize": "batch",
        "gradmix.normalize_at": "layer",
        "gradmix.loss_weight": "kept",
        "gradmix.weight_area": "nominal",
        "gradmix.mixed_loss": "clean_anchors",
        "gradmix.exact": True,
        "eval.features": "projection",
    },
}


def _node_and_leaf(config, dotted: str):
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        node = node[part]
    return node, leaf


def resolve_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``config`` with every recipe field that is ``None`` set from ``gradmix.recipe``.

    Fields already set keep their value (an explicit override of the recipe); a config without
    a field (saved before it existed) does not gain it. An unknown recipe is left for
    ``validate_config`` to report. Idempotent; the copy keeps ``config``'s lock.
    """
    resolved = copy.deepcopy(config)
    recipe = RECIPES.get(config.gradmix.get("recipe", "paper"))
    if recipe is not None:
        for dotted, value in recipe.items():
            node, leaf = _node_and_leaf(resolved, dotted)
            if leaf in node and node[leaf] is None:
                node[leaf] = value
    return resolved


def recipe_fields(config: ml_collections.ConfigDict) -> dict[str, object]:
    """The recipe fields of ``config`` whose value differs from its recipe's (explicit overrides)."""
    recipe = RECIPES.get(config.gradmix.get("recipe", "paper"), {})
    out = {}
    for dotted, value in recipe.items():
        node, leaf = _node_and_leaf(config, dotted)
        if node.get(leaf) is not None and node.get(leaf) != value:
            out[dotted] = node.get(leaf)
    return out


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 256
    c.num_epochs = 600
    c.num_steps = 0  # > 0 overrides num_epochs
    c.learning_rate = 1e-3  # Adam, cosine to min_learning_rate (paper App. D.2)
    c.min_learning_rate = 5.12e-5
    c.warmup_steps = 0
    # supcon_ssl (paper) | supcon | ce | ce_ssl (classifier head) | simclr | moco (self-supervised)
    c.objective = "supcon_ssl"
    c.supcon_weight = 1.0  # θ: weight of the supervised term (SupCon, or CE for ce/ce_ssl)
    c.simclr_weight = 1.0  # λ
    c.temperature = 0.05
    # The losses are scaled by temperature / base_temperature; 0 = temperature (scale 1, paper
    # recipe); the authors' code keeps SupContrast's 0.07 (scale 0.71 at T = 0.05).
    c.base_temperature = ml_collections.config_dict.placeholder(float)
    c.label_smoothing = 0.0  # ε of the CE term (ce, ce_ssl objectives)

    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet18"
    c.model.width = 64
    c.model.feature_dim = 128
    c.model.stem = "cifar"
    c.model.dtype = "auto"  # activations: float32 | bfloat16 | auto (bf16 on GPU/TPU, f32 on CPU)

    c.data = ml_collections.ConfigDict()
    c.data.protocol = "cifar10"
    c.data.split = 0
    c.data.known_classes = ()
    c.data.data_dir = ""
    c.data.image_size = 32  # images are resized to this (square) on the device
    # True: tune without the test set: a fixed sixth of the training set (all classes) is evaluated.
    c.data.validation = False
    c.data.closed_set = False  # True: train/test on all classes (Table 3); protocol = the dataset
    # Closed set: the first N classes of the dataset; 0 = Table 3's (10, 100, TinyImageNet 100 of 200).
    c.data.closed_set_classes = 0
    # Input path: device (split on every device as uint8) | stream (Grain reads each step's batch
    # on the host, each process its shard) | auto (device when the decoded training split fits
    # device_budget_mb, else stream).
    c.data.pipeline = "auto"
    c.data.device_budget_mb = 4096.0
    c.data.num_threads = 16  # Grain reader threads that read/decode records (stream, evaluation)
    c.data.num_workers = 0  # > 0: Grain worker processes, each reading whole batches (stream path)

    # SimCLR view augmentation (gradmix_jax.augment.AugmentParams); preset 'rgb' or 'digits',
    # any field below that is not None overrides the preset.
    c.augment = ml_collections.ConfigDict()
    c.augment.preset = "rgb"
    c.augment.crop_scale = ml_collections.config_dict.placeholder(tuple)
    c.augment.crop_ratio = ml_collections.config_dict.placeholder(tuple)
    c.augment.flip_prob = ml_collections.config_dict.placeholder(float)
    c.augment.jitter_prob = ml_collections.config_dict.placeholder(float)
    c.augment.brightness = ml_collections.config_dict.placeholder(float)
    c.augment.contrast = ml_collections.config_dict.placeholder(float)
    c.augment.saturation = ml_collections.config_dict.placeholder(float)
    c.augment.hue = ml_collections.config_dict.placeholder(float)
    c.augment.grayscale_prob = ml_collections.config_dict.placeholder(float)
    c.augment.rotation_degrees = ml_collections.config_dict.placeholder(float)
    c.augment.noise_std = ml_collections.config_dict.placeholder(float)
    # Input normalisation of the views and of evaluation images: none (the model sees [0, 1]) |
    # dataset ((x - mean) / std per channel, mean/std of the training split unless augment.mean
    # and augment.std are given; the authors' code normalises, GradMix's noise lands in that space).
    c.augment.normalize = ml_collections.config_dict.placeholder(str)
    c.augment.mean = ml_collections.config_dict.placeholder(tuple)
    c.augment.std = ml_collections.config_dict.placeholder(tuple)

    c.mixing = ml_collections.ConfigDict()
    c.mixing.method = "gradmix"  # none | gradmix | cutmix | mixup
    c.mixing.alpha = 1.0  # Beta(α, α) of CutMix / Mixup

    c.gradmix = ml_collections.ConfigDict()
    # paper | authors: sets every field below that is None (RECIPES; values: paper | authors).
    c.gradmix.recipe = "paper"
    c.gradmix.layers = DEFAULT_TAPS
    c.gradmix.ratio_range = (0.1, 0.5)
    c.gradmix.attribution_loss = "simclr"  # simclr (both recipes) | total (clean loss)
    c.gradmix.ratio_of = ml_collections.config_dict.placeholder(str)  # side | area
    c.gradmix.ratio_per = ml_collections.config_dict.placeholder(str)  # sample | batch
    c.gradmix.box_size = ml_collections.config_dict.placeholder(str)  # round | floor_even
    c.gradmix.placement = ml_collections.config_dict.placeholder(str)  # inside | clip
    c.gradmix.fill = ml_collections.config_dict.placeholder(str)  # sample | noise
    c.gradmix.noise_channels = ml_collections.config_dict.placeholder(str)  # independent | shared
    c.gradmix.cam_relu = ml_collections.config_dict.placeholder(bool)  # LayerCAM's outer ReLU
    c.gradmix.map_views = ml_collections.config_dict.placeholder(str)  # view1 | both
    c.gradmix.normalize = ml_collections.config_dict.placeholder(str)  # image | batch | none
    c.gradmix.normalize_at = ml_collections.config_dict.placeholder(str)  # output | layer
    c.gradmix.loss_weight = ml_collections.config_dict.placeholder(str)  # area | kept | one
    c.gradmix.weight_area = ml_collections.config_dict.placeholder(str)  # masked | nominal
    c.gradmix.mixed_loss = ml_collections.config_dict.placeholder(str)  # simclr | clean_anchors
    c.gradmix.exact = ml_collections.config_dict.placeholder(bool)  # recompute view 2 (authors)

    c.moco = ml_collections.ConfigDict()  # objective='moco' only (MoCo v1, paper App. G)
    c.moco.queue_size = 4096
    c.moco.momentum = 0.999  # key encoder = EMA of the query encoder

    c.eval = ml_collections.ConfigDict()
    c.eval.k = 3
    # encoder (pooled backbone, paper recipe) | projection (normalised z, authors' recipe)
    c.eval.features = ml_collections.config_dict.placeholder(str)
    # The score results.json's auroc holds and the CLI prints first: knn (Algorithm 1 on
    # eval.features, the paper's) | nno | gda | msp | max_logit | entropy (the last three: CE only).
    # Every score is stored under its own key too.
    c.eval.score = "knn"
    c.eval.batch_size = 512
    c.eval.id_samples = 5000  # training features used for the TwoNN intrinsic dimension (0 = skip)
    # Test images per group (known, unknown) whose LayerCAM maps give the activated area of Fig. 8
    # (fraction of map pixels above each of AREA_THRESHOLDS; 0 = skip).
    c.eval.area_images = AREA_IMAGES

    c.log_every_steps = 50
    c.checkpoint_every_steps = 1000
    c.max_to_keep = 2
    c.progress_bar = True
    return c


def get_protocol_config(
    protocol: str,
    *,
    epochs: int,
    simclr_weight: float,
    layers: tuple[str, ...] = DEFAULT_TAPS,
    image_size: int = 32,
    preset: str = "rgb",
    flip_prob: float | None = None,
) -> ml_collections.ConfigDict:
    """The base config with one protocol's Table 8 hyper-parameters (θ = 1, k = 3, batch 256)."""
    c = get_base_config()
    c.data.protocol = protocol
    c.data.image_size = image_size
    c.num_epochs = epochs
    c.supcon_weight = 1.0
    c.simclr_weight = simclr_weight
    c.gradmix.layers = layers
    c.augment.preset = preset
    if flip_prob is not None:
        c.augment.flip_prob = flip_prob
    return c
