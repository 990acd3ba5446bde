"""`xfer search`: repeat fine-tuning until the target is reached, as an Optuna study over strategies and
hyper-parameters, on one machine or many.

Every trial is a `fit` of one configuration on the train split, scored on the validation split; the test split is
never built during the search and is evaluated once, for the best configuration, which is saved as a normal run
(`<out>/best`). Trials report validation accuracy after every full-network epoch, so a pruner (median or
Hyperband) stops hopeless ones early; the whole search stops as soon as a trial reaches `--target`, or at the
`--trials` / `--timeout` budget. Workers share nothing but the study's storage (SQLite in the output folder by
default, any SQLAlchemy URL such as PostgreSQL for several machines). With a heartbeat, a worker that dies
mid-trial leaves a trial that the next worker marks failed and re-queues with the same parameters.
"""

from __future__ import annotations

import csv
import io
import os
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Callable

from xfer.config import RESUME_FREE, FitConfig
from xfer.errors import XferError
from xfer.fitting.hooks import Context, Hook
from xfer.runs import RunFolder, atomic_write, read_json, write_json

# Per-modality default search space. A value is a list (categorical), a dict with low/high (float; "log": true for a
# log scale, "int": true for integers), or a fixed value; "when" limits a parameter to some strategies.
SPACES: dict[str, dict] = {
    "image": {
        "strategy": ["lp-ft", "full", "layer-decay", "l2-sp"],
        "lr": {"low": 1e-4, "high": 3e-3, "log": True},
        "epochs": {"low": 2, "high": 6, "int": True},
        "weight_decay": {"low": 1e-5, "high": 0.1, "log": True},
        "layer_decay": {"low": 0.6, "high": 0.95, "when": ["layer-decay"]},
        "l2sp_alpha": {"low": 1e-4, "high": 0.1, "log": True, "when": ["l2-sp"]},
        "label_smoothing": {"low": 0.0, "high": 0.2},
        "batch_size": [32, 64],
        "image_size": "auto",  # the data's default side and that side + 32 (see _image_sizes)
    },
    "text": {
        "strategy": ["lp-ft", "full", "layer-decay", "lora"],
        "lr": {"low": 1e-5, "high": 3e-4, "log": True},
        "epochs": {"low": 1, "high": 3, "int": True},
        "weight_decay": {"low": 1e-5, "high": 0.1, "log": True},
        "layer_decay": {"low": 0.6, "high": 0.95, "when": ["layer-decay"]},
        "peft_lr": {"low": 3e-4, "high": 3e-3, "log": True, "when": ["lora"]},
        "label_smoothing": {"low": 0.0, "high": 0.2},
        "batch_size": [16, 32],
        "max_length": [64, 128],
    },
}
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
GRID_POINTS = 3  # values per numeric range when the sampler is a grid


def load_space(modality: str, override: dict | None) -> dict:
    """The modality's default space with the user's entries replacing (or adding) parameters."""
    from xfer.config import FIELDS

    space = dict(SPACES[modality])
    space.update(override or {})
    unknown = sorted(set(space) - FIELDS)
    if unknown:
        raise XferError(f"Search space names unknown options: {', '.join(unknown)}. Use fit option names.")
    return space


def _image_sizes(task, source) -> list[int]:
    from xfer.data.loaders import image_prep

    base = image_prep(source.data_config, task.channels, task.train.items, None).size
    return [base, base + 32]


def _active(spec, params: dict) -> bool:
    return not (isinstance(spec, dict) and "when" in spec and params.get("strategy") not in spec["when"])


def suggest(trial, space: dict) -> dict:
    """Sample one configuration from `space` (conditional entries only for their strategies)."""
    params: dict = {}
    for name in sorted(space, key=lambda n: n != "strategy"):  # the strategy first: others may depend on it
        spec = space[name]
        if not _active(spec, params):
            continue
        if isinstance(spec, list):
            params[name] = trial.suggest_categorical(name, spec)
        elif isinstance(spec, dict):
            if spec.get("int"):
                params[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=spec.get("log", False))
            else:
                params[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]),
                                                   log=spec.get("log", False))
        else:
            params[name] = spec
    return params


