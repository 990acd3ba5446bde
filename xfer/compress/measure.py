"""Size, parameters and latency of a variant, measured the same way for PyTorch and ONNX Runtime.

Latency is wall time per call on fixed threads (set for both runtimes), after warm-up, over real inputs: batch 1
cycles through single test examples, batch 32 through one batch of 32; p50 and p95 of the calls.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np


def percentiles(fn: Callable[[object], object], inputs: Sequence, warmup: int, reps: int) -> tuple[float, float]:
    """p50 and p95 in milliseconds of `fn(x)` over `reps` calls cycling through `inputs`."""
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    times = []
    for i in range(reps):
        x = inputs[i % len(inputs)]
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def folder_mb(path: Path, names: Sequence[str]) -> float:
    """Size in MB (10^6 bytes) of the named model files in a folder (the graph or the weights, not the reports)."""
    return sum((Path(path) / n).stat().st_size for n in names if (Path(path) / n).is_file()) / 1e6


def onnx_params(path: Path) -> int:
    """Parameters stored in an ONNX graph: elements of its initializers, int8 or float alike (scales and zero
    points of a quantised graph included, as they are stored)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return int(sum(int(np.prod(t.dims)) for t in model.graph.initializer))


def torch_latency(model, batches: dict[str, Sequence], threads: int, warmup: int = 5, reps: int = 50) -> dict:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return _rows(lambda x: model(x), batches, warmup, reps)
    finally:
        torch.set_num_threads(previous)


def onnx_latency(session, batches: dict[str, Sequence], warmup: int = 5, reps: int = 50) -> dict:
    return _rows(lambda x: session.run(["logits"], x), batches, warmup, reps)


def _rows(fn, batches: dict[str, Sequence], warmup: int, reps: int) -> dict:
    out = {}
    b1_50, b1_95 = percentiles(fn, batches["b1"], warmup, reps)
    b32_50, _ = percentiles(fn, batches["b32"], max(1, warmup // 2), max(5, reps // 5))
    out.update(latency_ms_b1_p50=b1_50, latency_ms_b1_p95=b1_95, latency_ms_b32_p50=b32_50)
    return out
