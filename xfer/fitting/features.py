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
from torch import nn

from xfer.data.task import Split
from xfer.fitting.device import place, run_inference, to_device


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


def cache_key(source_id: str, splits: list[Split], prep: dict, adapt_bn: bool) -> str:
    blob = json.dumps({"source": source_id, "data": [split_fingerprint(s) for s in splits], "prep": prep,
                       "adapt_bn": adapt_bn, "v": 3}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def compute_features(model, loader, accelerator, channels_last: bool = True) -> torch.Tensor:
    place(model, accelerator, channels_last)
    return run_inference(model, model.embed, loader, accelerator, channels_last)


def adapt_batchnorm(model, loader, accelerator, channels_last: bool = True) -> bool:
    """Re-estimate BatchNorm running statistics on the target data (AdaBN, Li et al. 2016); weights unchanged.

    Frozen-backbone features are then computed with statistics of the target domain (MNIST digits are far from
    ImageNet's), and a later fine-tuning phase that switches BN to batch statistics does not shift the features
    under the trained head. Returns False when the model has no BatchNorm.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return False
    place(model, accelerator, channels_last)
    saved = [(m, m.momentum) for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the whole pass
        m.train()
    with torch.no_grad():
        for inputs, _, _ in loader:
            with accelerator.autocast():
                model.embed(to_device(inputs, accelerator.device, channels_last))
    for m, momentum in saved:
        m.momentum = momentum
    model.eval()
    return True


def cached_features(model, loaders: list, accelerator, key: str | None, adapt_bn: bool, log=print,
                    adapt_loader=None) -> list[torch.Tensor]:
    """Features of each loader's data: read from the cache when `key` is there, else computed (after AdaBN on
    `adapt_loader`, default the first loader, when `adapt_bn`) and stored with the adapted BatchNorm statistics,
    which the model also needs for any later fine-tuning phase."""
    from safetensors.torch import load_file, save_file

    path = cache_dir() / f"{key}.safetensors" if key else None
    if path is not None and path.exists():
        try:
            stored = load_file(str(path))
            bn_state = {k[3:]: v for k, v in stored.items() if k.startswith("bn.")}
            model.load_state_dict(bn_state, strict=False)
            log(f"features: read from cache {path.name}")
            return [stored[f"part{i}"] for i in range(len(loaders))]
        except Exception:  # a damaged or outdated cache entry is recomputed, never trusted
            path.unlink(missing_ok=True)
    start = time.perf_counter()
    adapted = adapt_bn and adapt_batchnorm(model, adapt_loader or loaders[0], accelerator)
    parts = [compute_features(model, loader, accelerator) for loader in loaders]
    log(f"features: {' + '.join(str(tuple(p.shape)) for p in parts)} in {time.perf_counter() - start:.1f}s"
        + (" (BatchNorm statistics re-estimated on the target data)" if adapted else ""))
    from xfer.fitting.distributed import is_main

    if path is not None and is_main():  # several processes computed the same features; one stores them
        tensors = {f"part{i}": p.contiguous() for i, p in enumerate(parts)}
        if adapted:
            tensors.update({f"bn.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()
                            if "running_" in k or "num_batches_tracked" in k})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file(tensors, str(tmp))
        os.replace(tmp, path)
    return parts


def frozen_layer_outputs(model, loader, accelerator, start: int) -> list[torch.Tensor]:
    """Per example, the hidden states after the first `start` encoder layers (real tokens only): computed once for
    a phase in which those layers are frozen and deterministic (models.frozen_prefix), then fed to the layers above
    every epoch. Same values as the full forward pass computes, in the same precision."""
    from xfer.models import encoder_layers

    place(model, accelerator, False)
    out: list[torch.Tensor | None] = [None] * len(loader.dataset)
    was_training = model.training
    model.eval()
    with torch.no_grad():  # not inference_mode: these tensors become inputs that autograd saves for backward
        for inputs, _, idx in loader:
            inputs = to_device(inputs, accelerator.device, False)
            with accelerator.autocast():
                hidden = encoder_layers(model.backbone, None, inputs["attention_mask"], 0, start,
                                        input_ids=inputs["input_ids"])
            hidden = hidden.cpu()
            for row, i in enumerate(idx.tolist()):
                out[i] = hidden[row, :int(inputs["attention_mask"][row].sum())].clone()
    model.train(was_training)
    return out


def probe_features(model, train_loader, val_loader, accelerator, key: str | None, adapt_bn: bool, log=print):
    """Train and validation features for a head-only phase (AdaBN on the training data first)."""
    return tuple(cached_features(model, [train_loader, val_loader], accelerator, key, adapt_bn, log))
