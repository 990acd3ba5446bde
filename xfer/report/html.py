"""`xfer report`: one self-contained HTML page (inline CSS, PNG pictures as data URIs, no script, no network) for a
run folder, a `xfer compare` folder, a `xfer rank` result or a `xfer search` folder."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from xfer.errors import XferError
from xfer.report import figures

TEMPLATES = Path(__file__).parent / "templates"
# What marks each kind of input (the files the commands write); a run folder is recognised by its spec.
RESULT_FILES = {"compare": "compare.json", "rank": "rank.json", "search": "search.json"}
KINDS = "a run folder (with spec.json), a `xfer compare --out` folder (compare.json), a `xfer rank --out` result " \
        "(rank.json) or a `xfer search --out` folder (search.json)"


def environment():
    """Jinja2 templates of this package; HTML templates escape every value, the Markdown one does not."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), trim_blocks=True, lstrip_blocks=True,
                             autoescape=lambda name: bool(name) and name.endswith(".html.j2"),
                             undefined=jinja2.ChainableUndefined, keep_trailing_newline=True)
    def missing(v) -> bool:  # a key that old results lack, or a value not measured
        return v is None or isinstance(v, jinja2.Undefined)

    env.filters["pct"] = lambda v: "-" if missing(v) else f"{100 * v:.2f}%"
    env.filters["num"] = lambda v, fmt="{:,}": "-" if missing(v) else fmt.format(v)
    return env


def report_kind(path: Path) -> tuple[str, Path]:
    """("run" | "compare" | "rank" | "search", the file or folder to read), or an XferError naming what PATH is
    not."""
    from xfer.runs.folder import SPEC

    path = Path(path)
    if not path.exists():
        raise XferError(f"{path} does not exist. Give {KINDS}.")
    if path.is_dir():
        if (path / SPEC).is_file():
            return "run", path
        for kind, name in RESULT_FILES.items():
            if (path / name).is_file():
                return kind, path / name
        raise XferError(f"{path} is none of the folders `xfer report` reads: it has no spec.json, compare.json, "
                        f"rank.json or search.json. Give {KINDS}.")
    if path.name == SPEC:
        return "run", path.parent
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise XferError(f"{path} is not a JSON result of xfer ({e}). Give {KINDS}.") from e
    if isinstance(data, dict):
        if "ranking" in data:
            return "rank", path
        if "strategies" in data and "runs" in data:
            return "compare", path
        if "study" in data and "best" in data:
            return "search", path
    raise XferError(f"{path} is not a result `xfer report` knows. Give {KINDS}.")


def write_report(path: str | Path, out: str | Path | None = None, overwrite: bool = False) -> tuple[str, Path]:
    """Write the HTML report of `path` to `out` (default: `<run>.report.html` beside a run folder, which stays
    untouched since its checksums cover its files; `report.html` inside a compare/rank/search folder). An existing
    `out` is replaced only with `overwrite`. Returns (kind, the file written)."""
    from xfer.runs.folder import atomic_write

    kind, where = report_kind(Path(path))
    if out is None:
        out = where.with_name(where.name + ".report.html") if kind == "run" else where.parent / "report.html"
    out = Path(out)
    if out.is_dir():
        raise XferError(f"--out {out} is a folder; give a file name such as {out / 'report.html'}.")
    if out.exists() and not overwrite:
        raise XferError(f"{out} already exists. Pass --overwrite to replace it, or choose another --out.")
    if kind == "run":
        html = run_report_html(read_run(where), title=where.name)
    else:
        data = json.loads(where.read_text(encoding="utf-8"))
        html = {"compare": compare_html, "rank": rank_html, "search": search_html}[kind](data, where.parent)
    atomic_write(out, html)
    return kind, out


def read_run(folder: Path) -> dict:
    """A verified run folder's documents, as `run_report_html` takes them."""
    from xfer.runs.folder import RunFolder

    run = RunFolder(Path(folder)).verify()
    return {"spec": run.spec(), "config": run.config(), "metrics": run.metrics(), "history": run.history(),
            "transfer_report": run.transfer_report(), "examples": run.examples()}


def run_report_html(docs: dict, title: str = "run") -> str:
    """The report of one run from its documents (fit renders it before the folder exists; `xfer report` after)."""
    from xfer.report.card import source_facts

    spec, metrics, cfg = docs["spec"], docs.get("metrics") or {}, docs.get("config") or {}
    labels = list(spec["labels"])
    base = metrics.get("baseline") or {}
    cal = metrics.get("calibration") or {}
    test = metrics.get("test") or {}
    pictures = {"curves": figures.learning_curves(docs.get("history") or [], base.get("history"))}
    if test.get("confusion_matrix"):
        pictures["confusion"] = figures.confusion(test["confusion_matrix"], labels)
    if (cal.get("test") or {}).get("bins"):
        pictures["reliability"] = figures.reliability(cal["test"]["bins"], cal["test"].get("bins_scaled"),
                                                      cal["temperature"])
    transfer = docs.get("transfer_report") or {}
    return environment().get_template("run.html.j2").render(
        title=title, spec=spec, m=metrics, cfg={k: v for k, v in cfg.items() if v is not None}, base=base, cal=cal,
        test=test, labels=labels, pictures=pictures, transfer=transfer, summary=transfer.get("summary") or {},
        source=source_facts(spec), examples=docs.get("examples") or [],
        modality="text-as-image" if spec.get("render") else spec["modality"])


def compare_html(data: dict, folder: Path) -> str:
    done = [s for s in data.get("strategies", []) if s.get("test_accuracy") is not None]
    pictures = {}
    if done:
        pictures["accuracy"] = figures.bars([s["strategy"] for s in done], [100 * s["test_accuracy"] for s in done],
                                            "Test accuracy per strategy", "test accuracy (%)")
    saved = figures.png_file(folder / "compare.png")
    if saved:
        pictures["cost"] = saved
    return environment().get_template("compare.html.j2").render(title=f"compare: {data.get('data')}", r=data,
                                                                pictures=pictures)


def rank_html(data: dict, folder: Path) -> str:
    ok = [r for r in data.get("ranking", []) if r.get("status") == "ok"]
    score = data.get("score", "logme")
    names = sorted({k for r in ok for k in r.get("scores", {})})
    pictures = {}
    if ok:
        pictures["scores"] = figures.bars([r["source"] for r in ok], [r["scores"].get(score, 0.0) for r in ok],
                                          f"Transferability per source ({score})", f"{score} score (higher is better)")
    return environment().get_template("rank.html.j2").render(title=f"rank: {data.get('data')}", r=data, ok=ok,
                                                             names=names, pictures=pictures)


def search_html(data: dict, folder: Path) -> str:
    trials = _trials(folder / "trials.csv")
    pictures = {name: uri for name in ("history.png", "importances.png")
                if (uri := figures.png_file(folder / name))}
    done = [t for t in trials if t.get("value")]
    if done and "history.png" not in pictures:
        pictures["trials"] = figures.scatter([(int(t["number"]), 100 * float(t["value"]), "") for t in done],
                                             "Validation accuracy per trial", "trial number",
                                             "validation accuracy (%)")
    return environment().get_template("search.html.j2").render(title=f"search: {data.get('study')}", r=data,
                                                               trials=trials, pictures=pictures)


def _trials(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
