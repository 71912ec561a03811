"""Config checks: one clear line naming the field and its allowed values, before any compute."""

from __future__ import annotations

from typing import Any

import jax

from gradmix_jax import attribution, augment, losses, mixing
from gradmix_jax.data import VALIDATION_PROTOCOLS
from gradmix_jax.data.protocols import (
    CLOSED_SET_CLASSES,
    CLOSED_SET_SOURCE_CLASSES,
    PROTOCOLS,
    check_split,
    resolve_known_classes,
)
from gradmix_jax.models import ARCHITECTURES, DTYPES, STEMS, validate_taps
from gradmix_jax.training.config_base import RECIPES, resolve_recipe
from gradmix_jax.training.objectives import ATTRIBUTION_LOSSES, OBJECTIVES
from gradmix_jax.training.openset_eval import FEATURES, LOGIT_SCORES, SCORES

#: Datasets trained on as a whole (``data.closed_set=True``) only.
CLOSED_SET_ONLY: tuple[str, ...] = ("cifar100", "imagenet100")
#: Protocols whose classes come from the data itself (folder names), not from a split table.
FOLDER_PROTOCOLS: tuple[str, ...] = ("imagefolder",)
PIPELINES: tuple[str, ...] = ("auto", "device", "stream")  # data.pipeline
INPUT_NORMALIZATIONS: tuple[str, ...] = ("none", "dataset")  # augment.normalize
MAP_VIEWS: tuple[str, ...] = ("view1", "both")  # gradmix.map_views

MIXING_METHODS = mixing.METHODS
CHOICES: dict[str, tuple[Any, ...]] = {
    "model.name": tuple(sorted(ARCHITECTURES)),
    "model.stem": STEMS,
    "model.dtype": DTYPES,
    "data.protocol": PROTOCOLS + CLOSED_SET_ONLY + FOLDER_PROTOCOLS,
    "data.pipeline": PIPELINES,
    "augment.preset": augment.PRESETS,
    "augment.normalize": INPUT_NORMALIZATIONS,
    "mixing.method": mixing.METHODS,
    "gradmix.recipe": tuple(RECIPES),
    "gradmix.ratio_of": mixing.RATIO_OF,
    "gradmix.ratio_per": mixing.RATIO_PER,
    "gradmix.box_size": mixing.BOX_SIZES,
    "gradmix.fill": mixing.FILL_MODES,
    "gradmix.noise_channels": mixing.NOISE_CHANNELS,
    "gradmix.placement": mixing.PLACEMENTS,
    "gradmix.cam_relu": (True, False),
    "gradmix.map_views": MAP_VIEWS,
    "gradmix.normalize": attribution.NORMALIZE_MODES,
    "gradmix.normalize_at": attribution.NORMALIZE_AT,
    "gradmix.attribution_loss": ATTRIBUTION_LOSSES,
    "gradmix.loss_weight": losses.LOSS_WEIGHTS,
    "gradmix.weight_area": mixing.AREAS,
    "gradmix.mixed_loss": losses.MIXED_LOSSES,
    "gradmix.exact": (True, False),
    "eval.features": FEATURES,
    "eval.score": tuple(SCORES),
}


class ConfigError(ValueError):
    """A config value outside its allowed set."""


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def _check_input_norm(config) -> None:
    mean, std = config.augment.mean, config.augment.std
    if (mean is None) != (std is None):
        raise ConfigError(
            "augment.mean and augment.std must be set together (or both unset: the training "
            f"split's), got mean={mean!r}, std={std!r}"
        )
    if mean is None:
        return
    if config.augment.normalize != "dataset":
        raise ConfigError(
            "augment.mean/augment.std need augment.normalize='dataset', got "
            f"{config.augment.normalize!r}"
        )
    ok = (
        len(mean) == len(std)
        and len(mean) in (1, 3)
        and all(isinstance(v, (int, float)) for v in (*mean, *std))
        and all(v > 0 for v in std)
    )
    if not ok:
        raise ConfigError(
            "augment.mean and augment.std must be tuples of 1 or 3 numbers (one per channel) of "
            f"the same length with std > 0, got mean={tuple(mean)}, std={tuple(std)}"
        )


