"""Every option of a fit, in one dataclass: defaults, YAML files and command-line overrides meet here."""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import yaml

from xfer.errors import XferError

# Defaults that depend on the modality; None in FitConfig means "take these".
MODALITY_DEFAULTS = {
    "image": {"epochs": 5, "lr": 1e-3, "peft_lr": 3e-3, "batch_size": 64, "lp_epochs": 10, "lp_lr": 3e-3, "dropout": 0.0,
              "freeze_embeddings": False, "encoder_dropout": None},
    "text": {"epochs": 2, "lr": 1e-4, "peft_lr": 1e-3, "batch_size": 32, "lp_epochs": 10, "lp_lr": 3e-3, "dropout": 0.1,
             "freeze_embeddings": True, "encoder_dropout": 0.0},
}


@dataclass(frozen=True)
class FitConfig:
    # data
    data: str = ""
    val: str | None = None
    test: str | None = None
    text_column: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    shots: int | None = None  # few-shot: keep this many training (and validation) examples per class, seeded
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    image_size: int | None = None  # None: ~2x a small image's side (MNIST: 64), else the source's own size
    max_length: int = 128  # text: tokens per example (batches are padded to their longest)
    # source and transfer
    source: str | None = None  # None: the best offline source for the data's modality
    arch: str | None = None  # timm architecture for file: sources
    allow_partial_transfer: bool = False
    # strategy
    strategy: str = "lp-ft"
    epochs: int | None = None
    lr: float | None = None
    lp_epochs: int | None = None
    lp_lr: float | None = None
    partial_blocks: int = 2
    dropout: float | None = None
    encoder_dropout: float | None = None  # text encoders' own dropout; None keeps the source's
    freeze_embeddings: bool | None = None  # keep token/position embedding tables fixed (text default)
    bn_adapt: bool = True  # re-estimate BatchNorm statistics on the target data before a linear probe (AdaBN)
    bn_policy: str = "auto"  # BatchNorm statistics while training: auto | frozen | train
    layer_decay: float = 0.75  # layer-decay: each layer down trains this many times slower
    unfreeze_factor: float = 2.6  # gradual-unfreeze: each group down trains this many times slower (ULMFiT)
    l2sp_alpha: float = 0.01  # l2-sp: pull of transferred weights towards the source
    l2sp_beta: float = 0.01  # l2-sp: weight decay of the new head
    peft_lr: float | None = None  # learning rate of bitfit and lora (image 3e-3, text 1e-3)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    merge: bool = False  # lora: save the adapters folded into the base weights (a plain model)
    # loop
    batch_size: int | None = None
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    warmup: float = 0.1
    label_smoothing: float = 0.0
    grad_clip: float = 1.0
    patience: int = 3
    grad_accum: int = 1
    min_steps: int = 100  # a phase makes at least this many optimizer steps; tiny sets repeat within an epoch
    precision: str = "auto"  # auto | bf16 | fp16 | no
    channels_last: bool = True
    num_workers: int = 0
    time_budget: float | None = None  # seconds of training (all phases); a phase stops when it is spent
    seed: int = 0
    # evaluation and output
    baseline: bool = False  # also train the same architecture from scratch with the same budget
    out: str | None = None
    overwrite: bool = False
    checkpoint: bool = True  # keep a checkpoint after every epoch beside the run folder, for --resume
    resume: bool = False  # continue an interrupted fit from its checkpoint (same options, same --out)
    quiet: bool = False

    def resolved(self, modality: str) -> "FitConfig":
        """Fill modality-dependent defaults (epochs, rates, batch size) left as None."""
        defaults = MODALITY_DEFAULTS[modality]
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def to_dict(self) -> dict:
        return asdict(self)


FIELDS = {f.name for f in fields(FitConfig)}
# Options that change nothing that is computed: a run made with other values of these is still the same run.
RESUME_FREE = frozenset({"out", "overwrite", "resume", "quiet", "checkpoint", "num_workers"})
COMPARE_STRATEGIES = ("linear-probe", "lp-ft", "full", "layer-decay", "l2-sp", "bitfit", "lora")


