"""Read the user's data into a Task: image folders, CSV/TSV/JSONL tables, built-in sets; then split it."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np

from xfer.data.builtin import BUILTINS, load_builtin
from xfer.data.task import Split, Task
from xfer.errors import XferError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
LABEL_COLUMNS = ("label", "labels", "class", "category", "target", "y")
TEXT_COLUMNS = ("text", "sentence", "review", "content", "document", "body", "snippet")
IMAGE_COLUMNS = ("image", "image_path", "path", "file", "filename", "filepath")
MAX_BAD_IMAGE_FRACTION = 0.05  # skip unreadable images up to this share, fail beyond it


def load_task(
    data: str,
    *,
    val: str | None = None,
    test: str | None = None,
    text_column: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Task:
    """Load `data` (and optional explicit val/test files) into a Task with train/val/test splits.

    Split precedence: explicit --val/--test files, then the data set's own split (a folder's train/val/test
    sub-folders, a built-in set's test file), then a seeded stratified split.
    """
    columns = dict(text_column=text_column, image_column=image_column, label_column=label_column)
    own_val = own_test = None
    sizes = None
    if data.startswith("builtin:"):
        name = data[len("builtin:"):]
        modality, items, raw, own = load_builtin(name)
        sizes = BUILTINS[name][3]
        if own is not None:
            own_test = own
        notes: list[str] = []
    else:
        path = _existing(data, "data")
        if path.is_dir() and (path / "train").is_dir():
            modality, items, raw, notes = _read_image_folder(path / "train")
            if (path / "val").is_dir():
                own_val = _extra_split(_read_image_folder(path / "val"), modality, notes, data)
            if (path / "test").is_dir():
                own_test = _extra_split(_read_image_folder(path / "test"), modality, notes, data)
        elif path.is_dir():
            modality, items, raw, notes = _read_image_folder(path)
        else:
            modality, items, raw, notes = _read_table(path, **columns)
    if val:
        own_val = _extra_split(_read_table(_existing(val, "--val"), **columns), modality, notes, val)
    if test:
        own_test = _extra_split(_read_table(_existing(test, "--test"), **columns), modality, notes, test)

    labels = sorted(set(raw), key=_natural_key)
    if len(items) == 0:
        raise XferError(f"Data {data!r} holds no examples. Check the path and the file's contents.")
    if len(labels) < 2:
        raise XferError(f"Data {data!r} has a single class ({labels[0]!r}); classification needs at least two. "
                        "Check the label column.")
    index = {lab: i for i, lab in enumerate(labels)}
    y = np.array([index[v] for v in raw], dtype=np.int64)
    pool = Split(list(items), y)
    rng_seed = seed

    def encode(split_items, split_raw, what: str) -> Split:
        unknown = sorted(set(split_raw) - set(index))
        if unknown:
            raise XferError(f"The {what} split has labels not seen in training: {unknown[:10]}. "
                            "Every class must have training examples.")
        return Split(list(split_items), np.array([index[v] for v in split_raw], dtype=np.int64))

    test_split = encode(*own_test, "test") if own_test else None
    val_split = encode(*own_val, "validation") if own_val else None
    if test_split is None:
        n_test = sizes[2] if sizes else test_fraction
        pool, test_split = _stratified(pool, n_test, rng_seed)
    if val_split is None:
        # a share of all the examples, not of what the test split left: 0.1 / 0.2 give 70 / 10 / 20
        n_val = sizes[1] if sizes else max(1, round(val_fraction * len(items)))
        pool, val_split = _stratified(pool, n_val, rng_seed + 1)
    if sizes and len(pool) > sizes[0]:
        pool, _ = _stratified(pool, len(pool) - sizes[0], rng_seed + 2)
    return Task(data, modality, tuple(labels), pool, val_split, test_split,
                channels=_channels(modality, pool.items), notes=tuple(notes))


def read_labelled(data: str, **columns) -> tuple[list, list[str]]:
    """Every example of a labelled folder or table, unsplit: what `Run.evaluate` scores a model on."""
    if data.startswith("builtin:"):
        raise XferError("Give a labelled file or folder to evaluate on; a built-in set's test metrics are already "
                        "in the run's metrics.json (`xfer eval RUN` without --data shows them).")
    path = _existing(data, "data")
    _, items, raw, _ = _read_image_folder(path) if path.is_dir() else _read_table(path, **columns)
    return items, raw


def read_lines(path: str | Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file (inputs for `xfer predict --file`)."""
    p = Path(path)
    if not p.exists():
        raise XferError(f"Input file {p} does not exist.")
    return [line for line in _decode(p).splitlines() if line.strip()]


