"""`fit`: the pipeline end to end, read top to bottom.

options -> prepare (task, source, transfer, datasets) -> plan (strategy) -> run_plan (phases, loop, hooks,
checkpoints) -> evaluate -> from-scratch baseline -> run folder.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from xfer.config import FitConfig, make_config
from xfer.data.loaders import batches
from xfer.data.task import Split, Task
from xfer.errors import XferError
from xfer.fitting import distributed as dist
from xfer.fitting.device import make_accelerator, predict_logits, seed_everything
from xfer.fitting.evaluate import calibration, classification_metrics, softmax, transfer_gain
from xfer.fitting.hooks import Hook
from xfer.fitting.prepare import Prepared, fit_source, load_fit_task, prepare, resolve_config
from xfer.fitting.runner import check_resumable, checkpoint_dir, load_checkpoint, run_plan
from xfer.fitting.strategies import make_plan
from xfer.fitting.tracking import tracker_names, tracking_hooks
from xfer.models import lora_options
from xfer.robust.defences import check_modality, parse_defence
from xfer.robust.training import robust_hooks
from xfer.runs.folder import EXAMPLES, MODEL_CARD, REPORT, check_destination, write_run
from xfer.runs.run import Run
from xfer.sources import LoadedSource


def fit(config: FitConfig | str | Path | None = None, *, task: Task | None = None,
        loaded_source: LoadedSource | None = None, evaluate_test: bool = True, save: bool = True,
        hooks: tuple[Hook, ...] = (), **overrides) -> Run:
    """Transfer a pretrained source to the task in `data`, fine-tune it, evaluate it, and save a run folder.

    `config` is a FitConfig or a YAML file; keyword arguments override it (e.g. `fit(data="builtin:mnist5k")`).
    A search passes the `task` and `loaded_source` it loaded once, `evaluate_test=False` and `save=False` for its
    trials (the test split is never touched), and its pruner as one of `hooks` (see fitting/hooks.py).
    """
    if isinstance(config, FitConfig):
        cfg = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    else:
        cfg = make_config(config, **overrides)
    if cfg.processes > 1 and dist.world_size() == 1:  # start the workers; each of them runs this function
        if task is not None or loaded_source is not None or hooks or not save:
            raise XferError("Several processes (--processes) run a fit from its options alone: without a given "
                            "task, source or hooks, and saving the run.")
        return _launch(cfg)
    if cfg.processes != dist.world_size():
        raise XferError(f"This fit asks for {cfg.processes} processes but was started in {dist.world_size()}. Give "
                        f"--processes {dist.world_size()}, or start it with `xfer fit --processes N` alone.")
    log = _log(cfg)
    seed_everything(cfg.seed)
    if cfg.out and save:
        check_destination(Path(cfg.out), cfg.overwrite)
    early = cfg.resolved("image")
    make_plan(early.strategy, early)  # fail fast on an unknown strategy before loading anything
    defence = parse_defence(cfg.defence, cfg.defence_draws)  # and on an unknown defence
    tracker_names(cfg.log_with)  # and on a tracker that is not installed
    if defence is None and cfg.noise_sigma:  # a noise-trained model is used as the smoothed classifier it was made for
        defence = parse_defence(f"noise:sigma={cfg.noise_sigma}", cfg.defence_draws)

    task = task if task is not None else load_fit_task(cfg)
    source_spec = loaded_source.spec if loaded_source is not None else fit_source(cfg, task)
    cfg = resolve_config(cfg, source_spec, task)
    log(task.describe())
    for note in task.notes:
        log(f"[yellow]note:[/] {note}")
    out = ckpt = resume = None
    if save:
        out = Path(cfg.out) if cfg.out else _default_out(cfg, source_spec.name, task)
        check_destination(out, cfg.overwrite)
        ckpt, resume = _checkpoint(cfg, out)
    splits = ("train", "val", "test") if evaluate_test else ("train", "val")
    prep = prepare(cfg, task=task, source=loaded_source or source_spec, splits=splits, log=log)
    for note in prep.task.notes[len(task.notes):]:  # what rendering text as images lost, if it did
        log(f"[yellow]note:[/] {note}")
    shown_test = task.test if evaluate_test else None  # the test inputs as the user gave them (texts, not renders)
    model, data, task = prep.model, prep.datasets, prep.task  # task: rendered for text-as-image
    hooks = tuple(hooks) + robust_hooks(cfg, prep.spec)  # first: its error names the option the user gave
    trackers = tracking_hooks(cfg, out)  # --log-with: the config now, every epoch, the final metrics at the end
    hooks += trackers
    check_modality(defence, prep.spec["modality"])
    prep.spec["defence"] = defence
    plan = make_plan(cfg.strategy, cfg)
    if resume is not None:
        log(f"resuming from {ckpt} (phase {resume.phase + 1}/{len(plan.phases)}"
            + (f", after epoch {resume.state.epoch}" if resume.state else "") + ")")
    feature_key = (prep.feature_key([task.train, task.val], cfg.bn_adapt)
                   if any(p.cached_features for p in plan.phases) else None)
    start = time.perf_counter()
    result = run_plan(model, plan, data["train"], data["val"], cfg, feature_key=feature_key, log=log,
                      checkpoint=ckpt if (cfg.checkpoint and save) else None, resume=resume, hooks=hooks)
    train_seconds = time.perf_counter() - start
    prep.spec["lora"] = lora_options(model)

    logits = split_logits(model, data, cfg, splits[1:])  # the model runs once per split: metrics and calibration
    truth = {split: data[split].labels.numpy() for split in logits}
    metrics = {split: classification_metrics(truth[split], logits[split].argmax(1), task.labels) for split in logits}
    if save or evaluate_test:  # a search trial skips it
        metrics["calibration"] = calibration(logits, truth)
    prep.spec["temperature"] = metrics["calibration"]["temperature"] if "calibration" in metrics else 1.0
    metrics.update(result.extras)
    metrics["train_seconds"] = train_seconds
    metrics["split_sizes"] = {name: len(getattr(task, name).labels) for name in splits}
    metrics["trainable_params"] = result.trainable_params
    metrics["total_params"] = sum(p.numel() for p in model.parameters())
    metrics["peak_memory_mb"] = peak_memory_mb()
    if evaluate_test:
        log(f"test accuracy {metrics['test']['accuracy']:.4f}  macro-F1 {metrics['test']['macro_f1']:.4f}  "
            f"(trained in {train_seconds:.0f}s)")
    else:
        log(f"val accuracy {metrics['val']['accuracy']:.4f} (trained in {train_seconds:.0f}s; test split not used)")

    if cfg.baseline and evaluate_test:
        metrics["baseline"] = _baseline(prep, plan.backbone_epochs, log)
        metrics["transfer_gain"] = transfer_gain(metrics["test"]["accuracy"], metrics["baseline"]["test"]["accuracy"])
        g = metrics["transfer_gain"]
        flag = "  [bold red]NEGATIVE TRANSFER[/]" if g["negative_transfer"] else ""
        log(f"baseline (from scratch) test accuracy {metrics['baseline']['test']['accuracy']:.4f}; "
            f"gain of transfer {g['gain']:+.4f}{flag}")

    run = Run(model.cpu().to(memory_format=torch.contiguous_format), prep.spec, out, metrics, prep.report,
              result.history, prep.tokenizer)
    if defence is not None and evaluate_test:  # what predict and eval will answer: the model behind its defence
        defended = run.logits(task.test, batch_size=cfg.batch_size * 2, precision=cfg.precision)
        metrics["defended"] = {"defence": defence, "test": classification_metrics(
            task.test.labels, defended.argmax(1).numpy(), task.labels)}
        log(f"with the {defence['name']} defence: test accuracy {metrics['defended']['test']['accuracy']:.4f}")
    for tracker in trackers:
        tracker.finish(metrics)
    if save and dist.is_main():  # with several processes, each holds the same model; process 0 writes it
        text = prep.spec["modality"] == "text"
        config = replace(cfg, out=str(out)).to_dict()
        extra = _documents(run, config, shown_test, logits.get("test"), source_spec) if evaluate_test else {}
        write_run(out, spec=run.spec, weights=run.model.state_dict(), config=config,
                  metrics=metrics, history=run.history, transfer_report=run.report.to_dict(),
                  backbone=(lambda d: _save_encoder(run, d)) if text else None, extra=extra, overwrite=cfg.overwrite)
        run.tokenizer = None  # text runs read it back from the run folder, as a loaded run does
        shutil.rmtree(ckpt, ignore_errors=True)
        log(f"run saved to {out}")
    return run


def split_logits(model, datasets: dict, cfg: FitConfig, splits=("val", "test")) -> dict:
    """The model's logits (float NumPy, data order) on each named split."""
    acc = make_accelerator(cfg.precision, model=model)
    out = {}
    for split in splits:
        loader = batches(datasets[split], cfg.batch_size * 2, shuffle=False)
        out[split] = predict_logits(model, loader, acc, cfg.channels_last).float().numpy()
    return out


