"""The one training loop. It runs any Plan (strategies.py) on any modality: a batch goes in, logits come out.

Built on Accelerate for device placement, mixed precision and gradient accumulation, so `accelerate launch` can run
it on several GPUs without changes. Each phase: freeze what the phase does not train, AdamW (or Adam/SGD) over
decay / no-decay groups, linear warm-up then cosine decay per step, label smoothing, gradient clipping, validation
after every epoch, early stopping, and the best epoch's weights kept.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from xfer.errors import XferError
from xfer.strategies import Phase, interpolate

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
    seed: int = 0  # each epoch's shuffling and dropout derive from (seed, epoch)
    deadline: float | None = None  # time.perf_counter() value at which training stops (a wall-clock budget)


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


def set_trainable(model: nn.Module, names: set[str], bn_policy: str = "auto") -> None:
    """Freeze all but `names` and set BatchNorm modes: `auto` keeps the running statistics of BN layers whose
    parameters are all frozen, `frozen` keeps every BN layer's statistics, `train` updates them all."""
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
    model.train()
    if bn_policy == "train":
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            ps = list(m.parameters(recurse=False))
            if bn_policy == "frozen" or (ps and not any(p.requires_grad for p in ps)):
                m.eval()


def param_groups(module: nn.Module, names: set[str], lr: float, weight_decay: float,
                 scales: dict[str, float] | None = None, no_decay: set[str] = frozenset()) -> list[dict]:
    """Optimizer groups over `names`, one per (rate multiplier, decay) pair, each with its final rate in "lr".

    Biases and norm weights (1-d) get no weight decay, nor do the names in `no_decay` (weights an L2-SP penalty
    regularises instead). The multiplier is folded into "lr" itself rather than left as an "lr_scale" key, which
    only timm's own schedulers read (the pitfall of timm issue #2691); any torch scheduler keeps the ratios.
    """
    groups: dict[tuple[float, bool], dict] = {}
    for n, p in module.named_parameters():
        if n not in names:
            continue
        scale = 1.0 if scales is None else scales.get(n, 1.0)
        decay = p.ndim > 1 and n not in no_decay
        g = groups.setdefault((scale, decay), {"params": [], "names": [], "lr": lr * scale,
                                               "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale})
        g["params"].append(p)
        g["names"].append(n)
    return sorted(groups.values(), key=lambda g: (-g["lr_scale"], -g["weight_decay"]))


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


def _progress(quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.3f}  "
                               "{task.fields[rate]:.0f} samples/s"),
                    TimeRemainingColumn(), disable=quiet, transient=True)


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
    trainable_params: int = 0


@dataclass
class PhaseState:
    """Where a phase stands after an epoch: everything a checkpoint needs to resume it exactly."""

    epoch: int = 0  # epochs completed
    best_accuracy: float = -1.0
    stale: int = 0
    best_state: dict | None = None
    records: list = field(default_factory=list)
    trainable: list[str] = field(default_factory=list)  # what trained in the last completed epoch
    optimizer: dict | None = None
    scheduler: dict | None = None
    done: bool = False


class L2SPGradient:
    """Adds the gradient of the L2-SP penalty after each backward pass: alpha (w - w0) on transferred weights,
    beta w on the head. Adding the gradient equals adding alpha/2 ||w - w0||^2 + beta/2 ||w||^2 to the loss, without
    building that term into the autograd graph every step."""

    def __init__(self, module: nn.Module, names: set[str], alpha: float, beta: float,
                 anchors: dict[str, torch.Tensor] | None = None):
        params = dict(module.named_parameters())
        self.head = [params[n] for n in sorted(names) if n.startswith("head.") and params[n].ndim > 1]
        self.transferred = [params[n] for n in sorted(names) if not n.startswith("head.")]
        self.anchor_names = [n for n in sorted(names) if not n.startswith("head.")]
        self.anchors = ([anchors[n] for n in self.anchor_names] if anchors is not None
                        else [p.detach().clone() for p in self.transferred])
        self.alpha, self.beta = alpha, beta

    def state(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.anchor_names, self.anchors))

    @torch.no_grad()
    def __call__(self) -> None:
        for ps, coef, ref in ((self.transferred, self.alpha, self.anchors), (self.head, self.beta, None)):
            for i, p in enumerate(ps):
                if p.grad is None:
                    continue
                p.grad.add_(p - ref[i] if ref is not None else p, alpha=coef)


def _set_epoch(loader, seed: int) -> None:
    sampler = getattr(loader, "batch_sampler", None) or getattr(loader, "sampler", None)
    for s in (sampler, getattr(sampler, "sampler", None)):
        if hasattr(s, "set_epoch"):
            s.set_epoch(seed)


