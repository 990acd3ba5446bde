"""`xfer compress` and `xfer export --format onnx`: smaller and faster variants of a run, each a run folder, with
one table (compress.json, compress.png) of size, parameters, test accuracy and latency.

Variants: the fp32 original; structured pruning with a recovery fine-tune; distillation into a smaller student
(and the same student fine-tuned without a teacher, the control); for each of them, with `--int8`, the ONNX fp32
export and its int8 quantisation; PyTorch's own dynamic int8 as a baseline row (in memory only). Every row is
measured the same way, from the folder that was written: test accuracy on the run's own test split, latency on
fixed threads over real test inputs.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from xfer.compress.measure import Timed, folder_mb, measure_all, onnx_params
from xfer.compress.onnx import TRACE_BATCH, as_tensors, export_onnx, input_names
from xfer.compress.quantize import MODES, int8_operators, quantize_onnx, torch_dynamic_int8
from xfer.compress.retrain import run_task
from xfer.compress.variant import Compressed
from xfer.data.task import Split, Task
from xfer.errors import XferError
from xfer.fitting.evaluate import classification_metrics
from xfer.runs.folder import BACKBONE, ONNX_MODEL, WEIGHTS, RunFolder, atomic_write, write_json, write_run
from xfer.runs.onnx_run import ONNX_RUNTIME, OnnxRun, load_onnx
from xfer.runs.run import Run, load

REPORT = "compression.json"  # in each variant's folder: what was done to get it
TABLE = "compress.json"
CALIBRATION_EXAMPLES = 256
LATENCY_ROUNDS = 3


def default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def cpu_name() -> str:
    """The CPU model and the instruction sets that decide int8 and bf16 speed (VNNI, AMX)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and name in ("", platform.machine(), platform.processor()):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    marks = [f for f in ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
    return f"{name}, {os.cpu_count()} cores" + (f" ({', '.join(marks)})" if marks else " (no VNNI, no AMX)")


# --- inputs ------------------------------------------------------------------------------------------------------

def _torch_batches(run: Run, split: Split, idx_b1: list[int], n_b32: int):
    ds = run.dataset(split)
    return {"b1": [ds[[i]][0] for i in idx_b1], "b32": [ds[list(range(min(n_b32, len(split))))][0]]}


def _numpy(inputs, modality: str) -> dict[str, np.ndarray]:
    return {n: t.numpy() for n, t in zip(input_names(modality), as_tensors(inputs, modality))}


def _sample(split: Split, n: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(len(split), size=min(n, len(split)), replace=False).tolist())


# --- ONNX variants ------------------------------------------------------------------------------------------------

def _onnx_spec(spec: dict, info: dict, tokenizer_pad: int | None) -> dict:
    out = {k: v for k, v in spec.items() if k != "lora"}
    out["runtime"] = ONNX_RUNTIME
    out["onnx"] = {**info, **({"pad_id": tokenizer_pad} if tokenizer_pad is not None else {})}
    return out


def _pad_id(run: Run) -> int | None:
    if run.spec["modality"] != "text":
        return None
    from xfer.data.loaders import load_tokenizer

    return int(load_tokenizer(RunFolder(run.path).backbone).pad_token_id or 0)


def _stage(spec: dict, graph: Path, source_run: Path) -> OnnxRun:
    """An ONNX run laid out in the graph's temporary folder (the source run's tokenizer beside it), to measure
    before anything is written."""
    staged = graph.parent
    if graph.name != ONNX_MODEL:
        shutil.copyfile(graph, staged / ONNX_MODEL)
    backbone = Path(source_run) / BACKBONE
    if backbone.is_dir() and not (staged / BACKBONE).exists():
        shutil.copytree(backbone, staged / BACKBONE)
    return OnnxRun(spec, staged)


def onnx_variants(run: Run, name: str, out: Path, *, int8: str | None, task: Task, overwrite: bool,
                  log: Callable[[str], None]) -> list[Path]:
    """The run as an ONNX fp32 run (checked against PyTorch) and, with `int8`, its quantised copy."""
    train = run.dataset(task.train)
    modality = run.spec["modality"]
    n = len(task.train)
    example = train[list(range(min(TRACE_BATCH, n)))][0]
    check = [train[list(range(s, min(s + k, n)))][0] for s, k in ((0, 2), (3, 5), (8, 1)) if s < n]
    written = []
    with tempfile.TemporaryDirectory(dir=out, prefix=".onnx-") as tmp:
        fp32 = Path(tmp) / ONNX_MODEL
        info = export_onnx(run.model, example, check, fp32, log=log)
        pad = _pad_id(run)
        spec = _onnx_spec(run.spec, info, pad)
        staged = _stage(spec, fp32, run.path)
        metrics = {"test": _onnx_metrics(staged, task.test)}
        report = {"variant": f"{name}-onnx", "from": str(run.path), **info}
        written.append(_write_onnx(out / f"{name}-onnx", spec, fp32, metrics, report, run.path, overwrite))
        if int8:
            q_dir = Path(tmp) / "int8"
            q_dir.mkdir()
            q = q_dir / ONNX_MODEL
            calibration = None
            if int8 == "static":
                idx = _sample(task.train, CALIBRATION_EXAMPLES)
                calibration = [_numpy(train[idx[i:i + 32]][0], modality) for i in range(0, len(idx), 32)]
            qinfo = quantize_onnx(fp32, q, int8, calibration)
            qinfo["operators"] = int8_operators(q)
            qspec = _onnx_spec(run.spec, {**info, "quantization": qinfo}, pad)
            qstaged = _stage(qspec, q, run.path)
            qmetrics = {"test": _onnx_metrics(qstaged, task.test)}
            log(f"int8 {int8}: {qinfo['operators'].get('int8_initializers', 0)} int8 weight tensors; test accuracy "
                f"{qmetrics['test']['accuracy']:.4f}")
            report = {"variant": f"{name}-int8-{int8}", "from": str(run.path), **info, "quantization": qinfo}
            written.append(_write_onnx(out / f"{name}-int8-{int8}", qspec, q, qmetrics, report, run.path, overwrite))
    return written


def _onnx_metrics(onnx_run: OnnxRun, split: Split) -> dict:
    logits = onnx_run.logits(list(split.items))
    return classification_metrics(split.labels, logits.argmax(1), onnx_run.labels)


def _write_onnx(dest: Path, spec: dict, graph: Path, metrics: dict, report: dict, source_run: Path,
                overwrite: bool) -> Path:
    backbone = Path(source_run) / BACKBONE
    return write_run(dest, spec=spec, onnx=graph, metrics=metrics, extra={REPORT: report},
                     backbone=(lambda d: shutil.copytree(backbone, d, dirs_exist_ok=True)) if backbone.is_dir()
                     else None, overwrite=overwrite)


# --- PyTorch variants ---------------------------------------------------------------------------------------------

def save_variant(variant: Compressed, out: Path, source: Run, overwrite: bool) -> Path:
    """A pruned or distilled model as a run folder: its spec, weights, metrics and compression report."""
    metrics = {k: v for k, v in variant.metrics.items() if k != "history"}
    return write_run(out / folder_name(variant.name), spec=variant.spec, weights=variant.model.state_dict(),
                     config=RunFolder(source.path).config(), metrics=metrics,
                     history=variant.metrics.get("history"), backbone=variant.backbone,
                     extra={REPORT: {"variant": variant.name, "from": str(source.path), **variant.report}},
                     overwrite=overwrite)


def folder_name(variant: str) -> str:
    """A variant's name as a folder name (sources such as random:mobilenet_v2 carry a colon)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", variant)


# --- the table ------------------------------------------------------------------------------------------------------

def prepare_row(path: Path, variant: str, task: Task, threads: int) -> tuple[dict, Timed]:
    """The size, parameters and test metrics of the run folder at `path` (measured from what was written), and
    what its latency is timed on."""
    folder = RunFolder(path)
    spec = folder.spec()
    idx = _sample(task.test, 50, seed=1)
    if spec.get("runtime") == ONNX_RUNTIME:
        run = load_onnx(path, threads=threads)
        logits = run.logits(list(task.test.items))
        items = list(task.test.items)
        batches = {"b1": [run.inputs([items[i]]) for i in idx], "b32": [run.inputs(items[:32])]}
        session = run.session
        timed = (lambda x: session.run(["logits"], x), batches)
        size, params, runtime = folder_mb(path, [ONNX_MODEL]), onnx_params(path / ONNX_MODEL), "onnxruntime"
    else:
        run = load(path)
        logits = run.logits(task.test, precision="no").numpy()
        model = run.model.float().eval()
        timed = (model, _torch_batches(run, task.test, idx, 32))
        size, params = folder_mb(path, [WEIGHTS]), sum(p.numel() for p in run.model.parameters())
        runtime = "pytorch"
    return _row(variant, runtime, size, params, task, logits, tuple(spec["labels"]), threads, path), timed


def torch_int8_row(run: Run, task: Task, threads: int) -> tuple[dict, Timed]:
    """PyTorch dynamic int8 (torch.ao) of the original, measured in memory: it has no run folder, since a
    quantised PyTorch module cannot be saved as safetensors and rebuilt from a spec."""
    model = torch_dynamic_int8(_copy(run.model).float().eval())
    q = Run(model, run.spec, run.path, tokenizer=run.tokenizer)
    logits = q.logits(task.test, precision="no").numpy()
    idx = _sample(task.test, 50, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(model.state_dict(), Path(tmp) / "q.pt")  # only to weigh it: torch's own format holds packed int8
        size = (Path(tmp) / "q.pt").stat().st_size / 1e6
    row = _row("original-torch-int8-dynamic", "pytorch", size, sum(p.numel() for p in run.model.parameters()), task,
               logits, run.labels, threads, None)
    return row, (model, _torch_batches(q, task.test, idx, 32))


def _row(variant, runtime, size, params, task, logits, labels, threads, path) -> dict:
    m = classification_metrics(task.test.labels, logits.argmax(1), labels)
    return {"variant": variant, "runtime": runtime, "size_mb": round(size, 3), "params": int(params),
            "test_accuracy": m["accuracy"], "test_macro_f1": m["macro_f1"], "threads": threads,
            "path": str(path) if path is not None else None}


def _copy(model):
    import copy

    return copy.deepcopy(model)


def _rounded(d: dict) -> dict:
    return {k: round(v, 3) for k, v in d.items()}


def compress(run_dir: str | Path, out: str | Path, *, int8: str | None = None, prune: float | None = None,
             recover_epochs: int = 1, distill: str | None = None, student_layers: int | None = None,
             distill_epochs: int = 2, temperature: float = 2.0, alpha: float = 0.5, threads: int | None = None,
             rounds: int = LATENCY_ROUNDS,
             torch_baseline: bool = True, overwrite: bool = False,
             log: Callable[[str], None] | None = None) -> dict:
    """Write the requested variants of the run under `out`, measure every one, and write compress.json and
    compress.png there. Returns the table as {"run", "cpu", "threads", "rows"}."""
    log = log or (lambda msg: None)
    if int8 is not None and int8 not in MODES:
        raise XferError(f"--int8 must be one of {', '.join(MODES)}, got {int8!r}.")
    if prune is None and distill is None and int8 is None:
        raise XferError("Nothing to do: give at least one of --int8 dynamic|static, --prune RATIO, "
                        "--distill STUDENT.")
    if prune is not None and not 0 < prune < 1:
        raise XferError(f"--prune is the fraction of channels to remove, strictly between 0 and 1 (e.g. 0.3); "
                        f"got {prune}.")
    out = Path(out)
    _check_out(out, overwrite)
    _refuse_lora(run_dir)
    original = load(run_dir)
    threads = threads or default_threads()
    _, task = run_task(original)
    out.mkdir(parents=True, exist_ok=True)
    torch_runs: list[tuple[str, Path]] = [("original", Path(run_dir))]
    if prune is not None:
        from xfer.compress.prune import prune_run

        log(f"[bold]prune[/] {prune:.0%} of channels, then {recover_epochs} recovery epoch(s)")
        variant = prune_run(original, prune, recover_epochs=recover_epochs, log=log)
        torch_runs.append((folder_name(variant.name), save_variant(variant, out, original, overwrite)))
    if distill is not None:
        from xfer.compress.distill import distill_run

        for teacher in (True, False):
            log(f"[bold]distil[/] into {distill}" if teacher else f"[bold]control[/]: {distill} without a teacher")
            variant = distill_run(original, distill, epochs=distill_epochs, temperature=temperature, alpha=alpha,
                                  student_layers=student_layers, teacher=teacher, log=log)
            torch_runs.append((folder_name(variant.name), save_variant(variant, out, original, overwrite)))
    paths = list(torch_runs)
    if int8 is not None:
        for name, path in torch_runs:
            log(f"[bold]ONNX[/] {name}: export, check, int8 {int8}")
            for p in onnx_variants(load(path), name, out, int8=int8, task=task, overwrite=overwrite, log=log):
                paths.append((p.name, p))
    log(f"measuring {len(paths)} variants on {threads} thread(s): {cpu_name()}")
    measured = [prepare_row(Path(p), name, task, threads) for name, p in paths]
    if int8 == "dynamic" and torch_baseline:
        try:
            measured.insert(1, torch_int8_row(original, task, threads))
        except XferError as e:
            log(f"[yellow]note:[/] {e}")
    latencies = measure_all([timed for _, timed in measured], threads, rounds=rounds)
    rows = [{**row, **_rounded(lat), "threads": threads, "path": row["path"]}
            for (row, _), lat in zip(measured, latencies)]
    table = {"run": str(run_dir), "cpu": cpu_name(), "threads": threads, "test_examples": len(task.test),
             "latency": f"median of {rounds} interleaved rounds; batch 1: 100 calls over 50 test examples, "
                        f"batch 32: 10 calls", "rows": rows}
    write_json(out / TABLE, table)
    plot(table, out / "compress.png")
    return table


def _refuse_lora(run_dir) -> None:
    spec = RunFolder(Path(run_dir)).verify().spec()
    if spec.get("runtime") == ONNX_RUNTIME:
        raise XferError(f"{run_dir} is already an ONNX run; compress or export the PyTorch run it came from.")
    if spec.get("defence"):
        raise XferError(f"{run_dir} has an input defence ({spec['defence']['name']}), which runs in PyTorch and is not "
                        f"part of an ONNX graph. Compress the run without it (fit again without --defence).")
    if spec.get("lora"):
        raise XferError(f"{run_dir} has LoRA adapters that are not merged into the base weights; export and "
                        f"compression work on plain weights. Run `xfer export {run_dir} --out DIR` (it merges them) "
                        f"and use DIR.")


def _check_out(out: Path, overwrite: bool) -> None:
    """`out` holds compression outputs: new, empty, or (with --overwrite) a previous `xfer compress` output."""
    if not out.exists():
        return
    if not out.is_dir():
        raise XferError(f"{out} is a file; give a folder for the compressed variants.")
    if any(out.iterdir()) and not overwrite:
        raise XferError(f"{out} already exists and is not empty. Choose another --out, or pass --overwrite to "
                        f"replace the variants it holds.")
    foreign = [p.name for p in out.iterdir() if not (p.name in (TABLE, "compress.png") or p.name.startswith(".")
                                                     or RunFolder(p).exists())]
    if foreign:
        raise XferError(f"{out} holds files that are not `xfer compress` outputs ({', '.join(foreign[:5])}); "
                        f"--overwrite only replaces xfer's own variants. Choose another --out.")


def plot(table: dict, path: Path) -> None:
    """Test accuracy against batch-1 latency and against size, one point per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    colours = plt.get_cmap("tab10")
    for ax, key, label in ((axes[0], "latency_ms_b1_p50", "batch-1 latency, p50 (ms, log scale)"),
                           (axes[1], "size_mb", "model file (MB)")):
        for i, row in enumerate(table["rows"]):
            ax.scatter(row[key], row["test_accuracy"] * 100, s=48, color=colours(i % 10),
                       marker="s" if row["runtime"] == "onnxruntime" else "o", label=row["variant"])
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].set_xscale("log")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    axes[0].xaxis.set_major_formatter(ScalarFormatter())
    axes[0].xaxis.set_minor_formatter(NullFormatter())
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), title="o PyTorch, \u25a0 ONNX Runtime",
                   title_fontsize=7)
    fig.suptitle(f"{Path(table['run']).name}: {table['threads']} thread(s), {table['cpu']}", fontsize=9)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def export_onnx_run(run_dir: str | Path, out: str | Path, overwrite: bool = False,
                    log: Callable[[str], None] | None = None) -> Path:
    """`xfer export RUN --format onnx --out DIR`: the run as a checked ONNX run folder at `out`."""
    log = log or (lambda msg: None)
    _refuse_lora(run_dir)
    run = load(run_dir)
    _, task = run_task(run)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from xfer.runs.folder import check_destination

    check_destination(out, overwrite)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.export-") as tmp:
        written = onnx_variants(run, "model", Path(tmp), int8=None, task=task, overwrite=False, log=log)[0]
        from xfer.runs.folder import replace_folder, check_destination as recheck

        recheck(out, overwrite)
        replace_folder(written, out)
    return out
