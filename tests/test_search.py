"""`xfer search`: stops at the target, prunes for real, never looks at the test split during the search, resumes
without repeating trials; with PostgreSQL, two workers share a study and survive one of them being killed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from PIL import Image

import xfer.fitting.fit
import xfer.fitting.prepare
import xfer.tools.search
from xfer.config import FitConfig
from xfer.tools.search import search, show

# Cheap trials on the 24-image folder: a fixed everything but the learning rate.
SPACE = {"strategy": "full", "epochs": 2, "lr": {"low": 1e-4, "high": 3e-3, "log": True}, "weight_decay": 0.01,
         "label_smoothing": 0.0, "batch_size": 8, "image_size": 32}


def _cfg(data, **kw):
    return FitConfig(data=str(data), source="mobilenet_v2", min_steps=0, quiet=True, **kw)


def test_search_stops_when_a_trial_reaches_the_target(image_folder, tmp_path):
    first = search(_cfg(image_folder), study_name="probe", out=tmp_path / "a", trials=1, space=SPACE,
                   pruner="none", log=lambda m: None)
    v = first["best"]["value"]
    result = search(_cfg(image_folder), study_name="s", out=tmp_path / "b", trials=10, target=v - 1e-9, space=SPACE,
                    pruner="none", log=lambda m: None)
    assert result["states"] == {"COMPLETE": 1}
    assert result["target_reached"]["trial"] == 0 and result["target_reached"]["trials_finished_by_then"] == 1
    assert (tmp_path / "b" / "best" / "metrics.json").exists()
    rows = (tmp_path / "b" / "trials.csv").read_text().splitlines()
    assert rows[0].startswith("number,state,value") and len(rows) == 2


def test_a_pruned_trial_stops_training_early(image_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(xfer.tools.search, "_pruner", lambda settings: optuna.pruners.ThresholdPruner(lower=1.01))
    space = {**SPACE, "epochs": 4}
    with pytest.raises(Exception, match="No trial"):  # every trial is pruned: no configuration to keep
        search(_cfg(image_folder), study_name="p", out=tmp_path, trials=2, space=space, log=lambda m: None)
    study = optuna.load_study(study_name="p", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 2
    # One validation report each, out of 4 epochs: training stopped after the first epoch.
    assert all(list(t.intermediate_values) == [0] for t in study.trials)
    assert all(t.duration.total_seconds() < 60 for t in study.trials)


def _folder_with_test(root: Path) -> Path:
    rng = np.random.default_rng(1)
    for split, n in (("train", 10), ("val", 4), ("test", 5)):
        for label, colour in (("red", 0), ("blue", 2)):
            d = root / split / label
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 60, (24, 24, 3), dtype=np.uint8)
                arr[..., colour] += 180
                Image.fromarray(arr).save(d / f"{i}.png")
    return root


def test_the_test_split_is_read_once_for_the_best_configuration(tmp_path, monkeypatch):
    data = _folder_with_test(tmp_path / "data")  # 20 train, 8 val, 10 test images
    built = []
    real = xfer.fitting.prepare.ImageBatches

    def spy(split, prep):
        built.append(len(split))
        return real(split, prep)

    evaluated = []
    real_logits = xfer.fitting.fit.split_logits

    def logits_spy(model, datasets, cfg, splits=("val", "test")):
        evaluated.append(tuple(splits))
        return real_logits(model, datasets, cfg, splits)

    monkeypatch.setattr(xfer.fitting.prepare, "ImageBatches", spy)
    monkeypatch.setattr(xfer.fitting.fit, "split_logits", logits_spy)
    search(_cfg(data), study_name="t", out=tmp_path / "out", trials=3, space=SPACE, pruner="none",
           log=lambda m: None)
    assert built.count(20) == 4 and built.count(10) == 1  # 3 trials + the best; the test split once
    assert evaluated == [("val",)] * 3 + [("val", "test")]


def test_resume_continues_without_repeating_finished_trials(image_folder, tmp_path):
    out = tmp_path / "r"
    search(_cfg(image_folder), study_name="r", out=out, trials=2, space=SPACE, pruner="none", log=lambda m: None)
    storage = f"sqlite:///{out / 'study.db'}"
    before = {t.number: (t.params, t.value) for t in optuna.load_study(study_name="r", storage=storage).trials}
    result = search(FitConfig(), study_name="r", out=out, trials=4, resume=True, log=lambda m: None)
    after = optuna.load_study(study_name="r", storage=storage).trials
    assert [t.number for t in after] == [0, 1, 2, 3]
    assert {n: (t.params, t.value) for n, t in enumerate(after) if n < 2} == before
    assert result["states"] == {"COMPLETE": 4}
    shown = show("r", storage)
    assert len(shown["rows"]) == 4 and shown["best"]["value"] == result["best"]["value"]
    with pytest.raises(Exception, match="other settings"):
        search(_cfg(image_folder, lr=0.5), study_name="r", out=out, trials=4, space={**SPACE, "lr": 0.5},
               log=lambda m: None)


@pytest.mark.skipif(not os.environ.get("XFER_TEST_POSTGRES_URL"),
                    reason="needs a PostgreSQL server: set XFER_TEST_POSTGRES_URL (.ci/run starts one)")
def test_two_workers_share_a_postgres_study_and_survive_a_killed_worker(image_folder, tmp_path):
    url = os.environ["XFER_TEST_POSTGRES_URL"]
    study_name = f"xfer-test-{os.getpid()}-{int(time.time())}"
    space_file = tmp_path / "space.yaml"
    # Trials of a few seconds each (min_steps repeats the tiny set), so the kill lands mid-trial.
    space_file.write_text(yaml.safe_dump({**SPACE, "epochs": 3}))
    cmd = [sys.executable, "-m", "xfer.cli", "search", "--data", str(image_folder), "--source", "mobilenet_v2",
           "--storage", url, "--study", study_name, "--trials", "6", "--heartbeat", "1", "--pruner", "none",
           "--space", str(space_file), "--min-steps", "40", "--quiet"]
    # One thread each: two workers on a small machine must not oversubscribe its cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    workers = [subprocess.Popen(cmd + ["--out", str(tmp_path / f"w{i}")], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env) for i in range(2)]
    try:
        _kill_one_and_check(workers, storage_url=url, study_name=study_name)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()


def _kill_one_and_check(workers, storage_url, study_name):
    storage = optuna.storages.RDBStorage(storage_url)
    deadline = time.time() + 240
    victim = None
    while time.time() < deadline and victim is None:  # wait until worker 0 is inside a trial, then kill it
        try:
            trials = optuna.load_study(study_name=study_name, storage=storage).trials
        except KeyError:  # the study is not created yet
            trials = []
        if any(t.state == optuna.trial.TrialState.RUNNING and t.user_attrs.get("worker") == workers[0].pid
               for t in trials):
            time.sleep(1.0)
            victim = workers[0].pid
            os.kill(victim, signal.SIGKILL)
        time.sleep(0.3)
    assert victim is not None, "worker 0 never started a trial"
    out, _ = workers[1].communicate(timeout=400)
    assert workers[1].returncode == 0, out.decode(errors="replace")[-2000:]
    workers[0].wait()
    study = optuna.load_study(study_name=study_name, storage=storage)
    states = [t.state for t in study.trials]
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert states.count(optuna.trial.TrialState.COMPLETE) >= 6
    assert len(failed) == 1, states
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert retried and retried[0].params == failed[0].params
    assert retried[0].state == optuna.trial.TrialState.COMPLETE
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in study.trials)


def test_grid_search_keeps_conditional_parameters_at_their_defaults(image_folder, tmp_path):
    space = {**SPACE, "strategy": ["full", "layer-decay"],
             "layer_decay": {"low": 0.5, "high": 0.9, "when": ["layer-decay"]},
             "lr": [1e-3]}
    result = search(_cfg(image_folder), study_name="g", out=tmp_path, trials=2, space=space, sampler="grid",
                    pruner="none", log=lambda m: None)
    study = optuna.load_study(study_name="g", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert result["states"] == {"COMPLETE": 2}
    assert sorted(t.params["strategy"] for t in study.trials) == ["full", "layer-decay"]
    assert all("layer_decay" not in t.params for t in study.trials)
