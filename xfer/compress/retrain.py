"""The data a run was fitted with, read back from its folder, and a short full fine-tune of a (changed) model on it.

Compression trains in two places: the recovery fine-tune after pruning and the distillation of a student. Both go
through the fitting core (`run_plan` and its hooks), on the run's own splits (same data, same seed, same few-shot
subset, texts rendered with the run's own recipe), so a compressed variant is measured on exactly the test set of
its original.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from torch import nn

from xfer.config import FitConfig, make_config
from xfer.data.task import Task
from xfer.errors import XferError
from xfer.fitting.fit import evaluate
from xfer.fitting.hooks import Hook
from xfer.fitting.prepare import SPLITS, load_fit_task
from xfer.fitting.runner import run_plan
from xfer.fitting.strategies import make_plan
from xfer.runs.folder import RunFolder
from xfer.runs.run import Run


def run_config(run: Run) -> FitConfig:
    """The resolved options the run was fitted with (its config.yaml)."""
    if run.path is None:
        raise XferError("This run has no folder; compression reads the run's options and data from its folder. "
                        "Save it first (fit with save=True) and pass the folder.")
    values = RunFolder(run.path).config()
    if not values.get("data"):
        raise XferError(f"{run.path} does not record the data it was fitted on (config.yaml); it cannot be "
                        f"recovered or distilled. Re-run `xfer fit` with this xfer version.")
    return make_config(**{k: v for k, v in values.items() if k not in ("out", "resume")})


def run_task(run: Run) -> tuple[FitConfig, Task]:
    """The run's options and its task: the same splits and few-shot subset it was trained and tested on."""
    cfg = run_config(run)
    return cfg, load_fit_task(cfg)


def run_datasets(run: Run, task: Task) -> dict:
    """Every split of `task`, preprocessed as `run` reads inputs (texts rendered with the run's recipe)."""
    return {name: run.dataset(getattr(task, name)) for name in SPLITS}


def retrain(model: nn.Module, cfg: FitConfig, datasets: dict, labels, *, epochs: int, lr: float | None = None,
            hooks: tuple[Hook, ...] = (), log: Callable[[str], None] | None = None) -> dict:
    """Full fine-tuning of `model` for `epochs` through the normal loop (best validation epoch kept), then its
    metrics on val and test. `hooks` attach extra behaviour (a distillation loss) at the loop's events."""
    if epochs < 1:
        raise XferError(f"Recovery / distillation needs at least 1 epoch, got {epochs}.")
    rcfg = replace(cfg, strategy="full", epochs=epochs, lr=lr if lr is not None else cfg.lr, baseline=False,
                   time_budget=None, checkpoint=False, resume=False)
    log = log or (lambda msg: None)
    result = run_plan(model, make_plan("full", rcfg), datasets["train"], datasets["val"], rcfg, hooks=hooks, log=log)
    metrics = evaluate(model, datasets, labels, rcfg)
    metrics["history"] = result.history
    metrics["epochs"] = epochs
    return metrics
