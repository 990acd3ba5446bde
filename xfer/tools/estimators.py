"""Transferability estimators: score how well a pretrained source fits a target task without fine-tuning.

Every estimator is a pure function of the target's integer labels (class indices ``0..C-1``) and either the source's
frozen features (``N x D``, "features") or the source classifier's softmax outputs over its own labels (``N x Z``,
"probs"). Higher is better for all of them; scores of one estimator are comparable across sources on the same target
data, not across estimators or targets.

- :func:`logme` -- LogME, You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning",
  ICML 2021.
- :func:`leep` -- LEEP, Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned
  Representations", ICML 2020.
- :func:`nce` -- NCE, Tran et al., "Transferability and Hardness of Supervised Classification Tasks", ICCV 2019.
- :func:`hscore` -- H-score, Bao et al., "An Information-Theoretic Approach to Transferability in Task Transfer
  Learning", ICIP 2019.
- :func:`probe_accuracy` -- cross-validated linear-probe accuracy (the direct, more expensive baseline).

Inputs may be numpy arrays or torch tensors; everything is computed in float64 numpy.
Labels of classes that never occur are ignored (the present classes are re-indexed), so ``C`` below is the number of
distinct labels present.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import numpy as np

from xfer.errors import XferError

__all__ = ["ESTIMATORS", "hscore", "leep", "logme", "nce", "probe_accuracy", "score_all"]

# LogME fixed-point iteration: start (alpha, beta) = (1, 1); stop when alpha/beta changes by < _LOGME_TOL (relative)
# or after _LOGME_MAX_ITER updates. The clip only keeps degenerate inputs (e.g. all-zero features) finite.
_LOGME_TOL = 1e-3
_LOGME_MAX_ITER = 100
_LOGME_CLIP = (1e-30, 1e30)
_TINY = np.finfo(np.float64).tiny

# Rows of source_probs must sum to 1 within this (loose enough for float16/bfloat16 softmax outputs).
_PROBS_SUM_ATOL = 1e-3


# ---------------------------------------------------------------------------------------------------------------------
# input handling


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """numpy view/copy of an array-like or torch tensor (detached, on CPU; half/bfloat16 widened to float32)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch here
        t = x.detach().cpu()
        try:
            return t.numpy()
        except TypeError:  # bfloat16 and other dtypes numpy does not have
            return t.float().numpy()
    try:
        return np.asarray(x)
    except Exception as e:  # noqa: BLE001 - anything numpy cannot read is a user error here
        raise XferError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}: {e}") from e


