"""Choose a source before training: `xfer rank` scores candidate sources on the target's labelled data with the
transferability estimators of xfer.tools.estimators, and optionally fine-tunes the top ones to check the ranking.

Per source: load it (a source that cannot be loaded is listed with the reason and skipped), build the target
network and transfer the weights exactly as `fit` does, extract features of a stratified sample of the training
split once (cached on disk like the linear probe's), compute the source classifier's probabilities where the
source has one (the ImageNet heads of the vision sources), and score.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from xfer.config import FitConfig
from xfer.data.loaders import batches
from xfer.data.task import Split, Task
from xfer.errors import XferError
from xfer.fitting.prepare import load_fit_task
from xfer.runs import write_json
from xfer.tools.estimators import ESTIMATORS, score_all

DEFAULT_SCORE = "logme"


def stratified_sample(split: Split, cap: int, seed: int = 0) -> Split:
    """At most `cap` examples with the class proportions of `split` (all of it when smaller)."""
    if cap <= 0 or len(split) <= cap:
        return split
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(split))
    counts = np.bincount(split.labels)
    strat = split.labels if counts[counts > 0].min() >= 2 else None
    keep, _ = train_test_split(idx, train_size=cap, random_state=seed, stratify=strat)
    return split.subset(np.sort(keep))


def source_classifier(report, state: dict, num_features: int, spec) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The source's own classifier (weight K x D, bias K) among the tensors the transfer left unused, or None.

    A random: control gets a freshly initialised classifier of the same size, so it is scored like its twin."""
    if spec.source_classes <= 0:
        return None
    if spec.origin == "random":
        layer = torch.nn.Linear(num_features, spec.source_classes)
        return layer.weight.detach(), layer.bias.detach()
    unused = [k for k in report.unused_source if k in state]
    weights = [k for k in unused if state[k].ndim == 2 and tuple(state[k].shape) == (spec.source_classes, num_features)]
    for w in weights:
        b = w.rsplit(".", 1)[0] + ".bias"
        if b in state and tuple(state[b].shape) == (spec.source_classes,):
            return state[w].float(), state[b].float()
    return None


def score_source(name: str, task: Task, sample: Split, cfg: FitConfig, log: Callable[[str], None]) -> dict:
    """Features (+ source probabilities) of `sample` through one source, and every applicable score."""
    from xfer.fitting.device import make_accelerator
    from xfer.fitting.features import cached_features
    from xfer.fitting.prepare import prepare
    from xfer.sources import resolve_source

    spec_src = resolve_source(name)
    prep = prepare(replace(cfg, source=name), task=task, source=spec_src, splits=())
    model, report = prep.model, prep.report
    acc = make_accelerator(cfg.precision, model=model)
    key = prep.feature_key([sample], False, tag=":rank")
    start = time.perf_counter()
    (features,) = cached_features(model, [batches(prep.dataset(sample), cfg.batch_size or 64, shuffle=False)], acc,
                                  key, False, log=lambda m: None)
    seconds = time.perf_counter() - start
    probs = None
    head = source_classifier(report, prep.source.state_dict, features.shape[1], spec_src)
    if head is not None:
        probs = torch.softmax(features.double() @ head[0].double().T + head[1].double(), dim=1).numpy()
    labels = sample.labels
    start = time.perf_counter()
    scores = score_all(features.float().numpy(), labels, probs)
    return {"source": name, "status": "ok", "scores": scores, "feature_dim": int(features.shape[1]),
            "samples": len(sample), "extract_seconds": round(seconds, 2),
            "score_seconds": round(time.perf_counter() - start, 2),
            "backbone_fraction": report.backbone_fraction, "precision": acc.mixed_precision}


def kendall_tau(xs: list[float], ys: list[float]) -> float | None:
    """Kendall's tau-b of two rankings (None with fewer than two pairs or no variation)."""
    from scipy.stats import kendalltau

    if len(xs) < 2:
        return None
    tau = kendalltau(xs, ys).statistic
    return None if tau is None or not np.isfinite(tau) else float(tau)


