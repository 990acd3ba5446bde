"""The Python face of xfer: `fit(...) -> Run`, `load(path) -> Run`, `Run.predict`, `Run.evaluate`.

`fit` is the pipeline end to end: data -> source -> transfer -> plan -> train -> evaluate (-> baseline) -> run folder.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from xfer import runs
from xfer.config import FitConfig, make_config
from xfer.data import load_task
from xfer.data.readers import read_labelled
from xfer.data.loaders import (ImageBatches, TextBatches, TextPrep, batches, image_prep, load_tokenizer,
                               prep_from_dict)
from xfer.data.task import Split, Task, few_shot
from xfer.errors import XferError
from xfer.evaluate import classification_metrics, transfer_gain
from xfer.models import TransferModel, add_lora, build_image_model, build_text_model, has_lora, merge_lora
from xfer.runner import check_resumable, checkpoint_dir, load_checkpoint, run_plan
from xfer.sources import DEFAULT_SOURCE, LoadedSource, load_source, resolve_source
from xfer.strategies import make_plan
from xfer.train import make_accelerator, place, predict_logits, seed_everything
from xfer.transfer import TransferReport, transfer

SPEC_FORMAT = 1


@dataclass
class Run:
    """A trained model with its labels and preprocessing: what a run folder holds, in memory."""

    model: TransferModel
    spec: dict
    path: Path | None = None
    metrics: dict = field(default_factory=dict)
    report: TransferReport | None = None
    history: list = field(default_factory=list)
    _tokenizer: object = None

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.spec["labels"])

    @property
    def prep(self):
        return prep_from_dict(self.spec["prep"])

    def _dataset(self, split: Split):
        if self.spec["modality"] == "image":
            return ImageBatches(split, self.prep)
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.path / "backbone")
        return TextBatches(split, self._tokenizer, self.prep)

    def logits(self, split: Split, batch_size: int = 64, precision: str = "auto") -> torch.Tensor:
        acc = make_accelerator(precision, model=self.model)
        image = self.spec["modality"] == "image"
        place(self.model, acc, channels_last=image)
        return predict_logits(self.model, batches(self._dataset(split), batch_size, shuffle=False), acc, image)

    def predict(self, inputs: Sequence, batch_size: int = 64) -> list[dict]:
        """Predict labels for image paths / arrays (image runs) or strings (text runs)."""
        items = list(inputs)
        if not items:
            return []
        if self.spec["modality"] == "text":
            empty = [i for i, t in enumerate(items) if not str(t).strip()]
            if empty:
                raise XferError(f"Input(s) {empty[:10]} are empty strings; give non-empty text.")
            items = [str(t) for t in items]
        else:
            missing = [str(p) for p in items if not isinstance(p, np.ndarray) and not Path(p).is_file()]
            if missing:
                raise XferError(f"Image file(s) not found: {', '.join(missing[:10])}.")
        probs = self.logits(Split(items, np.zeros(len(items), dtype=np.int64)), batch_size).softmax(1)
        top = probs.argmax(1)
        return [{"input": str(x) if not isinstance(x, np.ndarray) else f"array[{i}]", "label": self.labels[int(k)],
                 "confidence": float(probs[i, k])} for i, (x, k) in enumerate(zip(items, top))]

    def evaluate(self, data: str, **columns) -> dict:
        """Metrics on a labelled file or folder (all of it is treated as test data)."""
        items, raw = read_labelled(data, **columns)
        index = {lab: i for i, lab in enumerate(self.labels)}
        unknown = sorted(set(raw) - set(index))
        if unknown:
            raise XferError(f"{data} has labels the model does not know: {unknown[:10]}. Known: {list(self.labels)}.")
        y = np.array([index[v] for v in raw], dtype=np.int64)
        logits = self.logits(Split(items, y))
        return classification_metrics(y, logits.argmax(1).numpy(), self.labels)


def _log(cfg: FitConfig) -> Callable[[str], None]:
    if cfg.quiet:
        return lambda msg: None
    from rich.console import Console

    console = Console(highlight=False)
    return lambda msg: console.print(msg, soft_wrap=True)


def build_model(spec: dict, hf_dir: Path | None = None) -> TransferModel:
    """Rebuild the target architecture from a run spec (no source download needed)."""
    if spec["modality"] == "image":
        model = build_image_model(spec["arch"], len(spec["labels"]), spec["prep"]["channels"], spec["dropout"],
                                  spec["prep"]["size"])
    else:
        model = build_text_model(hf_dir, len(spec["labels"]), spec["dropout"], spec.get("encoder_dropout"))
    if spec.get("lora"):
        add_lora(model, spec["lora"])
    return model


def _datasets(task: Task, spec: dict, tokenizer, splits=("train", "val", "test")) -> dict:
    prep = prep_from_dict(spec["prep"])
    make = (lambda s: ImageBatches(s, prep)) if task.modality == "image" else (lambda s: TextBatches(s, tokenizer, prep))
    return {name: make(getattr(task, name)) for name in splits}


def _evaluate_splits(model, data: dict, labels, cfg: FitConfig, splits=("val", "test")) -> dict:
    acc = make_accelerator(cfg.precision, model=model)
    out = {}
    for split in splits:
        loader = batches(data[split], cfg.batch_size * 2, shuffle=False)
        logits = predict_logits(model, loader, acc, cfg.channels_last)
        out[split] = classification_metrics(data[split].labels.numpy(), logits.argmax(1).numpy(), labels)
    return out


def _default_out(cfg: FitConfig, source: str, task: Task) -> Path:
    data = Path(task.name.replace("builtin:", "")).stem
    source = source.replace(":", "_").replace("/", "_")
    return Path("runs") / f"{data}-{source}-{cfg.strategy}-{time.strftime('%Y%m%d-%H%M%S')}"


def load_fit_task(cfg: FitConfig) -> Task:
    """The Task a fit with these options trains on: its data, splits and few-shot subset."""
    task = load_task(cfg.data, val=cfg.val, test=cfg.test, text_column=cfg.text_column,
                     image_column=cfg.image_column, label_column=cfg.label_column, val_fraction=cfg.val_fraction,
                     test_fraction=cfg.test_fraction, seed=cfg.seed)
    return few_shot(task, cfg.shots, cfg.seed) if cfg.shots else task


def fit(config: FitConfig | str | Path | None = None, *, task: Task | None = None,
        loaded_source: LoadedSource | None = None, evaluate_test: bool = True, save: bool = True,
        on_epoch: Callable | None = None, **overrides) -> Run:
    """Transfer a pretrained source to the task in `data`, fine-tune it, evaluate it, and save a run folder.

    `config` is a FitConfig or a YAML file; keyword arguments override it (e.g. `fit(data="builtin:mnist5k")`).
    A search passes the `task` and `loaded_source` it loaded once, `evaluate_test=False` and `save=False` for its trials
    (the test split is never touched), and `on_epoch(step, record)` to report each epoch's validation accuracy.
    """
    if isinstance(config, FitConfig):
        cfg = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    else:
        cfg = make_config(config, **overrides)
    log = _log(cfg)
    seed_everything(cfg.seed)
    if cfg.out and save:
        runs.check_destination(Path(cfg.out), cfg.overwrite)
    make_plan(cfg.strategy, cfg.resolved("image"))  # fail fast on an unknown strategy before loading anything

    if task is None:
        task = load_fit_task(cfg)
    cfg = cfg.resolved(task.modality)
    log(task.describe())
    for note in task.notes:
        log(f"[yellow]note:[/] {note}")
    source = loaded_source
    spec_src = source.spec if source is not None else resolve_source(cfg.source or DEFAULT_SOURCE[task.modality],
                                                                       cfg.arch)
    if spec_src.modality != task.modality:
        raise XferError(f"Source {spec_src.name!r} is a {spec_src.modality} model but {cfg.data!r} is {task.modality} "
                        f"data. Use a {task.modality} source, e.g. {DEFAULT_SOURCE[task.modality]}.")
    out = ckpt = resume = None
    if save:
        out = Path(cfg.out) if cfg.out else _default_out(cfg, spec_src.name, task)
        runs.check_destination(out, cfg.overwrite)
        ckpt, resume = _checkpoint(cfg, out)
    source = source or load_source(spec_src)
    log(f"source: {spec_src.name} ({spec_src.description})")

    spec, tokenizer = _make_spec(cfg, task, source)
    model = build_model(spec, source.hf_dir)
    # A random: source is a control: nothing to transfer, every tensor keeps its fresh initialisation.
    report = transfer(source.state_dict, model,
                      allow_partial=cfg.allow_partial_transfer or spec_src.origin == "random")
    s = report.summary()
    log(f"transfer: {s['copied']} copied, {s['adapted']} adapted, {s['re-initialised']} re-initialised, "
        f"{s['skipped']} skipped; {s['backbone_fraction']:.1%} of backbone parameters from the source "
        f"(matched by {s['method']})")

    splits = ("train", "val", "test") if evaluate_test else ("train", "val")
    data = _datasets(task, spec, tokenizer, splits)
    data["prep"] = spec["prep"]
    plan = make_plan(cfg.strategy, cfg)
    if resume is not None:
        log(f"resuming from {ckpt} (phase {resume.phase + 1}/{len(plan.phases)}"
            + (f", after epoch {resume.state.epoch}" if resume.state else "") + ")")
    start = time.perf_counter()
    history, extras = run_plan(model, plan, data, cfg, feature_id(spec_src, cfg.seed), task, log,
                               ckpt if (cfg.checkpoint and save) else None, resume, on_epoch)
    train_seconds = time.perf_counter() - start
    n_trainable = trainable_params(model, plan)
    if has_lora(model):
        spec["lora"] = plan.options["lora"]
        if cfg.merge:
            merge_lora(model)
            spec["lora"] = None
    metrics = _evaluate_splits(model, data, task.labels, cfg, splits[1:])
    metrics.update(extras)
    metrics["train_seconds"] = train_seconds
    metrics["trainable_params"] = n_trainable
    metrics["total_params"] = sum(p.numel() for p in model.parameters())
    metrics["peak_memory_mb"] = peak_memory_mb()
    if evaluate_test:
        log(f"test accuracy {metrics['test']['accuracy']:.4f}  macro-F1 {metrics['test']['macro_f1']:.4f}  "
            f"(trained in {train_seconds:.0f}s)")
    else:
        log(f"val accuracy {metrics['val']['accuracy']:.4f} (trained in {train_seconds:.0f}s; test split not used)")

    if cfg.baseline and evaluate_test:
        metrics["baseline"] = _baseline(cfg, spec, source, data, task, plan, log)
        metrics["transfer_gain"] = transfer_gain(metrics["test"]["accuracy"], metrics["baseline"]["test"]["accuracy"])
        g = metrics["transfer_gain"]
        flag = "  [bold red]NEGATIVE TRANSFER[/]" if g["negative_transfer"] else ""
        log(f"baseline (from scratch) test accuracy {metrics['baseline']['test']['accuracy']:.4f}; "
            f"gain of transfer {g['gain']:+.4f}{flag}")

    run = Run(model.cpu().to(memory_format=torch.contiguous_format), spec, out, metrics, report, history, tokenizer)
    if save:
        _save(run, cfg, source)
        shutil.rmtree(ckpt, ignore_errors=True)
        log(f"run saved to {out}")
    return run


def feature_id(spec, seed: int) -> str:
    """What identifies a backbone's features in the cache: the verified weights, or the seed of a random one."""
    return f"{spec.name}:{spec.sha256}" + (f":seed{seed}" if spec.origin == "random" else "")


