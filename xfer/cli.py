"""The `xfer` command: a thin layer over the package (xfer.fitting, xfer.runs, xfer.tools). Options of `fit` are generated from FitConfig, so the CLI and the
Python API can never disagree about what a fit accepts."""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import fields

import click

from xfer.config import COMPARE_STRATEGIES, HELP, FitConfig
from xfer.errors import XferError


def _console():
    from rich.console import Console

    return Console(highlight=False)


def _fit_options(func, exclude: tuple[str, ...] = ()):
    """One click option per FitConfig field; None defaults so only what the user typed overrides the YAML."""
    for f in reversed([f for f in fields(FitConfig) if f.name not in exclude]):
        name = "--" + f.name.replace("_", "-")
        hint = f.type if not isinstance(f.type, str) else f.type
        if f.name == "time_budget":  # a duration: 300, 90s, 5m, 1h
            opt = click.option(name, f.name, type=str, default=None, help=HELP.get(f.name))
        elif "bool" in str(hint):
            opt = click.option(f"{name}/--no-{name[2:]}", f.name, default=None, help=HELP.get(f.name))
        else:
            kind = int if "int" in str(hint) else float if "float" in str(hint) else str
            opt = click.option(name, f.name, type=kind, default=None, help=HELP.get(f.name))
        func = opt(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="xfer")
