"""A sample of misclassified test examples, kept with a run so its report can show where the model goes wrong."""

from __future__ import annotations

import numpy as np

from xfer.report.figures import thumbnail

LIMIT = 12
TEXT_CHARS = 400


def misclassified(items, labels, probs: np.ndarray, names, image: bool, limit: int = LIMIT) -> list[dict]:
    """Up to `limit` wrong predictions, most confident first: {"true", "predicted", "confidence"} plus the text
    (cut to TEXT_CHARS) or a small PNG thumbnail as a data URI."""
    labels = np.asarray(labels)
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != labels)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:limit]
    out = []
    for i in wrong:
        row = {"index": int(i), "true": names[int(labels[i])], "predicted": names[int(pred[i])],
               "confidence": float(probs[i, pred[i]])}
        if image:
            try:
                row["image"] = thumbnail(items[i])
            except (OSError, ValueError):  # an unreadable file is shown by name
                row["text"] = str(items[i])
        else:
            text = str(items[i])
            row["text"] = text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS] + "..."
        out.append(row)
    return out