def make_config(config_file: str | Path | None = None, **overrides) -> FitConfig:
    """Defaults, then the YAML file, then explicit overrides (None means "not given")."""
    values: dict = {}
    if config_file is not None:
        path = Path(config_file)
        if not path.exists():
            raise XferError(f"Config file {path} does not exist.")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise XferError(f"Config file {path} is not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise XferError(f"Config file {path} must be a mapping of option: value.")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(values) - FIELDS)
    if unknown:
        hints = [f"{u} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(u, FIELDS, 1)) else u for u in unknown]
        raise XferError(f"Unknown option(s): {', '.join(hints)}. See `xfer fit --help` for the options.")
    if "time_budget" in values:
        values["time_budget"] = parse_duration(values["time_budget"])
    cfg = FitConfig(**values)
    if not cfg.data:
        raise XferError("No data given: pass --data (an image folder, a .csv/.tsv/.jsonl file, or builtin:<name>).")
    return cfg


def parse_duration(value: str | float | int | None) -> float | None:
    """Seconds from 300, "300s", "5m" or "1.5h"."""
    if value is None or isinstance(value, (int, float)):
        return None if value is None else float(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(value))
    if not m:
        raise XferError(f"Cannot read the duration {value!r}: give seconds (300), or 90s, 5m, 1.5h.")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


HELP = {
    "data": "image folder (one sub-folder per class), .csv/.tsv/.jsonl table, or builtin:mnist5k|rotten_tomatoes|reuters_r8",
    "val": "explicit validation file (same columns as --data)",
    "test": "explicit test file (same columns as --data)",
    "text_column": "text column of a table (default: text, sentence, review, ...)",
    "image_column": "image path column of a table, relative to the table (default: image, path, file, ...)",
    "label_column": "label column of a table (default: label, class, category, ...)",
    "shots": "few-shot: keep only this many training and validation examples per class (seeded; test unchanged)",
    "val_fraction": "validation share of a seeded stratified split, when no validation data is given",
    "test_fraction": "test share of a seeded stratified split, when no test data is given",
    "image_size": "input side in pixels (default: ~2x small images' side, at least 64, rounded up to a multiple of 32; else the source's size)",
    "max_length": "text: maximum tokens per example",
    "source": "source to transfer from (see `xfer sources`); default: best offline source for the modality",
    "arch": "timm architecture for a file: source",
    "allow_partial_transfer": "accept a transfer that fills less than half of the backbone",
    "strategy": "linear-probe | full | partial | lp-ft | layer-decay | gradual-unfreeze | l2-sp | bitfit | lora | wise-ft",
    "epochs": "full-network epochs (image 5, text 2)",
    "lr": "peak learning rate of full-network phases (image 1e-3, text 1e-4)",
    "lp_epochs": "linear-probe epochs on cached features (10)",
    "lp_lr": "linear-probe learning rate (3e-3)",
    "partial_blocks": "partial: how many of the last backbone blocks train",
    "dropout": "dropout before the head (image 0, text 0.1)",
    "encoder_dropout": "text: the encoder's own hidden/attention dropout (default 0: ~1.4x faster CPU steps; see README)",
    "freeze_embeddings": "keep token/position embedding tables fixed while fine-tuning (text: on)",
    "bn_adapt": "re-estimate BatchNorm statistics on the target data before a linear probe (AdaBN)",
    "bn_policy": "BatchNorm statistics: auto (frozen in frozen layers) | frozen (everywhere) | train (everywhere)",
    "layer_decay": "layer-decay: rate multiplier per layer down from the head, lr_l = lr * decay^(L-l)",
    "unfreeze_factor": "gradual-unfreeze: each block group trains this many times slower than the one above",
    "l2sp_alpha": "l2-sp: alpha of alpha/2 ||w - w_source||^2 on transferred weights",
    "l2sp_beta": "l2-sp: beta of beta/2 ||w||^2 on the new head",
    "peft_lr": "learning rate of bitfit and lora (image 3e-3, text 1e-3)",
    "lora_r": "lora: rank of the adapters",
    "lora_alpha": "lora: scaling numerator (updates scaled by alpha/r)",
    "lora_dropout": "lora: dropout on the adapters' input",
    "merge": "lora: save the adapters merged into the base weights",
    "batch_size": "batch size (image 64, text 32)",
    "optimizer": "adamw | adam | sgd",
    "weight_decay": "weight decay (not on biases and norms)",
    "warmup": "share of each phase's steps spent warming up the learning rate",
    "label_smoothing": "label smoothing of the cross-entropy loss",
    "grad_clip": "clip gradients to this norm (0: off)",
    "patience": "stop a phase after this many epochs without validation gain (0: off)",
    "grad_accum": "gradient accumulation steps",
    "min_steps": "each phase makes at least this many optimizer steps: a small training set is repeated within "
                 "an epoch (few-shot); 0: off",
    "precision": "auto | bf16 | fp16 | no (auto: bf16 where the CPU/GPU supports it)",
    "channels_last": "channels-last memory format for CNNs",
    "time_budget": "wall-clock training budget in seconds (or 90s, 5m, 1h): training stops when it is spent",
    "num_workers": "data loader worker processes",
    "seed": "random seed (splits, initialisation, batches)",
    "baseline": "also train the same architecture from scratch with the same budget and report the gain",
    "out": "run folder (default: runs/<data>-<source>-<strategy>-<time>)",
    "overwrite": "replace an existing run folder",
    "checkpoint": "keep a checkpoint after every epoch (<out>.checkpoint), removed when the run is saved",
    "resume": "continue an interrupted fit from <out>.checkpoint (same options and --out)",
    "quiet": "print nothing but errors",
}
