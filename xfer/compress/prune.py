"""Structured pruning of a fine-tuned run, then a short recovery fine-tune on the run's own data.

Whole channels, FFN units and attention heads are removed (DepGraph, Fang et al., CVPR 2023, through
torch-pruning), so the result is a smaller dense network that is faster on any device without sparse kernels.
Each prunable layer loses the same fraction (`ratio`, L2 magnitude of each coupled group, no global ranking), the
classifier keeps one output per class, and what changed is recorded in the spec (`spec["pruned"]`) so `xfer.load`
rebuilds the pruned shapes from the original architecture (`models.apply_pruned`).
"""

from __future__ import annotations

import copy
import shutil
from numbers import Real
from pathlib import Path
from typing import Callable

from torch import nn

from xfer.compress.retrain import retrain, run_datasets, run_task
from xfer.compress.variant import Compressed
from xfer.data.loaders import batches
from xfer.errors import XferError
from xfer.fitting.fit import evaluate
from xfer.models import TransferModel, has_lora, shape_attributes
from xfer.runs.folder import RunFolder
from xfer.runs.run import Run


def prune_model(model: TransferModel, example_inputs, ratio: float) -> dict:
    """Remove `ratio` of the channels of every prunable layer of `model`, in place, and say what it cost.

    Image backbones lose conv channels (depthwise convs and residual additions follow their producers); text
    encoders lose FFN units and whole attention heads, while the hidden size (the residual stream and the
    embeddings) is kept. `example_inputs` is one real batch (a tensor, or the tokenised dict for text): the
    dependency graph is traced from it and MACs are counted on it. Every parameter is left trainable.
    """
    _check_ratio(ratio)
    if has_lora(model):
        raise XferError("This run keeps unmerged LoRA adapters; pruning needs plain layers, since removing channels "
                        "of a layer must also remove them from its adapter. Merge them first with "
                        "`xfer export RUN --out DIR` (it folds the adapters into the weights) and prune DIR.")
    import torch_pruning as tp

    # The graph is traced through autograd: a frozen layer would be invisible to it.
    model.requires_grad_(True)
    model.eval()
    macs_before, params_before = tp.utils.count_ops_and_params(model, (example_inputs,))
    width = model.head.in_features
    options, attention = (_image_options(model) if model.modality == "image" else _text_options(model, ratio))
    pruner = tp.pruner.BasePruner(
        model, example_inputs, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
        global_pruning=False, forward_fn=lambda m, x: m(x),
        # Fresh dicts: torch-pruning's defaults are shared mutable dicts that would outlive this call.
        in_channel_groups={}, out_channel_groups={}, **options)
    pruner.step()
    for module in attention:  # the layer reshapes by head size; its head count must match its narrower q/k/v
        module.num_attention_heads = pruner.num_heads[module.query]
        module.all_head_size = module.query.out_features
    for key in ("num_features", "head_hidden_size"):  # timm's declared feature width stays true
        if getattr(model.backbone, key, None) == width:
            setattr(model.backbone, key, model.head.in_features)
    macs_after, params_after = tp.utils.count_ops_and_params(model, (example_inputs,))
    return {"ratio": ratio, "params_before": int(params_before), "params_after": int(params_after),
            "macs_before": int(macs_before), "macs_after": int(macs_after)}