def grid_of(space: dict) -> dict[str, list]:
    """The space as a grid: categoricals as they are, each range at GRID_POINTS evenly spaced (log) values."""
    import numpy as np

    grid = {}
    for name, spec in space.items():
        if isinstance(spec, list):
            grid[name] = spec
        elif isinstance(spec, dict):
            lo, hi = float(spec["low"]), float(spec["high"])
            pts = (np.geomspace(lo, hi, GRID_POINTS) if spec.get("log") else np.linspace(lo, hi, GRID_POINTS))
            grid[name] = sorted({int(round(p)) for p in pts}) if spec.get("int") else [float(p) for p in pts]
    return grid


def make_storage(url: str, heartbeat: int):
    """An RDB storage with a heartbeat: a trial whose worker stops beating for 2 intervals is failed and re-queued
    once with the same parameters (Optuna's RetryFailedTrialCallback)."""
    import optuna
    from optuna.storages import RDBStorage, RetryFailedTrialCallback

    kwargs = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    try:
        return RDBStorage(url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                          failed_trial_callback=RetryFailedTrialCallback(max_retry=1), **kwargs)
    except (optuna.exceptions.StorageInternalError, ImportError, Exception) as e:  # driver missing, unreachable
        raise XferError(f"Cannot open the study storage {_redact(url)}: {type(e).__name__}: {str(e)[:300]}. Check the "
                        f"URL, that the server is up, and its driver (PostgreSQL: pip install psycopg2-binary).") from e


def _redact(url: str) -> str:
    import re

    return re.sub(r"//([^:/@]+):[^@]+@", r"//\1:***@", url)


def _study_settings(cfg: FitConfig, space: dict, target, sampler: str, pruner: str) -> dict:
    return {"config": {k: v for k, v in cfg.to_dict().items() if k not in RESUME_FREE}, "space": space,
            "target": target, "sampler": sampler, "pruner": pruner}


def open_study(name: str, storage, settings: dict | None, resume: bool, seed: int = 0):
    """Create the study, join it (another worker made it with the same settings), or resume it (settings read
    back from the study); a study with other settings is never joined silently."""
    import optuna

    existing = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if name in existing:
        study = optuna.load_study(study_name=name, storage=storage)
        saved = study.user_attrs.get("xfer")
        if saved is None:
            raise XferError(f"Study {name!r} exists but was not made by xfer search. Choose another --study.")
        if settings is not None and not resume and _comparable(saved) != _comparable(settings):
            raise XferError(f"Study {name!r} already exists with other settings. Use --resume to continue it as it "
                            f"is, or choose another --study.")
        settings = saved
    elif resume:
        raise XferError(f"Nothing to resume: no study {name!r} in this storage. Start it without --resume.")
    elif settings is None:
        raise XferError(f"No study {name!r} in this storage.")
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                                sampler=_sampler(settings, seed), pruner=_pruner(settings))
    if study.user_attrs.get("xfer") is None:
        study.set_user_attr("xfer", settings)
    return study, settings


def _comparable(settings: dict) -> dict:
    import json

    return json.loads(json.dumps(settings))  # tuples vs lists, as stored


def _sampler(settings: dict, seed: int):
    import optuna

    kind = settings["sampler"]
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    space = {k: v for k, v in settings["space"].items() if not isinstance(v, dict) or "when" not in v}
    return optuna.samplers.GridSampler(grid_of(space), seed=seed)


def _pruner(settings: dict):
    import optuna

    kind = settings["pruner"]
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.NopPruner()


class Pruning(Hook):
    """Reports validation accuracy after every full-network epoch to the trial (head-only epochs on cached features
    are not comparable with them) and stops the fit, by raising, when the pruner says so or another worker has
    reached the target."""

    def __init__(self, trial, target_reached: Callable[[], bool]):
        self.trial, self.target_reached, self.step = trial, target_reached, 0

    def after_epoch(self, ctx: Context, record) -> None:
        import optuna

        if ctx.phase.cached_features:
            return
        self.trial.report(record.val_accuracy, self.step)
        self.step += 1
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {self.step} (val {record.val_accuracy:.4f})")
        if self.target_reached():
            raise optuna.TrialPruned("target reached by another trial")


def _reached(study, target: float | None) -> bool:
    if target is None:
        return False
    try:
        return study.best_value >= target
    except ValueError:  # no finished trial yet
        return False


