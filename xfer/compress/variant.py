"""What a compression step hands back: a PyTorch model with the spec that rebuilds it, its metrics and a report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import nn


@dataclass
class Compressed:
    """A compressed PyTorch variant of a run, ready to be written as a run folder.

    `spec` rebuilds the architecture with `xfer.load` (a pruned network records its new shapes there, a truncated
    student its depth); `metrics` are val/test metrics as `fit` writes them; `report` says what was done (options,
    parameters and operations before and after); `backbone` writes a text model's encoder config and tokenizer.
    """

    name: str
    model: nn.Module
    spec: dict
    metrics: dict
    report: dict = field(default_factory=dict)
    backbone: Callable[[Path], None] | None = None
