"""Input defences saved with a run (spec["defence"]) and applied by predict, eval and robust alike.

Images (torch modules on [0, 1] pixels, before the run's normalisation):
- `blur`: Gaussian blur (differentiable; an attack that knows it simply differentiates through it);
- `bits`: bit-depth reduction, feature squeezing (Xu et al., NDSS 2018); non-differentiable: BPDA attacks it;
- `jpeg`: JPEG compression (Dziugaite et al. 2016; Guo et al., ICLR 2018); non-differentiable: BPDA;
- `resize-pad`: random resize and pad (Xie et al., ICLR 2018), averaged over draws; EOT attacks it.
- `noise`: Gaussian noise averaged over draws: the smoothed classifier of randomised smoothing (Cohen et al., ICML
  2019), what a model fine-tuned with `--noise-sigma` predicts with; EOT attacks it, `xfer robust --certify`
  bounds it.
Texts (strings in, strings out; xfer/robust/text.py): `lookalikes`, `spelling`, `token-dropout` (randomised).

`bpda=True` turns a non-differentiable transform into a straight-through one (forward as is, backward as the
identity): Athalye, Carlini & Wagner (ICML 2018) showed this breaks defences that only hide gradients.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xfer.errors import XferError

# name -> (modality, default options, the option a bare "name:value" sets, randomised)
DEFENCES: dict[str, tuple[str, dict, str | None, bool]] = {
    "blur": ("image", {"sigma": 1.0}, "sigma", False),
    "bits": ("image", {"bits": 3}, "bits", False),
    "jpeg": ("image", {"quality": 75}, "quality", False),
    "resize-pad": ("image", {"max_scale": 1.125}, "max_scale", True),
    "noise": ("image", {"sigma": 0.25}, "sigma", True),
    "lookalikes": ("text", {}, None, False),
    "spelling": ("text", {}, None, False),
    "token-dropout": ("text", {"p": 0.1}, "p", True),
}
DEFAULT_DRAWS = 8


def parse_defence(text: str | None, draws: int = DEFAULT_DRAWS) -> dict | None:
    """"blur", "blur:1.5", "blur:sigma=1.5", "jpeg:quality=60" -> {"name", "options", "draws"}; None for none."""
    if not text:
        return None
    name, _, rest = text.strip().partition(":")
    if name not in DEFENCES:
        raise XferError(f"Unknown defence {name!r}; choose one of: {', '.join(DEFENCES)} (options as name:value or "
                        f"name:key=value, e.g. blur:sigma=1.5).")
    modality, defaults, main, randomised = DEFENCES[name]
    options = dict(defaults)
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq:
            key, value = main, part
        if key not in defaults:
            raise XferError(f"Defence {name!r} has no option {key!r}; its options: {', '.join(defaults) or 'none'}.")
        try:
            options[key] = type(defaults[key])(float(value)) if isinstance(defaults[key], int) else float(value)
        except ValueError as e:
            raise XferError(f"Defence option {name}:{key} must be a number, got {value!r}.") from e
    _check(name, options)
    return {"name": name, "modality": modality, "options": options, "draws": draws if randomised else 1}


def _check(name: str, o: dict) -> None:
    bad = ((name == "blur" and not 0 < o["sigma"] <= 10) or (name == "noise" and not 0 < o["sigma"] <= 2) or (name == "bits" and not 1 <= o["bits"] <= 8)
           or (name == "jpeg" and not 1 <= o["quality"] <= 100) or (name == "resize-pad" and not 1 < o["max_scale"] <= 2)
           or (name == "token-dropout" and not 0 <= o["p"] < 1))
    if bad:
        raise XferError(f"Defence {name} options out of range: {o}. Ranges: blur sigma in (0, 10] px, bits in 1..8, "
                        f"jpeg quality in 1..100, resize-pad max_scale in (1, 2], noise sigma in (0, 2], token-dropout p in [0, 1).")


def check_modality(defence: dict | None, modality: str) -> None:
    """A defence fits the inputs the model reads (an image defence on text rendered as images is an image one)."""
    if defence and defence["modality"] != modality:
        names = [n for n, d in DEFENCES.items() if d[0] == modality]
        raise XferError(f"Defence {defence['name']!r} is for {defence['modality']} inputs, but this model reads "
                        f"{modality}s. Choose one of: {', '.join(names)}.")


# --- image transforms on [0, 1] pixels ------------------------------------------------------------------------------

def _straight_through(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y in the forward pass, the identity's gradient in the backward pass (BPDA)."""
    return x + (y - x).detach()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def bit_depth(x: torch.Tensor, bits: int) -> torch.Tensor:
    levels = 2 ** int(bits) - 1
    return torch.round(x.clamp(0, 1) * levels) / levels


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    from PIL import Image

    out = []
    arr = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    for img in arr:
        mode_img = Image.fromarray(img[0], "L") if img.shape[0] == 1 else Image.fromarray(img.transpose(1, 2, 0), "RGB")
        buf = io.BytesIO()
        mode_img.save(buf, format="JPEG", quality=int(quality))
        dec = np.asarray(Image.open(buf), dtype=np.float32) / 255
        out.append(dec[None] if dec.ndim == 2 else dec.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out)).to(x.device, x.dtype)