def prune_run(run: Run, ratio: float, recover_epochs: int = 1, lr: float | None = None,
              log: Callable[[str], None] | None = None) -> Compressed:
    """A pruned copy of `run` (the run itself is left as it was), fine-tuned for `recover_epochs` on the run's own
    training data (0: no recovery, only measured), with val/test metrics on the run's own splits."""
    _check_ratio(ratio)
    if isinstance(recover_epochs, bool) or not isinstance(recover_epochs, int) or recover_epochs < 0:
        raise XferError(f"The number of recovery epochs must be a whole number >= 0 (0: no recovery fine-tune), "
                        f"got {recover_epochs!r}.")
    log = log or (lambda msg: None)
    cfg, task = run_task(run)
    datasets = run_datasets(run, task)
    inputs, _, _ = next(iter(batches(datasets["train"], 1, shuffle=False)))  # MACs are counted per example

    model = copy.deepcopy(run.model).cpu()
    before = shape_attributes(model)
    report = prune_model(model, inputs, ratio)
    changed = _changed(before, shape_attributes(model))
    log(f"pruned {ratio:.0%} of each prunable layer's width: {report['params_before']:,} -> {report['params_after']:,} "
        f"parameters, {report['macs_before']:,} -> {report['macs_after']:,} MACs per example")

    if recover_epochs:
        metrics = retrain(model, cfg, datasets, task.labels, epochs=recover_epochs, lr=lr, log=log)
    else:
        metrics = evaluate(model, datasets, task.labels, cfg)
    model.cpu().eval()
    metrics["params"] = sum(p.numel() for p in model.parameters())

    previous = run.spec.get("pruned") or {}  # pruning a pruned run: its widths are relative to the original
    attributes = {name: {**previous.get("attributes", {}).get(name, {}), **changed.get(name, {})}
                  for name in {**previous.get("attributes", {}), **changed}}
    spec = {**run.spec, "pruned": {"ratio": ratio, "attributes": attributes}}
    report.update(recover_epochs=recover_epochs, lr=(lr if lr is not None else cfg.lr) if recover_epochs else None)
    backbone = _copy_backbone(RunFolder(run.path).backbone) if run.spec["modality"] == "text" else None
    return Compressed(f"pruned-{ratio:g}", model, spec, metrics, report, backbone)


def _check_ratio(ratio) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, Real) or not 0 < ratio < 1:
        raise XferError(f"The pruning ratio is the fraction of each layer's channels to remove, strictly between 0 "
                        f"and 1, got {ratio!r}. Use e.g. `--prune 0.3` to remove 30% (0.2-0.5 usually recovers "
                        f"well after a short fine-tune).")


def _image_options(model: TransferModel) -> tuple[dict, list]:
    if any(hasattr(m, "num_heads") for m in model.backbone.modules()):
        raise XferError("Pruning supports convolutional image backbones (MobileNet, EfficientNet, ResNet...); this "
                        "run's backbone has attention layers (a ViT or a hybrid), whose heads it cannot prune yet. "
                        "Use int8 quantisation or distillation to compress it instead.")
    # Channel counts stay multiples of 8: oneDNN and ONNX Runtime vectorise convolutions in blocks of 8 or 16
    # channels, and odd widths made a 30%-pruned MobileNet-V2 slower than the original at batch 32 (measured).
    return {"ignored_layers": [model.head], "round_to": 8}, []


def _text_options(model: TransferModel, ratio: float) -> tuple[dict, list]:
    """Only the FFN up-projections and the BERT-style q/k/v projections lead a group: every other Linear is
    ignored, which keeps the hidden size (its group also holds those ignored output projections)."""
    attention = [m for m in model.backbone.modules() if hasattr(m, "num_attention_heads")
                 and all(isinstance(getattr(m, n, None), nn.Linear) for n in ("query", "key", "value"))]
    heads = {layer: m.num_attention_heads for m in attention for layer in (m.query, m.key, m.value)}
    width = getattr(model.backbone.config, "intermediate_size", None)
    ffn = {m for m in model.backbone.modules() if isinstance(m, nn.Linear) and m.out_features == width} - set(heads)
    if not attention and not ffn:
        raise XferError(f"Pruning supports BERT-style text encoders (query/key/value attention, an intermediate "
                        f"FFN layer); this run's {type(model.backbone).__name__} has neither. Use distillation or "
                        f"int8 quantisation to compress it instead.")
    ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and m not in heads and m not in ffn]
    # Whole heads go (head size and attention scaling stay); at least one head is always kept.
    fewest = min((m.num_attention_heads for m in attention), default=1)
    head_ratio = min(ratio, (fewest - 1) / fewest - 1e-6) if fewest > 1 else 0.0
    return {"ignored_layers": ignored, "num_heads": heads, "prune_num_heads": head_ratio > 0,
            "prune_head_dims": False, "head_pruning_ratio": max(head_ratio, 0.0)}, attention


def _changed(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict]:
    """The attributes that pruning changed, per module: what `apply_pruned` sets on a fresh architecture."""
    out = {}
    for name, attributes in after.items():
        diff = {k: v for k, v in attributes.items() if before.get(name, {}).get(k) != v}
        if diff:
            out[name] = diff
    return out


def _copy_backbone(source: Path) -> Callable[[Path], None]:
    """A text run's encoder config and tokenizer, copied as they are: the pruned widths live in the spec."""
    def write(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for f in sorted(source.iterdir()):
            if f.is_file():
                shutil.copy2(f, Path(folder) / f.name)
    return write
