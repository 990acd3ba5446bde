"""Every option of a fit, in one dataclass: defaults, YAML files and command-line overrides meet here."""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import yaml

from xfer.errors import XferError

# Defaults that depend on the modality; None in FitConfig means "take these".
MODALITY_DEFAULTS = {
    "image": {"epochs": 5, "lr": 1e-3, "batch_size": 64, "lp_epochs": 10, "lp_lr": 3e-3, "dropout": 0.0,
              "freeze_embeddings": False, "encoder_dropout": None},
    "text": {"epochs": 2, "lr": 1e-4, "batch_size": 32, "lp_epochs": 10, "lp_lr": 3e-3, "dropout": 0.1,
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
    # loop
    batch_size: int | None = None
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    warmup: float = 0.1
    label_smoothing: float = 0.0
    grad_clip: float = 1.0
    patience: int = 3
    grad_accum: int = 1
    precision: str = "auto"  # auto | bf16 | fp16 | no
    channels_last: bool = True
    num_workers: int = 0
    seed: int = 0
    # evaluation and output
    baseline: bool = False  # also train the same architecture from scratch with the same budget
    out: str | None = None
    overwrite: bool = False
    quiet: bool = False

    def resolved(self, modality: str) -> "FitConfig":
        """Fill modality-dependent defaults (epochs, rates, batch size) left as None."""
        defaults = MODALITY_DEFAULTS[modality]
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def to_dict(self) -> dict:
        return asdict(self)


FIELDS = {f.name for f in fields(FitConfig)}


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
    cfg = FitConfig(**values)
    if not cfg.data:
        raise XferError("No data given: pass --data (an image folder, a .csv/.tsv/.jsonl file, or builtin:<name>).")
    return cfg


HELP = {
    "data": "image folder (one sub-folder per class), .csv/.tsv/.jsonl table, or builtin:mnist5k|rotten_tomatoes|reuters_r8",
    "val": "explicit validation file (same columns as --data)",
    "test": "explicit test file (same columns as --data)",
    "text_column": "text column of a table (default: text, sentence, review, ...)",
    "image_column": "image path column of a table, relative to the table (default: image, path, file, ...)",
    "label_column": "label column of a table (default: label, class, category, ...)",
    "val_fraction": "validation share of a seeded stratified split, when no validation data is given",
    "test_fraction": "test share of a seeded stratified split, when no test data is given",
    "image_size": "input side in pixels (default: ~2x small images' side, at least 64, rounded up to a multiple of 32; else the source's size)",
    "max_length": "text: maximum tokens per example",
    "source": "source to transfer from (see `xfer sources`); default: best offline source for the modality",
    "arch": "timm architecture for a file: source",
    "allow_partial_transfer": "accept a transfer that fills less than half of the backbone",
    "strategy": "linear-probe | full | partial | lp-ft",
    "epochs": "full-network epochs (image 5, text 2)",
    "lr": "peak learning rate of full-network phases (image 1e-3, text 1e-4)",
    "lp_epochs": "linear-probe epochs on cached features (10)",
    "lp_lr": "linear-probe learning rate (3e-3)",
    "partial_blocks": "partial: how many of the last backbone blocks train",
    "dropout": "dropout before the head (image 0, text 0.1)",
    "encoder_dropout": "text: the encoder's own hidden/attention dropout (default 0: ~1.4x faster CPU steps; see README)",
    "freeze_embeddings": "keep token/position embedding tables fixed while fine-tuning (text: on)",
    "bn_adapt": "re-estimate BatchNorm statistics on the target data before a linear probe (AdaBN)",
    "batch_size": "batch size (image 64, text 32)",
    "optimizer": "adamw | adam | sgd",
    "weight_decay": "weight decay (not on biases and norms)",
    "warmup": "share of each phase's steps spent warming up the learning rate",
    "label_smoothing": "label smoothing of the cross-entropy loss",
    "grad_clip": "clip gradients to this norm (0: off)",
    "patience": "stop a phase after this many epochs without validation gain (0: off)",
    "grad_accum": "gradient accumulation steps",
    "precision": "auto | bf16 | fp16 | no (auto: bf16 where the CPU/GPU supports it)",
    "channels_last": "channels-last memory format for CNNs",
    "num_workers": "data loader worker processes",
    "seed": "random seed (splits, initialisation, batches)",
    "baseline": "also train the same architecture from scratch with the same budget and report the gain",
    "out": "run folder (default: runs/<data>-<source>-<strategy>-<time>)",
    "overwrite": "replace an existing run folder",
    "quiet": "print nothing but errors",
}
