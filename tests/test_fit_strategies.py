"""Strategies end to end through `fit`: LoRA runs save their head and merge, WiSE-FT reports its curve, an
interrupted fit resumes to the same result, few-shot subsets and time budgets."""

import json

import numpy as np
import pytest
import torch

import xfer
import xfer.fitting.runner  # noqa: F401 (monkeypatched below)
from xfer.tools.export import export
from xfer.data import load_task
from xfer.data.task import Split, few_shot
from xfer.errors import XferError

FAST = dict(source="mobilenet_v2", image_size=32, batch_size=8, quiet=True, min_steps=0)


def _images(folder):
    return sorted(folder.rglob("*.png"))[:6]


def test_lora_run_reloads_with_its_head_and_exports_merged(image_folder, tmp_path):
    run = xfer.fit(data=str(image_folder), strategy="lora", epochs=1, lp_epochs=2, out=str(tmp_path / "lora"), **FAST)
    spec = json.loads((run.path / "spec.json").read_text())
    assert spec["lora"]["r"] == 8
    assert 0 < run.metrics["trainable_params"] < run.metrics["total_params"] / 5
    split = Split(_images(image_folder), np.zeros(6, dtype=np.int64))
    before = run.logits(split, precision="no")
    loaded = xfer.load(run.path)
    # The head trained in the run is the one that comes back (not a fresh one).
    torch.testing.assert_close(loaded.model.head.weight, run.model.head.weight)
    torch.testing.assert_close(loaded.logits(split, precision="no"), before, rtol=0, atol=1e-6)
    merged = xfer.load(export(run.path, tmp_path / "merged"))
    assert merged.spec["lora"] is None
    assert not any(".lora_" in k for k in merged.model.state_dict())
    # fp32 summation order differs between W x + B(A x) and (W + BA) x, by up to ~3e-5 of the logits' scale
    # depending on the CPU's kernels; a wrong merge is off by a tenth or more.
    scale = float(before.abs().max())
    torch.testing.assert_close(merged.logits(split, precision="no"), before, rtol=0, atol=1e-4 * scale)
    with pytest.raises(XferError, match="already exists"):
        export(run.path, tmp_path / "merged")


def test_wise_ft_reports_its_validation_curve(image_folder, tmp_path):
    run = xfer.fit(data=str(image_folder), strategy="wise-ft", epochs=1, lp_epochs=2, out=str(tmp_path / "w"), **FAST)
    curve = run.metrics["wise_ft"]["curve"]
    assert [c["alpha"] for c in curve] == pytest.approx([i / 10 for i in range(11)])
    best = max(c["val_accuracy"] for c in curve)
    chosen = next(c for c in curve if c["alpha"] == run.metrics["wise_ft"]["alpha"])
    assert chosen["val_accuracy"] == best
    assert run.metrics["val"]["accuracy"] == pytest.approx(best)


def test_interrupted_fit_resumes_to_the_same_weights(image_folder, tmp_path, monkeypatch):
    opts = dict(data=str(image_folder), strategy="gradual-unfreeze", epochs=3, lr=1e-2, patience=0, **FAST)
    ref = xfer.fit(out=str(tmp_path / "ref"), **opts)

    real_save = xfer.fitting.runner.save_checkpoint

    class Crash(Exception):
        pass

    def save_then_crash(folder, ck):
        real_save(folder, ck)
        if ck.state is not None and ck.state.epoch == 2:
            raise Crash

    monkeypatch.setattr(xfer.fitting.runner, "save_checkpoint", save_then_crash)
    out = tmp_path / "run"
    with pytest.raises(Crash):
        xfer.fit(out=str(out), **opts)
    monkeypatch.setattr(xfer.fitting.runner, "save_checkpoint", real_save)
    ckpt = out.with_name("run.checkpoint")
    assert ckpt.is_dir() and not out.exists()
    with pytest.raises(XferError, match="--resume"):
        xfer.fit(out=str(out), **opts)
    with pytest.raises(XferError, match="other options"):
        xfer.fit(out=str(out), resume=True, **{**opts, "lr": 1e-3})
    run = xfer.fit(out=str(out), resume=True, **opts)
    assert not ckpt.exists()
    assert [h["trainable_params"] for h in run.history] == [h["trainable_params"] for h in ref.history]
    for k, v in ref.model.state_dict().items():
        torch.testing.assert_close(run.model.state_dict()[k], v, rtol=0, atol=1e-6)


def test_resume_without_a_checkpoint_is_a_clear_error(image_folder, tmp_path):
    with pytest.raises(XferError, match="Nothing to resume"):
        xfer.fit(data=str(image_folder), out=str(tmp_path / "none"), resume=True, **FAST)


def test_few_shot_keeps_k_per_class_and_the_whole_test_split():
    task = load_task("builtin:mnist5k")
    small = few_shot(task, 10, seed=1)
    assert np.bincount(small.train.labels).tolist() == [10] * 10
    assert np.bincount(small.val.labels).tolist() == [10] * 10
    assert len(small.test) == len(task.test)
    assert few_shot(task, 10, seed=1).train.items[0] is small.train.items[0]
    assert small.train.labels.tolist() != few_shot(task, 10, seed=2).train.labels.tolist() or \
        not all(a is b for a, b in zip(small.train.items, few_shot(task, 10, seed=2).train.items))
    with pytest.raises(XferError, match="Lower --shots"):
        few_shot(task, 10_000)


def test_min_steps_repeats_a_tiny_training_set_within_an_epoch(image_folder, tmp_path):
    run = xfer.fit(data=str(image_folder), strategy="full", epochs=2, out=str(tmp_path / "m"),
                   **{**FAST, "min_steps": 20})
    # 16 training images at batch 8 would give 2 steps per epoch; min_steps 20 over 2 epochs asks for 10.
    seen = [h["samples_per_s"] * h["seconds"] for h in run.history]
    assert all(s == pytest.approx(80, rel=1e-6) for s in seen)


def test_time_budget_stops_training(image_folder, tmp_path):
    run = xfer.fit(data=str(image_folder), strategy="full", epochs=50, time_budget="0.001s",
                   out=str(tmp_path / "t"), **FAST)
    assert len(run.history) <= 1
