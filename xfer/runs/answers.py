"""What every kind of run (PyTorch `Run`, ONNX `OnnxRun`) checks and answers alike, in NumPy alone: inputs to
predict, labelled data to evaluate, and the predictions as dictionaries."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from xfer.data.task import Split
from xfer.errors import XferError


def checked_inputs(inputs: Sequence, reads_text: bool) -> list:
    """The inputs as a list: non-empty strings for a run that reads text, existing files (or arrays) otherwise."""
    items = list(inputs)
    if reads_text:
        empty = [i for i, t in enumerate(items) if not str(t).strip()]
        if empty:
            raise XferError(f"Input(s) {empty[:10]} are empty strings; give non-empty text.")
        return [str(t) for t in items]
    missing = [str(p) for p in items if not isinstance(p, np.ndarray) and not Path(p).is_file()]
    if missing:
        raise XferError(f"Image file(s) not found: {', '.join(missing[:10])}.")
    return items


def temperature(spec: dict) -> float:
    """The run's calibration temperature (fitted on validation logits by `fit`); 1.0 for runs made without one."""
    t = spec.get("temperature") or 1.0
    return float(t) if t > 0 else 1.0


def answers(items: list, logits: np.ndarray, labels: Sequence[str], temperature: float = 1.0,
            top_k: int = 0) -> list[dict]:
    """One {"input", "label", "confidence"} per input; the confidence is softmax(logits / temperature), the run's
    calibrated probability (the label, the argmax, is the same for any temperature)."""
    from xfer.fitting.evaluate import softmax

    probs = softmax(np.asarray(logits), temperature)
    top = probs.argmax(1)
    out = [{"input": str(x) if not isinstance(x, np.ndarray) else f"array[{i}]", "label": labels[int(k)],
            "confidence": float(probs[i, k])} for i, (x, k) in enumerate(zip(items, top))]
    if top_k > 0:  # the `top_k` most probable labels, most probable first (ties: label order)
        for answer, row in zip(out, probs):
            answer["top_k"] = [{"label": labels[int(j)], "probability": float(row[j])}
                               for j in np.argsort(-row, kind="stable")[:top_k]]
    return out


def labelled_split(data: str, labels: Sequence[str], **columns) -> Split:
    """A labelled file or folder as a Split in the run's label ids; labels the run does not know are an error."""
    from xfer.data.readers import read_labelled

    items, raw = read_labelled(data, **columns)
    index = {lab: i for i, lab in enumerate(labels)}
    unknown = sorted(set(raw) - set(index))
    if unknown:
        raise XferError(f"{data} has labels the model does not know: {unknown[:10]}. Known: {list(labels)}.")
    return Split(list(items), np.array([index[v] for v in raw], dtype=np.int64))
