"""The target network: a source backbone plus a new linear head for the task's labels.

One wrapper for both modalities, so the training loop only ever sees "inputs in, logits out" and strategies can name
parameters as `backbone.*` and `head.*`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from xfer.errors import XferError


class TransferModel(nn.Module):
    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int, modality: str, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.modality = modality
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(num_features, num_classes)

    def embed(self, inputs) -> torch.Tensor:
        """Pooled features: what a linear probe sees and what the feature cache stores.

        Text inputs are token ids, or the hidden states after the first `start` encoder layers (keys
        `hidden_states`, `attention_mask`, `start`): a phase whose lower layers are frozen computes those once and
        runs only the layers above them (`encoder_layers` below).
        """
        if self.modality == "image":
            return self.backbone(inputs)
        if "hidden_states" in inputs:
            hidden = encoder_layers(self.backbone, inputs["hidden_states"], inputs["attention_mask"],
                                    inputs["start"], None)
        else:
            hidden = self.backbone(input_ids=inputs["input_ids"],
                                   attention_mask=inputs["attention_mask"]).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        # Mean pooling over real tokens: how sentence-transformers trained MiniLM's embeddings.
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def forward(self, inputs) -> torch.Tensor:
        return self.head(self.dropout(self.embed(inputs)))


def stacked_layers(backbone: nn.Module) -> nn.ModuleList | None:
    """The encoder's layer list of a BERT-style transformers model (embeddings, then `encoder.layer`), else None:
    the models whose lower layers' outputs can be cached and fed to the upper ones."""
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    return layers if isinstance(layers, nn.ModuleList) and hasattr(backbone, "embeddings") else None


def encoder_layers(backbone: nn.Module, hidden: torch.Tensor | None, attention_mask: torch.Tensor, start: int,
                   stop: int | None, input_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Hidden states after encoder layers [start, stop) of a BERT-style encoder; from the token embeddings when
    `input_ids` are given (start 0). The same computation as the model's own forward pass, split at a layer."""
    from transformers.masking_utils import create_bidirectional_mask

    if input_ids is not None:
        hidden = backbone.embeddings(input_ids=input_ids)
    mask = create_bidirectional_mask(config=backbone.config, inputs_embeds=hidden, attention_mask=attention_mask)
    for layer in stacked_layers(backbone)[start:stop]:
        hidden = layer(hidden, mask)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return hidden


def frozen_prefix(model: TransferModel, trainable: set[str] | frozenset[str]) -> int:
    """How many lower encoder layers can be computed once for a phase that trains `trainable`: none of their
    parameters (nor the embeddings') train. Frozen layers run without dropout (`loop.set_trainable`), so their
    outputs are fixed. 0 when the model is not a BERT-style text encoder, or its embeddings train."""
    layers = stacked_layers(model.backbone) if model.modality == "text" else None
    training = {id(p) for n, p in model.named_parameters() if n in trainable}
    if layers is None or any(id(p) in training for p in model.backbone.embeddings.parameters()):
        return 0
    k = 0
    for layer in layers:
        if any(id(p) in training for p in layer.parameters()):
            break
        k += 1
    return min(k, len(layers) - 1)  # at least one layer stays on top: the last one alone means a linear probe


def build_image_model(arch: str, num_classes: int, in_chans: int = 3, dropout: float = 0.0,
                      image_size: int | None = None) -> TransferModel:
    """A timm backbone without its classifier (it returns pooled features) and a fresh head.

    Networks with a fixed input size (ViTs) are built for `image_size`; `transfer` then resizes their position
    embeddings. Convolutional networks take any size and ignore it.
    """
    import timm

    kwargs = {}
    cfg = timm.models.get_pretrained_cfg(arch)
    if image_size and cfg is not None and cfg.fixed_input_size:
        kwargs["img_size"] = image_size
    backbone = timm.create_model(arch, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)
    return TransferModel(backbone, backbone.num_features, num_classes, "image", dropout)


def build_text_model(config_dir: Path, num_classes: int, dropout: float = 0.1,
                     encoder_dropout: float | None = None, num_layers: int | None = None) -> TransferModel:
    """A transformers encoder built from its config alone (no download), weights come later from `transfer`.

    `encoder_dropout` overrides the encoder's own hidden/attention dropout: at 0 a CPU step skips the random
    masks (~20% of a MiniLM step). `num_layers` keeps only the first layers of the encoder (a distillation
    student); name matching then copies those layers from the source and leaves the rest of it unused.
    """
    from transformers import AutoConfig, AutoModel

    from xfer.sources import refuse_remote_code

    refuse_remote_code(config_dir)
    config = AutoConfig.from_pretrained(str(config_dir), trust_remote_code=False)
    if encoder_dropout is not None:
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
            if hasattr(config, name):
                setattr(config, name, encoder_dropout)
    if num_layers is not None:
        if not 1 <= num_layers <= config.num_hidden_layers:
            raise XferError(f"The encoder in {config_dir} has {config.num_hidden_layers} layers; cannot keep "
                            f"{num_layers}. Give a number of layers between 1 and {config.num_hidden_layers}.")
        config.num_hidden_layers = num_layers
    # On the CPU, SDPA's fused attention backward is several times slower than the plain (eager) path for short
    # sequences (measured: ~47% of a MiniLM step); GPUs keep SDPA.
    extra = {"attn_implementation": "sdpa" if torch.cuda.is_available() else "eager"}
    if config.model_type == "bert":
        extra["add_pooling_layer"] = False
    backbone = AutoModel.from_config(config, **extra)
    return TransferModel(backbone, config.hidden_size, num_classes, "text", dropout)


def layer_ids(model: TransferModel, coarse: bool = False) -> dict[str, int]:
    """Depth of every parameter, 0 at the input; the head is one layer above the deepest backbone layer.

    Computed over all parameters, frozen or not, so freezing a part never shifts the depths (the pitfall of
    computing layer-decay groups from trainable parameters only). Image backbones use timm's own grouping (`coarse`:
    stages, else blocks); transformer encoders use the encoder layer index, embeddings at 0.
    """
    backbone = model.backbone
    if model.modality == "image":
        from timm.models import group_parameters

        ids = group_parameters(backbone, backbone.group_matcher(coarse=coarse), reverse=True)
        ids = {f"backbone.{n}": int(i) for n, i in ids.items()}
    else:
        def depth(name: str) -> int:
            m = re.search(r"\.layers?\.(\d+)\.", name)
            if m:
                return int(m.group(1)) + 1
            return 0 if "embed" in name else 10_000  # final norms and poolers sit on top of the last layer

        raw = {f"backbone.{n}": depth(n) for n, _ in backbone.named_parameters()}
        order = {d: i for i, d in enumerate(sorted(set(raw.values())))}
        ids = {n: order[d] for n, d in raw.items()}
    top = max(ids.values(), default=-1) + 1
    ids.update({n: top for n, _ in model.named_parameters() if n.startswith("head.")})
    return ids


def block_groups(model: TransferModel) -> list[list[str]]:
    """Backbone parameter names grouped by depth, input side first (stem, stages or layers..., final layers).

    Used for "the last k blocks" (partial) and the groups of gradual unfreezing.
    """
    by_id: dict[int, list[str]] = {}
    for n, i in layer_ids(model, coarse=True).items():
        if not n.startswith("head."):
            by_id.setdefault(i, []).append(n)
    return [by_id[k] for k in sorted(by_id)]


def lora_targets(model: TransferModel) -> list[str]:
    """Backbone layers LoRA adapts: every Linear and every ungrouped Conv2d (PEFT cannot merge depthwise convs)."""
    return [n for n, m in model.backbone.named_modules()
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)]


