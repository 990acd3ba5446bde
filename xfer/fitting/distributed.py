"""Several processes, one fit: data-parallel training on CPUs (gloo) or GPUs (NCCL) through torch.distributed, with
processes started by `xfer fit --processes N` (torchrun underneath), `torchrun`, or `accelerate launch`.

Every process holds the whole model and the same seeds. A training batch is the same global batch a single process
would draw; each process takes its share of the rows, and the gradients are summed across processes after the
backward pass (each local loss weighted by its share of the rows), so an update equals the single-process update
for that global batch. Evaluation splits the batches between processes and gathers every row back, exactly once.
Process 0 alone writes: the run folder, checkpoints and the feature cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import torch

from xfer.errors import XferError


def world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Process 0 (or the only one): the one that writes files and prints."""
    return rank() == 0


def active() -> bool:
    """Training is spread over several initialised processes."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() and world_size() > 1


def share(n: int) -> slice:
    """This process's rows of a global batch of n rows: contiguous, sizes differing by at most one."""
    size, r = world_size(), rank()
    base, extra = divmod(n, size)
    start = r * base + min(r, extra)
    return slice(start, start + base + (1 if r < extra else 0))


def local_batch(inputs, labels):
    """This process's share of a global batch, and the weight of its mean loss (its share of the rows): the summed
    gradients then equal the gradient of the global batch's mean loss."""
    rows = share(len(labels))
    if isinstance(inputs, dict):
        inputs = {k: v[rows] if torch.is_tensor(v) else v for k, v in inputs.items()}
    else:
        inputs = inputs[rows]
    return inputs, labels[rows], (rows.stop - rows.start) / len(labels)


def sum_gradients(params: list[torch.Tensor]) -> None:
    """Sum every parameter's gradient across processes, in one flat buffer (one collective call per step)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    torch.distributed.all_reduce(flat)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def _device() -> torch.device:
    """Where small collective tensors live: NCCL only moves GPU tensors, gloo CPU ones."""
    if "nccl" in str(torch.distributed.get_backend()) and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_across(values: list[float]) -> list[float]:
    """Element-wise sums over processes (an epoch's loss, correct count and examples seen)."""
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    torch.distributed.all_reduce(t)
    return t.tolist()


def broadcast_module(module: torch.nn.Module, buffers_only: bool = False) -> None:
    """Process 0's parameters and buffers everywhere: the same start, and BatchNorm running statistics (each process
    updates them from its own rows) kept identical, as DistributedDataParallel does."""
    for t in [*([] if buffers_only else module.parameters()), *module.buffers()]:
        torch.distributed.broadcast(t.data, src=0)


def any_across(flag: bool) -> bool:
    """True when any process says so (a spent time budget must stop every process at the same step)."""
    t = torch.tensor([1.0 if flag else 0.0], device=_device())
    torch.distributed.all_reduce(t)
    return bool(t.item() > 0)


def gather_rows(parts: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> torch.Tensor:
    """The (example indices, rows) batches of every process, assembled in data order. Each of the n examples must
    arrive exactly once: a padded or repeated example would be counted twice in the metrics, so it is refused."""
    everyone: list = [None] * world_size()
    torch.distributed.all_gather_object(everyone, parts)
    pairs = [pair for part in everyone for pair in part]
    if not pairs:
        return torch.empty(0, 0)
    out = torch.empty(n, pairs[0][1].shape[1])
    seen = torch.zeros(n, dtype=torch.long)
    for idx, rows in pairs:
        out[idx] = rows
        seen[idx] += 1
    if not bool((seen == 1).all()):
        raise RuntimeError(f"gathered rows: {int((seen == 0).sum())} examples missing, "
                           f"{int((seen > 1).sum())} computed more than once")
    return out


def launch(argv: list[str], processes: int) -> int:
    """Start `processes` workers of `xfer <argv>` on this machine with torchrun (a free port, gloo on CPUs, NCCL on
    GPUs) and wait for them; returns their exit status. For several machines run torchrun or `accelerate launch
    -m xfer.cli ...` on each, as their documentation says."""
    if processes < 1:
        raise XferError(f"--processes must be at least 1, got {processes}.")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
           "-m", "xfer.cli", *argv]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    return subprocess.call(cmd, env=env)
