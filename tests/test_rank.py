"""Transferability estimators (xfer.tools.estimators): numbers checked against hand computations and a slow reference."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from xfer.errors import XferError
from xfer.tools.estimators import ESTIMATORS, _logme_reference, hscore, leep, logme, nce, probe_accuracy, score_all


def _labels(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    """n labels covering all c classes."""
    y = np.concatenate([np.arange(c), rng.integers(0, c, n - c)])
    return rng.permutation(y)


def _informative_and_noise(rng: np.random.Generator, n: int = 300, c: int = 4, extra: int = 3):
    """(labels, one-hot + small noise + a few noise dims, pure noise of the same shape)."""
    y = _labels(rng, n, c)
    good = np.hstack([np.eye(c)[y] + 0.1 * rng.standard_normal((n, c)), rng.standard_normal((n, extra))])
    noise = rng.standard_normal(good.shape)
    return y, good, noise


def _probs_with_argmax(z: np.ndarray, zdim: int, rng: np.random.Generator) -> np.ndarray:
    """Random softmax rows whose argmax is z."""
    logits = rng.standard_normal((len(z), zdim))
    logits[np.arange(len(z)), z] += 10.0
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------------------------------
# LogME


def test_logme_ranks_informative_features_above_noise():
    y, good, noise = _informative_and_noise(np.random.default_rng(0))
    s_good, s_noise = logme(good, y), logme(noise, y)
    assert s_good > s_noise + 0.5, (s_good, s_noise)


@pytest.mark.parametrize("n,d,c", [(200, 12, 3), (120, 30, 5), (25, 60, 4), (40, 40, 3)])
def test_logme_fast_matches_reference(n, d, c):
    rng = np.random.default_rng(n * d + c)
    y = _labels(rng, n, c)
    for f in (rng.standard_normal((n, d)) * 2.5,  # pure noise: alpha runs off towards infinity
              np.hstack([np.eye(c)[y] + 0.3 * rng.standard_normal((n, c)), rng.standard_normal((n, d - c))])):
        fast, ref = logme(f, y), _logme_reference(f, y)
        assert math.isfinite(fast)
        assert fast == pytest.approx(ref, rel=1e-6, abs=1e-6), (n, d, fast, ref)


def test_logme_optimum_beats_evidence_at_start():
    """The paper's evidence formula written out at (alpha, beta) = (1, 1): the fixed point can only improve on it."""
    rng = np.random.default_rng(5)
    f = rng.standard_normal((15, 3))
    y = np.array([0, 1] * 7 + [0])
    t = (y == 0).astype(float)
    a_mat = np.eye(3) + f.T @ f
    m = np.linalg.solve(a_mat, f.T @ t)
    ev11 = (-0.5 * 15 * math.log(2 * math.pi) - 0.5 * np.sum((f @ m - t) ** 2) - 0.5 * m @ m
            - 0.5 * np.linalg.slogdet(a_mat)[1]) / 15
    t1 = 1 - t
    m1 = np.linalg.solve(a_mat, f.T @ t1)
    ev11_1 = (-0.5 * 15 * math.log(2 * math.pi) - 0.5 * np.sum((f @ m1 - t1) ** 2) - 0.5 * m1 @ m1
              - 0.5 * np.linalg.slogdet(a_mat)[1]) / 15
    assert _logme_reference(f, y) >= (ev11 + ev11_1) / 2 - 1e-9
    assert logme(f, y) >= (ev11 + ev11_1) / 2 - 1e-9


def test_logme_equals_maximised_marginal_likelihood():
    """Independent of the fixed point and the paper's closed form: y_c ~ N(0, F F^T / alpha + I / beta) is the
    marginal of the same model; maximising its log density numerically over (alpha, beta) gives LogME."""
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(6)
    n, c = 60, 3
    y = _labels(rng, n, c)
    f = np.hstack([np.eye(c)[y] + 0.3 * rng.standard_normal((n, c)), rng.standard_normal((n, 2))])
    best = []
    for k in range(c):
        t = (y == k).astype(float)

        def neg_log_density(log_ab, t=t):
            cov = f @ f.T / math.exp(log_ab[0]) + np.eye(n) / math.exp(log_ab[1])
            return 0.5 * (n * math.log(2 * math.pi) + np.linalg.slogdet(cov)[1] + t @ np.linalg.solve(cov, t))

        res = optimize.minimize(neg_log_density, x0=[0.0, 0.0], method="Nelder-Mead",
                                options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 2000})
        best.append(-res.fun)
    assert logme(f, y) == pytest.approx(np.mean(best) / n, abs=1e-7)


def test_logme_permutation_invariant():
    rng = np.random.default_rng(1)
    y, good, _ = _informative_and_noise(rng)
    perm = rng.permutation(len(y))
    assert logme(good[perm], y[perm]) == pytest.approx(logme(good, y), rel=1e-9, abs=1e-12)


def test_logme_label_names_do_not_matter():
    """Renaming classes (and leaving gaps in the indices) only permutes the per-class terms."""
    rng = np.random.default_rng(2)
    y, good, _ = _informative_and_noise(rng, c=3)
    renamed = np.array([7, 2, 4])[y]
    assert logme(good, renamed) == pytest.approx(logme(good, y), rel=1e-12)


