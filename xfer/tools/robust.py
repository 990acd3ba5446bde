"""`xfer robust`: a run under attack, with and without defences, each defence against the naive attack and the
attack adapted to it side by side (Athalye, Carlini & Wagner, ICML 2018), plus certified accuracy by randomised
smoothing. Writes robust.json, a printed table and robust.png.

Images: FGSM and PGD in L-infinity on [0, 1] pixels (normalisation inside the model). A defence's *naive* row
crafts the attack on the undefended model and evaluates it through the defence (an attacker who ignores it); its
*adaptive* row crafts it through the defence itself: straight-through gradients (BPDA) for the non-differentiable
transforms, gradients averaged over `eot` draws (EOT) for the randomised ones.
Texts: random and greedy character / word edits at several rates (xfer/robust/text_runs.py).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from xfer.compress.retrain import run_task
from xfer.data.task import Split
from xfer.errors import XferError
from xfer.runs.answers import labelled_split
from xfer.runs.folder import atomic_write, write_json
from xfer.runs.run import Run, load
from xfer.robust.attacks import ATTACKS, attack, predictions
from xfer.robust.defences import PixelModel, check_modality, parse_defence, to_pixels
from xfer.robust.smoothing import certified_accuracy, certify

RESULT = "robust.json"


def evaluation_split(run: Run, data: str | None, limit: int | None, seed: int = 0) -> Split:
    """The run's own test split (or a labelled file), a seeded sample of at most `limit` examples."""
    split = run_task(run)[1].test if data is None else labelled_split(data, run.labels)
    if limit and len(split) > limit:
        idx = np.sort(np.random.default_rng(seed).choice(len(split), size=limit, replace=False))
        split = Split([split.items[i] for i in idx], split.labels[idx])
    return split


