"""A trained run in memory: the model with its labels and preprocessing, `predict`, `evaluate`, `logits`, and
`load(path)` to get one back from its verified folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from xfer.data.loaders import ImageBatches, TextBatches, batches, load_tokenizer, prep_from_dict
from xfer.data.render import render_inputs
from xfer.data.task import Split
from xfer.errors import XferError
from xfer.fitting.device import make_accelerator, place, predict_logits
from xfer.fitting.evaluate import classification_metrics
from xfer.models import TransferModel, apply_pruned, build_from_spec
from xfer.runs.answers import answers, checked_inputs, labelled_split, temperature
from xfer.runs.folder import RunFolder
from xfer.transfer import TransferReport


@dataclass
class Run:
    """A trained model with its labels and preprocessing: what a run folder holds, in memory."""

    model: TransferModel
    spec: dict
    path: Path | None = None
    metrics: dict = field(default_factory=dict)
    report: TransferReport | None = None
    history: list = field(default_factory=list)
    tokenizer: object = None  # text runs: loaded from the run folder when first needed

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.spec["labels"])

    @property
    def prep(self):
        return prep_from_dict(self.spec["prep"])

    @property
    def reads_text(self) -> bool:
        """Text in: a text model, or an image model that reads text rendered as images (spec["render"])."""
        return self.spec["modality"] == "text" or bool(self.spec.get("render"))

    def dataset(self, split: Split):
        """Batches of `split`, preprocessed exactly as in training (texts rendered with the run's own recipe)."""
        split = render_inputs(split, self.spec.get("render"))
        if self.spec["modality"] == "image":
            return ImageBatches(split, self.prep)
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(RunFolder(self.path).backbone)
        return TextBatches(split, self.tokenizer, self.prep)

    def logits(self, split: Split, batch_size: int = 64, precision: str = "auto", defence: bool = True) -> torch.Tensor:
        """Logits in data order, preprocessed as in training, behind the run's defence (spec["defence"]) unless
        `defence=False`; a randomised defence gives the log of the softmax averaged over its draws."""
        spec_defence = self.spec.get("defence") if defence else None
        if spec_defence and spec_defence["modality"] == "text":
            from xfer.robust.text_runs import defended_logits

            return defended_logits(self, split, spec_defence, batch_size, precision)
        model = self.model
        if spec_defence:
            from xfer.robust.defences import Defended

            model = Defended(self.model, self.spec["prep"], spec_defence).eval()
        acc = make_accelerator(precision, model=self.model)
        image = self.spec["modality"] == "image"
        place(model, acc, channels_last=image)
        if spec_defence and spec_defence["draws"] > 1:
            torch.manual_seed(0)  # a randomised defence draws the same way on every call: answers are repeatable
        return predict_logits(model, batches(self.dataset(split), batch_size, shuffle=False), acc, image)

    def predict(self, inputs: Sequence, batch_size: int = 64, top_k: int = 0) -> list[dict]:
        """Predict labels for image paths / arrays (image runs) or strings (text runs); `top_k` > 0 adds the k most
        probable labels with their probabilities to each answer."""
        items = checked_inputs(inputs, self.reads_text)
        if not items:
            return []
        logits = self.logits(Split(items, np.zeros(len(items), dtype=np.int64)), batch_size)
        return answers(items, logits.float().numpy(), self.labels, temperature(self.spec), top_k)

    def evaluate(self, data: str, **columns) -> dict:
        """Metrics on a labelled file or folder (all of it is treated as test data)."""
        split = labelled_split(data, self.labels, **columns)
        return classification_metrics(split.labels, self.logits(split).argmax(1).numpy(), self.labels)


def load(path: str | Path) -> Run:
    """Load a run folder after verifying its checksums; weights come only from safetensors."""
    folder = RunFolder(Path(path)).verify()
    spec = folder.spec()
    if spec.get("runtime") == "onnx":  # same interface, served by ONNX Runtime
        from xfer.runs.onnx_run import load_onnx

        return load_onnx(path)
    model = build_from_spec(spec, folder.backbone)
    weights = folder.weights()
    if spec.get("pruned"):  # a pruned variant: the spec's architecture, then the widths pruning left
        apply_pruned(model, weights, spec["pruned"]["attributes"])
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise XferError(f"Weights in {folder.path} do not fit the architecture in its spec: {str(e)[:300]}") from e
    model.eval()
    return Run(model, spec, folder.path, folder.metrics(), history=folder.history())
