"""The one training loop: one phase of a Plan (strategies.py) on any modality, a batch in, logits out.

The step reads top to bottom: batch hooks, forward, loss (+ hook terms), backward, gradient hooks, clipping, optimizer
and schedule step. Around it: freezing and BatchNorm policy, AdamW (or Adam/SGD) over groups keyed by (rate
multiplier, decay), linear warm-up then cosine decay per step, label smoothing, validation after every epoch, early
stopping, the best epoch's weights kept, a wall-clock deadline. Accelerate provides the device, autocast and
gradient accumulation, so `accelerate launch` can run it on several processes. What a strategy adds (a penalty's
gradient, an unfreezing schedule) arrives as hooks (hooks.py), never as a branch here.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from xfer.config import OPTIMIZERS
from xfer.errors import XferError
from xfer.fitting import distributed as dist
from xfer.fitting.device import accuracy, place, predict_logits, to_device
from xfer.fitting.hooks import Context, Hook, overriding
from xfer.fitting.strategies import Phase



@dataclass(frozen=True)
class PhaseRun:
    """A phase resolved against a model, once, by the runner: everything the loop needs, whole."""

    phase: Phase
    module: nn.Module  # what trains: the model, or its head alone on cached features
    trainable: frozenset[str]  # names in `module` that train at some point of the phase
    train: object  # DataLoader of training batches
    val: object  # DataLoader of validation batches, in the module's input space
    seed: int  # each epoch's shuffling and dropout derive from (seed, epoch)
    scales: dict[str, float] | None = None  # per-parameter rate multipliers
    hooks: tuple[Hook, ...] = ()
    deadline: float | None = None  # time.perf_counter() value at which training stops (a wall-clock budget)
    shard: bool = True  # with several processes, split each batch between them (False: every process runs it all)


def set_trainable(model: nn.Module, names: set[str], bn_policy: str = "auto") -> None:
    """Freeze all but `names` and set module modes.

    A frozen sub-network (every parameter in it frozen: embeddings, a lower encoder layer) runs as in evaluation,
    without dropout: it is a fixed feature extractor, which also lets its outputs be computed once
    (`models.frozen_prefix`). BatchNorm follows `bn_policy`: `auto` keeps the running statistics of BN layers whose
    parameters are all frozen, `frozen` keeps every BN layer's statistics, `train` updates them all.
    """
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
    model.train()
    for m in model.modules():
        ps = list(m.parameters())
        if ps and m.training and not any(p.requires_grad for p in ps):
            for sub in m.modules():
                if not isinstance(sub, nn.modules.batchnorm._BatchNorm):
                    sub.training = False
    if bn_policy == "train":
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            ps = list(m.parameters(recurse=False))
            if bn_policy == "frozen" or (ps and not any(p.requires_grad for p in ps)):
                m.eval()


def param_groups(module: nn.Module, names: set[str], lr: float, weight_decay: float,
                 scales: dict[str, float] | None = None) -> list[dict]:
    """Optimizer groups over `names`, one per (rate multiplier, decay) pair, each with its final rate in "lr".

    Biases and norm weights (1-d) get no weight decay. The multiplier is folded into "lr" itself rather than left as
    an "lr_scale" key, which only timm's own schedulers read (the pitfall of timm issue #2691); any torch scheduler
    keeps the ratios.
    """
    groups: dict[tuple[float, bool], dict] = {}
    for n, p in module.named_parameters():
        if n not in names:
            continue
        scale = 1.0 if scales is None else scales.get(n, 1.0)
        decay = weight_decay > 0 and p.ndim > 1
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


def _past(deadline: float, sharded: bool) -> bool:
    late = time.perf_counter() > deadline
    return dist.any_across(late) if sharded else late


def _set_epoch(loader, seed: int) -> None:
    sampler = getattr(loader, "batch_sampler", None) or getattr(loader, "sampler", None)
    for s in (sampler, getattr(sampler, "sampler", None)):
        if hasattr(s, "set_epoch"):
            s.set_epoch(seed)


def train_phase(run: PhaseRun, cfg, accelerator, ctx: Context, state: PhaseState | None = None,
                on_epoch: Callable[[EpochRecord, PhaseState], None] | None = None) -> list[EpochRecord]:
    """Train `run.module` for one phase; returns one record per epoch and leaves the best epoch's weights loaded.

    `cfg` is the fit's resolved FitConfig (optimizer, weight decay, warm-up, smoothing, clipping, patience,
    accumulation, channels_last, quiet). `state` resumes a phase from a checkpoint; `on_epoch` receives the state
    after each epoch (with the optimizer's), to save one.
    """
    phase, module, trainable = run.phase, run.module, run.trainable
    state = state or PhaseState()
    set_trainable(module, trainable, phase.bn)
    place(module, accelerator, cfg.channels_last)
    ctx.phase, ctx.module, ctx.trainable = phase, module, trainable
    for h in run.hooks:
        h.start(ctx)
    batch_hooks, loss_hooks, grad_hooks = (overriding(run.hooks, e) for e in ("before_batch", "loss", "after_backward"))
    schedule_hooks, epoch_hooks = overriding(run.hooks, "trainable"), overriding(run.hooks, "after_epoch")
    weight_decay = cfg.weight_decay if phase.weight_decay is None else phase.weight_decay
    optimizer = make_optimizer(cfg.optimizer, param_groups(module, trainable, phase.lr, weight_decay, run.scales))
    steps_per_epoch = max(1, len(run.train) // cfg.grad_accum)
    total = steps_per_epoch * phase.epochs
    scheduler = warmup_cosine(optimizer, total, int(cfg.warmup * total))
    if state.optimizer is not None:
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
    sharded = run.shard and dist.active()
    if sharded:  # every process steps once per global batch: the schedule is not Accelerate's per-process one
        optimizer = accelerator.prepare(optimizer)
        dist.broadcast_module(module)
    else:
        optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
    train_loader, val_loader = run.train, run.val
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    device, channels_last = accelerator.device, cfg.channels_last
    records: list[EpochRecord] = [EpochRecord(**r) for r in state.records]

    for epoch in range(state.epoch + 1, phase.epochs + 1):
        # Every epoch's randomness (shuffling, dropout) derives from (seed, epoch) alone: a resumed run replays
        # exactly the batches an uninterrupted one would.
        torch.manual_seed(run.seed * 10_007 + epoch)
        _set_epoch(train_loader, run.seed * 10_007 + epoch)
        active = trainable
        for h in schedule_hooks:
            active = h.trainable(ctx, epoch, active)
        set_trainable(module, active, phase.bn)
        params = [p for p in module.parameters() if p.requires_grad]
        n_active = sum(p.numel() for p in params)
        start, seen, loss_sum, correct, out_of_time = time.perf_counter(), 0, 0.0, 0, False
        with _progress(cfg.quiet) as bar:
            task = bar.add_task(f"{phase.name} {epoch}/{phase.epochs}", total=len(train_loader), loss=0.0, acc=0.0,
                                rate=0.0)
            for inputs, labels, _ in train_loader:
                if run.deadline is not None and _past(run.deadline, sharded):
                    out_of_time = True
                    break
                weight = 1.0
                if sharded:
                    inputs, labels, weight = dist.local_batch(inputs, labels)
                inputs, labels = to_device(inputs, device, channels_last), labels.to(device)
                for h in batch_hooks:
                    inputs, labels = h.before_batch(inputs, labels)
                with accelerator.accumulate(module), accelerator.autocast():
                    logits = module(inputs).float()
                    loss = loss_fn(logits, labels)
                    for h in loss_hooks:
                        extra = h.loss(logits, inputs, labels)
                        if extra is not None:
                            loss = loss + extra
                    accelerator.backward(loss * weight if sharded else loss)
                    if accelerator.sync_gradients:
                        if sharded:
                            dist.sum_gradients(params)
                        for h in grad_hooks:
                            h.after_backward(ctx)
                        if cfg.grad_clip:
                            accelerator.clip_grad_norm_(params, cfg.grad_clip)
                    optimizer.step()
                    if not sharded or accelerator.sync_gradients:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                n = len(labels)
                seen += n
                loss_sum += loss.item() * n
                correct += int((logits.detach().argmax(1) == labels).sum())
                bar.update(task, advance=1, loss=loss_sum / seen, acc=correct / seen,
                           rate=seen / (time.perf_counter() - start))
        seconds = time.perf_counter() - start
        if sharded:  # the epoch's figures over every process's rows; BatchNorm statistics as process 0's
            loss_sum, correct, seen = dist.sum_across([loss_sum, correct, seen])
            seen, correct = int(seen), int(correct)
            dist.broadcast_module(module, buffers_only=True)
        if seen == 0:  # the budget ran out before this epoch's first step
            ctx.log(f"{phase.name}: time budget spent before epoch {epoch}")
            break
        if not math.isfinite(loss_sum):
            raise XferError(f"Training diverged in phase {phase.name!r} (loss is {loss_sum}). Lower the learning "
                            f"rate (now {phase.lr:g}) or use --precision no.")
        val_acc = accuracy(predict_logits(module, val_loader, accelerator, channels_last), val_loader)
        rec = EpochRecord(phase.name, epoch, loss_sum / max(1, seen), correct / max(1, seen), val_acc,
                          scheduler.get_last_lr()[0], seconds, seen / seconds, n_active)
        records.append(rec)
        ctx.log(f"{phase.name} epoch {epoch}/{phase.epochs}: loss {rec.train_loss:.4f}  train acc "
                f"{rec.train_accuracy:.4f}  val acc {val_acc:.4f}  {seconds:.1f}s  {rec.samples_per_s:.0f} samples/s"
                + (f"  {n_active:,} trainable" if schedule_hooks else ""))
        # A tie goes to the later epoch: it trained longer, down an annealed rate. Keeping the earlier one on a tie
        # threw away the better model (Rotten Tomatoes: both epochs at 83.4% validation, the second 84.6% on test,
        # the first 83.7%). Early stopping still waits for a strict gain.
        state.stale = 0 if val_acc > state.best_accuracy else state.stale + 1
        if val_acc >= state.best_accuracy:
            state.best_accuracy = val_acc
            state.best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        state.epoch, state.records = epoch, [r.__dict__ for r in records]
        state.trainable = sorted(active)
        state.done = epoch == phase.epochs or out_of_time or bool(cfg.patience and state.stale >= cfg.patience)
        if on_epoch:
            state.optimizer, state.scheduler = optimizer.state_dict(), scheduler.state_dict()
            on_epoch(rec, state)
            state.optimizer = state.scheduler = None
        for h in epoch_hooks:
            h.after_epoch(ctx, rec)
        if state.done and epoch < phase.epochs:
            ctx.log(f"{phase.name}: time budget spent" if out_of_time else
                    f"{phase.name}: early stop, no validation gain for {state.stale} epochs")
            break
    if state.best_state is not None:
        module.load_state_dict(state.best_state)
    for p in module.parameters():
        p.requires_grad_(True)
    return records