def _pixels(run: Run, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    ds = run.dataset(split)
    x, y, _ = ds[list(range(len(split)))]
    return to_pixels(x.float(), run.spec["prep"]), y


def _accuracy(model, x, y, seed: int) -> float:
    torch.manual_seed(seed)  # a randomised defence draws the same way for every evaluation: eps 0 == clean
    return float((predictions(model, x) == y).float().mean())


def _craft(name: str, model, x, y, eps: float, steps: int, eot: int, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    return torch.cat([attack(name, model, x[i:i + batch], y[i:i + batch], eps, steps, eot, g)
                      for i in range(0, len(x), batch)])


def image_robustness(run: Run, split: Split, attacks: Sequence[str], eps: Sequence[float], defences: Sequence[dict],
                     steps: int = 20, eot: int = 8, batch: int = 100, seed: int = 0,
                     log: Callable[[str], None] = lambda m: None) -> tuple[float, list[dict]]:
    model = run.model.float().eval()
    plain = PixelModel(model, run.spec["prep"]).eval()
    x, y = _pixels(run, split)
    clean = _accuracy(plain, x, y, seed)
    rows = []
    guarded = {d["name"]: PixelModel(model, run.spec["prep"], d).eval() for d in defences}
    adaptive = {d["name"]: PixelModel(model, run.spec["prep"], d, bpda=True,
                                      draws=eot if d["draws"] > 1 else 1).eval() for d in defences}
    for name in attacks:
        for e in eps:
            adv = _craft(name, plain, x, y, e, steps, 1, batch, seed)
            rows.append(_row(name, e, None, False, _accuracy(plain, adv, y, seed), steps))
            log(f"{name} eps {e:g}: accuracy {rows[-1]['accuracy']:.4f}")
            for d in defences:
                rows.append(_row(name, e, d["name"], False, _accuracy(guarded[d["name"]], adv, y, seed), steps))
                # EOT lives in the adaptive model itself (its softmax averaged over `eot` draws per pass)
                adv_d = _craft(name, adaptive[d["name"]], x, y, e, steps, 1, batch, seed)
                rows.append(_row(name, e, d["name"], True, _accuracy(guarded[d["name"]], adv_d, y, seed), steps,
                                 "BPDA" + ("+EOT" if d["draws"] > 1 else "") if d["name"] != "blur" else "through"))
                log(f"{name} eps {e:g} {d['name']}: naive {rows[-2]['accuracy']:.4f}, adaptive "
                    f"{rows[-1]['accuracy']:.4f}")
    return clean, rows


def _row(attack_name, eps, defence, adaptive, acc, steps, how=None) -> dict:
    row = {"attack": attack_name, "eps": eps, "defence": defence, "adaptive": adaptive, "accuracy": acc}
    if attack_name == "pgd":
        row["steps"] = steps
    if how:
        row["adaptive_by"] = how
    return row


def certify_run(run: Run, split: Split, sigma: float, n: int, n0: int, alpha: float, radii: Sequence[float],
                limit: int, seed: int = 0, log: Callable[[str], None] = lambda m: None) -> dict:
    model = PixelModel(run.model.float().eval(), run.spec["prep"]).eval()
    x, y = _pixels(run, split)
    x, y = x[:limit], y[:limit]
    results = [certify(model, x[i], len(run.labels), sigma, n0, n, alpha, seed=seed + i) for i in range(len(x))]
    acc = certified_accuracy(results, y.tolist(), radii)
    log(f"certified accuracy (sigma {sigma}, n {n}, alpha {alpha}, {len(x)} examples): "
        + ", ".join(f"r={r}: {a:.3f}" for r, a in acc.items()))
    return {"sigma": sigma, "n": n, "n0": n0, "alpha": alpha, "examples": len(x), "certified_accuracy": acc,
            "abstained": sum(1 for p, _ in results if p == -1) / max(1, len(x))}


def robust(run_dir: str | Path, out: str | Path | None = None, *, data: str | None = None,
           attacks: Sequence[str] | None = None, eps: Sequence[float] = (0.0, 0.05, 0.1, 0.2),
           rates: Sequence[float] = (0.05, 0.1, 0.2), defences: Sequence[str] | None = None, steps: int = 20,
           eot: int = 8, limit: int | None = 500, certify_sigma: float | None = None, n: int = 500, n0: int = 64,
           alpha: float = 0.001, radii: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), seed: int = 0,
           log: Callable[[str], None] | None = None) -> dict:
    """Evaluate a run under attack and write robust.json + robust.png into `out` (when given)."""
    log = log or (lambda m: None)
    run = load(run_dir)
    modality = run.spec["modality"]
    names = list(defences) if defences is not None else ([run.spec["defence"]["name"]] if run.spec.get("defence")
                                                         else [])
    parsed = [p for p in (parse_defence(d) for d in names) if p is not None]
    for d in parsed:
        check_modality(d, modality)
    split = evaluation_split(run, data, limit, seed)
    result: dict = {"run": str(run_dir), "examples": len(split), "seed": seed}
    if modality == "image":
        attacks = list(attacks or ATTACKS)
        unknown = [a for a in attacks if a not in ATTACKS]
        if unknown:
            raise XferError(f"Unknown image attack(s) {unknown}; choose from {', '.join(ATTACKS)}.")
        if any(not 0 <= e <= 1 for e in eps):
            raise XferError(f"--eps values are L-infinity radii in [0, 1] pixel units, got {list(eps)}.")
        clean, rows = image_robustness(run, split, attacks, eps, parsed, steps, eot, seed=seed, log=log)
        result.update(clean_accuracy=clean, threat="L-infinity, pixels in [0, 1]", results=rows)
        if certify_sigma:
            result["certified"] = certify_run(run, split, certify_sigma, n, n0, alpha, radii,
                                              min(len(split), limit or len(split)), seed, log)
    else:
        from xfer.robust.text_runs import text_robustness

        clean, rows = text_robustness(run, split, attacks, rates, parsed, seed=seed, log=log)
        result.update(clean_accuracy=clean, threat="character and word edits, rate = edits per word", results=rows)
        if certify_sigma:
            raise XferError("--certify smooths image pixels with Gaussian noise; it does not apply to text runs.")
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / RESULT, result)
        plot(result, out / "robust.png", "eps" if modality == "image" else "edit rate")
    return result


def plot(result: dict, path: Path, xlabel: str) -> None:
    """Accuracy against attack strength, one line per attack x defence x (naive | adaptive)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[float, float]]] = {}
    for r in result["results"]:
        name = r["attack"] + (f" + {r['defence']} ({'adaptive' if r['adaptive'] else 'naive'})" if r["defence"] else "")
        series.setdefault(name, []).append((r["eps"], r["accuracy"] * 100))
    fig, ax = plt.subplots(figsize=(8, 4.6))
    for name, pts in series.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name,
                linestyle="--" if "naive" in name else "-")
    ax.axhline(result["clean_accuracy"] * 100, color="grey", linewidth=0.8, label="clean")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy under attack (%)")
    ax.set_title(f"{Path(result['run']).name}: {result['examples']} test examples", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
