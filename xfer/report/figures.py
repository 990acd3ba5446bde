"""The report's pictures: matplotlib (Agg) figures returned as PNG data URIs, so the HTML needs no other file."""

from __future__ import annotations

import base64
import io

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure_uri(fig) -> str:
    plt = _plt()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return data_uri(buf.getvalue())


def thumbnail(item, size: int = 96) -> str:
    """An image path or array as a small PNG data URI (aspect kept)."""
    from PIL import Image

    img = Image.fromarray(np.asarray(item)) if isinstance(item, np.ndarray) else Image.open(item)
    img = img.convert("L" if img.mode in ("L", "I", "I;16", "F", "1") else "RGB")
    img.thumbnail((size, size))
    if min(img.size) < 48:  # tiny images (MNIST, 24 px tests) are upscaled so they can be seen
        scale = 48 / min(img.size)
        img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return data_uri(buf.getvalue())


def learning_curves(history: list[dict], baseline: list[dict] | None = None) -> str:
    """Training loss and validation accuracy per epoch, one line per phase; the from-scratch baseline dashed."""
    plt = _plt()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    for records, style, tag in ((history, "-", ""), (baseline or [], "--", "baseline: ")):
        phases: dict[str, list[dict]] = {}
        for r in records:
            phases.setdefault(r["phase"], []).append(r)
        step = 0
        for phase, rs in phases.items():  # phases follow one another on one epoch axis
            x = np.arange(step + 1, step + len(rs) + 1)
            step += len(rs)
            ax_loss.plot(x, [r["train_loss"] for r in rs], style, marker="o", label=f"{tag}{phase}")
            ax_acc.plot(x, [100 * r["val_accuracy"] for r in rs], style, marker="o", label=f"{tag}{phase}")
    ax_loss.set(title="Training loss per epoch", xlabel="epoch (all phases in order)", ylabel="cross-entropy (nats)")
    ax_acc.set(title="Validation accuracy per epoch", xlabel="epoch (all phases in order)", ylabel="accuracy (%)")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return _figure_uri(fig)


def confusion(matrix: list[list[int]], labels: list[str]) -> str:
    """The test confusion matrix, counts in the cells (rows: true label, columns: predicted)."""
    plt = _plt()
    m = np.asarray(matrix)
    k = len(labels)
    side = min(12.0, 2.5 + 0.45 * k)
    fig, ax = plt.subplots(figsize=(side, side * 0.85))
    im = ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(k), labels, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center", fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set(title="Confusion matrix, test split", xlabel="predicted label", ylabel="true label")
    fig.colorbar(im, ax=ax, label="examples")
    return _figure_uri(fig)


def reliability(bins: list[dict], bins_scaled: list[dict] | None, temperature: float) -> str:
    """Reliability diagram (Guo et al., 2017): accuracy per confidence bin before and after temperature scaling."""
    plt = _plt()
    panels = [(bins, "before (T = 1)")] + ([(bins_scaled, f"after temperature scaling (T = {temperature:.3g})")]
                                          if bins_scaled else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.0), squeeze=False)
    for ax, (bs, title) in zip(axes[0], panels):
        width = bs[0]["upper"] - bs[0]["lower"]
        centres = [b["lower"] + width / 2 for b in bs]
        ax.bar(centres, [b["accuracy"] or 0.0 for b in bs], width=width * 0.95, color="#4c78a8", label="accuracy")
        full = [b for b in bs if b["count"]]
        ax.bar([b["lower"] + width / 2 for b in full], [abs(b["confidence"] - b["accuracy"]) for b in full],
               bottom=[min(b["confidence"], b["accuracy"]) for b in full], width=width * 0.95, color="#e45756",
               alpha=0.35, label="gap to mean confidence")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), title=title, xlabel="confidence (top-class probability)",
               ylabel="accuracy in bin")
        ax.legend(fontsize=7, loc="upper left")
    return _figure_uri(fig)


def bars(names: list[str], values: list[float], title: str, xlabel: str) -> str:
    """A horizontal bar per name (ranking scores, compare accuracies)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.4 * len(names)))
    ax.barh(range(len(names)), values, color="#4c78a8")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set(title=title, xlabel=xlabel)
    ax.grid(axis="x", alpha=0.3)
    return _figure_uri(fig)


def scatter(points: list[tuple[float, float, str]], title: str, xlabel: str, ylabel: str, logx: bool = False) -> str:
    """Labelled points (trials over time, strategies by cost)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for x, y, name in points:
        ax.plot(x, y, "o", color="#4c78a8")
        if name:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    if logx:
        ax.set_xscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return _figure_uri(fig)


def png_file(path) -> str | None:
    """An existing PNG (compare.png, history.png) as a data URI; None when absent."""
    from pathlib import Path

    p = Path(path)
    return data_uri(p.read_bytes()) if p.is_file() else None
