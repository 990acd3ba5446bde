"""Two CPU processes (gloo) on one tiny fit, started by `--processes 2`: one run folder, test metrics over exactly
the test split, the weights of a single-process fit with the same global batch, and resume after a kill."""

import subprocess
import sys
import time

import psutil
import pytest

import xfer
from xfer.fitting.runner import checkpoint_dir, load_checkpoint
from xfer.runs.folder import load_weights

# Dropout off: every process draws the same dropout masks for its own rows, which would differ from one process's.
OPTIONS = dict(strategy="full", epochs=2, batch_size=8, max_length=16, dropout=0.0, precision="no",
               test_fraction=0.25, val_fraction=0.25, quiet=True)
# Sums over two halves of a batch instead of one: float rounding differs, a few Adam steps amplify it slightly.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    from test_api import _text_csv

    return _text_csv(tmp_path_factory.mktemp("data") / "reviews.csv")


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_two_processes_match_one(tmp_path, reviews):
    one = xfer.fit(data=str(reviews), out=str(tmp_path / "one"), **OPTIONS)
    two = xfer.fit(data=str(reviews), out=str(tmp_path / "two"), processes=2, **OPTIONS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # one folder, no checkpoint left
    n_test = sum(two.metrics["test"]["confusion_matrix"][0]) + sum(two.metrics["test"]["confusion_matrix"][1])
    assert n_test == sum(sum(r) for r in one.metrics["test"]["confusion_matrix"]) == 9  # each example once
    assert two.metrics["test"]["accuracy"] == one.metrics["test"]["accuracy"]
    assert _max_diff(load_weights(one.path), load_weights(two.path)) < TOLERANCE
    assert [r["val_accuracy"] for r in two.history] == [r["val_accuracy"] for r in one.history]


def _fit_command(reviews, out, *extra):
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in OPTIONS.items() if k not in ("quiet", "epochs")]
    return [sys.executable, "-m", "xfer.cli", "fit", f"--data={reviews}", f"--out={out}", "--processes=2",
            "--epochs=3", "--min-steps=300", "--quiet", *flags, *extra]


def test_resume_after_a_kill_with_two_processes(tmp_path, reviews):
    whole = tmp_path / "whole"
    assert subprocess.run(_fit_command(reviews, whole), timeout=600).returncode == 0

    cut = tmp_path / "cut"
    proc = subprocess.Popen(_fit_command(reviews, cut))
    ckpt, deadline = checkpoint_dir(cut), time.time() + 600
    while time.time() < deadline and proc.poll() is None:  # wait for the first epoch's checkpoint, then kill
        try:
            if load_checkpoint(ckpt).state.epoch >= 1:
                break
        except Exception:
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the fit ended before it could be interrupted"
    # A crash of the machine's processes: the launcher and both workers (torchrun starts them in their own sessions).
    for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
        p.kill()
    proc.wait()
    time.sleep(0.5)
    assert not cut.exists() and ckpt.exists()
    assert load_checkpoint(ckpt).state.epoch < 3

    assert subprocess.run(_fit_command(reviews, cut, "--resume"), timeout=600).returncode == 0
    assert _max_diff(load_weights(whole), load_weights(cut)) < TOLERANCE
    assert not ckpt.exists()


def test_processes_must_match_the_launch(reviews, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(xfer.XferError, match="asks for 2 processes but was started in 3"):
        xfer.fit(data=str(reviews), processes=2, **OPTIONS)
