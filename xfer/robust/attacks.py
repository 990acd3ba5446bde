"""L-infinity attacks on [0, 1] pixels: FGSM (Goodfellow et al., ICLR 2015) and PGD with a random start (Madry et
al., ICLR 2018), written on plain torch. The model is a `PixelModel` (normalisation inside, optional defence), in
eval mode. `eot` averages the gradient over several passes of a randomised model (Expectation over
Transformation, Athalye et al., ICML 2018); BPDA is the model's own `bpda=True` straight-through transforms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ATTACKS = ("fgsm", "pgd")


def _grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eot: int) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    loss = sum(F.cross_entropy(model(x), y, reduction="sum") for _ in range(max(1, eot)))
    (g,) = torch.autograd.grad(loss, x)
    return g


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, eot: int = 1) -> torch.Tensor:
    """One signed-gradient step of size eps, clipped to [0, 1]."""
    if eps == 0:
        return x.clone()
    return (x + eps * _grad(model, x, y, eot).sign()).clamp(0, 1).detach()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 20,
        step_size: float | None = None, random_start: bool = True, eot: int = 1,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """`steps` signed-gradient steps (default size 2.5 eps / steps), each projected back onto the eps ball around
    x and onto [0, 1]."""
    if eps == 0:
        return x.clone()
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    adv = x.clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device) * 2 - 1
        adv = (x + eps * noise).clamp(0, 1)
    for _ in range(steps):
        adv = adv + alpha * _grad(model, adv, y, eot).sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1).detach()
    return adv


def attack(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 20,
           eot: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    if name == "fgsm":
        return fgsm(model, x, y, eps, eot)
    if name == "pgd":
        return pgd(model, x, y, eps, steps, eot=eot, generator=generator)
    from xfer.errors import XferError

    raise XferError(f"Unknown attack {name!r}; image attacks: {', '.join(ATTACKS)}.")


@torch.no_grad()
def predictions(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
