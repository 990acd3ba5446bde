"""Text as images, so an image source (an ImageNet CNN) can classify text: each text is word-wrapped onto a fixed
canvas in a TrueType font that ships with a pinned dependency (DejaVu Sans, inside matplotlib's package data).

The recipe (`RenderSpec`) is saved in a run's spec with the font's sha256, so prediction renders exactly as
training did. Rendering is deterministic (same text, same recipe, same font file -> identical pixels). Characters
the font has no glyph for are counted and reported, never dropped silently. Rendered data sets are cached on disk,
keyed by the texts and the recipe.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from xfer.data.task import Split, Task
from xfer.errors import XferError
from xfer.hashing import sha256_file

FONT_FILE = "DejaVuSans.ttf"


def font_path() -> Path:
    """DejaVu Sans from matplotlib's package data (a pinned dependency), found at run time."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / FONT_FILE
    if not path.is_file():
        raise XferError(f"The font {FONT_FILE} is missing from matplotlib's data ({path}); reinstall with "
                        f"`make setup`.")
    return path


@lru_cache(maxsize=1)
def font_sha256() -> str:
    """The font file's hash, computed once per process (it is checked on every prediction of a rendered run)."""
    return sha256_file(font_path())


@dataclass(frozen=True)
class RenderSpec:
    """How a text becomes an image: a `size` x `size` canvas, black text on white, `font_size` pixels, at most
    `max_chars` characters (the rest is cut), grey ("L", one channel) or "RGB"."""

    size: int = 128
    font_size: int = 11
    max_chars: int = 400
    mode: str = "L"
    margin: int = 3
    font_sha256: str = ""  # of the font file used; filled by `with_font`

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RenderSpec":
        return cls(**d)

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    def with_font(self) -> "RenderSpec":
        return replace(self, font_sha256=font_sha256())

    def check(self) -> "RenderSpec":
        problems = []
        if not 16 <= self.size <= 1024:
            problems.append(f"canvas size must be 16-1024 px, got {self.size}")
        if not 4 <= self.font_size <= self.size:
            problems.append(f"font size must be 4 px up to the canvas size, got {self.font_size}")
        if self.max_chars < 1:
            problems.append(f"max characters must be at least 1, got {self.max_chars}")
        if self.mode not in ("L", "RGB"):
            problems.append(f"mode must be L (grey) or RGB, got {self.mode!r}")
        if problems:
            raise XferError("Invalid text rendering: " + "; ".join(problems) + ".")
        return self


@lru_cache(maxsize=8)
def _font(path: str, size: int):
    from PIL import ImageFont

    # The basic layout engine: the same glyph positions whatever optional libraries (raqm) are installed.
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)


@lru_cache(maxsize=2)
def _covered(path: str) -> frozenset[int]:
    from fontTools.ttLib import TTFont

    return frozenset(TTFont(path).getBestCmap())


def missing_glyphs(text: str, path: Path | None = None) -> int:
    """How many characters of `text` (other than white space) the font has no glyph for."""
    covered = _covered(str(path or font_path()))
    return sum(1 for ch in text if not ch.isspace() and ord(ch) not in covered)


