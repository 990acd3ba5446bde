"""Helpers shared by test modules (imported as `helpers`: pytest puts tests/ on the path)."""

import torch

from xfer.data.loaders import TensorBatches, batches


def tensor_loaders(n=48, size=32, classes=3, seed=0, batch_size=16):
    """Random image-shaped train batches and a 16-example validation loader, seeded."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return (batches(TensorBatches(x, y), batch_size, shuffle=True),
            batches(TensorBatches(x[:16], y[:16]), batch_size, shuffle=False))
