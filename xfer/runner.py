"""Runs a Plan (strategies.py) on a model: its phases in order, cached features for head-only phases, LoRA wrapping,
WiSE-FT's interpolation at the end, and a checkpoint after every epoch so an interrupted fit resumes exactly.

The loop itself (train.py) knows one phase; this module knows the order of phases and what carries between them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from xfer import runs
from xfer.config import RESUME_FREE
from xfer.data.loaders import TensorBatches, batches
from xfer.errors import XferError
from xfer.features import cache_key, probe_features
from xfer.models import TransferModel, add_lora, has_lora
from xfer.strategies import Plan
from xfer.train import (LoopConfig, PhaseState, choose_interpolation, make_accelerator, seed_everything,
                        train_phase)



@dataclass
class Checkpoint:
    """What `<out>.checkpoint/` holds: the phase reached, the model, and the loop state of the phase in progress."""

    phase: int = 0  # index of the phase in progress (or the next one when `state` is None)
    model: dict | None = None
    state: PhaseState | None = None
    history: list = field(default_factory=list)
    snapshot: dict | None = None  # WiSE-FT's probe-phase weights
    anchors: dict | None = None  # L2-SP's w0
    config: dict = field(default_factory=dict)


def checkpoint_dir(out: Path) -> Path:
    return out.with_name(out.name + ".checkpoint")


def _pack_optimizer(sd: dict) -> tuple[dict, dict]:
    """An optimizer state dict as flat tensors + JSON (no pickle)."""
    tensors, scalars = {}, {}
    for i, st in sd["state"].items():
        for k, v in st.items():
            (tensors if torch.is_tensor(v) else scalars)[f"{i}/{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unpack_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for key, v in [*tensors.items(), *meta["scalars"].items()]:
        i, k = key.split("/", 1)
        state.setdefault(int(i), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(folder: Path, ck: Checkpoint) -> None:
    tensors = {"model": ck.model}
    meta = {"phase": ck.phase, "history": ck.history, "config": ck.config, "state": None}
    if ck.snapshot is not None:
        tensors["snapshot"] = ck.snapshot
    if ck.anchors is not None:
        tensors["anchors"] = ck.anchors
    if ck.state is not None:
        s = ck.state
        meta["state"] = {k: getattr(s, k) for k in ("epoch", "best_accuracy", "stale", "records", "trainable", "done")}
        meta["state"]["scheduler"] = s.scheduler
        if s.best_state is not None:
            tensors["best"] = s.best_state
        if s.optimizer is not None:
            tensors["optimizer"], meta["state"]["optimizer"] = _pack_optimizer(s.optimizer)
    runs.save_tensor_folder(folder, tensors, meta)


def load_checkpoint(folder: Path) -> Checkpoint:
    tensors, meta = runs.load_tensor_folder(folder)
    state = None
    if meta["state"] is not None:
        m = dict(meta["state"])
        opt_meta = m.pop("optimizer", None)
        state = PhaseState(**m, best_state=tensors.get("best"),
                           optimizer=_unpack_optimizer(tensors["optimizer"], opt_meta) if opt_meta else None)
    return Checkpoint(meta["phase"], tensors["model"], state, meta["history"], tensors.get("snapshot"),
                      tensors.get("anchors"), meta["config"])


def check_resumable(ck: Checkpoint, config: dict, folder: Path) -> None:
    changed = sorted(k for k in set(config) | set(ck.config)
                     if k not in RESUME_FREE and config.get(k) != ck.config.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {ck.config.get(k)!r} -> {config.get(k)!r}" for k in changed[:8])
        raise XferError(f"The checkpoint in {folder} was made with other options ({diffs}). Resume with the same "
                        f"options, or pass --overwrite to start over.")


def _min_batches(cfg, phase) -> int:
    """Batches per epoch so the phase makes at least `min_steps` optimizer steps."""
    steps = getattr(cfg, "min_steps", 0) or 0
    return -(-steps * max(1, cfg.grad_accum) // max(1, phase.epochs))


def _cpu_state(module: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def run_plan(model: TransferModel, plan: Plan, data: dict, cfg, feature_id: str | None, task, log,
             ckpt_folder: Path | None = None, resume: Checkpoint | None = None,
             on_epoch: Callable | None = None) -> tuple[list[dict], dict]:
    """Run every phase of a plan; returns the epoch history and extras (WiSE-FT's curve).

    With `ckpt_folder`, a checkpoint is written after every full-network epoch and at the end of every phase;
    `resume` continues from one (phases before it are skipped, the one in progress restarts at its next epoch).
    `on_epoch(step, record)` hears every full-network epoch, `step` counting them across phases (a search's pruner
    reads it, and may raise to stop the fit); head-only epochs on cached features are not reported, since their
    accuracies are not comparable with full-network ones.
    """
    acc = make_accelerator(cfg.precision, cfg.grad_accum, model)
    deadline = time.perf_counter() + cfg.time_budget if getattr(cfg, "time_budget", None) else None
    start_phase = resume.phase if resume else 0
    history: list[dict] = list(resume.history) if resume else []
    snapshot = resume.snapshot if resume else None
    anchors = resume.anchors if resume else None
    config = cfg.to_dict() if hasattr(cfg, "to_dict") else {}

    step = sum(1 for h in history if h["phase"] not in {p.name for p in plan.phases if p.cached_features})

    def report(rec) -> None:
        nonlocal step
        if on_epoch is not None:
            on_epoch(step, rec)
        step += 1

    def save(phase: int, state: PhaseState | None, phase_history: list[dict]) -> None:
        if ckpt_folder is not None:
            save_checkpoint(ckpt_folder, Checkpoint(phase, _cpu_state(model), state, history + phase_history,
                                                    snapshot, anchors, config))

    if resume is not None:
        # Rebuild the structure the checkpoint was saved with, then load it: adapters of finished phases, and of
        # the phase in progress when it was saved mid-phase.
        in_progress = plan.phases[start_phase:start_phase + 1] if resume.state is not None else ()
        for phase in (*plan.phases[:start_phase], *in_progress):
            if phase.lora and not has_lora(model):
                add_lora(model, phase.lora)
        model.load_state_dict(resume.model)

    for i, phase in enumerate(plan.phases):
        if i < start_phase:
            continue
        if phase.lora and not has_lora(model):
            add_lora(model, phase.lora)
        seed_everything(cfg.seed + i)
        loop = LoopConfig(batch_size=cfg.batch_size, optimizer=cfg.optimizer, weight_decay=cfg.weight_decay,
                          warmup=cfg.warmup, label_smoothing=cfg.label_smoothing, grad_clip=cfg.grad_clip,
                          patience=cfg.patience, grad_accum=cfg.grad_accum, channels_last=cfg.channels_last,
                          quiet=cfg.quiet, seed=cfg.seed + i, deadline=deadline)
        state = resume.state if (resume is not None and i == start_phase) else None
        names = phase.trainable(model)
        if phase.cached_features:
            loaders = [batches(data[s], 256, shuffle=False, num_workers=cfg.num_workers) for s in ("train", "val")]
            key = (cache_key(feature_id, [task.train, task.val], data["prep"], cfg.bn_adapt)
                   if feature_id else None)
            f_train, f_val = probe_features(model, *loaders, acc, key, cfg.bn_adapt, log)
            train = batches(TensorBatches(f_train, data["train"].labels), cfg.batch_size, shuffle=True, seed=cfg.seed,
                            min_batches=_min_batches(cfg, phase))
            val = batches(TensorBatches(f_val, data["val"].labels), 1024, shuffle=False)
            # Seconds per epoch: checkpoint only when the phase ends.
            recs = train_phase(model.head, phase, {n[len("head."):] for n in names}, train, val, acc, loop, log)
        else:
            train = batches(data["train"], cfg.batch_size, shuffle=True, seed=cfg.seed + i,
                            num_workers=cfg.num_workers, min_batches=_min_batches(cfg, phase))
            val = batches(data["val"], cfg.batch_size * 2, shuffle=False, num_workers=cfg.num_workers)
            scales = phase.lr_scales(model) if phase.lr_scales else None
            unfreeze = (lambda e, p=phase: p.unfreeze(model, e)) if phase.unfreeze else None
            if phase.penalty is not None and anchors is None:
                anchors = {n: p.detach().cpu().clone() for n, p in model.named_parameters()
                           if n in names and not n.startswith("head.")}
            def after_epoch(rec, st, i=i):
                if ckpt_folder is not None:
                    save(i, st, [])
                report(rec)

            recs = train_phase(model, phase, names, train, val, acc, loop, log, after_epoch, state, scales,
                               unfreeze, anchors)
        history += [r.__dict__ for r in recs]
        if plan.wise_ft and phase.cached_features:
            snapshot = _cpu_state(model)
        save(i + 1, None, [])

    extras: dict = {}
    if plan.wise_ft:
        if snapshot is None:
            raise XferError("wise-ft needs the weights after its linear-probe phase, and none were kept.")
        val = batches(data["val"], cfg.batch_size * 2, shuffle=False, num_workers=cfg.num_workers)
        curve = choose_interpolation(model, {k: v.to(acc.device) for k, v in snapshot.items()},
                                     {k: v.detach().clone() for k, v in model.state_dict().items()}, val, acc,
                                     cfg.channels_last)
        best = max(curve, key=lambda c: (c["val_accuracy"], c["alpha"]))
        extras["wise_ft"] = {"alpha": best["alpha"], "curve": curve}
        log("wise-ft: val accuracy by alpha " + "  ".join(f"{c['alpha']:.1f}:{c['val_accuracy']:.4f}"
                                                           for c in curve) + f"  -> alpha {best['alpha']:.1f}")
    return history, extras