def _check_labels(labels: Any, n: int | None = None) -> tuple[np.ndarray, int]:
    """Labels as int64 indices 0..C-1 of the classes present, and C. Raises XferError on bad labels."""
    y = _to_numpy(labels, "labels")
    if y.ndim != 1:
        raise XferError(f"labels must be a 1-d array of class indices, got shape {tuple(y.shape)}")
    if n is not None and y.shape[0] != n:
        raise XferError(f"labels has {y.shape[0]} entries but the scores/features have {n} rows; they must match")
    if y.shape[0] < 2:
        raise XferError(f"need at least 2 labelled samples, got {y.shape[0]}")
    if y.dtype == bool or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise XferError(f"labels must be integer class indices, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise XferError("labels must be integer class indices; got non-integer values")
    if np.any(y < 0):
        raise XferError(f"labels must be class indices >= 0; got minimum {y.min()}")
    classes, inverse = np.unique(y.astype(np.int64), return_inverse=True)
    if classes.size < 2:
        raise XferError(f"labels contain only one class ({classes[0]}); transferability needs at least 2 classes")
    return inverse.reshape(-1).astype(np.int64), int(classes.size)


def _check_features(features: Any) -> np.ndarray:
    f = _to_numpy(features, "features")
    if f.ndim != 2:
        raise XferError(f"features must be a 2-d array (samples x dims), got shape {tuple(f.shape)}"
                        + ("; use features.reshape(-1, 1) for a single feature" if f.ndim == 1 else ""))
    if not (np.issubdtype(f.dtype, np.number) or f.dtype == bool):
        raise XferError(f"features must be numeric, got dtype {f.dtype}")
    f = np.asarray(f, dtype=np.float64)
    if f.shape[1] < 1:
        raise XferError("features have 0 dimensions")
    if not np.all(np.isfinite(f)):
        raise XferError("features contain NaN or inf")
    return f


def _check_probs(source_probs: Any) -> np.ndarray:
    """source_probs as float64 N x Z, validated (finite, >= 0, rows sum to 1) and renormalised exactly."""
    p = _to_numpy(source_probs, "source_probs")
    if p.ndim != 2:
        raise XferError(f"source_probs must be a 2-d array (samples x source classes), got shape {tuple(p.shape)}")
    if not np.issubdtype(p.dtype, np.number):
        raise XferError(f"source_probs must be numeric, got dtype {p.dtype}")
    p = np.asarray(p, dtype=np.float64)
    if p.shape[1] < 1:
        raise XferError("source_probs has 0 source classes")
    if not np.all(np.isfinite(p)):
        raise XferError("source_probs contain NaN or inf")
    if np.any(p < 0):
        raise XferError("source_probs must be probabilities (>= 0); pass softmax outputs, not logits")
    sums = p.sum(axis=1)
    bad = np.abs(sums - 1.0) > _PROBS_SUM_ATOL
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise XferError(f"each row of source_probs must sum to 1 (softmax outputs, not logits); "
                        f"{int(bad.sum())} rows do not, e.g. row {i} sums to {sums[i]:.6g}")
    return p / sums[:, None]


def _features_and_labels(features: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, int]:
    f = _check_features(features)
    y, c = _check_labels(labels, f.shape[0])
    return f, y, c


def _probs_and_labels(source_probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, int]:
    p = _check_probs(source_probs)
    y, c = _check_labels(labels, p.shape[0])
    return p, y, c


# ---------------------------------------------------------------------------------------------------------------------
# LogME


def _logme_update(gamma: np.ndarray, mm: np.ndarray, res: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """One MacKay fixed-point step: alpha = gamma / m^T m, beta = (N - gamma) / ||Fm - y||^2 (guarded, clipped)."""
    alpha = np.clip(gamma / np.maximum(mm, _TINY), *_LOGME_CLIP)
    beta = np.clip((n - gamma) / np.maximum(res, _TINY), *_LOGME_CLIP)
    return alpha, beta


def _logme_evidence(alpha: float, beta: float, n: int, d: int, res: float, mm: float, logdet_a: float) -> float:
    """log p(y | F, alpha, beta) of the Bayesian linear regression, per LogME eq. (2)."""
    return (0.5 * n * math.log(beta) + 0.5 * d * math.log(alpha) - 0.5 * n * math.log(2 * math.pi)
            - 0.5 * beta * res - 0.5 * alpha * mm - 0.5 * logdet_a)


def logme(features: Any, labels: Any) -> float:
    """LogME (You et al., ICML 2021): mean per-sample log marginal evidence of a Bayesian linear model on the features.

    For each class c the target is the one-hot column ``y_c`` and the model is ``y = F w + noise`` with prior
    ``w ~ N(0, alpha^-1 I)`` and noise precision ``beta``. Its log evidence is

        L(alpha, beta) = N/2 log beta + D/2 log alpha - N/2 log 2pi - beta/2 ||F m - y||^2 - alpha/2 m^T m - 1/2 log|A|,
        A = alpha I + beta F^T F,  m = beta A^-1 F^T y,

    maximised over (alpha, beta) by MacKay's fixed point ``gamma = sum_i beta s_i / (alpha + beta s_i)``,
    ``alpha = gamma / m^T m``, ``beta = (N - gamma) / ||F m - y||^2`` (``s_i`` the eigenvalues of F^T F), starting
    from alpha = beta = 1 and stopping when alpha/beta changes by less than 1e-3 (relative) or after 100 steps.
    Returns the mean over classes of ``L / N`` (at the final alpha, beta; m recomputed there). Higher is better.

    Features are used raw, as in the paper: no centring, no standardisation, no bias column. LogME is therefore not
    invariant to shifting or rescaling the features; compare sources on features extracted the usual way.

    Fast form: one symmetric eigendecomposition of the smaller Gram matrix (F^T F when N > D, F F^T otherwise), i.e.
    the SVD of F (its right/left singular vectors and squared singular values), then every per-class quantity is
    O(min(N, D)) per iteration, all classes iterated together. Cost O(N D min(N, D) + min(N, D)^3 + C min(N, D) * iters)
    time, O(N D + min(N, D)^2 + C min(N, D)) memory; N = 5000, D = 1280 takes a fraction of a second. Squared singular
    values below ``max(N, D) * eps * s_max`` are treated as exact zeros (numerical rank).

    Applies to any frozen features of a classification target; the default cheap, well-calibrated choice.
    """
    f, y, c = _features_and_labels(features, labels)
    n, d = f.shape
    onehot = np.zeros((n, c))
    onehot[np.arange(n), y] = 1.0
    y_sq = onehot.sum(axis=0)  # ||y_c||^2 = class counts

    if n > d:
        s, v = np.linalg.eigh(f.T @ f)  # F^T F = V diag(s) V^T
        s = np.maximum(s, 0.0)
        keep = s > max(n, d) * np.finfo(np.float64).eps * max(s.max(), _TINY)
        g = v.T @ (f.T @ onehot)  # sigma_i z_i, with z = U^T y
        z2 = np.where(keep[:, None], g**2 / np.where(keep, s, 1.0)[:, None], 0.0)
        s = np.where(keep, s, 0.0)
    else:
        s, u = np.linalg.eigh(f @ f.T)  # F F^T = U diag(s) U^T, U square orthogonal
        s = np.maximum(s, 0.0)
        keep = s > max(n, d) * np.finfo(np.float64).eps * max(s.max(), _TINY)
        s = np.where(keep, s, 0.0)
        z2 = (u.T @ onehot) ** 2
    r = s.shape[0]
    # Part of each y_c outside the column space of F: fitted by no (alpha, beta), so a constant in the residual.
    outside = np.maximum(y_sq - z2.sum(axis=0), 0.0)
    s_col = s[:, None]

    def stats(alpha: np.ndarray, beta: np.ndarray, z2_: np.ndarray, outside_: np.ndarray):
        denom = alpha + beta * s_col  # r x k: eigenvalues of A along each singular direction
        gamma = (beta * s_col / denom).sum(axis=0)
        mm = (beta**2 * s_col * z2_ / denom**2).sum(axis=0)  # m^T m
        res = outside_ + (alpha**2 * z2_ / denom**2).sum(axis=0)  # ||F m - y||^2
        return denom, gamma, mm, res

    alpha = np.ones(c)
    beta = np.ones(c)
    active = np.ones(c, dtype=bool)
    for _ in range(_LOGME_MAX_ITER):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        a, b = alpha[idx], beta[idx]
        _, gamma, mm, res = stats(a, b, z2[:, idx], outside[idx])
        a_new, b_new = _logme_update(gamma, mm, res, n)
        done = np.abs(a_new / b_new - a / b) / (a / b) < _LOGME_TOL
        alpha[idx], beta[idx] = a_new, b_new
        active[idx[done]] = False

    denom, _, mm, res = stats(alpha, beta, z2, outside)
    logdet = np.log(denom).sum(axis=0) + (d - r) * np.log(alpha)
    evidence = [_logme_evidence(alpha[k], beta[k], n, d, res[k], mm[k], logdet[k]) for k in range(c)]
    return float(np.mean(evidence) / n)


def _logme_reference(features: Any, labels: Any) -> float:
    """Slow, direct LogME for tests: explicit A^-1 and slogdet per class and step; same start and stopping rule.

    gamma from the eigenvalues of F^T F (``np.linalg.eigvalsh``), m and the residual with explicit matrix products.
    Cost O(C * iters * D^3); for small inputs only.
    """
    f, y, c = _features_and_labels(features, labels)
    n, d = f.shape
    ftf = f.T @ f
    eig = np.linalg.eigvalsh(ftf)
    eye = np.eye(d)

    def solve(alpha: float, beta: float, target: np.ndarray):
        a_mat = alpha * eye + beta * ftf
        a_inv = np.linalg.inv(a_mat)
        m = beta * a_inv @ (f.T @ target)
        gamma = float(np.sum(beta * eig / (alpha + beta * eig)))
        res = float(np.sum((f @ m - target) ** 2))
        return a_mat, m, gamma, res

    evidence = []
    for k in range(c):
        target = (y == k).astype(np.float64)
        alpha, beta = 1.0, 1.0
        for _ in range(_LOGME_MAX_ITER):
            _, m, gamma, res = solve(alpha, beta, target)
            a_new, b_new = _logme_update(np.array(gamma), np.array(m @ m), np.array(res), n)
            a_new, b_new = float(a_new), float(b_new)
            converged = abs(a_new / b_new - alpha / beta) / (alpha / beta) < _LOGME_TOL
            alpha, beta = a_new, b_new
            if converged:
                break
        a_mat, m, _, res = solve(alpha, beta, target)
        sign, logdet = np.linalg.slogdet(a_mat)
        assert sign > 0
        evidence.append(_logme_evidence(alpha, beta, n, d, res, float(m @ m), float(logdet)))
    return float(np.mean(evidence) / n)


# ---------------------------------------------------------------------------------------------------------------------
# LEEP and NCE (from the source classifier's outputs)


def leep(source_probs: Any, labels: Any) -> float:
    """LEEP (Nguyen et al., ICML 2020): log expected empirical prediction of the source classifier's outputs.

    With theta(x_i) the source's softmax over its Z labels (rows of ``source_probs``):
    empirical joint ``P(y, z) = 1/N sum_i theta(x_i)_z [y_i = y]``, conditional ``P(y | z) = P(y, z) / P(z)``, and

        LEEP = 1/N sum_i log( sum_z P(y_i | z) theta(x_i)_z ).

    Always <= 0; higher is better. Source labels z with P(z) = 0 get P(y | z) = 0 (they carry no mass anyway).
    Rows of source_probs must sum to 1 within 1e-3 (they are then renormalised exactly).
    Cost O(N Z C). Applies when the source is a classifier whose (softmax) outputs on the target data are available.
    """
    p, y, c = _probs_and_labels(source_probs, labels)
    n = p.shape[0]
    onehot = np.zeros((n, c))
    onehot[np.arange(n), y] = 1.0
    joint = onehot.T @ p / n  # C x Z
    pz = joint.sum(axis=0)
    cond = np.divide(joint, pz, out=np.zeros_like(joint), where=pz > 0)  # P(y | z)
    eep = np.einsum("iz,iz->i", p, cond[y])  # sum_z P(y_i | z) theta(x_i)_z
    return float(np.mean(np.log(np.maximum(eep, _TINY))))


def nce(source_probs: Any, labels: Any) -> float:
    """NCE (Tran et al., ICCV 2019): negative conditional entropy -H(Y | Z), Z the source's hard label.

    ``z_i = argmax_z theta(x_i)_z`` (ties go to the first index); with the empirical joint ``P(z, y)`` of the pairs
    (z_i, y_i),

        NCE = -H(Y | Z) = sum_{z, y} P(z, y) log( P(z, y) / P(z) )   (natural log, nats).

    In [-log C, 0]; 0 means the source's label determines the target's; higher is better.
    Cost O(N Z + Z C). Applies like LEEP (needs the source classifier's outputs); coarser, since it uses only argmax.
    """
    p, y, c = _probs_and_labels(source_probs, labels)
    n, zdim = p.shape
    z = np.argmax(p, axis=1)
    joint = np.zeros((zdim, c))
    np.add.at(joint, (z, y), 1.0)
    joint /= n
    pz = joint.sum(axis=1, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log(joint[nz] / np.broadcast_to(pz, joint.shape)[nz])))


# ---------------------------------------------------------------------------------------------------------------------
# H-score and linear probe (from features)


def hscore(features: Any, labels: Any, rcond: float = 1e-6, shrinkage: float | str = 0.0) -> float:
    """H-score (Bao et al., ICIP 2019): ``tr( cov(f)^+ cov(E[f | y]) )`` with the features centred.

    ``cov(f) = f^T f / N`` (f centred) and ``cov(E[f | y]) = sum_c P(c) mu_c mu_c^T`` (mu_c the centred class means):
    the between-class variance of the features measured in units of their total variance. In [0, min(C - 1, D)];
    higher is better.

    The inverse is a pseudo-inverse (``np.linalg.pinv(hermitian=True)``) that drops directions whose variance is below
    ``rcond`` times the largest: near-constant (e.g. dead-ReLU) or collinear dimensions would otherwise blow the score
    up with noise. ``shrinkage`` (default 0, off) in [0, 1] replaces cov(f) by ``(1 - s) cov(f) + s tr(cov(f))/D I``
    (Ledoit-Wolf-style) and scales the between-class term by ``1 - s`` (which keeps the score in [0, C - 1]);
    ``"auto"`` takes the Ledoit-Wolf estimate of s (scikit-learn). This is the shrinkage-based H-score of Ibrahim,
    Ponomareva & Mazumder ("Newer is not always better", ECML-PKDD 2022) that `ESTIMATORS` uses: with N <= D the
    plain score is C - 1 for any features (measured on MNIST with 1,000 samples of 1,280-d features, pretrained
    and random-initialised MobileNet-V2 alike).
    Cost O(N D^2 + D^3) time, O(D^2) memory. Applies to any frozen features; sensitive to N << D (overfits).
    """
    f, y, c = _features_and_labels(features, labels)
    n, d = f.shape
    f = f - f.mean(axis=0)
    if shrinkage == "auto":
        from sklearn.covariance import ledoit_wolf_shrinkage

        shrinkage = float(ledoit_wolf_shrinkage(f, assume_centered=True))
    if isinstance(shrinkage, str) or not 0.0 <= shrinkage <= 1.0:
        raise XferError(f"shrinkage must be in [0, 1] or 'auto', got {shrinkage!r}")
    cov_f = f.T @ f / n
    if shrinkage > 0:
        cov_f = (1.0 - shrinkage) * cov_f + shrinkage * (np.trace(cov_f) / d) * np.eye(d)
    counts = np.bincount(y, minlength=c).astype(np.float64)
    means = np.zeros((c, d))
    np.add.at(means, y, f)
    means /= counts[:, None]
    cov_g = (means.T * (counts / n)) @ means * (1.0 - shrinkage)
    inv = np.linalg.pinv(cov_f, rcond=rcond, hermitian=True)
    return float(np.sum(inv * cov_g))  # tr(inv @ cov_g), both symmetric


def probe_accuracy(features: Any, labels: Any, folds: int = 5, seed: int = 0) -> float:
    """Mean k-fold accuracy of a logistic-regression probe on standardised features (the direct baseline).

    Stratified k-fold, shuffled with ``seed``; each fold fits ``StandardScaler -> LogisticRegression(max_iter=1000)``
    (scikit-learn defaults otherwise, C = 1) on its training part only. ``folds`` is capped at the smallest class
    count, but never below 2 (a class with a single sample then appears in only one test fold; scikit-learn warns).
    In [0, 1]; higher is better. Cost: ``folds`` logistic-regression fits on N x D, by far the slowest estimator here.
    Applies to any frozen features; the closest of these to actual linear-probe transfer accuracy.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    f, y, _ = _features_and_labels(features, labels)
    if int(folds) != folds or folds < 2:
        raise XferError(f"folds must be an integer >= 2, got {folds}")
    k = max(2, min(int(folds), int(np.bincount(y).min())))
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    return float(np.mean(cross_val_score(model, f, y, cv=cv, scoring="accuracy")))


# ---------------------------------------------------------------------------------------------------------------------
# registry


ESTIMATORS: dict[str, tuple[Callable[[Any, Any], float], str]] = {
    "logme": (logme, "features"),
    "hscore": (functools.partial(hscore, shrinkage="auto"), "features"),
    "probe_accuracy": (probe_accuracy, "features"),
    "leep": (leep, "probs"),
    "nce": (nce, "probs"),
}
"""name -> (function(inputs, labels) -> float, input kind: "features" (N x D) or "probs" (N x Z softmax outputs))."""


def score_all(features: Any, labels: Any, source_probs: Any = None) -> dict[str, float]:
    """Every applicable estimator in :data:`ESTIMATORS`, by name: feature-based ones on ``features``, and LEEP / NCE
    only when ``source_probs`` is given. ``features`` may be None to compute only the probability-based ones.

    Cost: the sum of the estimators' costs (probe_accuracy dominates). Applies to one (source, target) pair; rank
    sources by comparing one estimator's scores across them.
    """
    if features is None and source_probs is None:
        raise XferError("score_all needs features, source_probs, or both")
    inputs = {"features": features, "probs": source_probs}
    return {name: fn(inputs[kind], labels) for name, (fn, kind) in ESTIMATORS.items() if inputs[kind] is not None}
