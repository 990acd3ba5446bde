"""Preprocessing in NumPy alone, for runs served by ONNX Runtime without PyTorch.

Each function reproduces the PyTorch path of `loaders.py` exactly (tests compare them value for value): images go
through timm's evaluation transform (resize the shorter side, centre crop, scale to [0, 1], normalise), texts
through the run's own fast tokenizer (`tokenizer.json`, read with the `tokenizers` library).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from xfer.errors import XferError

# PIL's filters by the names timm records in a run's preprocessing.
_FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def image_array(item, prep: dict) -> np.ndarray:
    """One image (a path or an array) as the float32 C x H x W tensor the network reads (prep: spec["prep"])."""
    from PIL import Image

    size, channels = int(prep["size"]), int(prep["channels"])
    try:
        img = Image.fromarray(item) if isinstance(item, np.ndarray) else Image.open(item)
        img = img.convert("L" if channels == 1 else "RGB")
    except OSError as e:
        raise XferError(f"Cannot read image {item if not isinstance(item, np.ndarray) else 'array'}: {e}") from e
    w, h = img.size
    if min(w, h) != size:  # the shorter side to `size`, the longer one scaled and truncated, as torchvision does
        long = int(size * max(w, h) / min(w, h))
        new = (size, long) if w <= h else (long, size)
        img = img.resize(new, _FILTERS.get(prep.get("interpolation", "bicubic"), 3))
        w, h = img.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    x = np.asarray(img, dtype=np.uint8).astype(np.float32) / np.float32(255)
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
    mean = np.asarray(prep["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(prep["std"], dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def image_batch(items: Sequence, prep: dict) -> np.ndarray:
    return np.stack([image_array(it, prep) for it in items])


def load_fast_tokenizer(folder: Path, max_length: int):
    """The run's tokenizer from its `tokenizer.json`, truncating as training did and padding nothing (batches are
    padded to their longest text by `token_batch`)."""
    from tokenizers import Tokenizer

    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise XferError(f"{folder} has no tokenizer.json (a fast tokenizer); serving a text run without PyTorch "
                        f"needs one. Predict with the PyTorch run instead.")
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.enable_truncation(max_length)
    return tok


def token_batch(tokenizer, texts: Sequence[str], pad_id: int = 0) -> dict[str, np.ndarray]:
    """input_ids and attention_mask (int64), padded to the longest text of the batch."""
    encoded = tokenizer.encode_batch(list(texts))
    width = max(len(e.ids) for e in encoded)
    ids = np.full((len(encoded), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(encoded), width), dtype=np.int64)
    for row, e in enumerate(encoded):
        ids[row, :len(e.ids)] = e.ids
        mask[row, :len(e.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask}
