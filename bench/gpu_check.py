"""The GPU path in one short script, for a machine with a CUDA GPU: what CPU-only machines cannot measure.

1. the device (name, count, bf16 support, the precision `auto` resolves to);
2. `xfer fit --data builtin:rotten_tomatoes` with its defaults on the GPU: training samples/s of its fine-tuning
   epochs, time and test accuracy;
3. one fine-tuning epoch of the same fit on the CPU (CUDA hidden), for samples/s against the GPU;
4. `xfer demo` on the GPU, timed (both transfers against their baselines);
5. with 2 or more GPUs, the same fit with `--processes 2` (NCCL): time, accuracy, and one run folder.

Each step runs `xfer` as a user would (a subprocess, a run folder under `--out`) and the summary reads the folders'
`metrics.json` / `history.json`. Without a GPU the script says so and exits with status 2; `--smoke` runs the same
steps on tiny settings on whatever device there is, to check the script.

    .venv/bin/python bench/gpu_check.py [--out gpu-check] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

XFER = os.environ.get("XFER", str(Path(sys.executable).parent / "xfer"))
SMOKE_FIT = ["--shots", "8", "--epochs", "1", "--lp-epochs", "1", "--max-length", "16", "--min-steps", "0"]


def xfer(args: list[str], env: dict | None = None) -> float:
    """Run `xfer ARGS`, echoing its output; returns the wall seconds. A failure stops the script with its status."""
    t0 = time.perf_counter()
    proc = subprocess.run([XFER, *args], env={**os.environ, **(env or {})})
    if proc.returncode:
        sys.exit(f"xfer {' '.join(args)} failed with status {proc.returncode}")
    return time.perf_counter() - t0


def summary(run: Path) -> str:
    """Test accuracy, training seconds and fine-tuning samples/s (median over whole-network epochs) of a run."""
    metrics = json.loads((run / "metrics.json").read_text())
    history = json.loads((run / "history.json").read_text())
    rates = [r["samples_per_s"] for r in history if r["phase"] != "linear-probe"]
    rate = f"{statistics.median(rates):.0f} samples/s fine-tuning" if rates else "no fine-tuning epoch"
    return (f"test accuracy {metrics['test']['accuracy']:.4f}, {metrics.get('train_seconds', 0):.0f}s training, "
            f"{rate}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu-check", help="folder for the runs (must not exist yet)")
    ap.add_argument("--smoke", action="store_true", help="tiny settings on any device (checks the script works)")
    args = ap.parse_args()
    import torch

    from xfer.fitting.device import resolve_precision

    gpus = torch.cuda.device_count()
    if not gpus and not args.smoke:
        print("no CUDA GPU on this machine: nothing to check (the CPU numbers come from the other bench scripts)")
        sys.exit(2)
    out = Path(args.out)
    if out.exists():
        sys.exit(f"{out} exists; give a new --out folder (runs are never overwritten)")
    names = [torch.cuda.get_device_name(i) for i in range(gpus)]
    print(f"device: {gpus} GPU(s) {', '.join(names) or '(none: smoke on the CPU)'}; "
          f"bf16 {'supported' if gpus and torch.cuda.is_bf16_supported() else 'n/a'}; "
          f"precision auto -> {resolve_precision('auto')}", flush=True)
    data = ["--data", "builtin:rotten_tomatoes", "--quiet", *(SMOKE_FIT if args.smoke else [])]
    lines = []

    seconds = xfer(["fit", *data, "--out", str(out / "text-gpu")])
    lines.append(f"fit, defaults, GPU: {summary(out / 'text-gpu')} ({seconds:.0f}s wall)")

    one_epoch = [*data, "--epochs", "1"]
    seconds = xfer(["fit", *one_epoch, "--out", str(out / "text-cpu")], env={"CUDA_VISIBLE_DEVICES": ""})
    lines.append(f"fit, 1 fine-tuning epoch, CPU ({os.cpu_count()} cores): {summary(out / 'text-cpu')} "
                 f"({seconds:.0f}s wall)")

    if args.smoke:  # the demo's full jobs take minutes on a CPU
        lines.append("demo: skipped in smoke mode")
    else:
        seconds = xfer(["demo", "--quiet", "--out", str(out / "demo")])
        lines.append(f"demo on the GPU: {seconds:.0f}s wall; image {summary(out / 'demo' / 'image')}; "
                     f"text {summary(out / 'demo' / 'text')}")

    if gpus >= 2:
        seconds = xfer(["fit", *data, "--processes", "2", "--out", str(out / "text-2gpu")])
        lines.append(f"fit, defaults, 2 processes (NCCL): {summary(out / 'text-2gpu')} ({seconds:.0f}s wall)")
    else:
        lines.append("2 processes: skipped (fewer than 2 GPUs)")
    print("\n".join(["", "GPU check:", *lines]))


if __name__ == "__main__":
    main()
