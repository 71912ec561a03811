"""Tests for gradmix_jax.metrics: sklearn, hand-computed values and loop transcriptions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from gradmix_jax.metrics import (
    activated_fraction,
    auroc,
    closed_set_accuracy,
    intrinsic_dimension,
    ood_metrics,
    oscr,
)


# ---------------------------------------------------------------------------- reference code
def _trapz(y, x):
    total = 0.0
    for i in range(len(x) - 1):
        total += (x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2.0
    return total


def _arpl_metric_ood_loop(known, novel):
    """Transcription of ARPL's get_curve_online + metric_ood (step loop), as fractions."""
    known, novel = np.sort(np.asarray(known, float)), np.sort(np.asarray(novel, float))
    num_k, num_n = len(known), len(novel)
    tp, fp = [num_k], [num_n]
    k = n = 0
    for _ in range(num_k + num_n):
        if k < num_k and (n == num_n or not novel[n] < known[k]):
            k += 1
            tp.append(tp[-1] - 1)
            fp.append(fp[-1])
        else:
            n += 1
            tp.append(tp[-1])
            fp.append(fp[-1] - 1)
    tp, fp = np.array(tp), np.array(fp)
    pos = np.abs(tp / num_k - 0.95).argmin()
    out = {"tnr": 1.0 - fp[pos] / num_n}
    tpr = np.concatenate([[1.0], tp / tp[0], [0.0]])
    fpr = np.concatenate([[1.0], fp / fp[0], [0.0]])
    out["auroc"] = -_trapz(1.0 - fpr, tpr)
    out["dtacc"] = 0.5 * (tp / tp[0] + 1.0 - fp / fp[0]).max()
    denom = (tp + fp).astype(float)
    denom[denom == 0.0] = -1.0
    ind = np.concatenate([[True], denom > 0.0, [True]])
    pin = np.concatenate([[0.5], tp / denom, [0.0]])
    out["auin"] = -_trapz(pin[ind], tpr[ind])
    denom = (tp[0] - tp + fp[0] - fp).astype(float)
    denom[denom == 0.0] = -1.0
    ind = np.concatenate([[True], denom > 0.0, [True]])
    pout = np.concatenate([[0.0], (fp[0] - fp) / denom, [0.5]])
    out["auout"] = _trapz(pout[ind], (1.0 - fpr)[ind])
    return out


def _arpl_oscr_loop(known_scores, known_correct, unknown_scores):
    """Transcription of ARPL's compute_oscr (without ties, so argsort order is defined)."""
    k_target = np.concatenate([np.asarray(known_correct, float), np.zeros(len(unknown_scores))])
    u_target = np.concatenate([np.zeros(len(known_scores)), np.ones(len(unknown_scores))])
    predict = np.concatenate([known_scores, unknown_scores])
    n = len(predict)
    ccr, fpr = [0.0] * (n + 2), [0.0] * (n + 2)
    idx = predict.argsort()
    s_k, s_u = k_target[idx], u_target[idx]
    for k in range(n - 1):
        ccr[k] = s_k[k + 1 :].sum() / len(known_scores)
        fpr[k] = s_u[k:].sum() / len(unknown_scores)
    ccr[n + 1] = fpr[n + 1] = 1.0
    roc = sorted(zip(fpr, ccr), reverse=True)
    return sum((roc[j][0] - roc[j + 1][0]) * (roc[j][1] + roc[j + 1][1]) / 2 for j in range(n + 1))


def _oscr_threshold_loop(known_scores, known_correct, unknown_scores):
    """Area under (FPR(t), CCR(t)) over every distinct threshold t, accepting score >= t."""
    points = [(0.0, 0.0)]
    for t in sorted(set(known_scores) | set(unknown_scores), reverse=True):
        ccr = sum(1 for s, c in zip(known_scores, known_correct) if c and s >= t) / len(
            known_scores
        )
        fpr = sum(1 for s in unknown_scores if s >= t) / len(unknown_scores)
        points.append((fpr, ccr))
    return _trapz([p[1] for p in points], [p[0] for p in points])


# ---------------------------------------------------------------------------- auroc / accuracy
@pytest.mark.parametrize("round_to", [None, 1])  # continuous scores, then heavy ties
def test_auroc_matches_sklearn(round_to):
    rng = np.random.default_rng(0)
    known, unknown = rng.normal(1.0, 1.0, 257), rng.normal(0.0, 1.0, 190)
    if round_to is not None:
        known, unknown = np.round(known, round_to), np.round(unknown, round_to)
    expected = roc_auc_score(np.r_[np.ones(257), np.zeros(190)], np.r_[known, unknown])
    got = jax.jit(auroc)(jnp.asarray(known, jnp.float32), jnp.asarray(unknown, jnp.float32))
    np.testing.assert_allclose(float(got), expected, atol=1e-6)


