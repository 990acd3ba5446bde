"""A run's network as an ONNX graph, checked against PyTorch before it is kept.

Exported with torch.onnx's dynamo exporter (torch.export), falling back to the TorchScript exporter when dynamo
fails or its graph disagrees with PyTorch. The batch axis is dynamic (and the sequence axis for text). Known traps
are caught by the parity check rather than trusted away: dynamo-exported ResNets with wrong outputs
(pytorch/pytorch#169178), wrong conv bias shapes (#166797), a dynamic batch axis exported as fixed (#157621): the
check runs real batches of several sizes, none of them the size that was traced.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from xfer.errors import XferError
from xfer.models import TransferModel, has_lora

OPSET = 18
TRACE_BATCH = 3  # traced with 3 examples; the parity check uses other batch sizes


class ImageGraph(nn.Module):
    """The image model with a named tensor input, as the ONNX graph takes it."""

    def __init__(self, model: TransferModel):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels)


class TextGraph(ImageGraph):
    """The text model with two named tensor inputs (ONNX graphs take tensors, not the dict the model reads)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model({"input_ids": input_ids, "attention_mask": attention_mask})


def graph_module(model: TransferModel) -> nn.Module:
    return (ImageGraph if model.modality == "image" else TextGraph)(model).eval()


def input_names(modality: str) -> list[str]:
    return ["pixels"] if modality == "image" else ["input_ids", "attention_mask"]


def as_tensors(inputs, modality: str) -> tuple[torch.Tensor, ...]:
    if modality == "image":
        return (inputs,)
    return inputs["input_ids"], inputs["attention_mask"]


@dataclass(frozen=True)
class Parity:
    """How closely ONNX Runtime reproduced PyTorch: the worst absolute logit difference, the logit scale it is
    judged against, and whether every argmax agreed, over batches of these sizes."""

    max_abs_diff: float
    logit_scale: float
    argmax_equal: bool
    batch_sizes: tuple[int, ...]

    def ok(self, tolerance: float) -> bool:
        return self.argmax_equal and self.max_abs_diff <= tolerance * max(1.0, self.logit_scale)

    def to_dict(self) -> dict:
        return {"max_abs_diff": self.max_abs_diff, "logit_scale": self.logit_scale,
                "argmax_equal": self.argmax_equal, "batch_sizes": list(self.batch_sizes)}


def _export(model: TransferModel, example, path: Path, dynamo: bool) -> None:
    wrapped = graph_module(model)
    args = as_tensors(example, model.modality)
    names = input_names(model.modality)
    quiet = contextlib.redirect_stdout(io.StringIO())  # the exporter prints its progress
    with quiet, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch", min=1)
            if model.modality == "image":
                shapes = ({0: batch},)
            else:
                seq = torch.export.Dim("sequence", min=1)
                shapes = ({0: batch, 1: seq}, {0: batch, 1: seq})
            program = torch.onnx.export(wrapped, args, dynamo=True, input_names=names, output_names=["logits"],
                                        dynamic_shapes=shapes, opset_version=OPSET, optimize=True)
            program.save(str(path))
        else:
            axes = {"pixels": {0: "batch"}} if model.modality == "image" else {
                "input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
            torch.onnx.export(wrapped, args, str(path), dynamo=False, input_names=names, output_names=["logits"],
                              dynamic_axes={**axes, "logits": {0: "batch"}}, opset_version=OPSET)


def parity(model: TransferModel, path: Path, batches: list) -> Parity:
    """Run every batch through PyTorch (fp32, eval) and ONNX Runtime and compare the logits."""
    from xfer.runs.onnx_run import session

    sess = session(path)
    names = input_names(model.modality)
    worst, scale, same, sizes = 0.0, 0.0, True, []
    model.eval()
    for inputs in batches:
        tensors = as_tensors(inputs, model.modality)
        with torch.no_grad():
            ref = graph_module(model)(*tensors).float().numpy()
        got = sess.run(["logits"], {n: t.numpy() for n, t in zip(names, tensors)})[0]
        if got.shape != ref.shape:
            raise XferError(f"The ONNX graph returned logits of shape {got.shape} for a batch where PyTorch returns "
                            f"{ref.shape}: its batch axis is not dynamic.")
        worst = max(worst, float(np.abs(got - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
        same = same and bool((got.argmax(1) == ref.argmax(1)).all())
        sizes.append(len(ref))
    return Parity(worst, scale, same, tuple(sizes))


def export_onnx(model: TransferModel, example, check_batches: list, path: Path, tolerance: float = 1e-4,
                log=None) -> dict:
    """Export `model` to `path` and check it on `check_batches` (real inputs, batch sizes other than the traced
    one's). Returns what was done: exporter, opset, parity. A graph that fails the check is never kept."""
    log = log or (lambda msg: None)
    if has_lora(model):
        raise XferError("This run still has LoRA adapters; ONNX export needs them merged into the base weights. "
                        "Run `xfer export RUN --out DIR` first (it merges), then export or compress that folder.")
    model = model.float().eval()
    failures = []
    for dynamo in (True, False):
        exporter = "dynamo" if dynamo else "torchscript"
        try:
            _export(model, example, path, dynamo)
        except Exception as e:  # an exporter bug: try the other exporter, report both if neither works
            failures.append(f"{exporter} exporter failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        try:
            check = parity(model, path, check_batches)
        except XferError as e:
            failures.append(f"{exporter} graph: {e}")
            continue
        if check.ok(tolerance):
            log(f"ONNX export ({exporter}, opset {OPSET}): ONNX Runtime matches PyTorch (max |diff| "
                f"{check.max_abs_diff:.2e} at logit scale {check.logit_scale:.2f}, batch sizes "
                f"{list(check.batch_sizes)})")
            return {"exporter": exporter, "opset": OPSET, "parity": check.to_dict(), "tolerance": tolerance,
                    "failed_first": failures}
        failures.append(f"{exporter} graph disagrees with PyTorch: max |diff| {check.max_abs_diff:.3g} at logit "
                        f"scale {check.logit_scale:.3g}, argmax equal: {check.argmax_equal}")
    Path(path).unlink(missing_ok=True)
    raise XferError("ONNX export failed; nothing was written. " + " | ".join(failures))
