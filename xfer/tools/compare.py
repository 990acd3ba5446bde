"""`xfer compare`: several strategies on the same splits with the same budget, side by side, and a recommendation.

Each (strategy, seed) runs as its own `xfer fit` in a child process: a crash or out-of-memory in one strategy cannot
stop the others, and the child's peak memory is that strategy's own. Every run is a normal run folder under `out`;
a folder whose saved config equals the requested one is reused instead of recomputed. Frozen-backbone features are
cached on disk, so strategies that start with a linear probe share one feature pass.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

from xfer.config import RESUME_FREE, FitConfig
from xfer.errors import XferError
from xfer.fitting.strategies import STRATEGIES
from xfer.runs import RunFolder, write_json, write_yaml


def run_name(strategy: str, seed: int, seeds: list[int]) -> str:
    return strategy if len(seeds) == 1 else f"{strategy}-seed{seed}"


def _same_config(run_dir: Path, cfg: FitConfig) -> bool:
    """True when `run_dir` is a finished run made with these options (defaults resolved as that run did)."""
    try:
        folder = RunFolder(run_dir).verify()
        spec = folder.spec()
        saved, modality = folder.config(), "text-as-image" if spec.get("render") else spec["modality"]
    except (OSError, XferError, KeyError):
        return False
    wanted = cfg.resolved(modality).to_dict()
    return all(saved.get(k) == v for k, v in wanted.items() if k not in RESUME_FREE)


def _row(strategy: str, seed: int, run_dir: Path, status: str, **extra) -> dict:
    row = {"strategy": strategy, "seed": seed, "status": status, "run": str(run_dir), "test_accuracy": None,
           "test_macro_f1": None, "val_accuracy": None, "trainable_params": None, "total_params": None,
           "train_seconds": None, "peak_memory_mb": None, **extra}
    if status in ("ok", "reused"):
        folder = RunFolder(run_dir)
        m, head = folder.metrics(), folder.headline()
        row.update(test_accuracy=head["test.accuracy"], test_macro_f1=head["test.macro_f1"],
                   val_accuracy=m["val"]["accuracy"], val_n=m["val"]["n"], trainable_params=m.get("trainable_params"),
                   total_params=m.get("total_params"), train_seconds=m.get("train_seconds"),
                   peak_memory_mb=extra.get("peak_memory_mb") or m.get("peak_memory_mb"))
    return row


def _run_child(cfg: FitConfig, config_file: Path, log_file: Path) -> tuple[int, float]:
    """`xfer fit --config` in a child process; returns its exit code and peak resident memory (MiB)."""
    write_yaml(config_file, {k: v for k, v in cfg.to_dict().items() if v is not None})
    with open(log_file, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "xfer.cli", "fit", "--config", str(config_file)],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024


def _last_error(log_file: Path) -> str:
    lines = [ln.strip() for ln in log_file.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:") or "Error" in ln]
    return (errors or lines or ["no output"])[-1][:300]


def summarise(rows: list[dict]) -> list[dict]:
    """One line per strategy: mean and spread over seeds of the finished runs."""
    out = []
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        mine = [r for r in rows if r["strategy"] == strategy]
        done = [r for r in mine if r["status"] in ("ok", "reused")]
        line = {"strategy": strategy, "runs": len(mine), "finished": len(done),
                "status": "ok" if len(done) == len(mine) else ("failed" if not done else "partial")}
        for key in ("test_accuracy", "test_macro_f1", "val_accuracy", "train_seconds", "peak_memory_mb"):
            values = [r[key] for r in done if r[key] is not None]
            line[key] = statistics.fmean(values) if values else None
            if key in ("test_accuracy", "val_accuracy"):
                line[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0 if values else None
        line["trainable_params"] = done[0]["trainable_params"] if done else None
        line["total_params"] = done[0]["total_params"] if done else None
        if not done:
            line["error"] = next((r.get("error") for r in mine if r.get("error")), None)
        out.append(line)
    return out


def recommend(summary: list[dict], val_n: int | None) -> dict | None:
    """The best validation accuracy; strategies within one validation example of it count as tied, and the
    cheapest to train (then the fewest trainable parameters) of those wins. Test scores play no part."""
    done = [s for s in summary if s["val_accuracy"] is not None]
    if not done:
        return None
    best = max(s["val_accuracy"] for s in done)
    tol = 1.0 / val_n if val_n else 0.0
    tied = [s for s in done if s["val_accuracy"] >= best - tol - 1e-12]
    pick = min(tied, key=lambda s: (s["train_seconds"] or 0.0, s["trainable_params"] or 0))
    why = ("best validation accuracy" if len(tied) == 1 else
           f"tied within one validation example with {', '.join(s['strategy'] for s in tied if s is not pick)}; "
           f"cheapest to train")
    return {"strategy": pick["strategy"], "val_accuracy": pick["val_accuracy"], "reason": why}


def plot(summary: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [s for s in summary if s["test_accuracy"] is not None]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "trainable_params", "trainable parameters (log)"),
                           (axes[1], "train_seconds", "training time, s (log)")):
        for s in done:
            ax.errorbar(s[key], s["test_accuracy"], yerr=s.get("test_accuracy_std") or 0.0, fmt="o", capsize=3)
            ax.annotate(s["strategy"], (s[key], s["test_accuracy"]), textcoords="offset points", xytext=(5, 4),
                        fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def compare(cfg: FitConfig, strategies: list[str], seeds: list[int], out: Path,
            log: Callable[[str], None] = print) -> dict:
    """Run (or reuse) every strategy x seed; write compare.json and compare.png in `out`; return the result."""
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise XferError(f"Unknown strategies: {', '.join(unknown)}; choose from: {', '.join(STRATEGIES)}.")
    if not strategies:
        raise XferError("No strategies given: pass --strategies a,b,c.")
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    jobs = [(s, seed) for s in strategies for seed in seeds]
    plans = []
    for strategy, seed in jobs:
        run_dir = out / run_name(strategy, seed, seeds)
        child = replace(cfg, strategy=strategy, seed=seed, out=str(run_dir), quiet=True, overwrite=False,
                        resume=False)
        if run_dir.exists() and not _same_config(run_dir, child) and not cfg.overwrite:
            raise XferError(f"{run_dir} holds a run with other options. Use another --out, or --overwrite to "
                            f"replace the runs whose options changed.")
        plans.append((strategy, seed, run_dir, child))

    rows = []
    for k, (strategy, seed, run_dir, child) in enumerate(plans, 1):
        tag = f"[{k}/{len(plans)}] {run_dir.name}"
        if run_dir.exists() and _same_config(run_dir, child):
            rows.append(_row(strategy, seed, run_dir, "reused"))
            log(f"{tag}: reused (same options)")
            continue
        if run_dir.exists():
            child = replace(child, overwrite=True)
        log_file = out / "logs" / f"{run_dir.name}.log"
        start = time.perf_counter()
        code, peak = _run_child(child, out / "logs" / f"{run_dir.name}.yaml", log_file)
        wall = time.perf_counter() - start
        if code == 0 and RunFolder(run_dir).exists():
            row = _row(strategy, seed, run_dir, "ok", peak_memory_mb=peak, wall_seconds=wall)
            log(f"{tag}: test acc {row['test_accuracy']:.4f}, {row['trainable_params']:,} trainable, "
                f"trained {row['train_seconds']:.0f}s")
        else:
            row = _row(strategy, seed, run_dir, "failed", error=_last_error(log_file), wall_seconds=wall,
                       log=str(log_file))
            log(f"{tag}: FAILED ({row['error']}); see {log_file}")
        rows.append(row)

    summary = summarise(rows)
    val_n = next((r.get("val_n") for r in rows if r.get("val_n")), None)
    result = {"source": cfg.source, "data": cfg.data, "shots": cfg.shots, "seeds": seeds,
              "budget": {"epochs": cfg.epochs, "time_budget": cfg.time_budget},
              "strategies": summary, "runs": rows, "recommendation": recommend(summary, val_n),
              "config": {k: v for k, v in asdict(cfg).items() if k not in ("strategy", "seed", "out")}}
    write_json(out / "compare.json", result)
    if any(s["test_accuracy"] is not None for s in summary):
        plot(summary, out / "compare.png", f"{cfg.data} <- {cfg.source or 'default source'}"
             + (f", {cfg.shots}-shot" if cfg.shots else "") + f", seeds {','.join(map(str, seeds))}")
    return result


def format_table(result: dict) -> list[list[str]]:
    def pct(v, sd=None):
        return "-" if v is None else f"{100 * v:.2f}" + (f"±{100 * sd:.2f}" if sd else "")

    rows = []
    for s in result["strategies"]:
        name = s["strategy"] + ("" if s["status"] == "ok" else f" ({s['status']})")
        rows.append([name, pct(s["test_accuracy"], s.get("test_accuracy_std")), pct(s["test_macro_f1"]),
                     pct(s["val_accuracy"]),
                     "-" if s["trainable_params"] is None else f"{s['trainable_params']:,}",
                     "-" if s["train_seconds"] is None else f"{s['train_seconds']:.0f}",
                     "-" if s["peak_memory_mb"] is None else f"{s['peak_memory_mb']:.0f}"])
    return rows


TABLE_COLUMNS = ("strategy", "test %", "F1 %", "val %", "trainable", "train s", "peak MiB")


def load_result(out: Path) -> dict:
    path = out / "compare.json"
    if not path.exists():
        raise XferError(f"{path} does not exist; run `xfer compare --out {out}` first.")
    return json.loads(path.read_text())