def search(cfg: FitConfig, *, study_name: str, out: Path, storage_url: str | None = None, target: float | None = None,
           trials: int | None = None, timeout: float | None = None, space: dict | None = None, sampler: str = "tpe",
           pruner: str = "median", heartbeat: int = 30, resume: bool = False,
           log: Callable[[str], None] = print) -> dict:
    """Run (or join, or resume) a study until target, trial or time budget; then fit the best configuration once
    on train, evaluate it once on test, and save it as `<out>/best`."""
    import optuna

    from xfer.fitting.fit import fit
    from xfer.fitting.prepare import fit_source, input_modality, load_fit_task
    from xfer.sources import load_source

    if sampler not in SAMPLERS or pruner not in PRUNERS:
        raise XferError(f"--sampler must be one of {SAMPLERS} and --pruner one of {PRUNERS}.")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat, plots
    out.mkdir(parents=True, exist_ok=True)
    storage_url = storage_url or f"sqlite:///{(out / 'study.db').resolve()}"
    storage = make_storage(storage_url, heartbeat)
    settings = None
    if not resume:
        if not cfg.data:
            raise XferError("No data given: pass --data (or --resume to continue a stored study).")
        settings = _study_settings(cfg, space or {}, target, sampler, pruner)
    study, settings = open_study(study_name, storage, settings, resume, cfg.seed)
    cfg = FitConfig(**{**settings["config"], "quiet": True, "checkpoint": False, "overwrite": False})
    target = settings["target"]

    # Loaded once per worker and shared by every trial: the task, the source's verified weights, and (on disk)
    # frozen-backbone features, keyed by preprocessing.
    task = load_fit_task(cfg)
    source = load_source(fit_source(cfg.resolved(task.modality), task))
    modality = input_modality(cfg, source.spec, task)  # "image" for text rendered for an image source
    full_space = load_space(modality, settings["space"])
    if full_space.get("image_size") == "auto":
        full_space["image_size"] = (None if modality == "text" else [cfg.render_size] if task.modality == "text"
                                    else _image_sizes(task, source))
    if full_space.get("image_size") is None:
        full_space.pop("image_size", None)
    if settings["sampler"] == "grid":
        # A grid has no conditional parameters: those of one strategy keep their defaults.
        full_space = {k: v for k, v in full_space.items() if not (isinstance(v, dict) and "when" in v)}
        study.sampler = optuna.samplers.GridSampler(grid_of(full_space), seed=cfg.seed)
    log(f"study {study_name!r} in {_redact(storage_url)}: {len(study.trials)} trials so far; "
        f"target {target if target is not None else '-'}; {task.describe()}")

    def objective(trial) -> float:
        if _reached(study, target):
            raise optuna.TrialPruned("target already reached by another trial")
        trial.set_user_attr("worker", os.getpid())
        params = suggest(trial, full_space)
        trial_cfg = replace(cfg, **params)
        start = time.perf_counter()
        run = fit(trial_cfg, task=task, loaded_source=source, evaluate_test=False, save=False,
                  hooks=(Pruning(trial, lambda: _reached(study, target)),))
        trial.set_user_attr("train_seconds", round(time.perf_counter() - start, 2))
        value = run.metrics["val"]["accuracy"]
        log(f"trial {trial.number}: val {value:.4f}  {params}")
        return value

    def after_trial(study, trial) -> None:
        if trial.state == optuna.trial.TrialState.PRUNED:
            log(f"trial {trial.number}: pruned")
        write_trials(study, out / "trials.csv")
        if _reached(study, target):
            log(f"target {target} reached by trial {study.best_trial.number} (val {study.best_value:.4f})")
            study.stop()

    callbacks = [after_trial]
    if trials:
        callbacks.append(optuna.study.MaxTrialsCallback(trials, states=(optuna.trial.TrialState.COMPLETE,
                                                                         optuna.trial.TrialState.PRUNED)))
    start = time.time()
    if not _reached(study, target) and not (trials and _finished(study) >= trials):
        study.optimize(objective, timeout=timeout, callbacks=callbacks, catch=(XferError,), gc_after_trial=True)
    write_trials(study, out / "trials.csv")
    result = summarise(study, target)
    result["worker_wall_seconds"] = round(time.time() - start, 1)
    if result["best"] is None:
        raise XferError(f"No trial of study {study_name!r} finished; see {out / 'trials.csv'} for their states.")
    best_dir = out / "best"
    result["best_run"] = str(best_dir)
    previous = read_json(out, "search.json") if (out / "search.json").exists() else {}
    same_best = (previous.get("best") or {}).get("number") == result["best"]["number"]
    if not (best_dir.exists() and same_best):
        best_cfg = replace(cfg, **result["best"]["params"], out=str(best_dir), quiet=cfg.quiet,
                           overwrite=best_dir.exists())
        log(f"best configuration (trial {result['best']['number']}, val {result['best']['value']:.4f}): "
            f"training it once more and evaluating it on the test split -> {best_dir}")
        try:
            run = fit(best_cfg, task=task, loaded_source=source)
            result["best_test_accuracy"] = run.metrics["test"]["accuracy"]
        except XferError as e:
            if not best_dir.exists():  # another worker saved it meanwhile: fine
                raise
            log(f"note: {e}")
    else:
        log(f"best configuration unchanged (trial {result['best']['number']}): keeping {best_dir}")
    if "best_test_accuracy" not in result and RunFolder(best_dir).exists():
        result["best_test_accuracy"] = RunFolder(best_dir).headline().get("test.accuracy")
    plots(study, out)
    write_json(out / "search.json", result)
    return result


