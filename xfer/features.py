"""Frozen-backbone features, computed once and cached on disk.

A linear probe (and the first phase of LP-FT) only trains the head, so the backbone's pooled features are computed
once per (source, data, preprocessing) and every later epoch, run or search trial reads them back.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from xfer.data.task import Split


def cache_dir() -> Path:
    return Path(os.environ.get("XFER_CACHE_DIR", Path.home() / ".cache" / "xfer")) / "features"


def split_fingerprint(split: Split) -> str:
    """Content hash of a split: array bytes, text, or path + size + mtime of each image file."""
    h = hashlib.sha256()
    for item in split.items:
        if isinstance(item, np.ndarray):
            h.update(item.tobytes())
        elif isinstance(item, str):
            h.update(item.encode("utf-8"))
            h.update(b"\0")
        else:
            st = Path(item).stat()
            h.update(f"{item}|{st.st_size}|{st.st_mtime_ns}".encode())
    h.update(split.labels.tobytes())
    return h.hexdigest()


def cache_key(source_id: str, split: Split, prep: dict) -> str:
    blob = json.dumps({"source": source_id, "data": split_fingerprint(split), "prep": prep, "v": 1}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def compute_features(model, loader, accelerator, channels_last: bool = True) -> torch.Tensor:
    from xfer.train import to_device

    was_training = model.training
    model.eval()
    model.to(accelerator.device)  # outside inference mode: parameters must stay trainable tensors
    if channels_last and model.modality == "image":
        model.to(memory_format=torch.channels_last)
    out = None
    with torch.inference_mode():
        for inputs, _, idx in loader:
            with accelerator.autocast():
                f = model.embed(to_device(inputs, accelerator.device, channels_last)).float().cpu()
            if out is None:
                out = torch.empty(len(loader.dataset), f.shape[1])
            out[idx] = f
    model.train(was_training)
    return out


def cached_features(model, loader, accelerator, key: str | None, log=print) -> torch.Tensor:
    """Features for `loader`'s split: read from the cache when `key` is there, else computed and stored."""
    from safetensors.torch import load_file, save_file

    path = cache_dir() / f"{key}.safetensors" if key else None
    if path is not None and path.exists():
        try:
            return load_file(str(path))["features"]
        except Exception:  # a damaged cache entry is recomputed, never trusted
            path.unlink(missing_ok=True)
    start = time.perf_counter()
    feats = compute_features(model, loader, accelerator)
    log(f"features: {tuple(feats.shape)} in {time.perf_counter() - start:.1f}s")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({"features": feats.contiguous()}, str(tmp))
        os.replace(tmp, path)
    return feats