def rank_sources(cfg: FitConfig, sources: list[str] | None = None, *, max_samples: int = 5000, validate: int = 0,
                 out: Path | None = None, log: Callable[[str], None] = print) -> dict:
    """Score every source on `cfg.data`; with `validate` K, fine-tune the top K (default strategy) and report how
    each estimator's ranking agreed with the fine-tuned accuracies (Kendall's tau)."""
    if sources is not None and not sources:
        raise XferError("No sources given: pass --sources a,b,c (see `xfer sources`).")
    task = load_fit_task(cfg)  # few-shot applied: scores and --validate see the same training data
    # Options stay unresolved here: each source fills its own defaults (text rendered for an image source gets
    # the image pipeline's).
    if sources is None:  # every offline source of the data's modality
        from xfer.sources import CATALOGUE

        sources = [s.name for s in CATALOGUE.values() if s.modality == task.modality]
    sample = stratified_sample(task.train, max_samples, cfg.seed)
    log(f"{task.describe()}; scoring on {len(sample)} training examples")
    rows = []
    for k, name in enumerate(sources, 1):
        try:
            row = score_source(name, task, sample, cfg, log)
            log(f"[{k}/{len(sources)}] {name}: LogME {row['scores']['logme']:.4f}, features "
                f"{row['feature_dim']}-d in {row['extract_seconds']:.1f}s")
        except XferError as e:
            row = {"source": name, "status": "skipped", "reason": str(e)}
            log(f"[{k}/{len(sources)}] {name}: skipped ({e})")
        except Exception as e:  # one broken source must not stop the ranking of the others
            row = {"source": name, "status": "skipped", "reason": f"{type(e).__name__}: {e}"}
            log(f"[{k}/{len(sources)}] {name}: skipped ({type(e).__name__}: {e})")
        rows.append(row)

    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: -r["scores"][DEFAULT_SCORE])
    for i, r in enumerate(ok, 1):
        r["rank"] = i
    result = {"data": cfg.data, "samples": len(sample), "score": DEFAULT_SCORE,
              "ranking": ok + [r for r in rows if r["status"] != "ok"], "validation": None}
    if validate:
        result["validation"] = _validate(cfg, ok[:validate], out, log)
    if out is not None:
        write_json(Path(out) / "rank.json", result)
    return result


def _validate(cfg: FitConfig, top: list[dict], out: Path | None, log) -> dict:
    """Fine-tune each of `top` with the default strategy and compare the estimators' orders with the accuracies."""
    from xfer.fitting.fit import fit

    for r in top:
        run_dir = (Path(out) if out else Path("runs")) / f"validate-{r['source'].replace(':', '_').replace('/', '_')}"
        log(f"validate: fine-tuning {r['source']} ({cfg.strategy or 'default strategy'}) -> {run_dir}")
        try:
            run = fit(replace(cfg, source=r["source"], out=str(run_dir), quiet=True))
            r["fine_tuned"] = {"test_accuracy": run.metrics["test"]["accuracy"],
                               "val_accuracy": run.metrics["val"]["accuracy"],
                               "train_seconds": run.metrics["train_seconds"], "run": str(run_dir)}
            log(f"validate: {r['source']} test accuracy {run.metrics['test']['accuracy']:.4f}")
        except XferError as e:
            r["fine_tuned"] = {"error": str(e)}
            log(f"validate: {r['source']} failed ({e})")
    done = [r for r in top if "test_accuracy" in r.get("fine_tuned", {})]
    accs = [r["fine_tuned"]["test_accuracy"] for r in done]
    taus = {name: kendall_tau([r["scores"][name] for r in done if name in r["scores"]], accs)
            for name in ESTIMATORS if all(name in r["scores"] for r in done)}
    return {"sources": [r["source"] for r in done], "test_accuracy": accs, "kendall_tau": taus,
            "strategy": cfg.strategy or "default"}
