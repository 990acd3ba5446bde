"""Runs a Plan (strategies.py) on a model: resolves each phase once (trainable names, rate scales, loaders, cached
features for head-only phases), hands it to the loop (loop.py), calls the plan's hooks around it, and writes a
checkpoint after every epoch so an interrupted fit resumes exactly.

The loop knows one phase; this module knows the order of phases and what carries between them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from xfer.config import RESUME_FREE, FitConfig
from xfer.data.loaders import HiddenBatches, TensorBatches, batches
from xfer.errors import XferError
from xfer.fitting import distributed as dist
from xfer.fitting.device import cpu_state, make_accelerator, seed_everything
from xfer.fitting.features import frozen_layer_outputs, probe_features
from xfer.fitting.hooks import Context, Hook, overriding
from xfer.fitting.loop import PhaseRun, PhaseState, train_phase
from xfer.fitting.strategies import Plan
from xfer.models import TransferModel, frozen_prefix
from xfer.runs.folder import load_tensor_folder, save_tensor_folder


@dataclass
class Checkpoint:
    """What `<out>.checkpoint/` holds: the phase reached, the model, and the loop state of the phase in progress."""

    phase: int = 0  # index of the phase in progress (or the next one when `state` is None)
    model: dict | None = None
    state: PhaseState | None = None
    history: list = field(default_factory=list)
    hooks: dict[str, dict] = field(default_factory=dict)  # state of hooks that keep tensors (L2-SP's w0, WiSE-FT's)
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
    tensors = {"model": ck.model, **{f"hook-{name}": state for name, state in ck.hooks.items()}}
    meta = {"phase": ck.phase, "history": ck.history, "config": ck.config, "state": None}
    if ck.state is not None:
        s = ck.state
        meta["state"] = {k: getattr(s, k) for k in ("epoch", "best_accuracy", "stale", "records", "trainable", "done")}
        meta["state"]["scheduler"] = s.scheduler
        if s.best_state is not None:
            tensors["best"] = s.best_state
        if s.optimizer is not None:
            tensors["optimizer"], meta["state"]["optimizer"] = _pack_optimizer(s.optimizer)
    save_tensor_folder(folder, tensors, meta)


def load_checkpoint(folder: Path) -> Checkpoint:
    tensors, meta = load_tensor_folder(folder)
    state = None
    if meta["state"] is not None:
        m = dict(meta["state"])
        opt_meta = m.pop("optimizer", None)
        state = PhaseState(**m, best_state=tensors.get("best"),
                           optimizer=_unpack_optimizer(tensors["optimizer"], opt_meta) if opt_meta else None)
    hooks = {k[len("hook-"):]: v for k, v in tensors.items() if k.startswith("hook-")}
    return Checkpoint(meta["phase"], tensors["model"], state, meta["history"], hooks, meta["config"])


def check_resumable(ck: Checkpoint, config: dict, folder: Path) -> None:
    changed = sorted(k for k in set(config) | set(ck.config)
                     if k not in RESUME_FREE and config.get(k) != ck.config.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {ck.config.get(k)!r} -> {config.get(k)!r}" for k in changed[:8])
        raise XferError(f"The checkpoint in {folder} was made with other options ({diffs}). Resume with the same "
                        f"options, or pass --overwrite to start over.")


def _min_batches(cfg: FitConfig, epochs: int) -> int:
    """Batches per epoch so the phase makes at least `min_steps` optimizer steps."""
    return -(-cfg.min_steps * max(1, cfg.grad_accum) // max(1, epochs))


@dataclass
class PlanResult:
    history: list[dict]  # one record per epoch of every phase
    extras: dict  # what after_plan hooks returned (WiSE-FT's curve)
    trainable_params: int  # parameters that trained in some phase (LoRA: adapters + head; bitfit: biases + head)


def _cacheable_layers(model: TransferModel, names: frozenset[str], hooks, cfg: FitConfig) -> int:
    """Lower encoder layers whose outputs a phase may compute once: frozen, deterministic, and no hook needs the
    raw batch (a batch transform or a loss term such as distillation's teacher reads the token ids)."""
    if not cfg.cache_frozen_layers or overriding(hooks, "before_batch") or overriding(hooks, "loss"):
        return 0
    return frozen_prefix(model, names)


def _frozen_outputs(model, datasets, acc, start: int, cfg: FitConfig, log) -> tuple[HiddenBatches, HiddenBatches]:
    t0 = time.perf_counter()
    out = tuple(HiddenBatches(frozen_layer_outputs(model, batches(d, cfg.batch_size * 4, shuffle=False), acc, start),
                              d.labels, start) for d in datasets)
    log(f"frozen layers: outputs of the first {start} encoder layers computed once in {time.perf_counter() - t0:.1f}s")
    return out


def run_plan(model: TransferModel, plan: Plan, train_set, val_set, cfg: FitConfig, *, feature_key: str | None = None,
             log: Callable[[str], None] = print, checkpoint: Path | None = None, resume: Checkpoint | None = None,
             hooks: tuple[Hook, ...] = ()) -> PlanResult:
    """Run every phase of a plan on the datasets `train_set` and `val_set`.

    `feature_key` names the on-disk cache of frozen-backbone features for head-only phases. With `checkpoint`, a
    checkpoint is written after every full-network epoch and at the end of every phase; `resume` continues from one
    (phases before it are skipped, the one in progress restarts at its next epoch). `hooks` join the plan's own
    (a search's pruner, say) for every phase.
    """
    acc = make_accelerator(cfg.precision, cfg.grad_accum, model)
    deadline = time.perf_counter() + cfg.time_budget if cfg.time_budget else None
    start_phase = resume.phase if resume else 0
    history: list[dict] = list(resume.history) if resume else []
    plan_hooks = (*plan.hooks, *hooks)
    every_hook = (*plan_hooks, *(h for p in plan.phases for h in p.hooks))
    stateful = {h.name: h for h in every_hook if h.name}
    config = cfg.to_dict()
    full_val = batches(val_set, cfg.batch_size * 2, shuffle=False, num_workers=cfg.num_workers)
    ctx = Context(model, acc, full_val, cfg.channels_last, log)
    trained: set[str] = set()
    frozen_outputs: dict[int, tuple[HiddenBatches, HiddenBatches]] = {}

    def lower_layers(start: int) -> tuple[HiddenBatches, HiddenBatches]:
        """Train and validation outputs of the first `start` encoder layers, computed once per fit."""
        if start not in frozen_outputs:
            frozen_outputs[start] = _frozen_outputs(model, (train_set, val_set), acc, start, cfg, log)
        return frozen_outputs[start]

    def save(phase: int, state: PhaseState | None) -> None:
        if checkpoint is not None and dist.is_main():  # every process holds the same state; one writes it
            states = {name: s for name, h in stateful.items() if (s := h.state_dict()) is not None}
            save_checkpoint(checkpoint, Checkpoint(phase, cpu_state(model), state, history, states, config))

    if resume is not None:
        # Rebuild the structure the checkpoint was saved with, then load it: adapters of finished phases, and of
        # the phase in progress when it was saved mid-phase.
        in_progress = plan.phases[start_phase:start_phase + 1] if resume.state is not None else ()
        for phase in (*plan.phases[:start_phase], *in_progress):
            for h in (*plan_hooks, *phase.hooks):
                h.before_phase(model, phase)
        model.load_state_dict(resume.model)
        for name, state in resume.hooks.items():
            if name in stateful:
                stateful[name].load_state_dict(state)

    for i, phase in enumerate(plan.phases):
        phase_hooks = (*plan_hooks, *phase.hooks)
        if i < start_phase:  # done before the checkpoint; its structure was rebuilt above
            trained |= phase.trainable(model)
            continue
        for h in phase_hooks:
            h.before_phase(model, phase)
        names = frozenset(phase.trainable(model))
        trained |= names
        seed_everything(cfg.seed + i)
        state = resume.state if (resume is not None and i == start_phase) else None
        ctx.index = i
        min_batches = _min_batches(cfg, phase.epochs)
        if phase.cached_features:
            sources = (train_set, val_set)
            later = [_cacheable_layers(model, frozenset(p.trainable(model)), (*plan_hooks, *p.hooks), cfg)
                     for p in plan.phases[i + 1:] if not p.cached_features]
            if later and later[0]:  # a later phase needs the lower layers' outputs: the probe's features start there
                sources = lower_layers(later[0])
            loaders = [batches(d, 256, shuffle=False, num_workers=cfg.num_workers) for d in sources]
            f_train, f_val = probe_features(model, *loaders, acc, feature_key, cfg.bn_adapt, log)
            run = PhaseRun(phase, model.head, frozenset(n[len("head."):] for n in names),
                           batches(TensorBatches(f_train, train_set.labels), cfg.batch_size, shuffle=True,
                                   seed=cfg.seed, min_batches=min_batches),
                           batches(TensorBatches(f_val, val_set.labels), 1024, shuffle=False),
                           cfg.seed + i, hooks=phase_hooks, deadline=deadline, shard=False)
            on_epoch = None  # seconds per epoch: checkpoint only when the phase ends
        else:
            start = _cacheable_layers(model, names, phase_hooks, cfg)
            if start:  # the frozen lower layers run once; every epoch trains the layers above on their outputs
                phase_train, phase_val = lower_layers(start)
                val = batches(phase_val, cfg.batch_size * 2, shuffle=False)
            else:
                phase_train, val = train_set, full_val
            run = PhaseRun(phase, model, names,
                           batches(phase_train, cfg.batch_size, shuffle=True, seed=cfg.seed + i,
                                   num_workers=cfg.num_workers, min_batches=min_batches),
                           val, cfg.seed + i, phase.lr_scales(model) if phase.lr_scales else None,
                           phase_hooks, deadline)
            on_epoch = (lambda rec, st, i=i: save(i, st)) if checkpoint is not None else None
        records = train_phase(run, cfg, acc, ctx, state, on_epoch)
        history += [r.__dict__ for r in records]
        ctx.module, ctx.trainable = model, names
        for h in phase_hooks:
            h.after_phase(ctx)
        save(i + 1, None)

    # Counted before after_plan hooks run: merging LoRA adapters removes the parameters that trained.
    n_trained = sum(p.numel() for n, p in model.named_parameters() if n in trained)
    ctx.phase, ctx.index, ctx.module = None, -1, model
    extras: dict = {}
    for h in every_hook:
        extras.update(h.after_plan(ctx))
    return PlanResult(history, extras, n_trained)
