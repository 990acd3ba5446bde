"""`xfer demo`: the embedded default job. Two transfers, offline, each against a from-scratch baseline:
ImageNet MobileNet-V2 -> MNIST-5k digits, and sentence-embedding MiniLM -> Rotten Tomatoes reviews."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from xfer.fitting.fit import fit
from xfer.config import FitConfig

# Settings chosen to finish in a few minutes on a 2-core CPU (`xfer fit` defaults train longer / at a larger
# size). Digits are far from ImageNet, so the image job fine-tunes everything from the start: at 64 px that measured
# 99.0% test after 3 epochs (98.7% after 5) vs 98.1-98.4% for 3 epochs of lp-ft. The text job fine-tunes the top
# encoder layers (the text default) for one epoch. Each baseline gets the same number of full-network epochs.
DEMO_JOBS = {
    "image": FitConfig(data="builtin:mnist5k", source="mobilenet_v2", image_size=64, strategy="full", epochs=3,
                       baseline=True),
    "text": FitConfig(data="builtin:rotten_tomatoes", source="all-MiniLM-L6-v2", max_length=64, epochs=1,
                      top_blocks=3, baseline=True),
}


def _cpu() -> str:
    """The CPU's model name and whether it has bf16 (what decides the text job's speed)."""
    from xfer.fitting.device import cpu_supports_bf16

    name = "CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {'bf16' if cpu_supports_bf16() else 'no bf16'} CPU"


def run_demo(out: str | None = None, quiet: bool = False, precision: str = "auto") -> dict:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    root = Path(out) if out else Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    results = {}
    start = time.perf_counter()
    for name, cfg in DEMO_JOBS.items():
        if not quiet:
            console.rule(f"demo: {name} ({cfg.source} -> {cfg.data})")
        run = fit(replace(cfg, out=str(root / name), quiet=quiet, precision=precision))
        results[name] = run
    total = time.perf_counter() - start
    shown = "" if precision == "auto" else f", precision {precision}"
    t = Table(title=f"xfer demo: transfer vs from scratch ({total:.0f}s, {_cpu()}{shown})")
    for c in ("task", "strategy", "test acc", "scratch", "gain", "train s"):
        t.add_column(c)
    for name, run in results.items():
        m = run.metrics
        gain = m["transfer_gain"]["gain"]
        t.add_row(f"{name}: {DEMO_JOBS[name].source} -> {DEMO_JOBS[name].data.removeprefix('builtin:')}",
                  run.spec["strategy"], f"{m['test']['accuracy']:.4f}", f"{m['baseline']['test']['accuracy']:.4f}",
                  f"[{'green' if gain > 0 else 'red'}]{gain:+.4f}[/]",
                  f"{m['train_seconds']:.0f} + {m['baseline']['train_seconds']:.0f}")
    console.print(t)
    for name, run in results.items():
        console.print(f"{name} run folder: {run.path}", soft_wrap=True)
    return results
