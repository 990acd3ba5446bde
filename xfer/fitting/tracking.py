"""Experiment trackers (TensorBoard, MLflow, Weights & Biases) through Accelerate's tracker classes, as a Hook.

`fit` adds a `Trackers` hook when `--log-with` names any: the resolved config is logged as hyper-parameters when
the fit starts, every epoch's record at `after_epoch` (one step per epoch, counted across phases), and the final
test / baseline metrics by `finish`. Only the main process logs. TensorBoard and MLflow write into a local folder
(`--log-dir`, default `logs/` beside the run folder), so both work offline.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import torch

from xfer.errors import XferError
from xfer.fitting.hooks import Hook

TRACKERS = ("tensorboard", "mlflow", "wandb")
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
EXPERIMENT = "xfer"  # MLflow experiment and W&B project (MLFLOW_EXPERIMENT_NAME / WANDB_PROJECT override it)


def tracker_names(log_with: str | None) -> tuple[str, ...]:
    """The trackers `--log-with` names ("tensorboard,mlflow"; none or empty: none), each checked to be installed."""
    names = tuple(dict.fromkeys(n.strip().lower() for n in (log_with or "").split(",") if n.strip()))
    if names == ("none",):
        return ()
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise XferError(f"--log-with {log_with!r}: unknown tracker(s) {', '.join(unknown)}; choose from "
                        f"{', '.join(TRACKERS)} (comma-separated), or none.")
    for name in names:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise XferError(f"--log-with {name} needs the {PACKAGES[name]} package, which is not installed: "
                            f"`pip install {PACKAGES[name]}`" + (" (it logs offline only with WANDB_MODE=offline)."
                                                                 if name == "wandb" else "."))
    return names


def default_log_dir(out: str | Path | None) -> Path:
    """`logs/` beside the run folder (runs/logs for runs/<name>), shared by the runs saved there, so TensorBoard
    and the MLflow UI show them side by side; runs/logs when nothing is saved (a search's trials)."""
    return Path(out).parent / "logs" if out else Path("runs") / "logs"


def mlflow_uri(log_dir: Path) -> str:
    """MLFLOW_TRACKING_URI when set, else a SQLite store in the log folder (MLflow 3 refuses a plain folder store
    unless MLFLOW_ALLOW_FILE_STORE=true; `mlflow ui --backend-store-uri` takes this URI)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(log_dir / 'mlflow.db').resolve()}"


class Trackers(Hook):
    """Logs a fit to each named tracker; `finish(metrics)` logs the final metrics and closes them."""

    name = "trackers"  # the step count travels in the checkpoint, so a resumed fit continues its curves

    def __init__(self, names: tuple[str, ...], log_dir: str | Path, run_name: str, config: dict):
        from accelerate.state import PartialState

        self.step, self.trackers = 0, []
        if not names or not PartialState().is_main_process:
            return
        for t in list(_OPEN):  # a fit that stopped early (a pruned search trial) leaves its trackers open
            t.finish()
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            try:
                tracker = self._make(name, run_name)
                tracker.start()
            except XferError:
                raise
            except Exception as e:
                raise XferError(f"--log-with {name}: the tracker could not start in {self.log_dir} "
                                f"({type(e).__name__}: {str(e)[:300]}).") from e
            self.trackers.append(tracker)
        _OPEN.append(self)
        for tracker in self.trackers:
            tracker.store_init_configuration({k: v for k, v in config.items()
                                              if v is None or isinstance(v, (bool, int, float, str))})

    def _make(self, name: str, run_name: str):
        from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

        if name == "tensorboard":
            return TensorBoardTracker(run_name, self.log_dir)
        if name == "mlflow":
            import mlflow

            mlflow.set_tracking_uri(mlflow_uri(self.log_dir))
            return MLflowTracker(EXPERIMENT, (self.log_dir / "mlflow-artifacts").resolve().as_uri(),
                                 run_name=run_name)
        return WandBTracker(os.environ.get("WANDB_PROJECT", EXPERIMENT), name=run_name, dir=str(self.log_dir))

    def log(self, values: dict, step: int) -> None:
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def after_epoch(self, ctx, record) -> None:
        self.step += 1
        self.log({"train/loss": record.train_loss, "train/accuracy": record.train_accuracy,
                  "val/accuracy": record.val_accuracy, "lr": record.lr, "samples_per_s": record.samples_per_s,
                  "epoch": record.epoch, "phase": ctx.index}, self.step)

    def finish(self, metrics: dict | None = None) -> None:
        """Log the final metrics (test accuracy and macro-F1, validation accuracy, the from-scratch baseline and
        the gain of transfer, where the fit measured them) and close the trackers."""
        if metrics:
            final = {"final/val_accuracy": metrics.get("val", {}).get("accuracy"),
                     "final/test_accuracy": metrics.get("test", {}).get("accuracy"),
                     "final/test_macro_f1": metrics.get("test", {}).get("macro_f1"),
                     "final/baseline_test_accuracy": metrics.get("baseline", {}).get("test", {}).get("accuracy"),
                     "final/transfer_gain": metrics.get("transfer_gain", {}).get("gain"),
                     "final/train_seconds": metrics.get("train_seconds")}
            self.log({k: v for k, v in final.items() if isinstance(v, (int, float))}, self.step)
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
        if self in _OPEN:
            _OPEN.remove(self)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"step": torch.tensor(self.step)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.step = int(state["step"])


_OPEN: list[Trackers] = []


def tracking_hooks(cfg, out: Path | None, run_name: str | None = None) -> tuple[Trackers, ...]:
    """The Trackers hook of a fit whose options are `cfg` (resolved), saved to `out`; none without --log-with."""
    names = tracker_names(cfg.log_with)
    if not names:
        return ()
    log_dir = Path(cfg.log_dir) if cfg.log_dir else default_log_dir(out)
    name = run_name or (Path(out).name if out else f"fit-{time.strftime('%Y%m%d-%H%M%S')}")
    return (Trackers(names, log_dir, name, cfg.to_dict()),)
