"""Metrics (scikit-learn) and the transfer-vs-scratch comparison."""

from __future__ import annotations

import numpy as np


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: tuple[str, ...]) -> dict:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    ids = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0)),
        "n": int(len(y_true)),
        "per_class": {lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, lab in enumerate(labels)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
    }


def transfer_gain(transfer_acc: float, baseline_acc: float) -> dict:
    """Gain of transfer over the from-scratch baseline; negative means the source hurt (negative transfer)."""
    gain = transfer_acc - baseline_acc
    return {"gain": gain, "negative_transfer": gain < 0}


# Calibration: is a confidence of 0.8 right 80% of the time? Expected calibration error over equal-width confidence
# bins, and temperature scaling (one T > 0 dividing the logits, fitted on validation logits by NLL), both as in
# Guo et al., "On Calibration of Modern Neural Networks", ICML 2017. Dividing by T keeps every argmax, so accuracy
# and F1 are unchanged.
ECE_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> list[dict]:
    """Per equal-width confidence bin (lower, upper]: examples, accuracy and mean confidence (None when empty)."""
    conf, correct = probs.max(1), probs.argmax(1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)  # (lower, upper]
    bins = []
    for b in range(n_bins):
        mask = which == b
        n = int(mask.sum())
        bins.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": n,
                     "accuracy": float(correct[mask].mean()) if n else None,
                     "confidence": float(conf[mask].mean()) if n else None})
    return bins


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE = sum over bins of (bin share) x |accuracy - mean confidence| (Guo et al., 2017, eq. 3)."""
    bins = reliability_bins(probs, labels, n_bins)
    total = max(1, sum(b["count"] for b in bins))
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / T)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(z)), np.asarray(labels)].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T), searched over log T (bounded Brent; the NLL is smooth and
    unimodal enough in log T). 1.0 when there is nothing to fit on (no examples, or no validation error)."""
    from scipy.optimize import minimize_scalar

    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    if len(labels) == 0 or not np.isfinite(logits).all():
        return 1.0
    if (logits.argmax(1) == labels).all():  # no validation error: the NLL falls without end as T -> 0, no fit
        return 1.0
    res = minimize_scalar(lambda log_t: nll(logits, labels, float(np.exp(log_t))),
                          bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-4})
    t = float(np.exp(res.x))
    return t if nll(logits, labels, t) < nll(logits, labels, 1.0) else 1.0


def calibration(logits: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict:
    """Temperature fitted on `logits["val"]`; ECE before and after it on every split given, the test split's
    reliability bins (before and after) for the diagram."""
    t = fit_temperature(logits["val"], labels["val"])
    out: dict = {"temperature": t, "method": "temperature scaling (Guo et al., 2017)", "bins_n": ECE_BINS}
    for split, z in logits.items():
        before, after = softmax(z), softmax(z, t)
        out[split] = {"ece": expected_calibration_error(before, labels[split]),
                      "ece_scaled": expected_calibration_error(after, labels[split]),
                      "nll": nll(z, labels[split]), "nll_scaled": nll(z, labels[split], t)}
        if split == "test":
            out[split]["bins"] = reliability_bins(before, labels[split])
            out[split]["bins_scaled"] = reliability_bins(after, labels[split])
    return out
