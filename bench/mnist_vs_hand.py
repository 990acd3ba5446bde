"""`xfer fit --source mobilenet_v2 --data builtin:mnist5k` with its defaults vs a hand-written PyTorch loop.

The reference loop: the same MobileNet-V2 ImageNet weights, grey input via the summed first conv, AdamW 1e-3,
warm-up + cosine, batch 64, 112 px, 3 epochs of full fine-tuning, bf16 autocast + channels_last where supported, on
xfer's own 3,500 / 500 / 1,000 split. Prints both times and test accuracies.

    .venv/bin/python bench/mnist_vs_hand.py [--smoke]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from torch import nn


def hand_written(task, src, size: int = 112, epochs: int = 3) -> tuple[float, float]:
    from xfer.data.loaders import ImageBatches, batches, image_prep
    from xfer.fitting.loop import warmup_cosine
    from xfer.models import build_image_model
    from xfer.transfer import transfer

    torch.manual_seed(0)
    prep = image_prep(src.data_config, 1, task.train.items, size)
    train = batches(ImageBatches(task.train, prep), 64, shuffle=True)
    test = batches(ImageBatches(task.test, prep), 256, shuffle=False)
    model = build_image_model("mobilenetv2_100", 10, in_chans=1)
    transfer(src.state_dict, model)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    sched = warmup_cosine(opt, epochs * len(train), int(0.1 * epochs * len(train)))
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        for x, y, _ in train:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)).float(), y)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
    seconds = time.perf_counter() - start
    model.eval()
    correct = 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for x, y, _ in test:
            correct += (model(x.contiguous(memory_format=torch.channels_last)).argmax(1) == y).sum().item()
    return seconds, correct / len(task.test)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="seconds-long run on tiny inputs (checks the script works)")
    args = ap.parse_args()
    os.environ.setdefault("XFER_CACHE_DIR", tempfile.mkdtemp())
    import xfer
    from xfer.data import load_task
    from xfer.data.task import few_shot
    from xfer.sources import load_source, resolve_source

    smoke = dict(shots=5, image_size=32, epochs=1, lp_epochs=1, min_steps=0) if args.smoke else {}
    run = xfer.fit(data="builtin:mnist5k", source="mobilenet_v2", out=tempfile.mkdtemp() + "/run", quiet=True,
                   **smoke)
    print(f"xfer fit (defaults: {run.spec['strategy']}, {run.spec['prep']['size']} px): "
          f"{run.metrics['train_seconds']:.0f}s training, test accuracy {run.metrics['test']['accuracy']:.4f}",
          flush=True)
    task = load_task("builtin:mnist5k")
    size, epochs = (32, 1) if args.smoke else (112, 3)
    ht, ha = hand_written(few_shot(task, 5) if args.smoke else task, load_source(resolve_source("mobilenet_v2")),
                          size, epochs)
    print(f"hand-written loop (full FT, {size} px, {epochs} epochs, bf16 + channels_last): {ht:.0f}s training, "
          f"test accuracy {ha:.4f}")
    print(f"time ratio xfer / hand-written: {run.metrics['train_seconds'] / ht:.2f}")


if __name__ == "__main__":
    main()
