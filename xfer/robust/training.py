"""Robust fine-tuning as batch hooks of the loop: Gaussian noise on the pixels (the base classifier of randomised
smoothing, Cohen et al. 2019) and adversarial examples (PGD / FGSM adversarial training, Madry et al. 2018).

Both act on whole-network phases only: a head-only phase on cached features sees features, not images, and is
left as it is.
"""

from __future__ import annotations

import torch

from xfer.errors import XferError
from xfer.fitting.hooks import Hook
from xfer.robust.attacks import ATTACKS, attack
from xfer.robust.defences import PixelModel


def _stats(prep: dict, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(prep["mean"], dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
    std = torch.tensor(prep["std"], dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
    return mean, std


class GaussianNoise(Hook):
    """Adds N(0, sigma^2) to every training image, sigma in [0, 1] pixel units (not clamped, as in Cohen et al.)."""

    def __init__(self, sigma: float, prep: dict):
        self.sigma, self.prep = sigma, prep

    def before_batch(self, inputs, labels):
        if not torch.is_tensor(inputs) or inputs.dim() != 4:
            return inputs, labels
        mean, std = _stats(self.prep, inputs)
        noisy = inputs * std + mean + self.sigma * torch.randn_like(inputs)
        return (noisy - mean) / std, labels


class AdversarialExamples(Hook):
    """Replaces every training batch by its adversarial version against the model being trained (crafted in eval
    mode, so BatchNorm statistics come from clean images only)."""

    def __init__(self, kind: str, eps: float, steps: int, prep: dict):
        if kind not in ATTACKS:
            raise XferError(f"--adversarial must be one of {', '.join(ATTACKS)}, got {kind!r}.")
        self.kind, self.eps, self.steps, self.prep = kind, eps, steps, prep
        self.model = None

    def start(self, ctx) -> None:
        self.model = ctx.module

    def before_batch(self, inputs, labels):
        if self.model is None or not torch.is_tensor(inputs) or inputs.dim() != 4:
            return inputs, labels
        mean, std = _stats(self.prep, inputs)
        pixels = (inputs * std + mean).clamp(0, 1)
        wrapped = PixelModel(self.model, self.prep).to(inputs.device)
        training = self.model.training
        self.model.eval()
        with torch.enable_grad():
            adv = attack(self.kind, wrapped, pixels.float(), labels, self.eps, steps=self.steps)
        self.model.train(training)
        return ((adv.to(inputs.dtype) - mean) / std).contiguous(memory_format=_format(inputs)), labels


def _format(x: torch.Tensor):
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format


def robust_hooks(cfg, spec: dict) -> tuple[Hook, ...]:
    """The hooks a fit's robustness options ask for (none by default)."""
    hooks: list[Hook] = []
    if cfg.noise_sigma or cfg.adversarial:
        if spec["modality"] != "image":
            raise XferError("--noise-sigma and --adversarial perturb image pixels; this run reads text tokens. For "
                            "text, see the text defences (--defence lookalikes|spelling|token-dropout).")
    if cfg.noise_sigma:
        hooks.append(GaussianNoise(cfg.noise_sigma, spec["prep"]))
    if cfg.adversarial:
        hooks.append(AdversarialExamples(cfg.adversarial, cfg.adv_eps, cfg.adv_steps, spec["prep"]))
    return tuple(hooks)