def test_logme_large_input_is_finite():
    rng = np.random.default_rng(3)
    f = rng.standard_normal((5000, 1280)).astype(np.float32)
    y = _labels(rng, 5000, 10)
    # One BLAS thread: on a busy shared machine multi-threaded BLAS can be 10x slower than one thread.
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        score = logme(f, y)
    assert isinstance(score, float) and math.isfinite(score)


def test_logme_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    y, good, _ = _informative_and_noise(rng, n=80)
    assert logme(torch.from_numpy(good).float(), torch.from_numpy(y)) == pytest.approx(
        logme(good.astype(np.float32), y), rel=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# LEEP


def test_leep_hand_computed_example():
    theta = np.array([[0.8, 0.2],
                      [0.3, 0.7],
                      [0.6, 0.4]])
    y = np.array([0, 1, 0])
    # Joint P(y, z) = 1/N sum_i theta_iz [y_i = y]:
    #   y=0 (samples 0, 2): z0 = (0.8 + 0.6)/3 = 1.4/3, z1 = (0.2 + 0.4)/3 = 0.6/3
    #   y=1 (sample 1):     z0 = 0.3/3,               z1 = 0.7/3
    # P(z0) = 1.7/3, P(z1) = 1.3/3
    # P(y|z): P(0|z0) = 14/17, P(1|z0) = 3/17, P(0|z1) = 6/13, P(1|z1) = 7/13
    # EEP_i = sum_z P(y_i|z) theta_iz:
    e0 = 0.8 * 14 / 17 + 0.2 * 6 / 13  # = 0.751131...
    e1 = 0.3 * 3 / 17 + 0.7 * 7 / 13  # = 0.429864...
    e2 = 0.6 * 14 / 17 + 0.4 * 6 / 13  # = 0.678733...
    assert (e0, e1, e2) == pytest.approx((0.7511312217, 0.4298642534, 0.6787330317), abs=1e-9)
    expected = (math.log(e0) + math.log(e1) + math.log(e2)) / 3  # = -0.505996...
    assert expected == pytest.approx(-0.5059960435, abs=1e-9)
    assert leep(theta, y) == pytest.approx(expected, abs=1e-12)


def test_leep_permutation_invariant():
    rng = np.random.default_rng(10)
    y = _labels(rng, 200, 3)
    p = _probs_with_argmax(rng.integers(0, 5, 200), 5, rng)
    perm = rng.permutation(200)
    assert leep(p[perm], y[perm]) == pytest.approx(leep(p, y), rel=1e-12)


def test_leep_matching_source_beats_random_source():
    rng = np.random.default_rng(11)
    y = _labels(rng, 300, 3)
    matching = _probs_with_argmax(y, 6, rng)  # source labels 0..2 track the target's
    random = _probs_with_argmax(rng.integers(0, 6, 300), 6, rng)
    s_match, s_rand = leep(matching, y), leep(random, y)
    assert s_match > -0.1 and s_rand < -0.9, (s_match, s_rand)  # log 3 = 1.0986
    assert leep(matching, y) <= 0.0


# ---------------------------------------------------------------------------------------------------------------------
# NCE


def test_nce_perfect_correspondence_is_zero():
    rng = np.random.default_rng(20)
    y = _labels(rng, 200, 3)
    # Source has 5 labels; each determines the target label (many-to-one is still perfect).
    z = np.where(rng.random(200) < 0.5, y, y + 3)
    z[z == 5] = 2
    assert nce(_probs_with_argmax(z, 5, rng), y) == pytest.approx(0.0, abs=1e-12)


def test_nce_independent_source_gives_minus_label_entropy():
    rng = np.random.default_rng(21)
    n = 20000
    y = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    z = rng.integers(0, 4, n)
    py = np.bincount(y) / n
    h_y = -np.sum(py * np.log(py))
    assert nce(_probs_with_argmax(z, 4, rng), y) == pytest.approx(-h_y, abs=5e-3)


def test_nce_hand_computed_example():
    # z = argmax: [0, 0, 1, 1, 1]; y = [0, 1, 1, 1, 0]
    # joint counts: (z0, y0) = 1, (z0, y1) = 1, (z1, y0) = 1, (z1, y1) = 2 ; P(z0) = 2/5, P(z1) = 3/5
    # H(Y|Z) = 2/5 * log 2 + 3/5 * ( -(1/3) log(1/3) - (2/3) log(2/3) )
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.45, 0.55], [0.0, 1.0]])
    y = np.array([0, 1, 1, 1, 0])
    h = 0.4 * math.log(2) + 0.6 * (-(1 / 3) * math.log(1 / 3) - (2 / 3) * math.log(2 / 3))
    assert h == pytest.approx(0.6591673732, abs=1e-9)
    assert nce(probs, y) == pytest.approx(-h, abs=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# H-score


def test_hscore_informative_above_noise():
    y, good, noise = _informative_and_noise(np.random.default_rng(30))
    s_good, s_noise = hscore(good, y), hscore(noise, y)
    # Informative: close to its maximum C - 1 = 3; noise: about (C - 1) D / N ~ 0.07.
    assert s_good > 2.5 and s_noise < 0.3, (s_good, s_noise)


def test_hscore_permutation_invariant_and_matches_direct_formula():
    rng = np.random.default_rng(31)
    y, good, _ = _informative_and_noise(rng, n=150)
    perm = rng.permutation(len(y))
    assert hscore(good[perm], y[perm]) == pytest.approx(hscore(good, y), rel=1e-9)
    f = good - good.mean(axis=0)
    g = np.stack([f[y == k].mean(axis=0) for k in range(4)])[y]  # E[f | y] per sample
    direct = np.trace(np.linalg.inv(np.cov(f, rowvar=False, bias=True)) @ np.cov(g, rowvar=False, bias=True))
    assert hscore(good, y) == pytest.approx(direct, rel=1e-9)


# ---------------------------------------------------------------------------------------------------------------------
# probe accuracy


def test_probe_accuracy_separable_and_noise():
    rng = np.random.default_rng(40)
    n, c = 240, 3
    y = _labels(rng, n, c)
    centres = 6.0 * rng.standard_normal((c, 8))
    separable = centres[y] + rng.standard_normal((n, 8))
    assert probe_accuracy(separable, y) >= 0.97
    assert abs(probe_accuracy(rng.standard_normal((n, 8)), y) - 1 / c) < 0.12


def test_probe_accuracy_caps_folds_at_smallest_class():
    rng = np.random.default_rng(41)
    y = np.array([0] * 20 + [1] * 3)
    f = np.where(y[:, None] == 1, 3.0, -3.0) + rng.standard_normal((23, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 10 stratified folds over a 3-sample class would warn
        assert probe_accuracy(f, y, folds=10) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------------------
# registry and bad input


def test_score_all_picks_applicable_estimators():
    rng = np.random.default_rng(50)
    y, good, _ = _informative_and_noise(rng, n=90, c=3)
    p = _probs_with_argmax(y, 3, rng)
    assert set(score_all(good, y)) == {k for k, (_, kind) in ESTIMATORS.items() if kind == "features"}
    both = score_all(good, y, source_probs=p)
    assert set(both) == set(ESTIMATORS)
    assert both["logme"] == logme(good, y) and both["leep"] == leep(p, y)
    assert set(score_all(None, y, source_probs=p)) == {"leep", "nce"}


@pytest.mark.parametrize("fn", [logme, hscore, probe_accuracy, _logme_reference])
def test_feature_estimators_reject_bad_input(fn):
    rng = np.random.default_rng(60)
    f = rng.standard_normal((10, 3))
    with pytest.raises(XferError, match="match"):
        fn(f, np.array([0, 1] * 4))  # 8 labels, 10 rows
    with pytest.raises(XferError, match="one class"):
        fn(f, np.zeros(10, dtype=int))
    with pytest.raises(XferError, match="1-d"):
        fn(f, np.zeros((10, 1), dtype=int))
    with pytest.raises(XferError, match="integer"):
        fn(f, np.linspace(0, 1, 10))
    with pytest.raises(XferError, match="2-d"):
        fn(f[:, 0], np.array([0, 1] * 5))


@pytest.mark.parametrize("fn", [leep, nce])
def test_probability_estimators_reject_bad_input(fn):
    p = np.full((4, 2), 0.5)
    y = np.array([0, 1, 0, 1])
    with pytest.raises(XferError, match="sum to 1"):
        fn(np.array([[0.5, 0.6], [0.5, 0.5], [0.2, 0.8], [1.0, 0.0]]), y)
    with pytest.raises(XferError, match="sum to 1"):
        fn(np.array([[2.5, 0.5]] * 4), y)  # unnormalised scores
    with pytest.raises(XferError, match=">= 0"):
        fn(np.array([[1.5, -0.5]] * 4), y)
    with pytest.raises(XferError, match="match"):
        fn(p, np.array([0, 1, 0]))
    with pytest.raises(XferError, match="one class"):
        fn(p, np.array([1, 1, 1, 1]))


def test_regularised_hscore_still_ranks_when_samples_are_fewer_than_dimensions():
    """With N < D the plain H-score reaches its maximum C - 1 for any features (the covariance is singular, the
    pseudo-inverse fits the class means exactly): it cannot rank. Ledoit-Wolf shrinkage, the registry's default,
    still puts informative features above noise."""
    rng = np.random.default_rng(0)
    n, d, c = 120, 300, 3
    y = np.arange(n) % c
    good = np.eye(c)[y] @ rng.normal(size=(c, d)) + rng.normal(scale=2.0, size=(n, d))
    noise = rng.normal(size=(n, d))
    assert hscore(noise, y) == pytest.approx(c - 1, abs=1e-6)
    assert hscore(good, y) == pytest.approx(c - 1, abs=1e-6)
    shrunk = ESTIMATORS["hscore"][0]
    assert shrunk(good, y) > shrunk(noise, y) + 0.5
    with pytest.raises(XferError, match="shrinkage"):
        hscore(good, y, shrinkage="sometimes")