def cli():
    """xfer: transfer learning for image and text classification."""
    from xfer.errors import XferWarning

    warnings.filterwarnings("ignore")  # libraries' deprecation chatter
    warnings.filterwarnings("always", category=XferWarning)
    warnings.showwarning = lambda message, category, *args, **kwargs: click.echo(
        click.style("warning: ", fg="yellow", bold=True) + str(message), err=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print as JSON")
def sources(as_json: bool):
    """List the sources that can be transferred from."""
    from xfer.sources import ONLINE_FORMS, list_sources, wheel_path

    rows = []
    for s in list_sources():
        try:
            installed = wheel_path(s).exists()
        except XferError:
            installed = False
        rows.append({"name": s.name, "modality": s.modality, "arch": s.arch, "offline": True,
                     "installed": installed, "sha256": s.sha256, "description": s.description})
    online = [{"name": form, "offline": form.startswith(("file:", "random:")), "description": d} for form, d in zip(
        ONLINE_FORMS, ["any timm model with pretrained weights (downloads)",
                       "a Hugging Face encoder for text (downloads; safetensors only)",
                       "a local .safetensors/.pt/.pth checkpoint (tensors only, never pickle)",
                       "the source's architecture from random initialisation: a control, nothing transferred"])]
    if as_json:
        click.echo(json.dumps({"offline": rows, "online": online}, indent=2))
        return
    from rich.table import Table

    t = Table(title="Sources")
    for c in ("name", "modality", "architecture", "weights", "description"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["name"], r["modality"], r["arch"], "offline, sha256-pinned" if r["installed"] else
                  "[red]not installed (make setup)[/]", r["description"])
    for r in online:
        t.add_row(r["name"], "", "", "no download" if r["offline"] else "online (downloads)", r["description"])
    _console().print(t)


def print_report(report, console, limit: int = 15) -> None:
    from rich.table import Table

    s = report.summary()
    t = Table(title=f"Transfer report: {s['backbone_fraction']:.1%} of backbone parameters from the source "
                    f"(matched by {s['method']})")
    for c in ("status", "tensors"):
        t.add_column(c)
    for k in ("copied", "adapted", "re-initialised", "skipped", "unused_source_tensors"):
        t.add_row(k, str(s[k]))
    console.print(t)
    odd = [r for r in report.rows if r.status != "copied"]
    if odd:
        t = Table(title="Tensors not copied as they are")
        for c in ("target", "status", "source", "reason"):
            t.add_column(c)
        for r in odd[:limit]:
            t.add_row(r.target, r.status, r.source or "", r.reason)
        if len(odd) > limit:
            t.add_row(f"... {len(odd) - limit} more in transfer_report.json", "", "", "")
        console.print(t)


def print_metrics(metrics: dict, console, title: str = "Results") -> None:
    from rich.table import Table

    t = Table(title=title)
    for c in ("model", "val acc", "test acc", "test macro-F1", "train s"):
        t.add_column(c)
    t.add_row("transfer", f"{metrics['val']['accuracy']:.4f}", f"{metrics['test']['accuracy']:.4f}",
              f"{metrics['test']['macro_f1']:.4f}", f"{metrics.get('train_seconds', 0):.0f}")
    if "baseline" in metrics:
        b = metrics["baseline"]
        t.add_row("from scratch", f"{b['val']['accuracy']:.4f}", f"{b['test']['accuracy']:.4f}",
                  f"{b['test']['macro_f1']:.4f}", f"{b.get('train_seconds', 0):.0f}")
    console.print(t)


@cli.command()
@click.option("--config", "config_file", type=click.Path(), default=None, help="YAML file with any of the options")
@_fit_options
def fit(config_file, **options):
    """Transfer a pretrained source to your data, fine-tune, evaluate, and save a run folder."""
    from xfer.fitting.fit import fit as api_fit
    from xfer.config import make_config

    from xfer.fitting import distributed as dist

    cfg = make_config(config_file, **options)
    launcher = cfg.processes > 1 and dist.world_size() == 1  # its workers print the results
    run = api_fit(cfg)
    if not cfg.quiet and dist.is_main() and not launcher:
        console = _console()
        print_report(run.report, console)
        print_metrics(run.metrics, console)
        console.print(f"run folder: {run.path}")


@cli.command()
@click.option("--strategies", default=",".join(COMPARE_STRATEGIES), show_default=True,
              help="comma-separated strategies to compare")
@click.option("--seeds", default="0", show_default=True, help="comma-separated seeds; each strategy runs once per seed")
@click.option("--config", "config_file", type=click.Path(), default=None, help="YAML file with any fit option")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@lambda f: _fit_options(f, exclude=("strategy", "seed", "resume", "merge"))
def compare(strategies, seeds, config_file, as_json, **options):
    """Run several strategies on the same splits with the same budget; table, plot and a recommendation.

    Each strategy is a normal run folder under --out (default runs/compare-<data>-<time>); runs made with the
    same options are reused, and a failing strategy is reported without stopping the others.
    """
    import time
    from pathlib import Path

    from xfer.tools.compare import TABLE_COLUMNS, compare as run_compare, format_table
    from xfer.config import make_config

    cfg = make_config(config_file, **options)
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise XferError(f"--seeds must be comma-separated integers, got {seeds!r}.") from None
    names = [s.strip() for s in strategies.split(",") if s.strip()]
    data_name = Path(cfg.data.replace("builtin:", "")).stem
    out = Path(cfg.out or f"runs/compare-{data_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    console = _console()
    log = (lambda m: None) if (cfg.quiet or as_json) else (lambda m: console.print(m, soft_wrap=True))
    result = run_compare(cfg, names, seed_list, out, log)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    if cfg.quiet:
        return
    from rich import box
    from rich.table import Table

    t = Table(box=box.SIMPLE, title=f"{cfg.data}: strategies compared" + (f" ({cfg.shots}-shot)" if cfg.shots else "")
              + (f", mean ± sd over seeds {seeds}" if len(seed_list) > 1 else ""))
    for i, c in enumerate(TABLE_COLUMNS):
        t.add_column(c, no_wrap=True, justify="left" if i == 0 else "right")
    for row in format_table(result):
        t.add_row(*row)
    console.print(t)
    rec = result["recommendation"]
    if rec:
        console.print(f"recommended: [bold]{rec['strategy']}[/] ({rec['reason']}; val acc {rec['val_accuracy']:.4f})")
    for s in result["strategies"]:
        if s.get("error"):
            console.print(f"[red]{s['strategy']} failed:[/] {s['error']}")
    console.print(f"written: {out / 'compare.json'}, {out / 'compare.png'}")


@cli.command("search")
@click.option("--target", type=float, default=None, help="stop the whole search when a trial's validation accuracy "
              "reaches this (e.g. 0.985)")
@click.option("--trials", type=int, default=None, help="stop after this many finished trials (all workers together)")
@click.option("--timeout", default=None, help="stop this worker after this long (300, 90s, 30m, 2h)")
@click.option("--storage", default=None, help="SQLAlchemy URL of the study storage (default: SQLite in --out); e.g. "
              "postgresql://user@host/db to share a study between machines")
@click.option("--study", "study_name", default=None, help="study name (default: search-<data>)")
@click.option("--sampler", type=click.Choice(["tpe", "random", "grid"]), default="tpe", show_default=True)
@click.option("--pruner", type=click.Choice(["median", "hyperband", "none"]), default="median", show_default=True)
@click.option("--space", "space_file", type=click.Path(), default=None,
              help="YAML mapping option -> list of choices | {low, high, log, int, when} | fixed value; replaces those "
                   "entries of the default space")
@click.option("--heartbeat", type=int, default=30, show_default=True,
              help="seconds between a worker's heartbeats; a trial silent for twice this is failed and re-queued")
@click.option("--resume", "resume_study", is_flag=True, help="continue a stored study with its own settings")
@click.option("--show", is_flag=True, help="print the trials and best configuration of a (running) study and exit")
@click.option("--config", "config_file", type=click.Path(), default=None, help="YAML file with any fit option")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@lambda f: _fit_options(f, exclude=("resume", "checkpoint", "merge", "baseline"))
def search_cmd(target, trials, timeout, storage, study_name, sampler, pruner, space_file, heartbeat, resume_study, show,
               config_file, as_json, **options):
    """Repeat fine-tuning until a target validation accuracy: an Optuna study over strategies and hyper-parameters.

    The test split is evaluated once, for the best configuration, saved as <out>/best. Several workers (processes or
    machines) join one study by giving the same --storage and --study.
    """
    from pathlib import Path

    from xfer.config import make_config, parse_duration, read_yaml_mapping
    from xfer.tools.search import format_params, search, show as show_study

    data = options.get("data")
    if study_name is None:
        if not data:
            raise XferError("Give --study (or --data, from which the default study name is made).")
        study_name = f"search-{Path(data.replace('builtin:', '')).stem}"
    out = Path(options.get("out") or f"runs/{study_name}")
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    console = _console()
    if show:
        result = show_study(study_name, url, out)
        if as_json:
            click.echo(json.dumps(result, indent=2, default=str))
            return
        from rich import box
        from rich.table import Table

        t = Table(box=box.SIMPLE, title=f"study {study_name}: {result['states']}")
        for c in ("#", "state", "val acc", "s", "params"):
            t.add_column(c, justify="right" if c != "params" else "left")
        for r in result["rows"]:
            t.add_row(str(r["number"]), r["state"], "-" if r["value"] is None else f"{r['value']:.4f}",
                      "-" if r["seconds"] is None else f"{r['seconds']:.0f}", format_params(r["params"]))
        console.print(t)
        if result["best"]:
            console.print(f"best: trial {result['best']['number']}, val {result['best']['value']:.4f}, "
                          f"{format_params(result['best']['params'])}")
        console.print(f"written: {out / 'trials.csv'} and plots in {out}")
        return
    space = read_yaml_mapping(space_file, "Search space") if space_file else None
    cfg = make_config(config_file, **options) if (data or config_file) else FitConfig()
    log = (lambda m: None) if (cfg.quiet or as_json) else (lambda m: console.print(m, soft_wrap=True))
    result = search(cfg, study_name=study_name, out=out, storage_url=url, target=target, trials=trials,
                    timeout=parse_duration(timeout), space=space, sampler=sampler, pruner=pruner, heartbeat=heartbeat,
                    resume=resume_study, log=log)
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    best = result["best"]
    console.print(f"trials: {result['states']}; best val {best['value']:.4f} (trial {best['number']}: "
                  f"{format_params(best['params'])})")
    if result.get("target_reached"):
        r = result["target_reached"]
        console.print(f"target reached by trial {r['trial']} after {r['trials_finished_by_then']} trials, "
                      f"{r['seconds']:.0f}s")
    elif result["target"] is not None:
        console.print(f"[yellow]target {result['target']} not reached[/]")
    if "best_test_accuracy" in result:
        console.print(f"best configuration: test accuracy {result['best_test_accuracy']:.4f} -> {result['best_run']}")
    console.print(f"written: {out / 'trials.csv'}, {out / 'search.json'}, plots in {out}")


@cli.command()
@click.option("--sources", "source_list", default=None,
              help="comma-separated sources to score (default: every offline source of the data's modality)")
@click.option("--max-samples", default=5000, show_default=True, type=int,
              help="score on at most this many training examples (a stratified sample); 0: all")
@click.option("--validate", default=0, show_default=True, type=int,
              help="fine-tune the top K sources with --strategy and report Kendall's tau against their accuracy")
@click.option("--config", "config_file", type=click.Path(), default=None, help="YAML file with any fit option")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@lambda f: _fit_options(f, exclude=("source", "resume", "merge"))
def rank(source_list, max_samples, validate, config_file, as_json, **options):
    """Rank sources by transferability on your data before training (LogME, LEEP, NCE, H-score, probe accuracy).

    Features are extracted once per source (and cached); sources that cannot be loaded are listed and skipped.
    Results are saved to <out>/rank.json (default runs/rank-<data>-<time>).
    """
    import time
    from pathlib import Path

    from xfer.tools.rank import rank_sources
    from xfer.config import make_config

    cfg = make_config(config_file, **options)
    names = [s.strip() for s in source_list.split(",") if s.strip()] if source_list else None
    data_name = Path(cfg.data.replace("builtin:", "")).stem
    out = Path(cfg.out or f"runs/rank-{data_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    console = _console()
    log = (lambda m: None) if (cfg.quiet or as_json) else (lambda m: console.print(m, soft_wrap=True))
    result = rank_sources(cfg, names, max_samples=max_samples, validate=validate, out=out, log=log)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    if cfg.quiet:
        return
    from rich import box
    from rich.table import Table

    cols = ("#", "source", "LogME", "LEEP", "NCE", "H-score", "probe acc", "dim", "extract s")
    t = Table(box=box.SIMPLE, title=f"{cfg.data}: sources ranked by LogME ({result['samples']} examples)")
    for i, c in enumerate(cols):
        t.add_column(c, no_wrap=True, justify="left" if i == 1 else "right")
    for r in result["ranking"]:
        if r["status"] != "ok":
            continue
        sc = r["scores"]
        fmt = lambda k, f=".3f": format(sc[k], f) if k in sc else "-"  # noqa: E731
        t.add_row(str(r["rank"]), r["source"], fmt("logme"), fmt("leep"), fmt("nce"), fmt("hscore", ".2f"),
                  fmt("probe_accuracy", ".4f"), str(r["feature_dim"]), f"{r['extract_seconds']:.1f}")
    console.print(t)
    for r in result["ranking"]:
        if r["status"] != "ok":
            console.print(f"[yellow]skipped[/] {r['source']}: {r['reason']}")
    v = result["validation"]
    if v:
        for name, acc in zip(v["sources"], v["test_accuracy"]):
            console.print(f"fine-tuned ({v['strategy']}): {name} test accuracy {acc:.4f}")
        taus = ", ".join(f"{k} {t_:+.2f}" for k, t_ in v["kendall_tau"].items() if t_ is not None)
        console.print(f"Kendall's tau, score vs fine-tuned accuracy over {len(v['sources'])} sources: {taus or 'n/a'}")
    console.print(f"written: {out / 'rank.json'}")


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="folder for the exported run")
@click.option("--merge/--no-merge", default=True, show_default=True,
              help="fold LoRA adapters into the base weights (a plain model with the same predictions)")
@click.option("--format", "fmt", type=click.Choice(["safetensors", "onnx"]), default="safetensors", show_default=True,
              help="safetensors: a PyTorch run; onnx: an ONNX Runtime run (dynamic batch and sequence axes, checked "
                   "against PyTorch before it is written; predicting from it needs no PyTorch)")
@click.option("--overwrite", is_flag=True, help="replace an existing folder at --out")
def export(run_dir, out, merge, fmt, overwrite):
    """Write a saved run as a new run folder: LoRA adapters merged, or as an ONNX graph (checksums verified)."""
    if fmt == "onnx":
        from xfer.tools.compress import export_onnx_run

        path = export_onnx_run(run_dir, out, overwrite=overwrite, log=_console().print)
    else:
        from xfer.tools.export import export as api_export

        path = api_export(run_dir, out, merge=merge, overwrite=overwrite)
    click.echo(f"exported {run_dir} -> {path}")


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.argument("target")
@click.option("--private", is_flag=True, help="create the repository as private")
@click.option("--token", default=None, help="Hugging Face token (default: HF_TOKEN or `hf auth login`'s)")
def push(run_dir, target, private, token):
    """Upload a run (checksums verified) to the Hugging Face model repository TARGET: hf:<user or org>/<name>."""
    from xfer.tools.push import push as api_push

    url = api_push(run_dir, target, private=private, token=token, log=_console().print)
    click.echo(f"pushed {run_dir} -> {url}")


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="folder for the variants, compress.json and compress.png")
@click.option("--int8", type=click.Choice(["dynamic", "static"]), default=None,
              help="ONNX Runtime int8 of every variant: dynamic for text (transformer) runs, static (QDQ, calibrated "
                   "on training examples) for CNNs")
@click.option("--prune", type=float, default=None, help="structured pruning: fraction of channels / heads / FFN "
                                                         "width removed, e.g. 0.3")
@click.option("--recover-epochs", type=int, default=1, show_default=True, help="fine-tuning after pruning")
@click.option("--distill", "student", default=None, help="distil the run into this smaller student source")
@click.option("--student-layers", type=int, default=None, help="text student: keep its first N encoder layers")
@click.option("--distill-epochs", type=int, default=2, show_default=True)
@click.option("--temperature", type=float, default=2.0, show_default=True, help="distillation temperature")
@click.option("--alpha", type=float, default=0.5, show_default=True,
              help="weight of the teacher's soft targets (1 - alpha on the labels)")
@click.option("--threads", type=int, default=None, help="threads for latency measurements (default: min(4, cores))")
@click.option("--rounds", type=click.IntRange(1, 20), default=3, show_default=True,
              help="interleaved latency rounds; each figure is their median")
@click.option("--overwrite", is_flag=True, help="replace a previous `xfer compress` output at --out")
@click.option("--json", "as_json", is_flag=True, help="print the table as JSON")
def compress(run_dir, out, int8, prune, recover_epochs, student, student_layers, distill_epochs, temperature, alpha,
             threads, rounds, overwrite, as_json):
    """Smaller and faster variants of a run (int8, pruning, distillation), each a run folder, with a size /
    latency / accuracy table."""
    from rich.console import Console

    from xfer.tools.compress import compress as api_compress

    console = Console(highlight=False, width=max(Console().width, 150))  # the table is wide; don't squeeze it
    table = api_compress(run_dir, out, int8=int8, prune=prune, recover_epochs=recover_epochs, distill=student,
                         student_layers=student_layers, distill_epochs=distill_epochs, temperature=temperature,
                         alpha=alpha, threads=threads, rounds=rounds, overwrite=overwrite,
                         log=(lambda m: None) if as_json else console.print)
    if as_json:
        click.echo(json.dumps(table, indent=2))
        return
    from rich.table import Table

    t = Table(title=f"{run_dir}: {table['threads']} thread(s), {table['cpu']}")
    for col in ("variant", "runtime", "MB", "params", "test acc", "b1 p50 ms", "b1 p95 ms", "b32 p50 ms"):
        t.add_column(col, no_wrap=True)
    for r in table["rows"]:
        t.add_row(r["variant"], r["runtime"], f"{r['size_mb']:.2f}", f"{r['params']:,}", f"{r['test_accuracy']:.4f}",
                  f"{r['latency_ms_b1_p50']:.2f}", f"{r['latency_ms_b1_p95']:.2f}", f"{r['latency_ms_b32_p50']:.1f}")
    console.print(t)
    console.print(f"written: {out}/compress.json, {out}/compress.png")


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--out", default=None, type=click.Path(), help="folder for robust.json and robust.png")
@click.option("--data", default=None, help="labelled file or folder to attack (default: the run's test split)")
@click.option("--attacks", default=None, help="images: fgsm,pgd; text: char,word (greedy and random edits)")
@click.option("--eps", default="0,0.05,0.1,0.2", show_default=True, help="images: L-inf radii in [0, 1] pixel units")
@click.option("--rates", default="0.05,0.1,0.2", show_default=True, help="text: edits per word")
@click.option("--defences", default=None, help="defences to evaluate, naive and adaptive attack side by side "
                                                "(default: the run's own): blur,bits,jpeg,resize-pad | "
                                                "lookalikes,spelling,token-dropout")
@click.option("--steps", default=20, show_default=True, help="PGD steps")
@click.option("--eot", default=8, show_default=True, help="draws averaged per gradient against randomised defences")
@click.option("--limit", default=500, show_default=True, help="examples attacked (a seeded sample)")
@click.option("--certify", "certify_flag", is_flag=True, help="certified accuracy by randomised smoothing")
@click.option("--sigma", default=0.25, show_default=True, help="smoothing noise, pixel units")
@click.option("-n", "n", default=500, show_default=True, help="noise samples per certified example")
@click.option("--json", "as_json", is_flag=True, help="print robust.json's content")
def robust(run_dir, out, data, attacks, eps, rates, defences, steps, eot, limit, certify_flag, sigma, n, as_json):
    """Accuracy under attack (FGSM/PGD; character and word edits), each defence against the naive and the adaptive
    attack, and certified accuracy by randomised smoothing."""
    from xfer.tools.robust import robust as api_robust

    def numbers(text, name):
        try:
            return [float(v) for v in text.split(",") if v.strip()]
        except ValueError as e:
            raise XferError(f"--{name} takes comma-separated numbers, got {text!r}.") from e

    console = _console()
    result = api_robust(run_dir, out, data=data, attacks=attacks.split(",") if attacks else None,
                        eps=numbers(eps, "eps"), rates=numbers(rates, "rates"),
                        defences=[d for d in defences.split(",") if d] if defences is not None else None, steps=steps, eot=eot,
                        limit=limit, certify_sigma=sigma if certify_flag else None, n=n,
                        log=(lambda m: None) if as_json else console.print)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    from rich.table import Table

    t = Table(title=f"{run_dir}: clean accuracy {result['clean_accuracy']:.4f} on {result['examples']} examples")
    for col in ("attack", "strength", "defence", "attack on defence", "accuracy"):
        t.add_column(col)
    for r in result["results"]:
        t.add_row(r["attack"], f"{r['eps']:g}", r["defence"] or "-",
                  "-" if not r["defence"] else ("adaptive" if r["adaptive"] else "naive"), f"{r['accuracy']:.4f}")
    console.print(t)
    if "certified" in result:
        c = result["certified"]
        console.print(f"certified accuracy (sigma {c['sigma']}, n {c['n']}): "
                      + ", ".join(f"r={r}: {a:.3f}" for r, a in c["certified_accuracy"].items()))
    if out:
        console.print(f"written: {out}/robust.json, {out}/robust.png")


@cli.command()
@click.argument("path", type=click.Path())
@click.option("--out", default=None, type=click.Path(),
              help="HTML file to write (default: <run>.report.html beside a run; report.html in other folders)")
@click.option("--overwrite", is_flag=True, help="replace an existing --out file")
def report(path, out, overwrite):
    """One self-contained HTML report of a run folder, a compare folder, a rank result or a search folder."""
    from xfer.report import write_report

    kind, written = write_report(path, out, overwrite)
    _console().print(f"{kind} report written: {written}")


@cli.command("eval")
@click.argument("run_dir", type=click.Path())
@click.option("--data", default=None, help="labelled file or folder to evaluate on (default: the saved test metrics)")
@click.option("--text-column", default=None)
@click.option("--image-column", default=None)
@click.option("--label-column", default=None)
@click.option("--json", "as_json", is_flag=True, help="print as JSON")
def eval_cmd(run_dir, data, text_column, image_column, label_column, as_json):
    """Evaluate a saved run (checksums are verified first)."""
    from xfer.runs import RunFolder

    run = _open_run(run_dir)
    if data is None:
        result = {k: v for k, v in RunFolder(run.path).headline().items() if k != "val.accuracy"}
        result["source"] = "metrics.json"
    else:
        m = run.evaluate(data, text_column=text_column, image_column=image_column, label_column=label_column)
        result = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"], "per_class": m["per_class"],
                  "confusion_matrix": m["confusion_matrix"], "data": data}
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    from rich.table import Table

    t = Table(title=f"{run_dir}")
    t.add_column("metric")
    t.add_column("value")
    for k, v in result.items():
        if isinstance(v, float):
            t.add_row(k, f"{v:.4f}")
        elif k == "per_class":
            for lab, pc in v.items():
                t.add_row(f"  {lab}", f"P {pc['precision']:.3f}  R {pc['recall']:.3f}  F1 {pc['f1']:.3f}  "
                                      f"n {pc['support']}")
        elif k != "confusion_matrix":
            t.add_row(k, str(v))
    _console().print(t)


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.argument("inputs", nargs=-1)
@click.option("--file", "input_file", type=click.Path(), default=None, help="a text file with one input per line")
@click.option("--json", "as_json", is_flag=True, help="print as JSON")
def predict(run_dir, inputs, input_file, as_json):
    """Predict labels for images (paths) or texts (strings) with a saved run."""
    from xfer.data.readers import read_lines

    items = list(inputs)
    if input_file:
        items += read_lines(input_file)
    if not items:
        raise XferError("Nothing to predict: give image paths / texts as arguments, or --file with one per line.")
    preds = _open_run(run_dir).predict(items)
    if as_json:
        click.echo(json.dumps(preds, indent=2))
        return
    for p in preds:
        click.echo(f"{p['label']}\t{p['confidence']:.3f}\t{p['input']}")


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind (another than loopback "
              "exposes the API: use --token)")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--token", envvar="XFER_SERVE_TOKEN", default=None,
              help="require `Authorization: Bearer TOKEN` on every request but /health (env: XFER_SERVE_TOKEN)")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0.1),
              help="seconds a request may wait for its predictions (then 504)")
