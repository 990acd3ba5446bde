"""Helpers shared by test modules (imported as `helpers`: pytest puts tests/ on the path)."""

import sys

import pytest
import torch

from xfer.config import FitConfig
from xfer.data.loaders import TensorBatches, batches
from xfer.fitting.device import make_accelerator
from xfer.fitting.hooks import Context
from xfer.fitting.loop import PhaseRun, train_phase


def tensor_loaders(n=48, size=32, classes=3, seed=0, batch_size=16):
    """Random image-shaped train batches and a 16-example validation loader, seeded."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return (batches(TensorBatches(x, y), batch_size, shuffle=True),
            batches(TensorBatches(x[:16], y[:16]), batch_size, shuffle=False))


def loop_config(**options) -> FitConfig:
    """The loop's options for a unit test: no early stopping, no progress bar, batch 16."""
    return FitConfig(data="x", **{"batch_size": 16, "patience": 0, "quiet": True, **options}).resolved("image")


def train_one_phase(model, phase, loaders=None, on_epoch=None, state=None, scales=True, hooks=None, **options):
    """One phase through the loop, resolved as the runner resolves it (hooks' before_phase, trainable names, rate
    scales), on `loaders` (default: tensor_loaders())."""
    cfg = loop_config(**options)
    train, val = loaders or tensor_loaders()
    hooks = phase.hooks if hooks is None else hooks
    for h in hooks:
        h.before_phase(model, phase)
    run = PhaseRun(phase, model, frozenset(phase.trainable(model)), train, val, cfg.seed,
                   phase.lr_scales(model) if phase.lr_scales and scales else None, tuple(hooks))
    acc = make_accelerator("no")
    return train_phase(run, cfg, acc, Context(model, acc, val, cfg.channels_last, lambda s: None), state, on_epoch)


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`main()` in this process, as the console script calls it: returns (exit status, stdout, stderr)."""
    from xfer.cli import main

    monkeypatch.setattr(sys, "argv", ["xfer", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


# A real ImageNet MobileNet-V2 fitted for seconds on the conftest image folder: runs for export, compression and
# robustness tests.
TINY_IMAGE_FIT = dict(source="mobilenet_v2", strategy="full", epochs=1, image_size=32, batch_size=8,
                      val_fraction=0.25, test_fraction=0.25, min_steps=0, quiet=True)