def validate_config(config, num_devices: int = 1) -> None:
    """Raises ConfigError (one line) for the first bad field. Needs no data and no device work.

    Checks ``config`` after ``gradmix.recipe`` fills its unset fields (``resolve_recipe``).
    """
    recipe = config.gradmix.get("recipe", "paper")
    if recipe not in RECIPES:
        raise ConfigError(f"gradmix.recipe must be one of {list(RECIPES)}, got {recipe!r}")
    config = resolve_recipe(config)
    for field, allowed in CHOICES.items():
        value = _get(config, field)
        if value not in allowed:
            raise ConfigError(f"{field} must be one of {list(allowed)}, got {value!r}")
    if config.objective not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {list(OBJECTIVES)}, got {config.objective!r}")
    if config.objective == "moco" and config.gradmix.mixed_loss == "clean_anchors":
        raise ConfigError(
            "gradmix.mixed_loss must be 'simclr' for objective='moco' (its mixed term is the "
            "InfoNCE of the mixed queries), got 'clean_anchors'"
        )
    if not config.base_temperature >= 0:
        raise ConfigError(
            f"base_temperature must be >= 0 (0 = temperature), got {config.base_temperature!r}"
        )
    _check_input_norm(config)
    if config.eval.score in LOGIT_SCORES and config.objective not in ("ce", "ce_ssl"):
        raise ConfigError(
            f"eval.score={config.eval.score!r} needs a classifier head (objective in ['ce', "
            f"'ce_ssl']), got objective={config.objective!r}; use one of "
            f"{[s for s in SCORES if s not in LOGIT_SCORES]}"
        )
    if config.objective == "moco":
        if not config.moco.queue_size >= config.batch_size:
            raise ConfigError(
                f"moco.queue_size must be >= batch_size ({config.batch_size}), "
                f"got {config.moco.queue_size}"
            )
        if not 0 <= config.moco.momentum < 1:
            raise ConfigError(f"moco.momentum must be in [0, 1), got {config.moco.momentum}")
    if config.data.closed_set:
        if config.data.protocol not in CLOSED_SET_CLASSES:
            raise ConfigError(
                f"data.protocol must be one of {list(CLOSED_SET_CLASSES)} when "
                f"data.closed_set=True, got {config.data.protocol!r}"
            )
        total = CLOSED_SET_SOURCE_CLASSES[config.data.protocol]
        if config.data.protocol in FOLDER_PROTOCOLS and config.data.closed_set_classes:
            raise ConfigError(
                "data.closed_set_classes must be 0 for data.protocol='imagefolder' "
                f"(every class folder under train/ is used), got {config.data.closed_set_classes}"
            )
        if config.data.closed_set_classes and not 2 <= config.data.closed_set_classes <= total:
            raise ConfigError(
                f"data.closed_set_classes must be 0 (default) or in [2, {total}] for "
                f"{config.data.protocol}, got {config.data.closed_set_classes}"
            )
        if config.data.known_classes:
            raise ConfigError(
                "data.known_classes must be empty when data.closed_set=True "
                "(closed-set training uses every class)"
            )
    elif config.data.protocol in CLOSED_SET_ONLY:
        raise ConfigError(
            f"data.protocol={config.data.protocol!r} is a closed-set dataset only; "
            "set data.closed_set=True or use one of " + str(list(PROTOCOLS + FOLDER_PROTOCOLS))
        )
    if config.data.protocol in FOLDER_PROTOCOLS and not config.data.data_dir:
        raise ConfigError(
            "data.data_dir must be the image folder (with train/<class>/ and test/<class>/ or "
            "val/<class>/) for data.protocol='imagefolder', got ''"
        )
    if config.data.validation and (
        config.data.closed_set or config.data.protocol not in VALIDATION_PROTOCOLS
    ):
        raise ConfigError(
            f"data.validation=True needs data.protocol in {list(VALIDATION_PROTOCOLS)} "
            f"and data.closed_set=False, got {config.data.protocol!r}"
        )
    try:
        validate_taps(config.gradmix.layers)
        check_split(config.data.split)
        if not config.data.closed_set and config.data.protocol not in FOLDER_PROTOCOLS:
            resolve_known_classes(
                config.data.protocol, config.data.split, config.data.known_classes
            )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    lo, hi = (tuple(config.gradmix.ratio_range) + (None, None))[:2]
    if (
        len(config.gradmix.ratio_range) != 2
        or not all(isinstance(v, (int, float)) for v in (lo, hi))
        or not 0 < lo <= hi < 1
    ):
        raise ConfigError(
            "gradmix.ratio_range must be (lo, hi) with 0 < lo <= hi < 1, "
            f"got {tuple(config.gradmix.ratio_range)}"
        )
    positive = {
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "temperature": config.temperature,
        "model.width": config.model.width,
        "model.feature_dim": config.model.feature_dim,
        "eval.k": config.eval.k,
        "eval.batch_size": config.eval.batch_size,
        "data.image_size": config.data.image_size,
        "data.device_budget_mb": config.data.device_budget_mb,
        "data.num_threads": config.data.num_threads,
        "log_every_steps": config.log_every_steps,
        "checkpoint_every_steps": config.checkpoint_every_steps,
    }
    for field, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{field} must be > 0, got {value!r}")
    if not (isinstance(config.data.num_workers, int) and config.data.num_workers >= 0):
        raise ConfigError(
            f"data.num_workers must be an integer >= 0, got {config.data.num_workers!r}"
        )
    if config.data.pipeline == "stream" and config.batch_size % max(jax.process_count(), 1):
        raise ConfigError(
            f"batch_size must be divisible by the number of processes ({jax.process_count()}) "
            f"for data.pipeline='stream', got {config.batch_size}"
        )
    if not 0 <= config.label_smoothing < 1:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {config.label_smoothing!r}")
    if not (config.eval.id_samples == 0 or config.eval.id_samples >= 3):
        raise ConfigError(f"eval.id_samples must be 0 (skip) or >= 3, got {config.eval.id_samples}")
    area = config.eval.get("area_images", 0)
    if not (isinstance(area, int) and not isinstance(area, bool) and area >= 0):
        raise ConfigError(f"eval.area_images must be an int >= 0 (0 = skip), got {area!r}")
    if (
        config.num_steps < 0
        or config.num_epochs < 0
        or (config.num_steps == 0 and config.num_epochs == 0)
    ):
        raise ConfigError(
            "num_steps (> 0) or num_epochs (> 0) must give a positive training length, "
            f"got num_steps={config.num_steps}, num_epochs={config.num_epochs}"
        )
    if not 0 <= config.min_learning_rate <= config.learning_rate:
        raise ConfigError(
            f"min_learning_rate must be in [0, learning_rate={config.learning_rate}], "
            f"got {config.min_learning_rate}"
        )
    if config.mixing.method in ("cutmix", "mixup") and not config.mixing.alpha > 0:
        raise ConfigError(
            f"mixing.alpha must be > 0 for {config.mixing.method}, got {config.mixing.alpha}"
        )
    if config.batch_size % num_devices:
        raise ConfigError(
            f"batch_size must be divisible by the number of devices ({num_devices}), "
            f"got {config.batch_size}"
        )


def validate_data_dependent(config, min_class_count: int, num_train: int) -> None:
    """Checks that need the loaded split's sizes (still before any compilation)."""
    if config.eval.k > min_class_count:
        raise ConfigError(
            f"eval.k must be <= the smallest known class's training count "
            f"({min_class_count}), got {config.eval.k}"
        )
    if config.batch_size > num_train:
        raise ConfigError(
            f"batch_size must be <= the number of training images ({num_train}), "
            f"got {config.batch_size}"
        )