def _wrap(text: str, font, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels; a word longer than a line is broken by characters."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            for ch in word:  # a word wider than the line
                if line and font.getlength(line + ch) > width:
                    lines.append(line)
                    line = ""
                line += ch
        lines.append(line)
    return lines


def render(text: str, spec: RenderSpec) -> tuple[np.ndarray, dict]:
    """The text as a uint8 array (H x W grey, or H x W x 3) and what was lost: characters cut by `max_chars`,
    lines below the canvas, characters without a glyph."""
    from PIL import Image, ImageDraw

    path = font_path()
    font = _font(str(path), spec.font_size)
    cut = max(0, len(text) - spec.max_chars)
    shown = text[:spec.max_chars]
    lines = _wrap(shown, font, spec.size - 2 * spec.margin)
    ascent, descent = font.getmetrics()
    step = ascent + descent
    fit = max(1, (spec.size - 2 * spec.margin) // step)
    image = Image.new(spec.mode, (spec.size, spec.size), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines[:fit]):
        draw.text((spec.margin, spec.margin + i * step), line, fill="black", font=font)
    lost = {"cut_chars": cut, "hidden_lines": max(0, len(lines) - fit), "missing_glyphs": missing_glyphs(shown, path)}
    return np.asarray(image, dtype=np.uint8), lost


def _cache_dir() -> Path:
    return Path(os.environ.get("XFER_CACHE_DIR", Path.home() / ".cache" / "xfer")) / "render"


def render_split(split: Split, spec: RenderSpec) -> tuple[Split, dict]:
    """Every text of a split rendered (read from the on-disk cache when this recipe has seen these texts), with
    totals of what was lost."""
    h = hashlib.sha256(repr(sorted(spec.to_dict().items())).encode())
    for t in split.items:
        h.update(str(t).encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    path = _cache_dir() / f"{h.hexdigest()[:32]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                images, lost = z["images"], {k: int(z[k]) for k in ("cut_chars", "hidden_lines", "missing_glyphs",
                                                                    "texts_cut", "texts_with_missing")}
            return Split(list(images), split.labels), lost
        except (OSError, KeyError, ValueError):  # a damaged cache entry is recomputed, never trusted
            path.unlink(missing_ok=True)
    images, lost = [], {"cut_chars": 0, "hidden_lines": 0, "missing_glyphs": 0, "texts_cut": 0,
                        "texts_with_missing": 0}
    for text in split.items:
        image, lost_one = render(str(text), spec)
        images.append(image)
        for k, v in lost_one.items():
            lost[k] += v
        lost["texts_cut"] += bool(lost_one["cut_chars"] or lost_one["hidden_lines"])
        lost["texts_with_missing"] += bool(lost_one["missing_glyphs"])
    if images:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, images=np.stack(images), **lost)
        os.replace(tmp, path)
    return Split(images, split.labels), lost


def render_inputs(split: Split, recipe: dict | None) -> Split:
    """A split as a run with this recipe (`spec["render"]`, None for none) reads it: texts rendered, anything else
    as it is. A font file other than the one the run was trained with is worth a warning (pixels may differ)."""
    if not recipe or not len(split) or not isinstance(split.items[0], str):
        return split
    spec = RenderSpec.from_dict(recipe)
    if spec.font_sha256 and spec.font_sha256 != font_sha256():
        import warnings

        from xfer.errors import XferWarning

        warnings.warn(f"The font used to render text differs from the one this run was trained with "
                      f"(sha256 {spec.font_sha256[:12]}...); predictions may shift slightly.", XferWarning)
    return render_split(split, spec)[0]


def render_task(task: Task, spec: RenderSpec) -> Task:
    """A text task as an image task: every split rendered; notes say what rendering lost."""
    if task.modality != "text":
        raise XferError(f"Only text can be rendered as images; {task.name!r} is {task.modality} data.")
    splits, totals = {}, {}
    for name in ("train", "val", "test"):
        splits[name], lost = render_split(getattr(task, name), spec)
        for k, v in lost.items():
            totals[k] = totals.get(k, 0) + v
    notes = [f"text rendered as {spec.size}x{spec.size} {'grey' if spec.mode == 'L' else 'RGB'} images "
             f"({spec.font_size} px {FONT_FILE}, at most {spec.max_chars} characters)"]
    if totals["texts_cut"]:
        notes.append(f"{totals['texts_cut']} texts did not fit the canvas: {totals['cut_chars']} characters cut "
                     f"and {totals['hidden_lines']} lines below the canvas; raise --render-size or lower "
                     f"--render-font-size to show more")
    if totals["missing_glyphs"]:
        notes.append(f"{totals['missing_glyphs']} characters in {totals['texts_with_missing']} texts have no glyph "
                     f"in {FONT_FILE} and render as empty boxes")
    return replace(task, modality="image", channels=spec.channels, notes=(*task.notes, *notes), **splits)


def grid(split: Split, labels: tuple[str, ...], spec: RenderSpec, out: Path, n: int = 16, seed: int = 0) -> Path:
    """A PNG grid of `n` rendered examples (a stratified-ish random pick) with their labels: what the CNN sees."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(split) == 0:
        raise XferError("No examples to render.")
    if n < 1:
        raise XferError(f"-n must be at least 1 (how many examples to show), got {n}.")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(split), min(n, len(split)), replace=False)
    cols = int(np.ceil(np.sqrt(len(pick))))
    rows = int(np.ceil(len(pick) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, pick):
        image, _ = render(str(split.items[i]), spec)
        ax.imshow(image, cmap="gray" if spec.mode == "L" else None, vmin=0, vmax=255)
        ax.set_title(labels[int(split.labels[i])], fontsize=9)
    fig.suptitle(f"text rendered at {spec.size} px, font {spec.font_size} px", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
    return out
