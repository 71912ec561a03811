"""The evaluation a run reports: features of the known train split and the whole test split,
open-set scores (k-NN Algorithm 1, NNO, MSP / max-logit / entropy), AUROC, OSCR and accuracy, and
the activated area of the model's attribution maps (paper Fig. 8)."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gradmix_jax import attribution, augment, metrics, osr
from gradmix_jax import attribution_analysis as aa
from gradmix_jax.data import OpenSetData
from gradmix_jax.data import images as image_sources
from gradmix_jax.training import parallel

#: The features the k-NN rule scores: the pooled encoder output or the normalised projection z.
FEATURES: tuple[str, ...] = ("encoder", "projection")
#: The open-set scores a run can headline (``eval.score``) and how the CLI names them: Algorithm 1's
#: k-NN score on ``eval.features`` (the paper's), NNO, GDA, and the classifier scores (CE only).
SCORES: dict[str, str] = {
    "knn": "Algorithm 1 k-NN",
    "nno": "NNO",
    "gda": "GDA",
    "msp": "MSP",
    "max_logit": "max-logit",
    "entropy": "entropy",
}
#: Scores that need a classifier head (objective ce / ce_ssl).
LOGIT_SCORES: tuple[str, ...] = ("msp", "max_logit", "entropy")
#: Thresholds τ of the activated area S(τ) (maps scaled to [0, 1]).
AREA_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: Seed of the fixed choice of test images the activated area is measured on.
AREA_SEED = 0


def score_key(score: str, features: str) -> str:
    """The results key of a score: ``auroc_knn_<features>`` for 'knn', else ``auroc_<score>``."""
    return f"auroc_knn_{features}" if score == "knn" else f"auroc_{score}"


def with_headline(results: dict[str, Any], score: str, features: str) -> dict[str, Any]:
    """``results`` with ``auroc`` = the AUROC of ``score`` and ``score`` naming it.

    Runs written before ``eval.score`` existed have no ``score`` key: their ``auroc`` is Algorithm
    1's k-NN score on their ``eval.features``, which is also stored under its own key.
    """
    out = dict(results)
    if "score" not in out and out.get(score_key("knn", features)) is None:
        out[score_key("knn", features)] = out.get("auroc")
    out["auroc"] = out.get(score_key(score, features))
    out["score"] = score
    return out


def make_eval_fn(
    model: nn.Module,
    out_size: tuple[int, int],
    which: str = "encoder",
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> Callable:
    """``outputs(params, batch_stats, images uint8 [B,H,W,C]) -> dict`` in eval mode.

    Images go through ``augment.eval_transform(images, out_size, mean, std)``: the input
    normalisation the model was trained with (None: images in [0, 1]).

    Keys: 'features' [B, D] (``which``: pooled encoder output or normalised projection z),
    'encoder' [B, D_enc] and 'projection' [B, feature_dim] (both, for evaluations that report
    each) and, for models with a classifier head, 'logits' [B, C].
    """

    def outputs(params, batch_stats, images):
        x = augment.eval_transform(images, out_size, mean, std)
        z, aux = model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
        out = {"encoder": aux["features"], "projection": z}
        out["features"] = out[which]
        if "logits" in aux:
            out["logits"] = aux["logits"]
        return out

    return outputs


def extract_features(
    feature_fn, variables: dict, images, batch_size: int, mesh, num_threads: int = 16
):
    """``feature_fn`` on ``images`` in fixed-size (padded) batches: one compilation for any length.

    ``variables = {'params', 'batch_stats'}``. ``images``: a uint8 array or a lazy image source
    (``gradmix_jax.data.images``), read in batches on ``num_threads`` threads, so a split of any
    size is evaluated in bounded host memory; each process reads only its rows of each batch.
    ``feature_fn(params, batch_stats, images)`` returns an array or a dict of arrays (batch-major);
    the result has the same structure as NumPy, on every process.
    """
    n = len(images)
    batch_size = min(batch_size, max(n, 1))
    batch_size += (-batch_size) % mesh.size  # every device (and process) gets an equal share
    rows, first = parallel.process_rows(batch_size)
    num_batches = -(-n // batch_size)
    # This process's rows of every padded batch; padding rows repeat record 0 and are dropped.
    local = np.arange(num_batches * batch_size).reshape(num_batches, batch_size)
    local = local[:, first : first + rows].reshape(-1)
    local = np.where(local < n, local, 0)
    sharding = parallel.batch_sharded(mesh)
    out = []
    chunks = image_sources.iter_batches(images, local, rows, num_threads)
    for b, chunk in enumerate(chunks):
        valid = min(batch_size, n - b * batch_size)
        chunk = parallel.from_process_rows(chunk, sharding, (batch_size, *chunk.shape[1:]))
        outputs = feature_fn(variables["params"], variables["batch_stats"], chunk)
        out.append(jax.tree.map(lambda a, v=valid: parallel.to_host(a)[:v], outputs))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *out)


def knn_auroc(train_f, train_labels, test_f, known, num_known: int, k: int) -> float:
    """AUROC of the k-NN score (Algorithm 1) of ``test_f`` against the reference ``train_f``."""
    scores, _ = osr.knn_scores(
        jnp.asarray(train_f), jnp.asarray(train_labels), jnp.asarray(test_f), num_known, k=k
    )
    scores = np.asarray(scores)
    return float(metrics.auroc(scores[known], scores[~known]))


def evaluate(eval_fn, variables: dict, data: OpenSetData, config, mesh) -> dict[str, Any]:
    """Open-set evaluation on the known train split and the whole test split.

    ``variables = {'params', 'batch_stats'}``; ``eval_fn`` from ``train_step.make_eval_fn``.
    'closed_set_accuracy' / 'oscr' use the k-NN rule (Algorithm 1), the paper's method, on
    ``eval.features``; 'auroc' is the AUROC of ``eval.score`` (default 'knn': that rule) and
    'score' names it. Every score is also under its own key: 'auroc_knn_encoder' /
    'auroc_knn_projection' (the k-NN rule on each feature), 'auroc_nno' (Mahalanobis distance to the closest class mean, App. A) and
    'auroc_gda' (log-density of the most likely class-conditional Gaussian) for every model,
    'auroc_msp' / 'auroc_max_logit' / 'auroc_entropy' (and 'closed_set_accuracy_logits') for
    models with a classifier head (else None), and 'intrinsic_dimension' (TwoNN on up to
    eval.id_samples training features).
    """
    threads = config.data.num_threads
    train = extract_features(
        eval_fn, variables, data.train_images, config.eval.batch_size, mesh, threads
    )
    test = extract_features(
        eval_fn, variables, data.test_images, config.eval.batch_size, mesh, threads
    )
    train_f, test_f = train["features"], test["features"]
    scores, preds = osr.knn_scores(
        jnp.asarray(train_f),
        jnp.asarray(data.train_labels),
        jnp.asarray(test_f),
        data.num_known,
        k=config.eval.k,
    )
    scores, preds = np.asarray(scores), np.asarray(preds)
    known = data.test_is_known
    y_known = data.test_labels[known]
    results = {
        "closed_set_accuracy": float(metrics.closed_set_accuracy(preds[known], y_known)),
        "auroc": None,
        "oscr": None,
        "auroc_knn_encoder": None,
        "auroc_knn_projection": None,
        "auroc_nno": None,
        "auroc_gda": None,
        "auroc_msp": None,
        "auroc_max_logit": None,
        "auroc_entropy": None,
        "closed_set_accuracy_logits": None,
    }
    other_scores = {
        "nno": np.asarray(
            osr.mahalanobis_scores(train_f, data.train_labels, test_f, data.num_known)[0]
        ),
        "gda": np.asarray(
            osr.gaussian_scores(train_f, data.train_labels, test_f, data.num_known)[0]
        ),
    }
    if "logits" in test:
        logits = jnp.asarray(test["logits"])
        other_scores["msp"] = np.asarray(osr.msp_score(logits))
        other_scores["max_logit"] = np.asarray(osr.max_logit_score(logits))
        other_scores["entropy"] = np.asarray(osr.entropy_score(logits))
        results["closed_set_accuracy_logits"] = float(
            metrics.closed_set_accuracy(np.argmax(test["logits"][known], axis=1), y_known)
        )
    if (~known).any():  # closed-set data has no unknown test samples
        results["auroc"] = float(metrics.auroc(scores[known], scores[~known]))
        results["oscr"] = float(
            metrics.oscr(scores[known], preds[known] == y_known, scores[~known])
        )
        for name, s in other_scores.items():
            results[f"auroc_{name}"] = float(metrics.auroc(s[known], s[~known]))
        for which in ("encoder", "projection"):
            results[f"auroc_knn_{which}"] = (
                results["auroc"]
                if which == config.eval.features
                else knn_auroc(
                    train[which],
                    data.train_labels,
                    test[which],
                    known,
                    data.num_known,
                    config.eval.k,
                )
            )
    results = with_headline(results, config.eval.score, config.eval.features)
    results["intrinsic_dimension"] = None
    if config.eval.id_samples:
        # A fixed subset keeps TwoNN's O(n^2) distances affordable on 30k+ training images.
        take = np.random.default_rng(0).permutation(len(train_f))[: config.eval.id_samples]
        results["intrinsic_dimension"] = metrics.intrinsic_dimension(train_f[np.sort(take)])
    return results


def area_indices(test_labels: np.ndarray, per_group: int, batch_size: int) -> dict[str, np.ndarray]:
    """The fixed test images of the activated area: ``{'known': idx, 'unknown': idx}``.

    Up to ``per_group`` images of each group (labels ``>= 0`` known, ``-1`` unknown), drawn with
    ``AREA_SEED``, ascending, rounded down to whole batches of ``min(batch_size, per_group)`` so
    every map is computed in a batch of the same size; a group with fewer images than one batch
    keeps them all.
    """
    rng = np.random.default_rng(AREA_SEED)
    out = {}
    for group, members in (
        ("known", np.flatnonzero(test_labels >= 0)),
        ("unknown", np.flatnonzero(test_labels < 0)),
    ):
        n = min(per_group, len(members))
        batch = min(batch_size, per_group)
        if n >= batch:
            n -= n % batch
        out[group] = np.sort(rng.choice(members, n, replace=False)).astype(np.int64)
    return out


def activated_area(
    model: nn.Module,
    variables: dict,
    data: OpenSetData,
    config,
    out_size: tuple[int, int],
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> dict[str, Any] | None:
    """Fig. 8's activated area of a trained model, on fixed known and unknown test images.

    Per image: LayerCAM maps (``attribution.layercam``, outer ReLU) at the run's taps
    (``gradmix.layers``) of the SimCLR loss of its batch, each image's horizontal flip its second
    view, temperature ``config.temperature``, eval mode (``attribution_analysis.layer_maps``); each
    layer's map is bilinearly upsampled to the input size and min-max normalised per image (the
    paper recipe's training maps) and the maps are averaged over the layers, so the map lies in
    [0, 1]. ``S(τ)`` is the fraction of its pixels above τ, for τ in ``AREA_THRESHOLDS``, averaged
    over the images of a group. Known and unknown images are taken ``eval.area_images`` of each
    (``area_indices``), in batches of one group of ``batch_size`` images (the SimCLR loss couples a
    batch's maps), like the training batches. The paper (Fig. 8): GradMix's area is larger at
    every τ.

    Returns None when ``eval.area_images`` is 0, else ``{'thresholds', 'known', 'unknown'
    (S per τ, or None for a group without images), 'images': {'known': n, 'unknown': n},
    'layers', 'batch_size'}``.
    """
    per_group = config.eval.get("area_images", 0)
    if not per_group:
        return None
    layers = tuple(config.gradmix.layers)
    batch_size = min(config.batch_size, per_group)
    # Host copies: the maps are a few small batches on one device, on every process alike.
    host = {
        name: jax.tree.map(parallel.to_host, variables[name]) for name in ("params", "batch_stats")
    }
    groups = area_indices(np.asarray(data.test_labels), per_group, batch_size)
    out: dict[str, Any] = {
        "thresholds": list(AREA_THRESHOLDS),
        "images": {g: int(len(idx)) for g, idx in groups.items()},
        "layers": list(layers),
        "batch_size": batch_size,
    }
    for group, idx in groups.items():
        if len(idx) == 0:
            out[group] = None
            continue
        fractions = []
        batches = image_sources.iter_batches(
            data.test_images, idx, batch_size, config.data.num_threads
        )
        for images in batches:
            x = augment.eval_transform(images, out_size, mean, std)
            per_layer = aa.layer_maps(
                model, host, x, layers=layers, target="simclr", temperature=config.temperature
            )
            maps = attribution.aggregate_maps(list(per_layer.values()), out_size, "image")
            maps = np.asarray(maps) / len(layers)
            fractions.append(aa.activated_fractions(maps, np.asarray(AREA_THRESHOLDS)))
        out[group] = np.concatenate(fractions).mean(axis=0).tolist()
    return out