def test_auroc_hand_made_and_large():
    assert float(auroc(jnp.array([3.0, 4.0]), jnp.array([1.0, 2.0]))) == 1.0
    assert float(auroc(jnp.array([1.0, 2.0]), jnp.array([3.0, 4.0]))) == 0.0
    assert float(auroc(jnp.array([1.0]), jnp.array([1.0]))) == 0.5
    # 1 beats 0 unknowns, 2 ties with one (1/2) and beats one, 3 beats both -> 3.5 / 6
    np.testing.assert_allclose(
        float(auroc(jnp.array([0.5, 2.0, 3.0]), jnp.array([1.0, 2.0]))), 3.5 / 6
    )
    rng = np.random.default_rng(1)
    known, unknown = rng.integers(0, 50, 30000), rng.integers(5, 60, 20000)  # float32 sums
    expected = roc_auc_score(np.r_[np.ones(30000), np.zeros(20000)], np.r_[known, unknown])
    got = auroc(jnp.asarray(known, jnp.float32), jnp.asarray(unknown, jnp.float32))
    np.testing.assert_allclose(float(got), expected, atol=1e-5)
    with pytest.raises(ValueError, match="unknown_scores"):
        auroc(jnp.ones(3), jnp.ones(0))


def test_closed_set_accuracy():
    got = jax.jit(closed_set_accuracy)(jnp.array([0, 1, 2, 2]), jnp.array([0, 1, 1, 2]))
    assert float(got) == 0.75
    with pytest.raises(ValueError, match="same shape"):
        closed_set_accuracy(jnp.array([0, 1]), jnp.array([0]))


# ---------------------------------------------------------------------------- ood_metrics
def test_ood_metrics_hand_made_no_ties():
    m = ood_metrics(np.array([0.9, 0.8, 0.7, 0.6]), np.array([0.75, 0.5, 0.4, 0.3]))
    assert m["auroc"] == pytest.approx(14 / 16)  # 14 of 16 (known, unknown) pairs ordered
    assert m["dtacc"] == pytest.approx(0.875)  # accept >= 0.6: TPR 1, FPR 1/4
    # TPR closest to 0.95 is 1.0; ARPL takes the first (lowest) such threshold, which
    # accepts every unknown sample: TNR = 0 (not 0.75 of the threshold 0.6).
    assert m["tnr"] == pytest.approx(0.0)


def test_ood_metrics_hand_made_with_ties():
    known = np.arange(1.0, 21.0)  # 20 known, TPR 0.95 = 19 accepted
    unknown = np.array([0.5, 1.0, 1.5, 2.5, -3.0])
    m = ood_metrics(known, unknown)
    # Reject only known 1.0 (rejected before the tied unknown 1.0): unknowns >= 1.0 remain.
    assert m["tnr"] == pytest.approx(2 / 5)
    # Best: accept >= 3 -> TPR 18/20, FPR 0.
    assert m["dtacc"] == pytest.approx(0.5 * (18 / 20 + 1.0))
    # Pairs won: 2*20 + 19 (1.0 vs 2..20; the tie counts 0) + 19 + 18 = 96 of 100.
    assert m["auroc"] == pytest.approx(0.96)
    assert float(auroc(jnp.asarray(known), jnp.asarray(unknown))) == pytest.approx(0.965)


@pytest.mark.parametrize("seed,decimals", [(2, None), (3, 1)])
def test_ood_metrics_matches_arpl_loop(seed, decimals):
    rng = np.random.default_rng(seed)
    known, novel = rng.normal(1.0, 1.0, 120), rng.normal(0.0, 1.0, 90)
    if decimals is not None:
        known, novel = np.round(known, decimals), np.round(novel, decimals)
    expected = _arpl_metric_ood_loop(known, novel)
    got = ood_metrics(known, novel)
    assert set(got) == {"tnr", "auroc", "dtacc", "auin", "auout"}
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key