def evaluate(model, datasets: dict, labels, cfg: FitConfig, splits=("val", "test")) -> dict:
    """Metrics of the model on each named split."""
    logits = split_logits(model, datasets, cfg, splits)
    return {split: classification_metrics(datasets[split].labels.numpy(), z.argmax(1), labels)
            for split, z in logits.items()}


def _documents(run: Run, config: dict, test: Split, test_logits, source_spec) -> dict:
    """The run folder's human-readable files: misclassified test examples, the model card and the HTML report."""
    from xfer.report import misclassified, model_card, run_report_html

    probs = softmax(test_logits, run.spec["temperature"])
    examples = misclassified(test.items, test.labels, probs, run.labels, image=not run.reads_text)
    docs = {"spec": run.spec, "config": config, "metrics": run.metrics, "history": run.history,
            "transfer_report": run.report.to_dict(), "examples": examples, "name": config["out"]}
    return {EXAMPLES: examples, MODEL_CARD: model_card(docs, source_spec),
            REPORT: run_report_html(docs, title=Path(config["out"]).name)}


def _baseline(prep: Prepared, backbone_epochs: int, log) -> dict:
    """The same architecture from random initialisation, trained with the same full-network budget."""
    log("[bold]baseline:[/] same architecture from scratch, same budget")
    model = prep.fresh_model()
    # Nothing is pretrained here, so nothing is kept frozen: embedding tables train too.
    base_cfg = replace(prep.cfg, strategy="full", epochs=max(1, backbone_epochs), freeze_embeddings=False,
                       top_blocks=None)
    start = time.perf_counter()
    result = run_plan(model, make_plan("full", base_cfg), prep.datasets["train"], prep.datasets["val"], base_cfg,
                      log=log)
    metrics = evaluate(model, prep.datasets, prep.task.labels, prep.cfg)
    metrics["train_seconds"] = time.perf_counter() - start
    metrics["history"] = result.history
    metrics["epochs"] = base_cfg.epochs
    return metrics


