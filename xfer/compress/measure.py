"""Size, parameters and latency of a variant, measured the same way for PyTorch and ONNX Runtime.

Latency is wall time per call on fixed threads (set for both runtimes), after warm-up, over real inputs: batch 1
cycles through single test examples, batch 32 is one batch of 32. On a small shared machine one pass is noisy
(a VM's neighbours, thread pools of the previous runtime still spinning), so the variants are measured in several
interleaved rounds, with a pause before each, and each figure is the median over the rounds.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

Timed = tuple[Callable[[object], object], dict[str, Sequence]]  # a callable and its inputs {"b1": [...], "b32": [...]}


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


def latency(fn: Callable[[object], object], batches: dict[str, Sequence], reps: int = 100) -> dict:
    b1_50, b1_95 = percentiles(fn, batches["b1"], 10, reps)
    b32_50, _ = percentiles(fn, batches["b32"], 2, max(5, reps // 10))
    return {"latency_ms_b1_p50": b1_50, "latency_ms_b1_p95": b1_95, "latency_ms_b32_p50": b32_50}


@contextmanager
def torch_threads(threads: int):
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(previous)


def measure_all(timed: list[Timed], threads: int, rounds: int = 3, reps: int = 100, pause: float = 0.3) -> list[dict]:
    """Latency of every (callable, inputs) pair: `rounds` interleaved passes, the median of each figure."""
    results: list[list[dict]] = [[] for _ in timed]
    with torch_threads(threads):
        for _ in range(rounds):
            for i, (fn, batches) in enumerate(timed):
                time.sleep(pause)  # let the previous runtime's worker threads go idle
                results[i].append(latency(fn, batches, reps))
    return [{k: float(np.median([r[k] for r in rs])) for k in rs[0]} for rs in results]


def folder_mb(path: Path, names: Sequence[str]) -> float:
    """Size in MB (10^6 bytes) of the named model files in a folder (the graph or the weights, not the reports)."""
    return sum((Path(path) / n).stat().st_size for n in names if (Path(path) / n).is_file()) / 1e6


def onnx_params(path: Path) -> int:
    """Parameters stored in an ONNX graph: elements of its initializers, int8 or float alike (scales and zero
    points of a quantised graph included, as they are stored)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return int(sum(int(np.prod(t.dims)) for t in model.graph.initializer))