def add_lora(model: TransferModel, options: dict) -> None:
    """Wrap the backbone with PEFT LoRA adapters (Hu et al., ICLR 2022); the head stays a plain layer of the
    TransferModel, so it is trained and saved with the adapters, never dropped."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=options["r"], lora_alpha=options["alpha"], lora_dropout=options["dropout"],
                        target_modules=options.get("targets") or lora_targets(model), bias="none")
    model.backbone = get_peft_model(model.backbone, config)


def has_lora(model: TransferModel) -> bool:
    return hasattr(model.backbone, "merge_and_unload")


def merge_lora(model: TransferModel) -> TransferModel:
    """Fold the adapters into the base weights (W + BA * alpha/r): a plain model, same predictions."""
    if has_lora(model):
        model.backbone = model.backbone.merge_and_unload()
    return model


def build_from_spec(spec: dict, hf_dir: Path | None = None) -> TransferModel:
    """Rebuild a run's architecture from its spec (no source download needed); weights come separately."""
    if spec["modality"] == "image":
        model = build_image_model(spec["arch"], len(spec["labels"]), spec["prep"]["channels"], spec["dropout"],
                                  spec["prep"]["size"])
    else:
        model = build_text_model(hf_dir, len(spec["labels"]), spec["dropout"], spec.get("encoder_dropout"),
                                 spec.get("encoder_layers"))
    if spec.get("lora"):
        add_lora(model, spec["lora"])
    return model


def lora_options(model: TransferModel) -> dict | None:
    """The options of the model's LoRA adapters as a run spec records them, or None without adapters."""
    if not has_lora(model):
        return None
    config = model.backbone.peft_config["default"]
    return {"r": config.r, "alpha": config.lora_alpha, "dropout": config.lora_dropout}


def _is_shape(value) -> bool:
    """An int or a tuple of ints (bools excluded): the kind of attribute that records a layer's width."""
    if isinstance(value, tuple):
        return all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return isinstance(value, int) and not isinstance(value, bool)


def shape_attributes(model: nn.Module) -> dict[str, dict]:
    """Per module name, its public int / tuple-of-int attributes (in_channels, groups, num_features,
    normalized_shape, num_attention_heads, ...). Compared before and after pruning, they say which widths
    changed, which is what a rebuilt architecture needs besides the resized tensors."""
    return {name: {k: v for k, v in vars(module).items() if not k.startswith("_") and _is_shape(v)}
            for name, module in model.named_modules()}


def apply_pruned(model: nn.Module, state: dict[str, torch.Tensor], changed: dict[str, dict]) -> None:
    """Give a freshly built architecture the shapes of its pruned version, so `load_state_dict(state, strict=True)`
    succeeds: the recorded attributes are set back (JSON lists become tuples again) and every parameter or buffer
    whose shape differs from `state` is replaced by an empty tensor of the saved shape (the weights come next)."""
    modules = dict(model.named_modules())
    for name, attributes in changed.items():
        if name not in modules:
            raise XferError(f"The pruned spec names a layer {name!r} that this architecture does not have; the run "
                            f"was pruned from another architecture or xfer version. Prune the original run again.")
        for key, value in attributes.items():
            setattr(modules[name], key, tuple(value) if isinstance(value, list) else value)
    for prefix, module in modules.items():
        for kind in ("_parameters", "_buffers"):
            for key, tensor in list(getattr(module, kind).items()):
                saved = state.get(f"{prefix}.{key}" if prefix else key)
                if tensor is None or saved is None or saved.shape == tensor.shape:
                    continue
                new = torch.empty(saved.shape, dtype=tensor.dtype, device=tensor.device)
                if kind == "_parameters":
                    new = nn.Parameter(new, requires_grad=tensor.requires_grad)
                getattr(module, kind)[key] = new
