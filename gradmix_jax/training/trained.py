"""A finished run as a Python object: ``load_trained(workdir)`` -> model, weights and feature functions.

The experiment scripts train cells with ``trainer.train_and_evaluate`` and then evaluate the
trained encoders further (OOD sets, corruptions, linear probes, attribution maps). This module
rebuilds the run's model from ``<workdir>/results.json`` and restores the newest checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np

from gradmix_jax import augment
from gradmix_jax.files import as_path, read_json
from gradmix_jax.models import ContrastiveResNet, model_from_config
from gradmix_jax.training import checkpoint, parallel
from gradmix_jax.training.train_step import (
    StepConfig,
    TrainState,
    init_state,
    make_eval_fn,
    make_optimizer,
)
from gradmix_jax.training.workdir import RESULTS, with_added_fields


@dataclasses.dataclass
class TrainedModel:
    """A trained ContrastiveResNet with its run's config.

    ``variables = {'params', 'batch_stats'}``; ``known_classes`` are the source-dataset class ids
    in label order (label i = known_classes[i]).
    """

    model: ContrastiveResNet
    variables: dict[str, Any]
    config: ml_collections.ConfigDict
    known_classes: tuple[int, ...]
    step: int
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.config.data.image_size, self.config.data.image_size)

    @property
    def input_norm(self) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
        """``(mean, std)`` of the input normalisation the model was trained with, or (None, None)."""
        return self.input_mean, self.input_std

    def preprocess(self, images: np.ndarray) -> jax.Array:
        """uint8 [N, H, W, C] -> float32 [N, S, S, C] (the evaluation transform: [0, 1], then the
        run's input normalisation if it had one)."""
        return augment.eval_transform(images, self.image_size, *self.input_norm)

    def _outputs(self, images: np.ndarray, which: str, batch_size: int) -> dict[str, np.ndarray]:
        if which not in ("encoder", "projection"):
            raise ValueError(f"which must be one of ['encoder', 'projection'], got {which!r}")
        from gradmix_jax.training.trainer import extract_features  # the trainer's padded batching

        mesh = parallel.make_mesh(jax.local_devices()[:1])
        return extract_features(
            _eval_fn(self.model, self.image_size, which, self.input_norm),
            self.variables,
            np.asarray(images),
            batch_size,
            mesh,
        )

    def features(
        self, images: np.ndarray, which: str = "encoder", batch_size: int = 256
    ) -> np.ndarray:
        """Eval-mode features of uint8 images [N, H, W, C] -> [N, D] (encoder or projection z)."""
        return self._outputs(images, which, min(batch_size, max(len(images), 1)))["features"]

    def logits(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Classifier logits [N, C] of uint8 images (ce / ce_ssl models only)."""
        if self.model.num_classes == 0:
            raise ValueError(
                f"objective={self.config.objective!r} has no classifier head; "
                "logits exist for objective in ['ce', 'ce_ssl']"
            )
        return self._outputs(images, "encoder", min(batch_size, max(len(images), 1)))["logits"]


_EVAL_FNS: dict = {}


def _eval_fn(model, size, which, input_norm):
    key = (model, size, which, input_norm)
    if key not in _EVAL_FNS:
        _EVAL_FNS[key] = jax.jit(make_eval_fn(model, size, which, *input_norm))
    return _EVAL_FNS[key]


def load_trained(workdir: str) -> TrainedModel:
    """The model of a finished (or checkpointed) run in ``workdir``.

    Needs ``<workdir>/results.json`` (written at the end of ``train_and_evaluate``) and
    ``<workdir>/checkpoints``. Raises FileNotFoundError if either is missing and
    ``checkpoint.CheckpointError`` if the checkpoint does not fit the recorded config.
    """
    path = as_path(workdir) / RESULTS
    results = read_json(path)
    if results is None:
        raise FileNotFoundError(
            f"{path} not found: train first (python -m gradmix_jax.train --workdir {workdir} ...)"
        )
    # Fields added since the run was saved get the value it trained with.
    config = ml_collections.ConfigDict(with_added_fields(results["config"]))
    if "image_shape" not in results:
        raise ValueError(f"{path} predates image_shape in results.json; retrain the run")
    image_shape = tuple(results["image_shape"])
    head = results.get(
        "classifier_outputs", results.get("num_classes", 0)
    )  # older runs: num_classes
    model = model_from_config(config, num_classes=int(head))
    tx, _ = make_optimizer(
        config.learning_rate,
        config.min_learning_rate,
        max(results["num_steps"], 1),
        config.warmup_steps,
    )
    cfg = StepConfig.from_config(config)
    # Abstract state (no compute) in the layout the run saved, placed on this process's device.
    abstract = jax.eval_shape(
        lambda k: init_state(model, tx, k, image_shape, cfg), jax.random.key(0)
    )
    sharding = parallel.replicated(parallel.make_mesh(jax.local_devices()[:1]))
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract
    )
    if not (as_path(workdir) / checkpoint.CHECKPOINTS).exists():  # the manager would create it
        raise FileNotFoundError(f"no checkpoint in {as_path(workdir) / checkpoint.CHECKPOINTS}")
    manager = checkpoint.make_manager(workdir, config.max_to_keep)
    try:
        if manager.latest_step() is None:
            raise FileNotFoundError(f"no checkpoint in {manager.directory}")
        state: TrainState = checkpoint.restore_latest(manager, abstract)
    finally:
        manager.close()
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return TrainedModel(
        model=model,
        variables=variables,
        config=config,
        known_classes=tuple(results["known_classes"]),
        step=int(state.step),
        **_input_norm(results.get("input_norm")),
    )


def _input_norm(stored: dict | None) -> dict:
    """results.json's ``input_norm`` ({'mean': [...], 'std': [...]}, absent: none) as fields."""
    if not stored:
        return {}
    return {"input_mean": tuple(stored["mean"]), "input_std": tuple(stored["std"])}


def final_features(workdir: str, results: dict[str, Any] | None = None):
    """A finished run's final checkpoint, data and features, as its evaluation read them.

    Returns ``(trained, data, train_features, test_features)``: ``load_trained(workdir)``, the
    run's ``OpenSetData`` (``load_data(trained.config)``) and the ``eval.features`` of its train
    and test images, [N, D] and [T, D]. ``results`` is the run's results.json (read when None).
    Raises ValueError when the newest checkpoint is not the run's last step: scores are computed
    from the final checkpoint only.
    """
    from gradmix_jax.training.pipeline import load_data

    if results is None:
        results = read_json(as_path(workdir) / RESULTS)
        if results is None:
            raise FileNotFoundError(f"{as_path(workdir) / RESULTS} not found")
    trained = load_trained(workdir)
    if trained.step != results["num_steps"]:
        raise ValueError(
            f"{workdir}: the newest checkpoint is step {trained.step}, the run finished at "
            f"{results['num_steps']}; scores are added from the final checkpoint only"
        )
    data = load_data(trained.config)
    which, batch_size = trained.config.eval.features, trained.config.eval.batch_size
    train_f = trained.features(data.train_images, which, batch_size)
    test_f = trained.features(data.test_images, which, batch_size)
    return trained, data, train_f, test_f


#: results.json keys of scores the evaluation gained after runs had been saved without them.
LATER_SCORES = ("auroc_gda",)


def add_missing_scores(workdir: str) -> dict[str, Any]:
    """``<workdir>/results.json`` with every score of ``LATER_SCORES`` it lacks added.

    A run saved before a score joined the evaluation gets it from its final checkpoint, on the
    features its evaluation used (``eval.features``) and the same data; the keys are listed in
    ``'added_scores'`` and results.json is rewritten atomically (its other fields unchanged). A run
    that has every score is returned as it is, without loading anything.
    """
    from gradmix_jax import metrics, osr
    from gradmix_jax.files import write_json

    path = as_path(workdir) / RESULTS
    results = read_json(path)
    if results is None:
        raise FileNotFoundError(f"{path} not found")
    missing = [key for key in LATER_SCORES if key not in results]
    if not missing:
        return results
    _, data, train_f, test_f = final_features(workdir, results)
    known = data.test_is_known
    added = {}
    if "auroc_gda" in missing:
        gda = np.asarray(osr.gaussian_scores(train_f, data.train_labels, test_f, data.num_known)[0])
        added["auroc_gda"] = (
            float(metrics.auroc(gda[known], gda[~known])) if (~known).any() else None
        )
    results = {
        **results,
        **added,
        "added_scores": sorted({*results.get("added_scores", ()), *added}),
    }
    write_json(path, results)
    return results


__all__ = ["LATER_SCORES", "TrainedModel", "add_missing_scores", "final_features", "load_trained"]
