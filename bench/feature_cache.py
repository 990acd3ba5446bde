"""Speed-up of the cached linear probe: 10 epochs on cached features vs 10 epochs through the frozen backbone.

Both train the same head with the same loop; the cached run pays for one feature pass (included in its time).
Target: at least 5x faster.

    .venv/bin/python bench/feature_cache.py [--n 1000] [--epochs 10] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from xfer.config import FitConfig
from xfer.data import load_task
from xfer.data.loaders import ImageBatches, TensorBatches, batches, image_prep
from xfer.fitting.device import make_accelerator
from xfer.fitting.features import cache_key, probe_features
from xfer.fitting.hooks import Context
from xfer.fitting.loop import PhaseRun, train_phase
from xfer.fitting.strategies import make_plan
from xfer.models import build_image_model
from xfer.sources import load_source, resolve_source
from xfer.transfer import transfer


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="training images")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--size", type=int, default=112, help="image side in pixels")
    ap.add_argument("--smoke", action="store_true", help="seconds-long run on tiny inputs (checks the script works)")
    args = ap.parse_args()
    if args.smoke:
        args.n, args.epochs, args.size = 64, 1, 32
    os.environ.setdefault("XFER_CACHE_DIR", tempfile.mkdtemp())
    task = load_task("builtin:mnist5k")
    train_split, val_split = task.train.subset(range(args.n)), task.val.subset(range(200))
    src = load_source(resolve_source("mobilenet_v2"))
    prep = image_prep(src.data_config, 1, train_split.items, args.size)
    cfg = FitConfig(data="x", lp_epochs=args.epochs, batch_size=64, patience=0, quiet=True).resolved("image")
    phase = make_plan("linear-probe", cfg).phases[0]
    acc = make_accelerator("auto")
    train_ds, val_ds = ImageBatches(train_split, prep), ImageBatches(val_split, prep)

    def fresh():
        torch.manual_seed(0)
        m = build_image_model("mobilenetv2_100", 10, in_chans=1)
        transfer(src.state_dict, m)
        return m

    def train(module, trainable, train_loader, val_loader):
        run = PhaseRun(phase, module, frozenset(trainable), train_loader, val_loader, seed=0)
        train_phase(run, cfg, acc, Context(model, acc, val_loader, True, lambda s: None))

    model = fresh()
    start = time.perf_counter()
    train(model, phase.trainable(model), batches(train_ds, 64, shuffle=True), batches(val_ds, 256, shuffle=False))
    through = time.perf_counter() - start

    model = fresh()
    start = time.perf_counter()
    key = cache_key("bench", [train_split, val_split], prep.to_dict(), False)
    f_train, f_val = probe_features(model, batches(train_ds, 256, shuffle=False), batches(val_ds, 256, shuffle=False),
                                    acc, key, False, log=lambda s: None)
    train(model.head, {"weight", "bias"}, batches(TensorBatches(f_train, train_ds.labels), 64, shuffle=True),
          batches(TensorBatches(f_val, val_ds.labels), 1024, shuffle=False))
    cached = time.perf_counter() - start
    print(f"linear probe, {args.n} images at {args.size} px, {args.epochs} epochs ({acc.mixed_precision}): through the frozen "
          f"backbone {through:.1f}s, cached features {cached:.1f}s (feature pass included): {through / cached:.1f}x")


if __name__ == "__main__":
    main()
