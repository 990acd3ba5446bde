"""Named points of the loop where a strategy or a feature attaches code, instead of editing the loop.

The events, in the order the runner and the loop reach them (fastai's callback events, narrowed to what fitting
needs):

    before_phase(model, phase)   change the model's structure before the phase trains (LoRA adapters); on resume it
                                 is also called for every phase already done, so the checkpoint's weights fit:
                                 it must do nothing when the change is already there
    start(ctx)                   the phase's module is placed and its trainable names known (L2-SP's anchors)
    trainable(ctx, epoch, names) the subset of `names` that trains in this epoch (gradual unfreezing)
    before_batch(inputs, labels) transform a training batch before the forward pass (noise, adversarial examples)
    loss(logits, inputs, labels) a term added to the cross-entropy (distillation, penalties built into the graph)
    after_backward(ctx)          edit gradients after backward, before clipping and the step (L2-SP's gradient)
    after_epoch(ctx, record)     after validation (a search's pruner may raise here to stop the fit)
    after_phase(ctx)             the phase is over, its best weights loaded (WiSE-FT's snapshot of the probe)
    after_plan(ctx) -> dict      every phase is over; returns extra metrics (WiSE-FT's interpolation curve)

A hook that keeps tensors a resumed fit needs (anchors, snapshots) sets `name` and implements `state_dict` /
`load_state_dict`; the runner stores them in the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

EVENTS = ("before_phase", "start", "trainable", "before_batch", "loss", "after_backward", "after_epoch",
          "after_phase", "after_plan")


class Hook:
    """Base of every hook: each event does nothing until a subclass overrides it."""

    name: str = ""  # set by hooks with state to checkpoint

    def before_phase(self, model: nn.Module, phase) -> None:
        pass

    def start(self, ctx: "Context") -> None:
        pass

    def trainable(self, ctx: "Context", epoch: int, names: frozenset[str]) -> frozenset[str]:
        return names

    def before_batch(self, inputs, labels):
        return inputs, labels

    def loss(self, logits: torch.Tensor, inputs, labels: torch.Tensor) -> torch.Tensor | None:
        return None

    def after_backward(self, ctx: "Context") -> None:
        pass

    def after_epoch(self, ctx: "Context", record) -> None:
        pass

    def after_phase(self, ctx: "Context") -> None:
        pass

    def after_plan(self, ctx: "Context") -> dict:
        return {}

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        return None

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass


def overriding(hooks, event: str) -> list[Hook]:
    """The hooks that implement `event`: the loop calls only these, so an unused event costs nothing per step."""
    base = getattr(Hook, event)
    return [h for h in hooks if getattr(type(h), event) is not base]


@dataclass
class Context:
    """What a hook may look at. `model` is the whole network; `module` is what the phase trains (the model, or its
    head alone when the phase trains on cached features) and `trainable` names parameters of `module`."""

    model: nn.Module
    accelerator: Any
    val: Any  # whole-network validation batches
    channels_last: bool
    log: Callable[[str], None]
    phase: Any = None
    index: int = -1
    module: nn.Module | None = None
    trainable: frozenset[str] = frozenset()
