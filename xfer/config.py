"""Every option of a fit, in one dataclass: defaults, YAML files and command-line overrides meet here."""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable

import yaml

from xfer.errors import XferError

OPTIMIZERS = ("adamw", "adam", "sgd")
PRECISIONS = ("auto", "bf16", "fp16", "no")
BN_POLICIES = ("auto", "frozen", "train")
TRACKERS = ("tensorboard", "mlflow", "wandb")  # experiment trackers of --log-with (fitting/tracking.py)

# Defaults that depend on the modality; None in FitConfig means "take these".
MODALITY_DEFAULTS = {
    "image": {"strategy": "lp-ft", "epochs": 5, "lr": 1e-3, "peft_lr": 3e-3, "batch_size": 64, "lp_epochs": 10,
              "lp_lr": 3e-3, "dropout": 0.0, "freeze_embeddings": False, "encoder_dropout": None},
    "text": {"strategy": "lp-ft", "epochs": 2, "lr": 1e-4, "peft_lr": 1e-3, "batch_size": 32, "lp_epochs": 10,
             "lp_lr": 3e-3, "dropout": 0.1, "freeze_embeddings": True, "encoder_dropout": 0.0},
}
# Text rendered as images for an image source: the image defaults, but letters are far from ImageNet's features,
# so the whole network trains from the start (docs/cross-modal.md: full fine-tuning beat lp-ft and layer decay on
# both data sets), for 2 epochs (a 128 px MobileNet-V2 epoch of Rotten Tomatoes takes ~3 minutes on 2 cores).
MODALITY_DEFAULTS["text-as-image"] = {**MODALITY_DEFAULTS["image"], "strategy": "full", "epochs": 2}


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
    text_as_image: bool | None = None  # render texts as images for an image source (None: whenever one meets text)
    render_size: int = 128  # text as image: canvas side in pixels
    render_font_size: int = 11  # text as image: font size in pixels
    render_max_chars: int = 400  # text as image: characters kept per text
    render_mode: str = "L"  # text as image: L (grey, 1 channel) or RGB
    # source and transfer
    source: str | None = None  # None: the best offline source for the data's modality
    arch: str | None = None  # timm architecture for file: sources
    allow_partial_transfer: bool = False
    # strategy
    strategy: str | None = None  # None: lp-ft, or full for text rendered for an image source
    epochs: int | None = None
    lr: float | None = None
    lp_epochs: int | None = None
    lp_lr: float | None = None
    partial_blocks: int = 2
    top_blocks: int | None = None  # fine-tuning phases train only the top N blocks and the head (None: all)
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
    # robustness (docs/security.md)
    defence: str | None = None  # input defence saved with the run, applied by predict/eval/robust (blur, jpeg, ...)
    defence_draws: int = 8  # randomised defences: predictions averaged over this many draws
    noise_sigma: float | None = None  # Gaussian noise on training pixels (base model for randomised smoothing)
    adversarial: str | None = None  # adversarial fine-tuning: fgsm | pgd examples in every training batch
    adv_eps: float = 0.1  # adversarial fine-tuning: L-inf radius in [0, 1] pixel units
    adv_steps: int = 5  # adversarial fine-tuning: PGD steps per batch
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
    processes: int = 1  # training processes on this machine (data parallel: gloo on CPUs, NCCL on GPUs)
    cache_frozen_layers: bool = True  # text: compute frozen lower encoder layers once, train the layers above
    time_budget: float | None = None  # seconds of training (all phases); a phase stops when it is spent
    seed: int = 0
    # evaluation and output
    baseline: bool = False  # also train the same architecture from scratch with the same budget
    out: str | None = None
    overwrite: bool = False
    checkpoint: bool = True  # keep a checkpoint after every epoch beside the run folder, for --resume
    resume: bool = False  # continue an interrupted fit from its checkpoint (same options, same --out)
    quiet: bool = False
    log_with: str | None = None  # experiment trackers, comma-separated: tensorboard, mlflow, wandb (or none)
    log_dir: str | None = None  # where trackers write (None: logs/ beside the run folder)

    def __post_init__(self) -> None:
        # Every FitConfig is checked where it is made (flags, YAML, Python, a search's trial), before any data or
        # weights are loaded; whole numbers given where a float is expected are converted.
        for name, value in check_options(asdict(self)).items():
            object.__setattr__(self, name, value)

    def resolved(self, modality: str) -> "FitConfig":
        """Fill modality-dependent defaults (epochs, rates, batch size) left as None."""
        defaults = MODALITY_DEFAULTS[modality]
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def to_dict(self) -> dict:
        return asdict(self)


FIELDS = {f.name for f in fields(FitConfig)}
# Options that change nothing that is computed: a run made with other values of these is still the same run.
RESUME_FREE = frozenset({"out", "overwrite", "resume", "quiet", "checkpoint", "num_workers", "cache_frozen_layers"})
RESUME_FREE |= {"log_with", "log_dir"}  # trackers watch a fit; they change nothing in it
COMPARE_STRATEGIES = ("linear-probe", "lp-ft", "full", "layer-decay", "l2-sp", "bitfit", "lora")


