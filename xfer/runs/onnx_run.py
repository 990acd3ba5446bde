"""A run whose model is an ONNX file, served by ONNX Runtime with NumPy preprocessing: no PyTorch is imported.

`xfer export --format onnx` and `xfer compress` write such runs (spec["runtime"] == "onnx"); `xfer predict` and
`xfer eval` read them through `load_onnx` with the same interface as `Run` (predict, evaluate, logits).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from xfer.data.arrays import image_batch, load_fast_tokenizer, token_batch
from xfer.data.render import render_inputs
from xfer.data.task import Split
from xfer.errors import XferError
from xfer.runs.answers import answers, checked_inputs, labelled_split, temperature
from xfer.runs.folder import ONNX_MODEL, RunFolder

ONNX_RUNTIME = "onnx"


def is_onnx_run(path: str | Path) -> bool:
    """The folder holds an ONNX run (read from its spec before anything heavy is imported)."""
    folder = RunFolder(Path(path))
    return folder.exists() and folder.spec().get("runtime") == ONNX_RUNTIME


def session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session; `threads` fixes the intra-op threads (latency measurements state them)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass
class OnnxRun:
    """An ONNX run in memory: the session, the spec's labels and preprocessing (and rendering recipe)."""

    spec: dict
    path: Path
    metrics: dict = field(default_factory=dict)
    threads: int | None = None
    _session: object = None
    _tokenizer: object = None

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.spec["labels"])

    @property
    def reads_text(self) -> bool:
        return self.spec["modality"] == "text" or bool(self.spec.get("render"))

    @property
    def session(self):
        if self._session is None:
            self._session = session(self.path / ONNX_MODEL, self.threads)
        return self._session

    def inputs(self, items: Sequence) -> dict[str, np.ndarray]:
        """A batch of raw inputs as the graph's named arrays, preprocessed exactly as in training."""
        split = render_inputs(Split(list(items), np.zeros(len(items), dtype=np.int64)), self.spec.get("render"))
        if self.spec["modality"] == "image":
            return {"pixels": image_batch(split.items, self.spec["prep"])}
        if self._tokenizer is None:
            self._tokenizer = load_fast_tokenizer(RunFolder(self.path).backbone, self.spec["prep"]["max_length"])
        return token_batch(self._tokenizer, split.items, self.spec["onnx"].get("pad_id", 0))

    def logits(self, items: Sequence, batch_size: int = 64) -> np.ndarray:
        out = [self.session.run(["logits"], self.inputs(items[i:i + batch_size]))[0]
               for i in range(0, len(items), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), dtype=np.float32)

    def predict(self, inputs: Sequence, batch_size: int = 64, top_k: int = 0) -> list[dict]:
        items = checked_inputs(inputs, self.reads_text)
        if not items:
            return []
        return answers(items, self.logits(items, batch_size), self.labels, temperature(self.spec), top_k)

    def evaluate(self, data: str, **columns) -> dict:
        """Metrics on a labelled file or folder (all of it is treated as test data)."""
        from xfer.fitting.evaluate import classification_metrics

        split = labelled_split(data, self.labels, **columns)
        return classification_metrics(split.labels, self.logits(split.items).argmax(1), self.labels)


def load_onnx(path: str | Path, threads: int | None = None) -> OnnxRun:
    """An ONNX run after verifying every checksum (the graph included)."""
    folder = RunFolder(Path(path)).verify()
    spec = folder.spec()
    if spec.get("runtime") != ONNX_RUNTIME:
        raise XferError(f"{path} is a PyTorch run, not an ONNX one; load it with xfer.load.")
    threads = threads or int(os.environ.get("XFER_ORT_THREADS", 0)) or None
    return OnnxRun(spec, folder.path, folder.metrics(), threads)
