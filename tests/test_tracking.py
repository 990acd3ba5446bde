"""Experiment trackers: a tiny real fit logged to TensorBoard and MLflow in local folders, read back."""

from __future__ import annotations

import importlib.util

import pytest

import xfer
from xfer.config import FitConfig
from xfer.errors import XferError
from xfer.fitting.tracking import default_log_dir, mlflow_uri, tracker_names

from helpers import TINY_IMAGE_FIT, run_main


def test_tiny_fit_logs_to_tensorboard_and_mlflow(tmp_path, monkeypatch, image_folder):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    uri = (tmp_path / "mlruns").as_uri()  # file: store (MLflow 3 wants it allowed explicitly)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out = tmp_path / "runs" / "tiny"
    run = xfer.fit(data=str(image_folder), out=str(out), log_with="tensorboard,mlflow",
                   **{**TINY_IMAGE_FIT, "epochs": 2, "baseline": True})
    epochs = len(run.history)

    logs = tmp_path / "runs" / "logs"  # the default: logs/ beside the run folder
    events = EventAccumulator(str(logs / "tiny"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("train/loss", "train/accuracy", "val/accuracy", "lr", "samples_per_s", "phase",
                "final/test_accuracy", "final/test_macro_f1", "final/baseline_test_accuracy", "final/transfer_gain"):
        assert tag in scalars, tag
    val = events.Scalars("val/accuracy")
    assert [e.step for e in val] == list(range(1, epochs + 1))
    assert [e.value for e in val] == pytest.approx([r["val_accuracy"] for r in run.history])
    assert events.Scalars("final/test_accuracy")[0].value == pytest.approx(run.metrics["test"]["accuracy"])
    assert list(logs.glob("tiny/*/hparams.yml"))  # the resolved config, as TensorBoard hyper-parameters

    client = MlflowClient(uri)
    mlrun = client.search_runs([client.get_experiment_by_name("xfer").experiment_id])[0]
    assert mlrun.info.run_name == "tiny" and mlrun.info.status == "FINISHED"
    assert mlrun.data.params["strategy"] == "full" and mlrun.data.params["epochs"] == "2"
    assert mlrun.data.metrics["final/test_accuracy"] == pytest.approx(run.metrics["test"]["accuracy"])
    assert mlrun.data.metrics["final/transfer_gain"] == pytest.approx(run.metrics["transfer_gain"]["gain"])
    history = client.get_metric_history(mlrun.info.run_id, "train/loss")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
        [r["train_loss"] for r in run.history])


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_wandb_not_installed_is_a_clear_error(monkeypatch, capsys, tmp_path):
    with pytest.raises(XferError, match=r"needs the wandb package.*pip install wandb.*WANDB_MODE=offline"):
        tracker_names("tensorboard,wandb")
    code, _, err = run_main(monkeypatch, capsys, "fit", "--data", str(tmp_path / "absent"), "--log-with", "wandb")
    assert code == 2 and "pip install wandb" in err  # before the data is even looked at


def test_log_with_values():
    assert tracker_names(None) == () and tracker_names("none") == ()
    assert tracker_names(" TensorBoard, mlflow,tensorboard") == ("tensorboard", "mlflow")
    with pytest.raises(XferError, match="log_with.*tensorboard, mlflow, wandb.*'tensorbord'"):
        FitConfig(data="x", log_with="tensorbord")
    assert str(default_log_dir("runs/abc")) == "runs/logs" and str(default_log_dir(None)) == "runs/logs"


def test_mlflow_default_store_is_sqlite_in_the_log_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert mlflow_uri(tmp_path) == "http://mlflow.example:5000"