def _checkpoint(cfg: FitConfig, out: Path):
    """The checkpoint folder beside `out`, and what to resume from: an interrupted fit's checkpoint is never
    discarded silently (it needs --resume or --overwrite)."""
    ckpt = checkpoint_dir(out)
    if cfg.resume:
        if not ckpt.exists():
            raise XferError(f"Nothing to resume: {ckpt} does not exist. Run without --resume to start this fit.")
        resume = load_checkpoint(ckpt)
        check_resumable(resume, cfg.to_dict(), ckpt)
        return ckpt, resume
    if ckpt.exists():
        if not cfg.overwrite:
            raise XferError(f"An interrupted fit left a checkpoint at {ckpt}. Pass --resume (with the same options) "
                            f"to continue it, or --overwrite to start over.")
        shutil.rmtree(ckpt)
    return ckpt, None


def peak_memory_mb() -> float:
    """Peak accelerator memory on a GPU; on the CPU the process's peak resident memory (one fit per process gives
    a per-fit figure, which is how `xfer compare` runs them)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def trainable_params(model: TransferModel, plan) -> int:
    """Parameters the plan trained at some point (LoRA: adapters + head; bitfit: biases + head)."""
    names = set().union(*(phase.trainable(model) for phase in plan.phases)) if not has_lora(model) else {
        n for n, _ in model.named_parameters() if ".lora_" in n or n.startswith("head.")}
    return sum(p.numel() for n, p in model.named_parameters() if n in names)


def _make_spec(cfg: FitConfig, task: Task, source: LoadedSource) -> tuple[dict, object]:
    tokenizer = None
    if task.modality == "image":
        prep = image_prep(source.data_config, task.channels, task.train.items, cfg.image_size).to_dict()
    else:
        tokenizer = load_tokenizer(source.hf_dir)
        prep = TextPrep(cfg.max_length).to_dict()
    spec = {
        "format": SPEC_FORMAT, "modality": task.modality, "arch": source.spec.arch, "labels": list(task.labels),
        "prep": prep, "dropout": cfg.dropout, "encoder_dropout": cfg.encoder_dropout, "strategy": cfg.strategy,
        "source": {"name": source.spec.name, "sha256": source.spec.sha256, "origin": source.spec.origin},
    }
    return spec, tokenizer


def _baseline(cfg, spec, source, data, task, plan, log) -> dict:
    """The same architecture from random initialisation, trained with the same full-network budget."""
    log("[bold]baseline:[/] same architecture from scratch, same budget")
    seed_everything(cfg.seed)
    model = build_model(spec, source.hf_dir)
    # Nothing is pretrained here, so nothing is kept frozen: embedding tables train too.
    base_cfg = replace(cfg, strategy="full", epochs=max(1, plan.backbone_epochs), freeze_embeddings=False)
    start = time.perf_counter()
    history, _ = run_plan(model, make_plan("full", base_cfg), data, base_cfg, None, task, log)
    metrics = _evaluate_splits(model, data, task.labels, cfg)
    metrics["train_seconds"] = time.perf_counter() - start
    metrics["history"] = history
    metrics["epochs"] = base_cfg.epochs
    return metrics


def _save(run: Run, cfg: FitConfig, source: LoadedSource) -> None:
    with runs.new_run(run.path, cfg.overwrite) as tmp:
        runs.save_weights(tmp, run.model.state_dict())
        runs.write_json(tmp / runs.SPEC, run.spec)
        runs.write_yaml(tmp / "config.yaml", replace(cfg, out=str(run.path)).to_dict())
        runs.write_json(tmp / "metrics.json", _flat_metrics(run.metrics))
        runs.write_json(tmp / "history.json", run.history)
        runs.write_json(tmp / "transfer_report.json", run.report.to_dict())
        if run.spec["modality"] == "text":
            # The encoder's config and tokenizer travel with the run: eval/predict need no source download.
            (tmp / "backbone").mkdir()
            run.model.backbone.config.save_pretrained(tmp / "backbone")
            run._tokenizer.save_pretrained(str(tmp / "backbone"))
    if run.spec["modality"] == "text":
        run._tokenizer = None  # reload from the run folder when needed


def _flat_metrics(m: dict) -> dict:
    out = dict(m)
    out["test.accuracy"] = m["test"]["accuracy"]
    out["test.macro_f1"] = m["test"]["macro_f1"]
    out["val.accuracy"] = m["val"]["accuracy"]
    if "baseline" in m:
        out["baseline.test.accuracy"] = m["baseline"]["test"]["accuracy"]
    return out


def export(run_dir: str | Path, out: str | Path, merge: bool = True, overwrite: bool = False) -> Path:
    """A copy of a run as a new run folder, with LoRA adapters folded into the base weights when `merge`."""
    src, out = Path(run_dir), Path(out)
    run = load(src)
    spec = dict(run.spec)
    if merge and spec.get("lora"):
        merge_lora(run.model)
        spec["lora"] = None
    with runs.new_run(out, overwrite) as tmp:
        runs.save_weights(tmp, run.model.state_dict())
        runs.write_json(tmp / runs.SPEC, spec)
        for p in src.iterdir():
            if p.name in (runs.WEIGHTS, runs.SPEC, runs.SUMS) or p.name.startswith("."):
                continue
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, tmp / p.name)
    return out


def load(path: str | Path) -> Run:
    """Load a run folder after verifying its checksums; weights come only from safetensors."""
    path = Path(path)
    runs.verify_run(path)
    spec = runs.read_json(path, runs.SPEC)
    if spec.get("format") != SPEC_FORMAT:
        raise XferError(f"{path} was written by an incompatible xfer version (spec format {spec.get('format')}).")
    model = build_model(spec, path / "backbone")
    state = runs.load_weights(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise XferError(f"Weights in {path} do not fit the architecture in its spec: {str(e)[:300]}") from e
    model.eval()
    metrics = runs.read_json(path, "metrics.json") if (path / "metrics.json").exists() else {}
    return Run(model, spec, path, metrics)