def test_ood_metrics_auin_auout_close_to_average_precision():
    rng = np.random.default_rng(4)
    known, novel = rng.normal(1.0, 1.0, 1000), rng.normal(0.0, 1.0, 800)
    labels = np.r_[np.ones(1000), np.zeros(800)]
    scores = np.r_[known, novel]
    m = ood_metrics(known, novel)
    # Trapezoid vs step rule: O(1/N) apart (about 1e-3 here).
    assert m["auin"] == pytest.approx(average_precision_score(labels, scores), abs=2.5e-3)
    assert m["auout"] == pytest.approx(average_precision_score(1 - labels, -scores), abs=2.5e-3)
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


# ---------------------------------------------------------------------------- oscr
KNOWN = np.array([0.9, 0.8, 0.6])
CORRECT = np.array([True, False, True])
UNKNOWN = np.array([0.7, 0.5])


def test_oscr_hand_made():
    # exact: (0,1/3) -> (1/2,1/3) -> (1/2,2/3) -> (1,2/3): 1/6 + 1/3.
    got = jax.jit(oscr, static_argnames="convention")(KNOWN, CORRECT, UNKNOWN)
    assert float(got) == pytest.approx(0.5, abs=1e-6)
    # ARPL pairs FPR at position k with CCR after k: points (1,2/3), (1/2,1/3), (0,1/3): 5/12.
    got = jax.jit(oscr, static_argnames="convention")(KNOWN, CORRECT, UNKNOWN, convention="arpl")
    assert float(got) == pytest.approx(5 / 12, abs=1e-6)


@pytest.mark.parametrize("decimals", [None, 1])
def test_oscr_exact_matches_threshold_loop(decimals):
    rng = np.random.default_rng(5)
    known, unknown = rng.normal(1.0, 1.0, 80), rng.normal(0.0, 1.0, 60)
    if decimals is not None:
        known, unknown = np.round(known, decimals), np.round(unknown, decimals)
    correct = rng.random(80) < 0.7
    expected = _oscr_threshold_loop(list(known), list(correct), list(unknown))
    got = oscr(
        jnp.asarray(known, jnp.float32), jnp.asarray(correct), jnp.asarray(unknown, jnp.float32)
    )
    assert float(got) == pytest.approx(expected, abs=1e-6)
    # With every known sample correct, OSCR is the AUROC (ties count 1/2 in both).
    all_correct = oscr(jnp.asarray(known), jnp.ones(80, bool), jnp.asarray(unknown))
    assert float(all_correct) == pytest.approx(
        float(auroc(jnp.asarray(known), jnp.asarray(unknown))), abs=1e-6
    )


def test_oscr_arpl_matches_loop():
    rng = np.random.default_rng(6)
    known, unknown = rng.normal(1.0, 1.0, 70), rng.normal(0.0, 1.0, 50)
    correct = rng.random(70) < 0.8
    expected = _arpl_oscr_loop(known, correct, unknown)
    got = oscr(
        jnp.asarray(known, jnp.float32),
        jnp.asarray(correct),
        jnp.asarray(unknown, jnp.float32),
        "arpl",
    )
    assert float(got) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="convention"):
        oscr(known, correct, unknown, convention="sklearn")


# ---------------------------------------------------------------------------- others
@pytest.mark.parametrize("dim", [2, 5])
def test_intrinsic_dimension_linear_subspace(dim):
    rng = np.random.default_rng(dim)
    basis, _ = np.linalg.qr(rng.normal(size=(20, dim)))  # orthonormal [20, dim]
    points = rng.random((2000, dim)) @ basis.T + rng.normal(size=20)
    estimate = intrinsic_dimension(points)
    assert abs(estimate - dim) < 0.15 * dim, estimate


def test_intrinsic_dimension_drops_duplicates_and_validates():
    rng = np.random.default_rng(7)
    points = rng.random((500, 3))
    with_duplicates = np.concatenate([points, points[:50]])
    estimate = intrinsic_dimension(with_duplicates)
    assert np.isfinite(estimate) and abs(estimate - 3) < 0.6
    with pytest.raises(ValueError, match="fraction"):
        intrinsic_dimension(points, fraction=1.0)


def test_activated_fraction():
    maps = jnp.array(
        [[[0.1, 0.6], [0.7, 0.2]], [[0.9, 0.8], [0.95, 0.51]], [[0.0, 0.5], [0.5, 0.5]]]
    )
    got = jax.jit(activated_fraction)(maps, 0.5)  # strictly greater
    np.testing.assert_allclose(np.asarray(got), [0.5, 1.0, 0.0])
    assert activated_fraction(jnp.zeros((4, 3, 8, 8)), -1.0).shape == (4,)
