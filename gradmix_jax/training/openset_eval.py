"""The evaluation a run reports: features of the known train split and the whole test split,
open-set scores (k-NN Algorithm 1, NNO, MSP / max-logit / entropy), AUROC, OSCR and accuracy."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gradmix_jax import augment, metrics, osr
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
