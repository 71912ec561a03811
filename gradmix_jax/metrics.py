"""Evaluation metrics for open-set recognition. Every rate is a fraction in [0, 1].

Score convention everywhere: higher score = more likely known / in-distribution.

jnp, already wrapped in ``jax.jit`` (one compile per input shape, also when called
eagerly): ``auroc``, ``closed_set_accuracy``, ``oscr``, ``activated_fraction``.
NumPy only: ``ood_metrics`` (a faithful port of ARPL's ``metric_ood``) and
``intrinsic_dimension``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_OSCR_CONVENTIONS = ("exact", "arpl")


def _check_nonempty(name: str, x: jax.Array | np.ndarray) -> None:
    if np.ndim(x) != 1 or np.shape(x)[0] == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {np.shape(x)}")


def _tie_group_last(sorted_values: jax.Array) -> jax.Array:
    """Index of the last element of each run of equal values in a sorted [n] array -> [n]."""
    n = sorted_values.shape[0]
    is_last = jnp.concatenate([sorted_values[1:] != sorted_values[:-1], jnp.array([True])])
    return jax.lax.cummin(jnp.where(is_last, jnp.arange(n), n - 1), reverse=True)


def _tie_group_first(sorted_values: jax.Array) -> jax.Array:
    """Index of the first element of each run of equal values in a sorted [n] array -> [n]."""
    n = sorted_values.shape[0]
    is_first = jnp.concatenate([jnp.array([True]), sorted_values[1:] != sorted_values[:-1]])
    return jax.lax.cummax(jnp.where(is_first, jnp.arange(n), 0))


@jax.jit
def auroc(known_scores: jax.Array, unknown_scores: jax.Array) -> jax.Array:
    """Area under the ROC curve, known = positive (Mann-Whitney U, ties count 1/2).

    Equals ``sklearn.metrics.roc_auc_score`` with known labelled 1. Computed from one sort
    (O(n log n)); each known sample is credited with the fraction of unknown samples below
    it (+1/2 per tie), which avoids large rank sums in float32.

    Args:
      known_scores: [Nk]; unknown_scores: [Nu].
    Returns:
      scalar in [0, 1].
    """
    _check_nonempty("known_scores", known_scores)
    _check_nonempty("unknown_scores", unknown_scores)
    known_scores = jnp.asarray(known_scores)
    unknown_scores = jnp.asarray(unknown_scores)
    num_known, num_unknown = known_scores.shape[0], unknown_scores.shape[0]
    scores = jnp.concatenate([known_scores, unknown_scores])
    is_unknown = jnp.concatenate(
        [jnp.zeros(num_known, jnp.int32), jnp.ones(num_unknown, jnp.int32)]
    )
    order = jnp.argsort(scores)
    sorted_scores, sorted_unknown = scores[order], is_unknown[order]
    unknown_upto = jnp.cumsum(sorted_unknown)  # unknowns at positions <= i
    first, last = _tie_group_first(sorted_scores), _tie_group_last(sorted_scores)
    below = unknown_upto[first] - sorted_unknown[first]  # unknowns strictly below the tie group
    tied = unknown_upto[last] - below
    credit = (below + 0.5 * tied) / num_unknown
    return jnp.sum(jnp.where(sorted_unknown == 0, credit, 0.0)) / num_known


@jax.jit
def closed_set_accuracy(predictions: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of correct predictions: int [N], int [N] -> scalar."""
    if np.shape(predictions) != np.shape(labels):
        raise ValueError(
            f"predictions and labels must have the same shape, "
            f"got {np.shape(predictions)} and {np.shape(labels)}"
        )
    return jnp.mean(jnp.asarray(predictions) == jnp.asarray(labels))


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """np.trapz(y, x) (removed in NumPy 2.4; np.trapezoid is missing in NumPy 1.x)."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def ood_metrics(in_scores: np.ndarray, out_scores: np.ndarray) -> dict[str, float]:
    """ARPL's ``metric_ood`` (iCGY96/ARPL core/evaluation.py), vectorised, as fractions.

    ARPL builds the curve by sweeping the threshold upward through the merged ascending
    scores, rejecting one sample per step (at equal scores the in-distribution sample is
    rejected first, so cross-set ties count against the detector). Point l (l = 0..N)
    holds tp[l], fp[l] = in / out samples still accepted. From it:

    - 'tnr': 1 - FPR at the first l (lowest threshold) where |TPR - 0.95| is smallest.
    - 'auroc': trapezoid of TNR over TPR, the curve padded with (1, 1) and (0, 0).
      Equals ``auroc`` without cross-set ties; each cross-set tie counts 0 instead of 1/2.
    - 'dtacc': max_l 0.5 * (TPR + 1 - FPR).
    - 'auin': trapezoid of precision tp / (tp + fp) over recall TPR, points with no
      accepted sample dropped, padded with precision 0.5 at recall 1 (zero width) and
      precision 0 at recall 0.
    - 'auout': the same with out-distribution positive: precision = rejected-out /
      rejected, over recall 1 - FPR, padded with 0 at recall 0 and 0.5 at recall 1.

    AUIN/AUOUT use the trapezoid rule, so they differ from ``average_precision_score``
    (a step sum) by O(1/N) on continuous scores.

    Args:
      in_scores: [Nin] scores of in-distribution (known) samples.
      out_scores: [Nout] scores of out-of-distribution (unknown) samples.
    Returns:
      dict with float keys 'tnr', 'auroc', 'dtacc', 'auin', 'auout'.
    """
    known = np.asarray(in_scores, np.float64).ravel()
    novel = np.asarray(out_scores, np.float64).ravel()
    _check_nonempty("in_scores", known)
    _check_nonempty("out_scores", novel)
    num_k, num_n = known.size, novel.size

    scores = np.concatenate([known, novel])
    is_novel = np.concatenate([np.zeros(num_k, bool), np.ones(num_n, bool)])
    order = np.lexsort((is_novel, scores))  # ascending score; in-dist first among ties
    rejected_novel = np.concatenate([[0], np.cumsum(is_novel[order])])
    rejected_known = np.arange(num_k + num_n + 1) - rejected_novel
    tp = num_k - rejected_known  # [N + 1]
    fp = num_n - rejected_novel

    tpr95_pos = np.abs(tp / num_k - 0.95).argmin()
    tnr = 1.0 - fp[tpr95_pos] / num_n

    tpr = np.concatenate([[1.0], tp / num_k, [0.0]])
    fpr = np.concatenate([[1.0], fp / num_n, [0.0]])
    auroc_value = -_trapezoid(1.0 - fpr, tpr)
    dtacc = 0.5 * (tp / num_k + 1.0 - fp / num_n).max()

    accepted = tp + fp
    keep_in = np.concatenate([[True], accepted > 0, [True]])
    precision_in = np.concatenate([[0.5], tp / np.maximum(accepted, 1), [0.0]])
    auin = -_trapezoid(precision_in[keep_in], tpr[keep_in])

    rejected = rejected_known + rejected_novel
    keep_out = np.concatenate([[True], rejected > 0, [True]])
    precision_out = np.concatenate([[0.0], rejected_novel / np.maximum(rejected, 1), [0.5]])
    auout = _trapezoid(precision_out[keep_out], (1.0 - fpr)[keep_out])

    return {
        "tnr": float(tnr),
        "auroc": float(auroc_value),
        "dtacc": float(dtacc),
        "auin": float(auin),
        "auout": float(auout),
    }


@functools.partial(jax.jit, static_argnames="convention")
def oscr(
    known_scores: jax.Array,
    known_correct: jax.Array,
    unknown_scores: jax.Array,
    convention: str = "exact",
) -> jax.Array:
    """Open-Set Classification Rate: area under CCR(t) vs FPR(t) (Dhamija et al. 2018).

    A sample is accepted when its score >= t. CCR(t) = fraction of known samples that are
    accepted and correctly classified, FPR(t) = fraction of unknown samples accepted.

    convention='exact': one curve point per distinct score (plus (0, 0)), so tied samples
    move together (a diagonal segment, i.e. ties count 1/2); with every known sample
    correct this equals ``auroc``.
    convention='arpl': ARPL's / Vaze et al.'s ``compute_oscr`` loop, vectorised: after an
    ascending sort, point k uses CCR over positions > k but FPR over positions >= k (an
    off-by-one that lowers OSCR by O(1/N)); ties follow a stable sort, whereas ARPL's
    np.argsort order among ties is implementation-defined.

    Args:
      known_scores: [Nk]; known_correct: bool [Nk] (prediction == label);
      unknown_scores: [Nu]; convention: 'exact' or 'arpl' (static).
    Returns:
      scalar in [0, 1] (upper bound: closed-set accuracy).
    """
    if convention not in _OSCR_CONVENTIONS:
        raise ValueError(f"convention must be one of {_OSCR_CONVENTIONS}, got {convention!r}")
    _check_nonempty("known_scores", known_scores)
    _check_nonempty("unknown_scores", unknown_scores)
    if np.shape(known_correct) != np.shape(known_scores):
        raise ValueError(
            f"known_correct must have the shape of known_scores {np.shape(known_scores)}, "
            f"got {np.shape(known_correct)}"
        )
    num_known, num_unknown = np.shape(known_scores)[0], np.shape(unknown_scores)[0]
    scores = jnp.concatenate([jnp.asarray(known_scores), jnp.asarray(unknown_scores)])
    correct = jnp.concatenate(
        [jnp.asarray(known_correct, jnp.float32), jnp.zeros(num_unknown, jnp.float32)]
    )
    unknown = jnp.concatenate(
        [jnp.zeros(num_known, jnp.float32), jnp.ones(num_unknown, jnp.float32)]
    )

    if convention == "exact":
        order = jnp.argsort(scores, descending=True)
        last = _tie_group_last(scores[order])
        # Accept everything down to the end of each tie group: cumulative counts at its end.
        ccr = jnp.cumsum(correct[order])[last] / num_known
        fpr = jnp.cumsum(unknown[order])[last] / num_unknown
        ccr = jnp.concatenate([jnp.zeros(1), ccr])
        fpr = jnp.concatenate([jnp.zeros(1), fpr])
        return jnp.sum(jnp.diff(fpr) * (ccr[1:] + ccr[:-1]) / 2.0)

    n = num_known + num_unknown
    order = jnp.argsort(scores)
    suffix_correct = jnp.cumsum(correct[order][::-1])[::-1]  # sum over positions >= k
    suffix_unknown = jnp.cumsum(unknown[order][::-1])[::-1]
    ccr = jnp.concatenate([suffix_correct[1:], jnp.zeros(1)]) / num_known  # positions > k
    fpr = (suffix_unknown / num_unknown).at[n - 1].set(0.0)  # ARPL leaves point n-1 at 0
    ccr = jnp.concatenate([ccr, jnp.array([0.0, 1.0])])
    fpr = jnp.concatenate([fpr, jnp.array([0.0, 1.0])])
    # sorted(zip(FPR, CCR), reverse=True): descending FPR, then descending CCR.
    roc = jnp.lexsort((ccr, fpr))[::-1]
    fpr, ccr = fpr[roc], ccr[roc]
    return jnp.sum((fpr[:-1] - fpr[1:]) * (ccr[:-1] + ccr[1:]) / 2.0)


def intrinsic_dimension(
    features: np.ndarray, fraction: float = 0.9, chunk_size: int = 1024
) -> float:
    """TwoNN intrinsic dimension (Facco et al. 2017; Ansuini et al. 2019).

    mu_i = r2_i / r1_i (distances to the 1st / 2nd nearest neighbour, self excluded;
    points with r1 == 0 dropped), sorted ascending; F_i = i / N; the smallest
    ``fraction`` of the mu are used to fit -log(1 - F) = d * log(mu) by least squares
    through the origin. (Ansuini et al.'s code also drops points with r1 == r2; this
    function does not.)

    Args:
      features: [N, D], N >= 3.
      fraction: fraction of the sorted mu kept, in (0, 1).
      chunk_size: rows per block of the pairwise-distance computation (memory O(chunk * N)).
    Returns:
      the estimated dimension d.
    """
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] < 3:
        raise ValueError(f"features must have shape [N >= 3, D], got {x.shape}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    n = x.shape[0]
    sq_norms = np.sum(x**2, axis=1)
    r1, r2 = np.empty(n), np.empty(n)
    for start in range(0, n, chunk_size):
        rows = np.arange(start, min(start + chunk_size, n))
        sq = sq_norms[rows, None] + sq_norms[None, :] - 2.0 * x[rows] @ x.T
        sq[np.arange(rows.size), rows] = np.inf  # exclude self
        # Expanded distances only rank candidates; exact distances of the 3 best decide,
        # so duplicates give exactly r1 == 0.
        cand = np.argpartition(sq, 2, axis=1)[:, :3]
        exact = np.linalg.norm(x[rows, None, :] - x[cand], axis=-1)
        exact = np.where(cand == rows[:, None], np.inf, exact)
        exact.sort(axis=1)
        r1[rows], r2[rows] = exact[:, 0], exact[:, 1]

    good = r1 > 0
    mu = np.sort(r2[good] / r1[good])
    num = mu.size
    keep = int(np.floor(num * fraction))
    if keep < 1:
        raise ValueError(f"too few usable points ({num}) for fraction={fraction}")
    empirical_cdf = np.arange(1, num + 1) / num
    log_mu = np.log(mu[:keep])
    target = -np.log(1.0 - empirical_cdf[:keep])
    return float(np.dot(log_mu, target) / np.dot(log_mu, log_mu))


@jax.jit
def activated_fraction(maps: jax.Array, threshold: float) -> jax.Array:
    """Fraction of entries above ``threshold`` in each map: [B, ...] -> [B]."""
    if np.ndim(maps) < 1:
        raise ValueError(f"maps must have a leading batch axis, got shape {np.shape(maps)}")
    maps = jnp.asarray(maps)
    return jnp.mean((maps > threshold).reshape(maps.shape[0], -1), axis=1)