def train_phase(
    module: nn.Module,
    phase: Phase,
    trainable: set[str],
    train_loader,
    val_loader,
    accelerator,
    cfg: LoopConfig,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[EpochRecord, PhaseState], None] | None = None,
    state: PhaseState | None = None,
    scales: dict[str, float] | None = None,
    unfreeze: Callable[[int], set[str]] | None = None,
    anchors: dict[str, torch.Tensor] | None = None,
) -> list[EpochRecord]:
    """Train `module` for one phase; returns one record per epoch and leaves the best epoch's weights loaded.

    `scales` multiplies the rate of each named parameter, `unfreeze(epoch)` picks the subset of `trainable` that
    trains in each epoch, `anchors` are L2-SP's w0 (default: the weights as the phase starts). `state` resumes a
    phase from a checkpoint; `on_epoch` receives the state after each epoch, to save one.
    """
    state = state or PhaseState()
    set_trainable(module, trainable, phase.bn)
    place(module, accelerator, cfg.channels_last)
    penalty = None
    no_decay: set[str] = set()
    if phase.penalty is not None:
        penalty = L2SPGradient(module, trainable, phase.penalty.alpha, phase.penalty.beta, anchors)
        no_decay = set(trainable)  # the penalty replaces weight decay on every weight it covers
    optimizer = make_optimizer(cfg.optimizer, param_groups(module, trainable, phase.lr, cfg.weight_decay, scales,
                                                           no_decay))
    steps_per_epoch = max(1, len(train_loader) // cfg.grad_accum)
    total = steps_per_epoch * phase.epochs
    scheduler = warmup_cosine(optimizer, total, int(cfg.warmup * total))
    if state.optimizer is not None:
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
    optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
    if accelerator.num_processes > 1:  # multi-process: shard batches across workers
        train_loader, val_loader = accelerator.prepare(train_loader, val_loader)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    device = accelerator.device
    records: list[EpochRecord] = [EpochRecord(**r) for r in state.records]

    for epoch in range(state.epoch + 1, phase.epochs + 1):
        # Every epoch's randomness (shuffling, dropout) derives from (seed, epoch) alone: a resumed run replays
        # exactly the batches an uninterrupted one would.
        torch.manual_seed(cfg.seed * 10_007 + epoch)
        _set_epoch(train_loader, cfg.seed * 10_007 + epoch)
        active = unfreeze(epoch) if unfreeze else trainable
        set_trainable(module, active, phase.bn)
        params = [p for p in module.parameters() if p.requires_grad]
        n_active = sum(p.numel() for p in params)
        start, seen, loss_sum, correct, out_of_time = time.perf_counter(), 0, 0.0, 0, False
        with _progress(cfg.quiet) as bar:
            task = bar.add_task(f"{phase.name} {epoch}/{phase.epochs}", total=len(train_loader), loss=0.0, acc=0.0,
                                rate=0.0)
            for inputs, labels, _ in train_loader:
                if cfg.deadline is not None and time.perf_counter() > cfg.deadline:
                    out_of_time = True
                    break
                inputs, labels = to_device(inputs, device, cfg.channels_last), labels.to(device)
                with accelerator.accumulate(module), accelerator.autocast():
                    logits = module(inputs).float()
                    loss = loss_fn(logits, labels)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        if penalty is not None:
                            penalty()
                        if cfg.grad_clip:
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
        if seen == 0:  # the budget ran out before this epoch's first step
            log(f"{phase.name}: time budget spent before epoch {epoch}")
            break
        if not math.isfinite(loss_sum):
            raise XferError(f"Training diverged in phase {phase.name!r} (loss is {loss_sum}). Lower the learning "
                            f"rate (now {phase.lr:g}) or use --precision no.")
        logits = predict_logits(module, val_loader, accelerator, cfg.channels_last)
        val_acc = float((logits.argmax(1).numpy() == val_loader.dataset.labels.numpy()).mean())
        rec = EpochRecord(phase.name, epoch, loss_sum / max(1, seen), correct / max(1, seen), val_acc,
                          scheduler.get_last_lr()[0], seconds, seen / seconds, n_active)
        records.append(rec)
        log(f"{phase.name} epoch {epoch}/{phase.epochs}: loss {rec.train_loss:.4f}  train acc {rec.train_accuracy:.4f}"
            f"  val acc {val_acc:.4f}  {seconds:.1f}s  {rec.samples_per_s:.0f} samples/s"
            + (f"  {n_active:,} trainable" if unfreeze else ""))
        if val_acc > state.best_accuracy:
            state.best_accuracy, state.stale = val_acc, 0
            state.best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        else:
            state.stale += 1
        state.epoch, state.records = epoch, [r.__dict__ for r in records]
        state.trainable = sorted(active)
        state.done = epoch == phase.epochs or out_of_time or bool(cfg.patience and state.stale >= cfg.patience)
        if on_epoch:
            state.optimizer, state.scheduler = optimizer.state_dict(), scheduler.state_dict()
            on_epoch(rec, state)
            state.optimizer = state.scheduler = None
        if state.done and epoch < phase.epochs:
            log(f"{phase.name}: time budget spent" if out_of_time else
                f"{phase.name}: early stop, no validation gain for {state.stale} epochs")
            break
    if state.best_state is not None:
        module.load_state_dict(state.best_state)
    for p in module.parameters():
        p.requires_grad_(True)
    return records


def choose_interpolation(module: nn.Module, theta0: dict, theta1: dict, val_loader, accelerator, channels_last: bool,
                         alphas=tuple(i / 10 for i in range(11))) -> list[dict]:
    """WiSE-FT's choice: validation accuracy of (1-a) theta0 + a theta1 for each `a`; loads the best one (the
    larger `a` on ties, i.e. the fine-tuned end) and returns the curve."""
    labels = val_loader.dataset.labels.numpy()
    curve = []
    for a in alphas:
        module.load_state_dict(interpolate(theta0, theta1, a))
        logits = predict_logits(module, val_loader, accelerator, channels_last)
        curve.append({"alpha": a, "val_accuracy": float((logits.argmax(1).numpy() == labels).mean())})
    best = max(curve, key=lambda c: (c["val_accuracy"], c["alpha"]))
    module.load_state_dict(interpolate(theta0, theta1, best["alpha"]))
    return curve


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
