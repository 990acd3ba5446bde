"""Where and how a model runs: device and precision (Accelerate), placement, seeding, and inference in data order.

Shared by training, feature extraction and prediction, so none of them depends on the training loop.
"""

from __future__ import annotations

import torch
from torch import nn

from xfer.config import PRECISIONS
from xfer.errors import XferError



def cpu_supports_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def has_depthwise_conv(model: nn.Module | None) -> bool:
    return model is not None and any(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
                                     for m in model.modules())


def resolve_precision(precision: str, model: nn.Module | None = None) -> str:
    """'auto': bf16 on GPUs that have it, fp16 on older GPUs; on CPUs with AMX/AVX512-BF16, bf16 except for
    depthwise-convolution networks (MobileNet, EfficientNet), whose CPU kernels measured faster in fp32
    (bench/precision.py; MobileNet-V2 training at 64 px: 183 vs 98 samples/s; MiniLM gains ~1.5x from bf16)."""
    if precision != "auto":
        if precision not in PRECISIONS:
            raise XferError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() and not has_depthwise_conv(model) else "no"


def make_accelerator(precision: str, grad_accum: int = 1, model: nn.Module | None = None):
    """An Accelerator for this precision. Accelerate keeps one global state per process, so a request for another
    precision (a from-scratch baseline in fp32 after a bf16 fit, say) resets that state first."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    mp = resolve_precision(precision, model)
    cpu = not torch.cuda.is_available()
    if cpu and mp == "fp16":
        raise XferError("fp16 needs a GPU; on the CPU use precision bf16 or no.")
    state = AcceleratorState._shared_state
    if state and str(state.get("_mixed_precision", mp)) != mp:
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
    return Accelerator(mixed_precision=mp, cpu=cpu, gradient_accumulation_steps=grad_accum)


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a module's state (checkpoints, snapshots)."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def to_device(inputs, device, channels_last: bool):
    if isinstance(inputs, dict):
        return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in inputs.items()}
    inputs = inputs.to(device, non_blocking=True)
    if channels_last and inputs.dim() == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs


def place(module: nn.Module, accelerator, channels_last: bool) -> None:
    """Move a model to the accelerator's device (channels_last for CNNs). Call it outside inference mode, so its
    parameters stay ordinary trainable tensors."""
    module.to(accelerator.device)
    if channels_last and any(isinstance(m, nn.Conv2d) for m in module.modules()):
        module.to(memory_format=torch.channels_last)


def run_inference(module: nn.Module, fn, loader, accelerator, channels_last: bool = False) -> torch.Tensor:
    """`fn(inputs)` for every example in eval mode, rows in data order (batches may come in any order)."""
    from xfer.fitting import distributed as dist

    was_training = module.training
    module.eval()
    out: torch.Tensor | None = None
    shared, size, rank = dist.active(), dist.world_size(), dist.rank()
    mine: list[tuple[torch.Tensor, torch.Tensor]] = []
    with torch.inference_mode():
        for b, (inputs, _, idx) in enumerate(loader):
            if shared and b % size != rank:  # several processes: each runs every size-th batch
                continue
            with accelerator.autocast():
                rows = fn(to_device(inputs, accelerator.device, channels_last)).float().cpu()
            if shared:
                mine.append((torch.as_tensor(idx), rows))
                continue
            if out is None:
                out = torch.empty(len(loader.dataset), rows.shape[1])
            out[idx] = rows
    module.train(was_training)
    if shared:  # every row back, from whichever process computed it, exactly once
        return dist.gather_rows(mine, len(loader.dataset))
    return out if out is not None else torch.empty(0, 0)


def predict_logits(module: nn.Module, loader, accelerator, channels_last: bool = False) -> torch.Tensor:
    """Logits for every example, in data order."""
    return run_inference(module, module, loader, accelerator, channels_last)


def accuracy(logits: torch.Tensor, loader) -> float:
    """Share of the loader's examples whose largest logit is the label."""
    return float((logits.argmax(1).numpy() == loader.dataset.labels.numpy()).mean())