@click.option("--max-batch", default=64, show_default=True, type=click.IntRange(1), help="inputs per request")
def serve(run_dirs, host, port, token, timeout, max_batch):
    """Serve runs over HTTP: POST /predict, GET /models, a page to try them at /, API docs at /docs."""
    from xfer.tools.serve import serve as serve_runs

    warn = lambda m: click.echo(click.style("warning: ", fg="yellow", bold=True) + m, err=True)  # noqa: E731
    serve_runs(run_dirs, host, port, token or None, echo=click.echo, warn=warn, timeout=timeout, max_batch=max_batch)


@cli.command()
@click.option("--data", required=True, help="text data: a .csv/.tsv/.jsonl table or builtin:rotten_tomatoes|reuters_r8")
@click.option("--out", required=True, type=click.Path(), help="folder for render.png")
@click.option("-n", "count", default=16, show_default=True, help="how many training examples to show")
@click.option("--text-column", default=None)
@click.option("--label-column", default=None)
@click.option("--render-size", type=int, default=None, help=HELP["render_size"])
@click.option("--render-font-size", type=int, default=None, help=HELP["render_font_size"])
@click.option("--render-max-chars", type=int, default=None, help=HELP["render_max_chars"])
@click.option("--render-mode", default=None, help=HELP["render_mode"])
@click.option("--seed", type=int, default=None, help="which examples are picked")
def render(data, out, count, **options):
    """Write a grid of texts rendered as images, with their labels: what an image source sees of text data."""
    from pathlib import Path

    from xfer.config import make_config
    from xfer.data.render import grid
    from xfer.fitting.prepare import load_fit_task, render_spec

    cfg = make_config(None, data=data, **options)
    task = load_fit_task(cfg)
    if task.modality != "text":
        raise XferError(f"{data} is {task.modality} data; `xfer render` shows how text is rendered as images.")
    path = grid(task.train, task.labels, render_spec(cfg), Path(out) / "render.png", n=count, seed=cfg.seed)
    click.echo(f"written: {path}")


@cli.command()
@click.option("--out", default=None, help="folder for the demo's two runs (default: runs/demo-<time>)")
@click.option("--quiet", is_flag=True)
@click.option("--precision", type=click.Choice(["auto", "bf16", "no"]), default="auto", show_default=True,
              help="both jobs' precision (no: fp32, what a CPU without bf16 runs)")
def demo(out, quiet, precision):
    """The embedded default: image and text transfer end to end, each against a from-scratch baseline, offline."""
    from xfer.tools.demo import run_demo

    run_demo(out, quiet=quiet, precision=precision)


def _open_run(run_dir):
    """A PyTorch run, or an ONNX run served by ONNX Runtime (then PyTorch is never imported)."""
    from xfer.runs.onnx_run import is_onnx_run, load_onnx

    if is_onnx_run(run_dir):
        return load_onnx(run_dir)
    from xfer.runs.run import load

    return load(run_dir)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except XferError as e:
        click.echo(click.style("error: ", fg="red", bold=True) + str(e), err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
