"""The train step's static settings and its loss terms (pure functions of model outputs).

Objectives (``StepConfig.objective``, the paper's Table 1 / Table 6): the supervised term is SupCon
(``supcon``, ``supcon_ssl``) or cross-entropy on the classifier head over both views (``ce``,
``ce_ssl``), weighted by θ = ``supcon_weight``; the SimCLR term (λ = ``simclr_weight``) is on for
``*_ssl`` and ``simclr``. ``moco`` (MoCo v1) has its own gradient path in ``train_step``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from gradmix_jax import losses
from gradmix_jax.models import DEFAULT_TAPS
from gradmix_jax.training.config_base import resolve_recipe

OBJECTIVES: tuple[str, ...] = ("ce", "ce_ssl", "supcon", "supcon_ssl", "simclr", "moco")
#: What the GradMix maps are the gradient of: the SimCLR term alone, or the whole clean loss.
ATTRIBUTION_LOSSES: tuple[str, ...] = ("simclr", "total")


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static settings of the train step (hashable: part of the compiled function)."""

    objective: str = "supcon_ssl"
    supcon_weight: float = 1.0
    simclr_weight: float = 1.0
    temperature: float = 0.05
    base_temperature: float | None = None  # None: = temperature (loss scale 1)
    label_smoothing: float = 0.0
    method: str = "gradmix"
    alpha: float = 1.0
    layers: tuple[str, ...] = DEFAULT_TAPS
    ratio_range: tuple[float, float] = (0.1, 0.5)
    ratio_of: str = "side"
    ratio_per: str = "sample"
    box_size: str = "round"
    fill: str = "sample"
    noise_channels: str = "independent"
    placement: str = "inside"
    cam_relu: bool = True
    map_views: str = "view1"
    normalize: str = "image"
    normalize_at: str = "output"
    attribution_loss: str = "simclr"
    loss_weight: str = "area"
    weight_area: str = "masked"
    mixed_loss: str = "simclr"
    exact: bool = False
    moco_momentum: float = 0.999
    moco_queue_size: int = 4096

    @classmethod
    def from_config(cls, config) -> "StepConfig":
        """The step settings of ``config`` after ``gradmix.recipe`` fills its unset fields.

        Configs saved before a field existed lack it: those runs trained with the class default.
        """
        config = resolve_recipe(config)
        g = config.gradmix
        defaults = cls()
        base_temperature = float(config.get("base_temperature") or 0.0)
        return cls(
            objective=config.objective,
            supcon_weight=float(config.supcon_weight),
            simclr_weight=float(config.simclr_weight),
            temperature=float(config.temperature),
            base_temperature=base_temperature or None,
            # Absent from configs saved before the field existed: those runs trained without it.
            label_smoothing=float(config.get("label_smoothing", 0.0)),
            method=config.mixing.method,
            alpha=float(config.mixing.alpha),
            layers=tuple(g.layers),
            ratio_range=tuple(float(r) for r in g.ratio_range),
            ratio_of=g.ratio_of,
            ratio_per=g.ratio_per,
            box_size=g.get("box_size", defaults.box_size),
            fill=g.fill,
            noise_channels=g.get("noise_channels", defaults.noise_channels),
            placement=g.placement,
            cam_relu=bool(g.get("cam_relu", defaults.cam_relu)),
            map_views=g.get("map_views", defaults.map_views),
            normalize=g.normalize,
            normalize_at=g.get("normalize_at", defaults.normalize_at),
            attribution_loss=g.attribution_loss,
            loss_weight=g.loss_weight,
            weight_area=g.get("weight_area", defaults.weight_area),
            mixed_loss=g.get("mixed_loss", defaults.mixed_loss),
            exact=bool(g.exact),
            moco_momentum=float(config.moco.momentum),
            moco_queue_size=int(config.moco.queue_size),
        )

    @property
    def supervised(self) -> str | None:
        """The supervised loss of the objective: 'supcon', 'ce' or None (self-supervised only)."""
        return {"supcon": "supcon", "supcon_ssl": "supcon", "ce": "ce", "ce_ssl": "ce"}.get(
            self.objective
        )

    @property
    def theta(self) -> float:
        return self.supcon_weight if self.supervised else 0.0

    @property
    def lam(self) -> float:
        return self.simclr_weight if self.objective in ("supcon_ssl", "ce_ssl", "simclr") else 0.0

    @property
    def mix_weight(self) -> float:
        # The mixed term sits inside λ(·) in eq. 8; for the supcon-only objective keep λ as its scale.
        return self.simclr_weight


def clean_terms(outputs: dict[str, jax.Array], labels: jax.Array, cfg: StepConfig):
    """Clean loss θ·(SupCon | CE) + λ·SimCLR of both views; returns (loss, parts).

    outputs: {'z': [2N, D] = [z(v1); z(v2)], 'logits': [2N, C] (CE objectives only)}; labels: [N].
    The SimCLR part is always computed (GradMix's attribution loss), even when λ = 0.
    """
    z = outputs["z"]
    n = labels.shape[0]
    feats = jnp.stack([z[:n], z[n:]], axis=1)  # [N, 2 views, D]
    simclr = losses.simclr_loss(
        feats, temperature=cfg.temperature, base_temperature=cfg.base_temperature
    )
    parts = {"simclr": simclr}
    loss = cfg.lam * simclr
    if cfg.supervised == "supcon":
        parts["supcon"] = losses.supcon_loss(
            feats, labels, temperature=cfg.temperature, base_temperature=cfg.base_temperature
        )
        loss = loss + cfg.theta * parts["supcon"]
    elif cfg.supervised == "ce":
        parts["ce"] = losses.cross_entropy(
            outputs["logits"], jnp.concatenate([labels, labels]),
            label_smoothing=cfg.label_smoothing,
        )  # fmt: skip
        loss = loss + cfg.theta * parts["ce"]
    return loss, parts


def contrastive_terms(z: jax.Array, labels: jax.Array, cfg: StepConfig):
    """``clean_terms`` for the objectives without a classifier: z = [z(v1); z(v2)] ([2N, D])."""
    return clean_terms({"z": z}, labels, cfg)
