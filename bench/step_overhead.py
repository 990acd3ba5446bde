"""Cost of xfer's training step against the same step written by hand in plain PyTorch.

Same model, batches, precision (what `precision: auto` picks: fp32 + channels_last for MobileNet-V2 on the CPU,
bf16 autocast for MiniLM where supported), same optimizer. The two
loops alternate several times and the median of each is compared, so drift in machine speed hits both alike.
Target: xfer's step costs at most 5% more.

    .venv/bin/python bench/step_overhead.py [--rounds 5] [--steps 20] [--smoke]
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
from xfer.fitting.device import make_accelerator
from xfer.fitting.hooks import Context
from xfer.fitting.loop import PhaseRun, param_groups, train_phase, warmup_cosine
from xfer.fitting.strategies import make_plan
from xfer.models import build_image_model, build_text_model
from xfer.sources import load_source, resolve_source


def hand_loop(model, loader, lr, channels_last, precision_bf16):
    """The reference: a plain PyTorch epoch, written as one would by hand."""
    model.train()
    names = {n for n, _ in model.named_parameters()}
    opt = torch.optim.AdamW(param_groups(model, names, lr, 0.01), fused=True)  # the optimizer xfer uses
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
    """One epoch of xfer's loop on the same batches: the phase resolved as the runner resolves it."""
    cfg = FitConfig(data="x", epochs=1, lr=lr, patience=0, quiet=True, channels_last=channels_last,
                    freeze_embeddings=False).resolved("image")
    phase = make_plan("full", cfg).phases[0]
    run = PhaseRun(phase, model, frozenset(phase.trainable(model)), loader, val_loader, seed=0)
    rec = train_phase(run, cfg, accelerator, Context(model, accelerator, val_loader, channels_last, lambda s: None))
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
    ap.add_argument("--smoke", action="store_true", help="seconds-long run on tiny inputs (checks the script works)")
    args = ap.parse_args()
    if args.smoke:
        args.rounds, args.steps = 1, 2
    size, ib, tb = (32, 8, 8) if args.smoke else (112, 64, 32)
    torch.manual_seed(0)
    ratios = {}
    if args.only in (None, "image"):
        task = load_task("builtin:mnist5k")
        prep = ImagePrep(size, (0.449,), (0.226,), "bicubic", 1)
        model = build_image_model("mobilenetv2_100", 10, in_chans=1)
        ratios["mobilenet_v2"] = measure(
            f"image mobilenet_v2 {size}px", model, ImageBatches(task.train.subset(range(ib * args.steps)), prep),
            ImageBatches(task.val.subset(range(ib)), prep), ib, 1e-3, args.steps, args.rounds, True)
    if args.only in (None, "text"):
        task = load_task("builtin:rotten_tomatoes")
        src = load_source(resolve_source("all-MiniLM-L6-v2"))
        tok = load_tokenizer(src.hf_dir)
        # As `xfer fit` builds it for text: encoder dropout 0 (its default); all parameters train in both loops.
        model = build_text_model(src.hf_dir, 2, encoder_dropout=0.0)
        ratios["all-MiniLM-L6-v2"] = measure(
            "text all-MiniLM-L6-v2", model, TextBatches(task.train.subset(range(tb * args.steps)), tok, TextPrep(128)),
            TextBatches(task.val.subset(range(tb)), tok, TextPrep(128)), tb, 1e-4, args.steps, args.rounds, False)
    print("ratio " + " ".join(f"{k}={v:.3f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
