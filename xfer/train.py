"""The one training loop. It runs any Plan (strategies.py) on any modality: a batch goes in, logits come out.

Built on Accelerate for device placement, mixed precision and gradient accumulation, so `accelerate launch` can run
it on several GPUs without changes. Each phase: freeze what the phase does not train, AdamW (or Adam/SGD) over
decay / no-decay groups, linear warm-up then cosine decay per step, label smoothing, gradient clipping, validation
after every epoch, early stopping, and the best epoch's weights kept.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from xfer.errors import XferError
from xfer.strategies import Phase

OPTIMIZERS = ("adamw", "adam", "sgd")


@dataclass(frozen=True)
class LoopConfig:
    batch_size: int = 64
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of a phase's steps
    label_smoothing: float = 0.0
    grad_clip: float = 1.0  # 0 disables
    patience: int = 3  # epochs without validation gain before stopping a phase; 0 disables
    grad_accum: int = 1
    channels_last: bool = True
    quiet: bool = False


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
    (MobileNet-V2 training at 64 px: 183 vs 98 samples/s; MiniLM gains ~1.5x from bf16)."""
    if precision != "auto":
        if precision not in ("bf16", "fp16", "no"):
            raise XferError(f"precision must be auto, bf16, fp16 or no, got {precision!r}.")
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


def set_trainable(model: nn.Module, names: set[str], bn_policy: str) -> None:
    """Freeze all but `names`; BatchNorm layers whose parameters are all frozen keep their running statistics."""
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
    model.train()
    if bn_policy == "frozen":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                ps = list(m.parameters(recurse=False))
                if ps and not any(p.requires_grad for p in ps):
                    m.eval()


def param_groups(module: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """No weight decay on biases and norm weights (1-d tensors), as is standard for AdamW fine-tuning."""
    decay, no_decay = [], []
    for _, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr": lr},
              {"params": no_decay, "weight_decay": 0.0, "lr": lr}]
    return [g for g in groups if g["params"]]


def make_optimizer(name: str, groups: list[dict]) -> torch.optim.Optimizer:
    # The fused kernels update all tensors in one pass: on a 2-core CPU this cut the optimizer's share of a
    # MiniLM step from ~30% to ~6% (bench/step_overhead.py).
    fused = {"fused": True} if all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"]) else {}
    if name == "adamw":
        return torch.optim.AdamW(groups, **fused)
    if name == "adam":
        return torch.optim.Adam(groups, **fused)
    if name == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, nesterov=True)
    raise XferError(f"Unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}.")


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def to_device(inputs, device, channels_last: bool):
    if isinstance(inputs, dict):
        return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
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
    was_training = module.training
    module.eval()
    out: torch.Tensor | None = None
    with torch.inference_mode():
        for inputs, _, idx in loader:
            with accelerator.autocast():
                rows = fn(to_device(inputs, accelerator.device, channels_last)).float().cpu()
            if out is None:
                out = torch.empty(len(loader.dataset), rows.shape[1])
            out[idx] = rows
    module.train(was_training)
    return out if out is not None else torch.empty(0, 0)


def predict_logits(module: nn.Module, loader, accelerator, channels_last: bool = False) -> torch.Tensor:
    """Logits for every example, in data order."""
    return run_inference(module, module, loader, accelerator, channels_last)


@dataclass
class EpochRecord:
    phase: str
    epoch: int
    train_loss: float
    train_accuracy: float
    val_accuracy: float
    lr: float
    seconds: float
    samples_per_s: float


def _progress(quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.3f}  "
                               "{task.fields[rate]:.0f} samples/s"),
                    TimeRemainingColumn(), disable=quiet, transient=True)


def train_phase(
    module: nn.Module,
    phase: Phase,
    trainable: set[str],
    train_loader,
    val_loader,
    accelerator,
    cfg: LoopConfig,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> list[EpochRecord]:
    """Train `module` for one phase; returns one record per epoch and leaves the best epoch's weights loaded."""
    set_trainable(module, trainable, phase.bn)
    place(module, accelerator, cfg.channels_last)
    optimizer = make_optimizer(cfg.optimizer, param_groups(module, phase.lr, cfg.weight_decay))
    steps_per_epoch = max(1, len(train_loader) // cfg.grad_accum)
    total = steps_per_epoch * phase.epochs
    scheduler = warmup_cosine(optimizer, total, int(cfg.warmup * total))
    optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
    if accelerator.num_processes > 1:  # multi-process: shard batches across workers
        train_loader, val_loader = accelerator.prepare(train_loader, val_loader)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    params = [p for p in module.parameters() if p.requires_grad]
    device = accelerator.device
    best_acc, best_state, stale = -1.0, None, 0
    records: list[EpochRecord] = []

    for epoch in range(1, phase.epochs + 1):
        start, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
        with _progress(cfg.quiet) as bar:
            task = bar.add_task(f"{phase.name} {epoch}/{phase.epochs}", total=len(train_loader), loss=0.0, acc=0.0,
                                rate=0.0)
            for inputs, labels, _ in train_loader:
                inputs, labels = to_device(inputs, device, cfg.channels_last), labels.to(device)
                with accelerator.accumulate(module), accelerator.autocast():
                    logits = module(inputs).float()
                    loss = loss_fn(logits, labels)
                    accelerator.backward(loss)
                    if cfg.grad_clip and accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(params, cfg.grad_clip)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                n = len(labels)
                seen += n
                loss_sum += loss.item() * n
                correct += int((logits.detach().argmax(1) == labels).sum())
                bar.update(task, advance=1, loss=loss_sum / seen, acc=correct / seen,
                           rate=seen / (time.perf_counter() - start))
        seconds = time.perf_counter() - start
        if not math.isfinite(loss_sum):
            raise XferError(f"Training diverged in phase {phase.name!r} (loss is {loss_sum}). Lower the learning "
                            f"rate (now {phase.lr:g}) or use --precision no.")
        logits = predict_logits(module, val_loader, accelerator, cfg.channels_last)
        val_acc = float((logits.argmax(1).numpy() == val_loader.dataset.labels.numpy()).mean())
        set_trainable(module, trainable, phase.bn)  # predict_logits switched to eval; restore the phase's modes
        rec = EpochRecord(phase.name, epoch, loss_sum / max(1, seen), correct / max(1, seen), val_acc,
                          scheduler.get_last_lr()[0], seconds, seen / seconds)
        records.append(rec)
        log(f"{phase.name} epoch {epoch}/{phase.epochs}: loss {rec.train_loss:.4f}  train acc {rec.train_accuracy:.4f}"
            f"  val acc {val_acc:.4f}  "
            f"{seconds:.1f}s  {rec.samples_per_s:.0f} samples/s")
        if on_epoch:
            on_epoch(rec)
        if val_acc > best_acc:
            best_acc, stale = val_acc, 0
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        else:
            stale += 1
            if cfg.patience and stale >= cfg.patience:
                log(f"{phase.name}: early stop, no validation gain for {stale} epochs")
                break
    if best_state is not None:
        module.load_state_dict(best_state)
    for p in module.parameters():
        p.requires_grad_(True)
    return records


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
