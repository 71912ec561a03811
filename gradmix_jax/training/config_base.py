"""Base ml_collections config (paper defaults, CIFAR-sized). Protocol configs override it.

Every field is documented in README.md ("Config"). `validate_config` checks a config against the
allowed values before any data is loaded or anything is compiled.
"""

from __future__ import annotations

import ml_collections

from gradmix_jax.models import DEFAULT_TAPS


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

    c.mixing = ml_collections.ConfigDict()
    c.mixing.method = "gradmix"  # none | gradmix | cutmix | mixup
    c.mixing.alpha = 1.0  # Beta(α, α) of CutMix / Mixup

    c.gradmix = ml_collections.ConfigDict()
    c.gradmix.layers = DEFAULT_TAPS
    c.gradmix.ratio_range = (0.1, 0.5)
    c.gradmix.ratio_of = "side"  # side (paper) | area (authors' code)
    c.gradmix.ratio_per = "sample"  # sample (paper) | batch (authors' code)
    c.gradmix.fill = "sample"  # sample (paper) | noise (authors' code)
    c.gradmix.placement = "inside"  # inside (paper) | clip (authors' code)
    c.gradmix.normalize = "image"  # image | batch (authors' code) | none
    c.gradmix.attribution_loss = "simclr"  # simclr (authors' code) | total (clean loss)
    c.gradmix.loss_weight = "area"  # area = masked fraction (paper) | kept (authors') | one
    c.gradmix.exact = False  # True: recompute view 2 beside the mixed view (authors' code)

    c.moco = ml_collections.ConfigDict()  # objective='moco' only (MoCo v1, paper App. G)
    c.moco.queue_size = 4096
    c.moco.momentum = 0.999  # key encoder = EMA of the query encoder

    c.eval = ml_collections.ConfigDict()
    c.eval.k = 3
    c.eval.features = "encoder"  # encoder (pooled backbone) | projection (normalised z)
    c.eval.batch_size = 512
    c.eval.id_samples = 5000  # training features used for the TwoNN intrinsic dimension (0 = skip)

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