def _save_encoder(run: Run, folder: Path) -> None:
    """The encoder's config and tokenizer travel with a text run: eval/predict need no source download."""
    run.model.backbone.config.save_pretrained(folder)
    run.tokenizer.save_pretrained(str(folder))


def _launch(cfg: FitConfig) -> Run:
    """Run the fit in `cfg.processes` processes (distributed.launch) from a YAML copy of its options, and load the
    run folder process 0 wrote."""
    import tempfile

    import yaml

    from xfer.runs.run import load

    out = Path(cfg.out) if cfg.out else Path("runs") / f"fit-{time.strftime('%Y%m%d-%H%M%S')}"
    check_destination(out, cfg.overwrite)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "fit.yaml"
        config.write_text(yaml.safe_dump(replace(cfg, out=str(out)).to_dict(), sort_keys=False))
        code = dist.launch(["fit", "--config", str(config)], cfg.processes)
    if code != 0:
        raise XferError(f"The {cfg.processes} training processes stopped with exit status {code}; their messages are "
                        f"above. An interrupted fit continues with --resume (same --processes).")
    return load(out)


def _log(cfg: FitConfig) -> Callable[[str], None]:
    if cfg.quiet or not dist.is_main():
        return lambda msg: None
    from rich.console import Console

    console = Console(highlight=False)
    return lambda msg: console.print(msg, soft_wrap=True)


def _default_out(cfg: FitConfig, source: str, task: Task) -> Path:
    data = Path(task.name.replace("builtin:", "")).stem
    source = source.replace(":", "_").replace("/", "_")
    return Path("runs") / f"{data}-{source}-{cfg.strategy}-{time.strftime('%Y%m%d-%H%M%S')}"


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
        if dist.is_main():
            shutil.rmtree(ckpt)
    return ckpt, None


def peak_memory_mb() -> float:
    """Peak accelerator memory on a GPU; on the CPU the process's peak resident memory (one fit per process gives
    a per-fit figure, which is how `xfer compare` runs them)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