def read_yaml_mapping(path: str | Path, what: str = "Config file") -> dict:
    """A YAML file holding a mapping, or a one-paragraph error that says what is wrong with it."""
    path = Path(path)
    if not path.exists():
        raise XferError(f"{what} {path} does not exist.")
    if not path.is_file():
        raise XferError(f"{what} {path} is a folder, not a file. Give the path of a .yaml file.")
    try:
        loaded = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise XferError(f"{what} {path} is not UTF-8 text (byte {e.start}). Save it as UTF-8.") from e
    except OSError as e:
        raise XferError(f"{what} {path} cannot be read: {e.strerror or e}.") from e
    except yaml.YAMLError as e:
        raise XferError(f"{what} {path} is not valid YAML: {e}") from e
    if loaded is None:
        return {}
    if not isinstance(loaded, dict) or not all(isinstance(k, str) for k in loaded):
        raise XferError(f"{what} {path} must be a mapping of option: value (got {type(loaded).__name__}).")
    return loaded


def make_config(config_file: str | Path | None = None, **overrides) -> FitConfig:
    """Defaults, then the YAML file, then explicit overrides (None means "not given")."""
    values: dict = {}
    if config_file is not None:
        values.update(read_yaml_mapping(config_file))
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
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return None if value is None else float(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(value))
    if not m:
        raise XferError(f"Cannot read the duration {value!r}: give seconds (300), or 90s, 5m, 1.5h.")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


# What each option accepts beyond its type: a test of the value and the words for the error message.
_positive = (lambda v: v > 0, "greater than 0")
_at_least_1 = (lambda v: v >= 1, "at least 1")
_at_least_0 = (lambda v: v >= 0, "at least 0")
_fraction = (lambda v: 0 <= v < 1, "at least 0 and below 1")
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "shots": _at_least_1, "val_fraction": (lambda v: 0 < v < 1, "between 0 and 1 (exclusive)"),
    "test_fraction": (lambda v: 0 < v < 1, "between 0 and 1 (exclusive)"),
    "image_size": (lambda v: 16 <= v <= 4096, "between 16 and 4096 pixels (a CNN needs at least 16 px)"),
    "max_length": (lambda v: 4 <= v <= 8192, "between 4 and 8192 tokens"),
    "render_size": (lambda v: 16 <= v <= 1024, "between 16 and 1024 pixels"),
    "render_font_size": (lambda v: 4 <= v <= 256, "between 4 and 256 pixels"),
    "render_max_chars": _at_least_1,
    "epochs": _at_least_1, "lr": _positive, "lp_epochs": _at_least_1, "lp_lr": _positive,
    "partial_blocks": _at_least_1, "top_blocks": _at_least_1, "dropout": _fraction, "encoder_dropout": _fraction,
    "layer_decay": (lambda v: 0 < v <= 1, "above 0 and at most 1"), "unfreeze_factor": (lambda v: v >= 1, "at least 1"),
    "l2sp_alpha": _at_least_0, "l2sp_beta": _at_least_0, "peft_lr": _positive, "lora_r": _at_least_1,
    "lora_alpha": _positive, "lora_dropout": _fraction, "batch_size": (lambda v: 1 <= v <= 65536, "between 1 and 65536"),
    "weight_decay": _at_least_0, "warmup": (lambda v: 0 <= v <= 1, "between 0 and 1"), "label_smoothing": _fraction,
    "grad_clip": _at_least_0, "patience": _at_least_0, "grad_accum": _at_least_1, "min_steps": _at_least_0,
    "num_workers": _at_least_0, "processes": (lambda v: 1 <= v <= 1024, "between 1 and 1024"), "time_budget": _positive, "defence_draws": _at_least_1,
    "noise_sigma": (lambda v: 0 < v <= 2, "above 0 and at most 2 (pixel units)"),
    "adv_eps": (lambda v: 0 < v <= 1, "above 0 and at most 1 (pixel units)"), "adv_steps": _at_least_1, "seed": (lambda v: 0 <= v < 2**32, "between 0 and 2^32 - 1"),
    "log_with": (lambda v: all(p.strip().lower() in ("none", *TRACKERS) for p in v.split(",")),
                 "none or comma-separated names among " + ", ".join(TRACKERS)),
}
CHOICES = {"optimizer": OPTIMIZERS, "precision": PRECISIONS, "bn_policy": BN_POLICIES, "render_mode": ("L", "RGB"),
           "adversarial": ("fgsm", "pgd")}


def _kind(annotation) -> tuple[type, bool]:
    """(base type, None allowed) from a FitConfig field's annotation such as 'int | None'."""
    text = str(annotation)
    base = next(t for t in (bool, int, float, str) if t.__name__ in text)
    return base, "None" in text


