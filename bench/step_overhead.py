"""Cost of xfer's training step against the same step written by hand in plain PyTorch.

Same model, batches, precision (what `precision: auto` picks: fp32 + channels_last for MobileNet-V2 on the CPU,
bf16 autocast for MiniLM where supported), same optimizer. The two
loops alternate several times and the median of each is compared, so drift in machine speed hits both alike.
Target: xfer's step costs at most 5% more.

    .venv/bin/python bench/step_overhead.py [--rounds 5] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from xfer.config import FitConfig
from xfer.data import load_task
from xfer.data.loaders import ImageBatches, ImagePrep, TextBatches, TextPrep, batches, load_tokenizer
from xfer.models import build_image_model, build_text_model
from xfer.sources import load_source, resolve_source
from xfer.strategies import make_plan
from xfer.train import LoopConfig, make_accelerator, param_groups, train_phase, warmup_cosine


def hand_loop(model, loader, lr, channels_last, precision_bf16):
    """The reference: a plain PyTorch epoch, written as one would by hand."""
    model.train()
    opt = torch.optim.AdamW(param_groups(model, lr, 0.01), fused=True)  # the optimizer xfer uses
    sched = warmup_cosine(opt, len(loader), len(loader) // 10)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for x, y, _ in loader:
        if channels_last and not isinstance(x, dict):
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision_bf16):
            loss = loss_fn(model(x).float(), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
    return time.perf_counter() - start


def xfer_loop(model, loader, val_loader, lr, accelerator, channels_last):
    phase = make_plan("full", FitConfig(data="x", epochs=1, lr=lr).resolved("image")).phases[0]
    loop = LoopConfig(batch_size=loader.sampler.batch_size if hasattr(loader.sampler, "batch_size") else 32,
                      patience=0, quiet=True, channels_last=channels_last)
    rec = train_phase(model, phase, phase.trainable(model), loader, val_loader, accelerator, loop, log=lambda s: None)
    return rec[0].seconds


def measure(name, model, train_ds, val_ds, batch_size, lr, steps, rounds, channels_last):
    acc = make_accelerator("auto", model=model)  # the precision `xfer fit` would pick for this model
    bf16 = acc.mixed_precision == "bf16"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    loader = batches(_first(train_ds, steps * batch_size), batch_size, shuffle=True, seed=0)
    val = batches(_first(val_ds, batch_size), batch_size, shuffle=False)
    hand_loop(model, loader, lr, channels_last, bf16)  # warm-up (oneDNN kernels, allocator)
    hand, ours = [], []
    for _ in range(rounds):
        hand.append(hand_loop(model, loader, lr, channels_last, bf16) / len(loader))
        ours.append(xfer_loop(model, loader, val, lr, acc, channels_last) / len(loader))
    h, o = statistics.median(hand), statistics.median(ours)
    print(f"{name}: {acc.mixed_precision}, batch {batch_size}, {len(loader)} steps x {rounds} rounds | "
          f"hand-written {h * 1000:.1f} ms/step, xfer {o * 1000:.1f} ms/step, ratio {o / h:.3f} "
          f"({(o / h - 1) * 100:+.1f}%)")
    return o / h


def _first(ds, n):
    """The first n examples of a batch dataset, sharing its already-prepared tensors."""
    import copy

    out = copy.copy(ds)
    if isinstance(ds, ImageBatches):
        out.items, out.labels = ds.items[:n], ds.labels[:n]
        out.cache = ds.cache[:n] if ds.cache is not None else None
    else:
        out.ids, out.lengths, out.labels = ds.ids[:n], ds.lengths[:n], ds.labels[:n]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--only", choices=["image", "text"], default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.only in (None, "image"):
        task = load_task("builtin:mnist5k")
        prep = ImagePrep(112, (0.449,), (0.226,), "bicubic", 1)
        model = build_image_model("mobilenetv2_100", 10, in_chans=1)
        measure("image mobilenet_v2 112px", model, ImageBatches(task.train.subset(range(64 * args.steps)), prep),
                ImageBatches(task.val.subset(range(64)), prep), 64, 1e-3, args.steps, args.rounds, True)
    if args.only in (None, "text"):
        task = load_task("builtin:rotten_tomatoes")
        src = load_source(resolve_source("all-MiniLM-L6-v2"))
        tok = load_tokenizer(src.hf_dir)
        model = build_text_model(src.hf_dir, 2)
        measure("text all-MiniLM-L6-v2", model, TextBatches(task.train.subset(range(32 * args.steps)), tok, TextPrep(128)),
                TextBatches(task.val.subset(range(32)), tok, TextPrep(128)), 32, 1e-4, args.steps, args.rounds, False)


if __name__ == "__main__":
    main()
