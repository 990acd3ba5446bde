"""Certified robustness by randomised smoothing (Cohen, Rosenfeld & Kolter, ICML 2019).

The smoothed classifier predicts the class the base model gives most often under Gaussian noise N(0, sigma^2) on
the pixels. CERTIFY: guess the top class from n0 noisy samples, count how often it wins in n fresh samples, take a
one-sided Clopper-Pearson lower bound pA on its probability at level alpha; if pA > 1/2 the prediction is constant
within L2 radius sigma * Phi^-1(pA), else the smoothed classifier abstains. Models meant for this are fine-tuned
with the same noise (`xfer fit --noise-sigma S`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

ABSTAIN = -1


def lower_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion with k successes in n."""
    from scipy.stats import beta

    return float(beta.ppf(alpha, k, n - k + 1)) if k > 0 else 0.0


def radius(k: int, n: int, alpha: float, sigma: float) -> float | None:
    """The certified L2 radius for k wins of the top class in n noisy samples; None when it must abstain."""
    from scipy.stats import norm

    p_a = lower_confidence_bound(k, n, alpha)
    return float(sigma * norm.ppf(p_a)) if p_a > 0.5 else None


@torch.no_grad()
def _counts(model: nn.Module, x: torch.Tensor, n: int, sigma: float, classes: int, batch: int,
            generator: torch.Generator) -> np.ndarray:
    counts = np.zeros(classes, dtype=np.int64)
    left = n
    while left > 0:
        b = min(batch, left)
        noisy = x.unsqueeze(0).expand(b, *x.shape) + sigma * torch.randn((b, *x.shape), generator=generator)
        counts += np.bincount(model(noisy).argmax(1).numpy(), minlength=classes)
        left -= b
    return counts


def certify(model: nn.Module, x: torch.Tensor, classes: int, sigma: float, n0: int = 64, n: int = 500,
            alpha: float = 0.001, batch: int = 250, seed: int = 0) -> tuple[int, float | None]:
    """(predicted class or ABSTAIN, certified radius or None) for one image of [0, 1] pixels."""
    g = torch.Generator().manual_seed(seed)
    guess = int(_counts(model, x, n0, sigma, classes, batch, g).argmax())
    k = int(_counts(model, x, n, sigma, classes, batch, g)[guess])
    r = radius(k, n, alpha, sigma)
    return (guess, r) if r is not None else (ABSTAIN, None)


def certified_accuracy(results: list[tuple[int, float | None]], labels, radii) -> dict[str, float]:
    """Share of examples predicted correctly with a certified radius of at least r, for each r."""
    labels = list(labels)
    out = {}
    for r in radii:
        ok = sum(1 for (pred, rad), y in zip(results, labels) if pred == y and rad is not None and rad >= r)
        out[f"{r:g}"] = ok / max(1, len(labels))
    return out