def _finished(study) -> int:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return sum(t.state in states for t in study.trials)


def summarise(study, target: float | None) -> dict:
    """Counts by state, the best trial, and when (trials, seconds since the study's first trial) the target was
    first reached."""
    import optuna

    trials = study.trials
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(done, key=lambda t: t.value) if done else None
    first_start = min((t.datetime_start for t in trials if t.datetime_start), default=None)
    reached = None
    if target is not None:
        hits = sorted((t for t in done if t.value >= target), key=lambda t: t.datetime_complete)
        if hits:
            h = hits[0]
            reached = {"trial": h.number, "value": h.value,
                       "trials_finished_by_then": sum(1 for t in trials if t.datetime_complete
                                                      and t.datetime_complete <= h.datetime_complete),
                       "seconds": (h.datetime_complete - first_start).total_seconds()}
    return {"study": study.study_name, "target": target, "states": counts, "trials": len(trials),
            "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params},
            "target_reached": reached}


def write_trials(study, path: Path) -> None:
    """trials.csv: one row per trial: number, state, value, seconds, every parameter."""
    trials = study.trials
    names = sorted({p for t in trials for p in t.params})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["number", "state", "value", "seconds", "train_seconds", "worker"] + names)
    for t in trials:
        secs = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start \
            else ""
        w.writerow([t.number, t.state.name, "" if t.value is None else f"{t.value:.6f}",
                    f"{secs:.1f}" if secs != "" else "", t.user_attrs.get("train_seconds", ""),
                    t.user_attrs.get("worker", "")] + [t.params.get(n, "") for n in names])
    atomic_write(path, buf.getvalue())


def plots(study, out: Path) -> list[Path]:
    """history.png (optimisation history) and importances.png (fANOVA parameter importances) when computable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vm

    written = []
    for name, draw in (("history.png", vm.plot_optimization_history), ("importances.png", vm.plot_param_importances)):
        try:
            ax = draw(study)
            fig = ax.figure if hasattr(ax, "figure") else plt.gcf()
            fig.set_size_inches(8, 4.5)
            fig.tight_layout()
            tmp = out / f".{name}.tmp.png"
            fig.savefig(tmp, dpi=110)
            plt.close(fig)
            os.replace(tmp, out / name)
            written.append(out / name)
        except Exception:  # too few finished trials, or no variation, for this plot yet
            plt.close("all")
    return written


def show(study_name: str, storage_url: str, out: Path | None = None) -> dict:
    """The state of a (possibly running) study: summary, trials, plots when `out` is given."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = make_storage(storage_url, 30)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if study_name not in names:
        raise XferError(f"No study {study_name!r} in {_redact(storage_url)}; studies there: "
                        f"{', '.join(sorted(names)) or 'none'}.")
    study = optuna.load_study(study_name=study_name, storage=storage)
    result = summarise(study, (study.user_attrs.get("xfer") or {}).get("target"))
    result["rows"] = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                       "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
                       if t.datetime_complete and t.datetime_start else None} for t in study.trials]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_trials(study, out / "trials.csv")
        plots(study, out)
    return result


def format_params(params: dict) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if v and (abs(v) < 1e-2 or abs(v) >= 1e3) else f"{v:.3f}".rstrip("0").rstrip(".")
        return str(v)

    return " ".join(f"{k}={fmt(v)}" for k, v in params.items())