def check_options(values: dict) -> dict:
    """Type and range of every option in `values`, all problems reported at once. Returns the values to convert
    (a whole number given for a float option)."""
    kinds = {f.name: _kind(f.type) for f in fields(FitConfig)}
    problems, converted = [], {}
    for name, value in values.items():
        if name not in kinds:
            continue
        base, optional = kinds[name]
        flag = f"{name} (--{name.replace('_', '-')})"
        if value is None:
            if not optional:
                problems.append(f"{flag} needs a value")
            continue
        if name == "time_budget" and isinstance(value, str):  # 90s, 5m, 1.5h
            value = converted[name] = parse_duration(value)
        if base is bool:
            ok = isinstance(value, bool)
        elif base is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif base is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if ok and isinstance(value, int):
                converted[name] = float(value)
        else:
            ok = isinstance(value, str)
        if not ok:
            want = {bool: "true or false", int: "a whole number", float: "a finite number", str: "text"}[base]
            problems.append(f"{flag} must be {want}, got {value!r} ({type(value).__name__})")
            continue
        if name in RULES and not RULES[name][0](value):
            problems.append(f"{flag} must be {RULES[name][1]}, got {value!r}")
        if name in CHOICES and value not in CHOICES[name]:
            problems.append(f"{flag} must be one of {', '.join(CHOICES[name])}, got {value!r}")
    vf, tf = values.get("val_fraction"), values.get("test_fraction")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (vf, tf)) and vf + tf >= 1:
        problems.append(f"val_fraction + test_fraction must leave training examples (below 1), got {vf} + {tf}")
    if problems:
        raise XferError("Invalid option" + ("s" if len(problems) > 1 else "") + ": " + "; ".join(problems) + ".")
    return converted


HELP = {
    "data": "image folder (one sub-folder per class), .csv/.tsv/.jsonl/.parquet/.arrow/.feather table, "
            "builtin:mnist5k|rotten_tomatoes|reuters_r8, or hf:<dataset>[:config]",
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
    "text_as_image": "render texts as images so an image source can classify them (default: whenever an image "
                     "source meets text data); --no-text-as-image makes that an error instead",
    "render_size": "text as image: canvas side in pixels (also the default --image-size)",
    "render_font_size": "text as image: font size in pixels (DejaVu Sans)",
    "render_max_chars": "text as image: characters kept per text; the rest is cut (and counted)",
    "render_mode": "text as image: L (grey, one channel) or RGB",
    "source": "source to transfer from (see `xfer sources`); default: best offline source for the modality",
    "arch": "timm architecture for a file: source",
    "allow_partial_transfer": "accept a transfer that fills less than half of the backbone",
    "strategy": "linear-probe | full | partial | lp-ft | layer-decay | gradual-unfreeze | l2-sp | bitfit | lora | wise-ft",
    "epochs": "full-network epochs (image 5, text 2)",
    "lr": "peak learning rate of full-network phases (image 1e-3, text 1e-4)",
    "lp_epochs": "linear-probe epochs on cached features (10)",
    "lp_lr": "linear-probe learning rate (3e-3)",
    "partial_blocks": "partial: how many of the last backbone blocks train",
    "top_blocks": "fine-tuning phases (lp-ft, full, layer-decay, l2-sp, wise-ft) train only the top N backbone "
                  "blocks (text: encoder layers; their frozen lower layers then run once, see cache-frozen-layers) and "
                  "the head (default: all)",
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
    "defence": "input defence saved in the run and applied by predict/eval/robust: blur[:sigma], bits[:n], "
               "jpeg[:quality], resize-pad (images); lookalikes, spelling, token-dropout[:p] (text)",
    "defence_draws": "randomised defences (resize-pad, token-dropout): predictions averaged over this many draws",
    "noise_sigma": "fine-tune on images with Gaussian noise of this sigma (pixels in [0, 1]): the base model of "
                   "randomised smoothing (`xfer robust --certify`); the run then predicts as the smoothed "
                   "classifier (defence noise:sigma, averaged over --defence-draws) unless --defence says otherwise",
    "adversarial": "adversarial fine-tuning: fgsm | pgd examples replace every training batch",
    "adv_eps": "adversarial fine-tuning: L-infinity radius in pixel units (0-1)",
    "adv_steps": "adversarial fine-tuning: PGD steps per batch",
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
    "processes": "train with this many processes (data parallel, same global batch; gloo on CPUs, NCCL on GPUs); "
                 "several machines: start `torchrun ... -m xfer.cli fit ...` on each (docs/performance.md)",
    "cache_frozen_layers": "text: when the lower encoder layers are frozen (top-blocks, partial), compute their "
                           "outputs once and train only the layers above (same result, fewer FLOPs)",
    "seed": "random seed (splits, initialisation, batches)",
    "baseline": "also train the same architecture from scratch with the same budget and report the gain",
    "out": "run folder (default: runs/<data>-<source>-<strategy>-<time>)",
    "overwrite": "replace an existing run folder",
    "checkpoint": "keep a checkpoint after every epoch (<out>.checkpoint), removed when the run is saved",
    "resume": "continue an interrupted fit from <out>.checkpoint (same options and --out)",
    "quiet": "print nothing but errors",
    "log_with": "log the config, every epoch and the final metrics to experiment trackers: tensorboard, mlflow, "
                "wandb (comma-separated; none: off)",
    "log_dir": "folder the trackers write to (default: logs/ beside the run folder, e.g. runs/logs; MLflow: "
               "mlflow.db there unless MLFLOW_TRACKING_URI is set)",
}