def _natural_key(label: str):
    # the label itself breaks ties ("1" vs "01"), so the class order never depends on set iteration order
    return (0, int(label), label) if label.lstrip("-").isdigit() else (1, 0, label)


def _extra_split(read, modality: str, notes: list[str], what: str):
    """(items, labels) of a val/test split read as (modality, items, labels, notes); its notes join the task's."""
    if read[0] != modality:
        raise XferError(f"{what} holds {read[0]} data but the training data is {modality} data.")
    notes.extend(read[3])
    return read[1], read[2]


def _existing(p: str, what: str) -> Path:
    path = Path(p).expanduser()
    if not path.exists():
        raise XferError(f"{what} path {p!r} does not exist. Give an image folder, a .csv/.tsv/.jsonl file, "
                        f"or builtin:<name> ({', '.join(BUILTINS)}).")
    return path


def _stratified(split: Split, n, seed: int) -> tuple[Split, Split]:
    """Seeded stratified split; falls back to a plain seeded split when a class is too small to stratify."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(split))
    counts = Counter(split.labels.tolist())
    stratify = split.labels if min(counts.values()) >= 2 else None
    try:
        a, b = train_test_split(idx, test_size=n, random_state=seed, stratify=stratify)
    except ValueError:
        a, b = train_test_split(idx, test_size=n, random_state=seed, stratify=None)
    if len(a) == 0 or len(b) == 0:
        raise XferError(f"Too few examples ({len(split)}) to hold out a split of {n}; add data or pass --val/--test.")
    return split.subset(np.sort(a)), split.subset(np.sort(b))


def _channels(modality: str, items: list) -> int:
    if modality != "image":
        return 0
    sample = items[: min(16, len(items))]
    modes = set()
    for it in sample:
        if isinstance(it, np.ndarray):
            modes.add("L" if it.ndim == 2 else "RGB")
        else:
            from PIL import Image

            with Image.open(it) as im:
                modes.add(im.mode)
    return 1 if modes <= {"L", "1", "I", "I;16", "F"} else 3


def _check_images(paths: list[Path], source: str) -> tuple[list[int], list[str]]:
    """Indices of readable images, and notes; unreadable ones are skipped if few, an error if many."""
    from PIL import Image, UnidentifiedImageError

    good, bad = [], []
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im.verify()
            good.append(i)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            bad.append(f"{p} ({type(e).__name__})")
    if bad and len(bad) > max(1, MAX_BAD_IMAGE_FRACTION * len(paths)):
        listing = "; ".join(bad[:20]) + (" ..." if len(bad) > 20 else "")
        raise XferError(f"{len(bad)} of {len(paths)} images in {source} cannot be read: {listing}. "
                        "Remove or replace them, then run again.")
    notes = [f"skipped {len(bad)} unreadable image(s) in {source}: {'; '.join(bad[:5])}"] if bad else []
    return good, notes


def _read_image_folder(root: Path):
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise XferError(f"Image folder {root} has no class sub-folders. Lay it out as {root}/<class name>/<image>.")
    paths, raw = [], []
    for d in classes:
        for f in sorted(d.rglob("*")):
            if f.suffix.lower() in IMAGE_EXTS:
                paths.append(f)
                raw.append(d.name)
    if not paths:
        raise XferError(f"Image folder {root} has class folders but no images ({', '.join(sorted(IMAGE_EXTS))}).")
    good, notes = _check_images(paths, str(root))
    return "image", [paths[i] for i in good], [raw[i] for i in good], notes


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise XferError(f"{path} is not UTF-8 text: byte 0x{data[e.start]:02x} at line {line} ({e.reason}). "
                        "Re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).") from e


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, path: Path) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise XferError(f"{path} has no {what} column {wanted!r}; its columns are: {', '.join(columns)}.")
        return wanted
    lower = {c.lower(): c for c in columns}
    return next((lower[c] for c in candidates if c in lower), None)


def _read_table(path: Path, text_column=None, image_column=None, label_column=None):
    text = _decode(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows, line_nos = [], []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise XferError(f"{path} line {n} is not valid JSON ({e.msg}).") from e
                if not isinstance(rows[-1], dict):
                    raise XferError(f"{path} line {n} is not a JSON object ({{\"column\": value, ...}}).")
                line_nos.append(n)
        columns = list(dict.fromkeys(k for r in rows for k in r))
    elif suffix in (".csv", ".tsv", ".txt"):
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        rows, line_nos = [], []
        for r in reader:  # the file line each row starts on (blank lines and multi-line fields make i + 2 wrong)
            rows.append(r)
            line_nos.append(reader.line_num - sum(v.count("\n") for v in r.values() if isinstance(v, str)))
        columns = list(reader.fieldnames or [])
    else:
        raise XferError(f"{path}: unsupported data file type {suffix!r}; use .csv, .tsv, .jsonl or an image folder.")
    if not rows:
        raise XferError(f"{path} has no data rows.")
    label_col = _pick(columns, label_column, LABEL_COLUMNS, "label", path)
    if label_col is None:
        raise XferError(f"{path}: no label column found (looked for {', '.join(LABEL_COLUMNS)}); its columns are: "
                        f"{', '.join(columns)}. Name it with --label-column.")
    image_col = _pick(columns, image_column, IMAGE_COLUMNS, "image", path) if text_column is None else None
    text_col = None if image_col else _pick(columns, text_column, TEXT_COLUMNS, "text", path)
    if image_col is None and text_col is None:
        others = [c for c in columns if c != label_col]
        if len(others) == 1:
            text_col = others[0]
        else:
            raise XferError(f"{path}: no text or image column found (looked for {', '.join(TEXT_COLUMNS)} / "
                            f"{', '.join(IMAGE_COLUMNS)}); its columns are: {', '.join(columns)}. "
                            "Name it with --text-column or --image-column.")
    missing = [line_nos[i] for i, r in enumerate(rows) if r.get(label_col) is None or not str(r[label_col]).strip()]
    if missing:
        raise XferError(f"{path}: {len(missing)} row(s) have no label in column {label_col!r} "
                        f"(lines {', '.join(map(str, missing[:10]))}). Fill or remove them.")
    raw = [str(r[label_col]).strip() for r in rows]
    if image_col:
        paths = [(path.parent / str(r[image_col])).resolve() for r in rows]
        absent = [str(p) for p in paths if not p.exists()]
        if len(absent) > max(1, MAX_BAD_IMAGE_FRACTION * len(paths)):
            raise XferError(f"{path}: {len(absent)} image paths do not exist, e.g. {', '.join(absent[:5])}. "
                            "Paths are read relative to the table's folder.")
        keep = [i for i, p in enumerate(paths) if p.exists()]
        good, notes = _check_images([paths[i] for i in keep], str(path))
        keep = [keep[i] for i in good]
        if len(keep) < len(paths) and not notes:
            notes = [f"skipped {len(paths) - len(keep)} missing image(s) listed in {path}"]
        return "image", [paths[i] for i in keep], [raw[i] for i in keep], notes
    texts = [str(r.get(text_col) or "").strip() for r in rows]
    empty = [line_nos[i] for i, t in enumerate(texts) if not t]
    if empty:
        raise XferError(f"{path}: {len(empty)} row(s) have empty text in column {text_col!r} "
                        f"(lines {', '.join(map(str, empty[:10]))}). Remove them or fill them in.")
    return "text", texts, raw, []