def resize_pad(x: torch.Tensor, max_scale: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random resize to [S, S * max_scale) and random zero padding to S * max_scale (one draw per batch)."""
    size = x.shape[-1]
    final = int(size * max_scale)
    new = int(torch.randint(size, final, (1,), generator=generator).item()) if final > size else size
    x = F.interpolate(x, size=(new, new), mode="bilinear", align_corners=False)
    left = int(torch.randint(0, final - new + 1, (1,), generator=generator).item())
    top = int(torch.randint(0, final - new + 1, (1,), generator=generator).item())
    return F.pad(x, (left, final - new - left, top, final - new - top))


def image_transform(defence: dict, bpda: bool = False):
    """pixels -> pixels for this defence; `bpda`: non-differentiable steps pass gradients straight through."""
    name, o = defence["name"], defence["options"]
    if name == "blur":
        return lambda x: gaussian_blur(x, o["sigma"])
    if name == "bits":
        return (lambda x: _straight_through(x, bit_depth(x, o["bits"]))) if bpda else (lambda x: bit_depth(x, o["bits"]))
    if name == "jpeg":
        return (lambda x: _straight_through(x, jpeg(x, o["quality"]))) if bpda else (lambda x: jpeg(x, o["quality"]))
    if name == "resize-pad":
        return lambda x: resize_pad(x, o["max_scale"])
    if name == "noise":
        return lambda x: x + o["sigma"] * torch.randn_like(x)
    raise XferError(f"{name} is not an image defence.")


class PixelModel(nn.Module):
    """The run's model on [0, 1] pixels: optional defence, then the run's normalisation, then the network.

    Attacks work here, so their eps is in pixel units whatever the normalisation. A randomised defence returns the
    log of the softmax averaged over `draws` (what predict does with it); `draws` for an attack's gradient is EOT.
    """

    def __init__(self, model: nn.Module, prep: dict, defence: dict | None = None, bpda: bool = False,
                 draws: int | None = None):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(prep["mean"], dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(prep["std"], dtype=torch.float32).view(1, -1, 1, 1))
        self.transform = image_transform(defence, bpda) if defence else None
        self.draws = (draws or defence["draws"]) if defence else 1

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.transform is None:
            return self.model((pixels - self.mean) / self.std)
        if self.draws == 1:
            return self.model((self.transform(pixels) - self.mean) / self.std)
        probs = sum(self.model((self.transform(pixels) - self.mean) / self.std).softmax(1) for _ in range(self.draws))
        return torch.log(probs / self.draws + 1e-12)


class Defended(nn.Module):
    """A model that reads normalised images (as datasets give them) with a defence applied in pixel space."""

    def __init__(self, model: nn.Module, prep: dict, defence: dict):
        super().__init__()
        self.pixels = PixelModel(model, prep, defence)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pixels
        return p((x * p.std + p.mean).clamp(0, 1))


def to_pixels(x: torch.Tensor, prep: dict) -> torch.Tensor:
    """Normalised images back to [0, 1] pixels (what an attack perturbs)."""
    mean = torch.tensor(prep["mean"], dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(prep["std"], dtype=x.dtype).view(1, -1, 1, 1)
    return (x * std + mean).clamp(0, 1)
