"""From options to a model ready to train: the task (few-shot applied), the verified source, the run spec, the target
model with the source's parameters transferred, and the datasets. `fit`, `xfer rank` and `xfer search` all start
here, so what they train or score is built one way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from torch.utils.data import Dataset

from xfer.config import FitConfig
from xfer.data import load_task
from xfer.data.loaders import ImageBatches, TextBatches, TextPrep, image_prep, load_tokenizer, prep_from_dict
from xfer.data.render import RenderSpec, render_inputs, render_task
from xfer.data.task import Split, Task, few_shot
from xfer.errors import XferError
from xfer.fitting.device import seed_everything
from xfer.fitting.features import cache_key
from xfer.models import TransferModel, build_from_spec
from xfer.runs.folder import SPEC_FORMAT
from xfer.sources import DEFAULT_SOURCE, LoadedSource, SourceSpec, load_source, resolve_source
from xfer.transfer import TransferReport, transfer

SPLITS = ("train", "val", "test")


def load_fit_task(cfg: FitConfig) -> Task:
    """The Task a fit with these options trains on: its data, splits and few-shot subset."""
    task = load_task(cfg.data, val=cfg.val, test=cfg.test, text_column=cfg.text_column,
                     image_column=cfg.image_column, label_column=cfg.label_column, val_fraction=cfg.val_fraction,
                     test_fraction=cfg.test_fraction, seed=cfg.seed)
    return few_shot(task, cfg.shots, cfg.seed) if cfg.shots else task


def fit_source(cfg: FitConfig, task: Task) -> SourceSpec:
    """The source these options name (the modality's default when none), checked against the task's modality."""
    spec = resolve_source(cfg.source or DEFAULT_SOURCE[task.modality], cfg.arch)
    input_modality(cfg, spec, task)
    return spec


def input_modality(cfg: FitConfig, spec: SourceSpec, task: Task) -> str:
    """The modality the model sees: the task's own, or "image" when an image source meets text data and the texts
    are rendered as images (`text_as_image`, on by default for that case). Any other mismatch is an error."""
    if task.modality == "text" and spec.modality == "image" and cfg.text_as_image is not False:
        return "image"
    if cfg.text_as_image and not (task.modality == "text" and spec.modality == "image"):
        raise XferError(f"--text-as-image renders text for an image source; here the source {spec.name!r} is "
                        f"{spec.modality} and {task.name!r} is {task.modality} data. Drop the flag, or use an image "
                        f"source such as mobilenet_v2.")
    if spec.modality != task.modality:
        hint = (" or let xfer render the texts as images (drop --no-text-as-image)" if task.modality == "text"
                else "")
        raise XferError(f"Source {spec.name!r} is a {spec.modality} model but {task.name!r} is {task.modality} "
                        f"data. Use a {task.modality} source, e.g. {DEFAULT_SOURCE[task.modality]}{hint}.")
    return task.modality


def resolve_config(cfg: FitConfig, spec: SourceSpec, task: Task) -> FitConfig:
    """The options with the defaults of the modality the model sees filled in; rendered text defaults to its canvas
    size as the image size."""
    modality = input_modality(cfg, spec, task)
    if modality == task.modality:
        return cfg.resolved(modality)
    cfg = cfg.resolved("text-as-image")
    return cfg if cfg.image_size is not None else replace(cfg, image_size=cfg.render_size)


def render_spec(cfg: FitConfig) -> RenderSpec:
    return RenderSpec(cfg.render_size, cfg.render_font_size, cfg.render_max_chars, cfg.render_mode).check().with_font()


def feature_id(source: LoadedSource, seed: int) -> str:
    """What identifies a backbone's features in the cache: the content hash of its weights, or the seed of a
    random one. Never a path or a name alone: a checkpoint replaced at the same path gets new features."""
    spec = source.spec
    if spec.origin == "random":
        return f"{spec.name}:seed{seed}"
    if not source.digest:
        raise XferError(f"Source {spec.name!r} has no content hash; its features cannot be cached safely.")
    return f"{spec.name}:{source.digest}"


def make_spec(cfg: FitConfig, task: Task, source: LoadedSource) -> tuple[dict, object]:
    """The run spec (enough to rebuild the model with no download) and the tokenizer of a text source."""
    tokenizer = None
    if task.modality == "image":
        prep = image_prep(source.data_config, task.channels, task.train.items, cfg.image_size).to_dict()
    elif source.spec.modality == "image":
        raise XferError("Text for an image source must be rendered first (see prepare).")
    else:
        tokenizer = load_tokenizer(source.hf_dir)
        prep = TextPrep(cfg.max_length).to_dict()
    spec = {
        "format": SPEC_FORMAT, "modality": task.modality, "arch": source.spec.arch, "labels": list(task.labels),
        "prep": prep, "dropout": cfg.dropout, "encoder_dropout": cfg.encoder_dropout, "strategy": cfg.strategy,
        "source": {"name": source.spec.name, "sha256": source.spec.sha256, "origin": source.spec.origin},
    }
    return spec, tokenizer


@dataclass
class Prepared:
    """Everything a fit trains from, built once by `prepare`."""

    cfg: FitConfig  # resolved for the task's modality
    task: Task
    source: LoadedSource
    spec: dict
    model: TransferModel
    report: TransferReport
    tokenizer: object | None
    datasets: dict[str, Dataset] = field(default_factory=dict)  # the requested splits, preprocessed

    def dataset(self, split: Split) -> Dataset:
        """Batches of any split, preprocessed as the run's own (texts rendered first for a text-as-image run)."""
        prep = prep_from_dict(self.spec["prep"])
        split = render_inputs(split, self.spec.get("render"))
        if self.task.modality == "image":
            return ImageBatches(split, prep)
        return TextBatches(split, self.tokenizer, prep)

    def feature_key(self, splits: list[Split], adapt_bn: bool, tag: str = "") -> str:
        """Cache key of frozen-backbone features of `splits` through this source, preprocessing and precision (bf16
        features differ from fp32 ones in the last digits: a fit in one precision never reads the other's)."""
        from xfer.fitting.device import resolve_precision

        precision = resolve_precision(self.cfg.precision, self.model)
        return cache_key(feature_id(self.source, self.cfg.seed) + tag + f"|{precision}", splits, self.spec["prep"],
                         adapt_bn)

    def fresh_model(self) -> TransferModel:
        """The same architecture from random initialisation (seeded): the from-scratch baseline."""
        seed_everything(self.cfg.seed)
        return build_from_spec({**self.spec, "lora": None}, self.source.hf_dir)


def prepare(cfg: FitConfig, *, task: Task | None = None, source: SourceSpec | LoadedSource | None = None,
            splits: tuple[str, ...] = SPLITS, log: Callable[[str], None] | None = None) -> Prepared:
    """Load (or take) the task and the source, build the spec and the target model, transfer the source's
    parameters, and preprocess the requested `splits`. A search passes the task and source it loaded once."""
    log = log or (lambda msg: None)
    task = task if task is not None else load_fit_task(cfg)
    if source is None:
        source = fit_source(cfg, task)
    spec_src = source.spec if isinstance(source, LoadedSource) else source
    cfg = resolve_config(cfg, spec_src, task)
    loaded = source if isinstance(source, LoadedSource) else load_source(source)
    log(f"source: {spec_src.name} ({spec_src.description})")
    rendering = None
    if spec_src.modality != task.modality:  # the article's case: an ImageNet CNN reads text, rendered as images
        rendering = render_spec(cfg)
        log(f"[yellow]note:[/] {spec_src.name} is an image source and {task.name} is text: each text is rendered as "
            f"a {rendering.size}x{rendering.size} image and the vision pipeline is used (--no-text-as-image to "
            f"refuse instead)")
        task = render_task(task, rendering)
    spec, tokenizer = make_spec(cfg, task, loaded)
    if rendering is not None:
        spec["render"] = rendering.to_dict()
    seed_everything(cfg.seed)
    model = build_from_spec(spec, loaded.hf_dir)
    # A random: source is a control: nothing to transfer, every tensor keeps its fresh initialisation.
    report = transfer(loaded.state_dict, model, allow_partial=cfg.allow_partial_transfer or spec_src.origin == "random")
    s = report.summary()
    log(f"transfer: {s['copied']} copied, {s['adapted']} adapted, {s['re-initialised']} re-initialised, "
        f"{s['skipped']} skipped; {s['backbone_fraction']:.1%} of backbone parameters from the source "
        f"(matched by {s['method']})")
    prepared = Prepared(cfg, task, loaded, spec, model, report, tokenizer)
    prepared.datasets = {name: prepared.dataset(getattr(task, name)) for name in splits}
    return prepared
