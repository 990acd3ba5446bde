"""Read the user's data into a Task: image folders, CSV/TSV/JSONL/Parquet/Arrow tables, built-in sets, Hugging Face
data sets (data/hub.py); then split it."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from xfer.data.builtin import BUILTINS, load_builtin
from xfer.data.task import Split, Task
from xfer.errors import XferError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
LABEL_COLUMNS = ("label", "labels", "class", "category", "target", "y")
TEXT_COLUMNS = ("text", "sentence", "review", "content", "document", "body", "snippet")
IMAGE_COLUMNS = ("image", "image_path", "path", "file", "filename", "filepath")
ARROW_SUFFIXES = (".parquet", ".arrow", ".feather")  # columnar files, read through pyarrow
TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".jsonl", *ARROW_SUFFIXES)
MAX_BAD_IMAGE_FRACTION = 0.05  # skip unreadable images up to this share, fail beyond it
MAX_SEED = 2**32 - 1  # sklearn takes 32-bit seeds
_NEWLINE = re.compile(r"\r\n|\r|\n")  # what ends a line in a table; str.splitlines also splits at U+2028, \x1c, ...
_INTEGER = re.compile(r"-?[0-9]{1,4000}")  # labels sorted as numbers (int() refuses longer digit strings)


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
    """Load `data` (and optional explicit val/test files or folders) into a Task with train/val/test splits.

    Split precedence: explicit --val/--test files or image folders, then the data set's own split (a folder's
    train/val/test sub-folders, a built-in set's test file), then a seeded stratified split.
    """
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise XferError(f"--seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}.")
    columns = dict(text_column=text_column, image_column=image_column, label_column=label_column)
    own_val = own_test = None
    val_from = test_from = data
    sizes = None
    if data.startswith("builtin:"):
        name = data[len("builtin:"):]
        modality, items, raw, own = load_builtin(name)
        sizes = BUILTINS[name][3]
        if own is not None:
            own_test = own
        notes: list[str] = []
    elif data.startswith("hf:"):  # a Hugging Face data set, with its own validation/test splits where it has them
        from xfer.data.hub import load_hf_data

        modality, items, raw, own_val, own_test, notes = load_hf_data(data, **columns)
        val_from, test_from = f"{data} (validation split)", f"{data} (test split)"
    else:
        path = _existing(data, "data")
        if path.is_dir() and (path / "train").is_dir():
            modality, items, raw, notes = _read_image_folder(path / "train")
            if (path / "val").is_dir():
                val_from = str(path / "val")
                own_val = _extra_split(_read_image_folder(path / "val"), modality, notes, val_from)
            if (path / "test").is_dir():
                test_from = str(path / "test")
                own_test = _extra_split(_read_image_folder(path / "test"), modality, notes, test_from)
        elif path.is_dir():
            modality, items, raw, notes = _read_image_folder(path)
        else:
            modality, items, raw, notes = _read_table(path, **columns)
    if val:
        own_val, val_from = _extra_split(_read_split(val, "--val", modality, columns), modality, notes, val), val
    if test:
        own_test, test_from = _extra_split(_read_split(test, "--test", modality, columns), modality, notes, test), test

    labels = sorted(set(raw), key=_natural_key)
    if len(items) == 0:
        raise XferError(f"Data {data!r} holds no examples. Check the path and the file's contents.")
    if len(labels) < 2:
        raise XferError(f"Data {data!r} has a single class ({_short(labels[0])!r}); classification needs at least "
                        "two. Check the label column.")
    index = {lab: i for i, lab in enumerate(labels)}
    y = np.array([index[v] for v in raw], dtype=np.int64)
    pool = Split(list(items), y)
    rng_seed = seed

    def encode(split_items, split_raw, what: str, source: str) -> Split:
        unknown = sorted(set(split_raw) - set(index))
        if unknown:
            raise XferError(f"The {what} split ({source}) has labels not seen in training: "
                            f"{[_short(u) for u in unknown[:10]]}. Every class must have training examples; fix "
                            f"the labels (or class folder names) to match the training classes {_show(labels)}.")
        return Split(list(split_items), np.array([index[v] for v in split_raw], dtype=np.int64))

    test_split = encode(*own_test, "test", test_from) if own_test else None
    val_split = encode(*own_val, "validation", val_from) if own_val else None
    held_out = 0.0 if test_split is not None else test_fraction  # the share the test split takes from the data
    if test_split is None:
        if not sizes and not 0 < test_fraction < 1:
            raise XferError(f"--test-fraction must be a share between 0 and 1 (e.g. 0.2), got {test_fraction!r}.")
        n_test = sizes[2] if sizes else test_fraction
        pool, test_split = _stratified(pool, n_test, rng_seed)
    if val_split is None:
        if not sizes and not 0 <= val_fraction < 1 - held_out:
            raise XferError(f"--val-fraction must be a share from 0 up to 1 that leaves training data next to the "
                            f"test share (e.g. 0.1 with 0.2), got {val_fraction!r} with {test_fraction!r}.")
        # a share of all the examples, not of what the test split left: 0.1 / 0.2 give 70 / 10 / 20
        n_val = sizes[1] if sizes else max(1, round(val_fraction * len(items)))
        pool, val_split = _stratified(pool, n_val, (rng_seed + 1) % (MAX_SEED + 1))
    if sizes and len(pool) > sizes[0]:
        pool, _ = _stratified(pool, len(pool) - sizes[0], (rng_seed + 2) % (MAX_SEED + 1))
    untrained = sorted(set(range(len(labels))) - set(pool.labels.tolist()))
    if untrained:
        counts = Counter(raw)
        few = ", ".join(f"{_short(labels[c])!r} ({counts[labels[c]]})" for c in untrained[:10])
        raise XferError(f"Class(es) {few} of {data!r} have too few examples to keep any for training once the "
                        "validation and test examples are held out. Add examples of them, or give --val/--test.")
    return Task(data, modality, tuple(labels), pool, val_split, test_split,
                channels=_channels(modality, pool.items), notes=tuple(notes))


def read_labelled(data: str, **columns) -> tuple[list, list[str]]:
    """Every example of a labelled folder or table, unsplit: what `Run.evaluate` scores a model on."""
    if data.startswith("builtin:"):
        raise XferError("Give a labelled file or folder to evaluate on; a built-in set's test metrics are already "
                        "in the run's metrics.json (`xfer eval RUN` without --data shows them).")
    if data.startswith("hf:"):  # its test split (else its validation split, else train)
        from xfer.data.hub import load_hf_data

        _, items, raw, own_val, own_test, _ = load_hf_data(data, **columns)
        labelled = own_test or own_val or (items, raw)
        return list(labelled[0]), list(labelled[1])
    path = _existing(data, "data")
    _, items, raw, _ = _read_image_folder(path) if path.is_dir() else _read_table(path, **columns)
    if not items:
        raise XferError(f"Data {data!r} holds no readable examples. Check the path and the file's contents.")
    return items, raw


def read_lines(path: str | Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file (inputs for `xfer predict --file`)."""
    p = Path(path)
    try:
        exists = p.exists()
    except OSError:  # a name too long to look up names no file
        exists = False
    if not exists:
        raise XferError(f"Input file {p} does not exist.")
    return [line for line in _NEWLINE.split(_decode(p)) if line.strip()]


def _natural_key(label: str):
    # the label itself breaks ties ("1" vs "01"), so the class order never depends on set iteration order
    return (0, int(label), label) if _INTEGER.fullmatch(label) else (1, 0, label)


def _short(s: str, n: int = 60) -> str:
    """A name cut short for a message, so one very long label or column name cannot flood it."""
    return s if len(s) <= n else s[: n - 3] + "..."


def _show(names: list[str], limit: int = 20) -> str:
    """Names for a message: quoted where blanks or control characters would hide them; long lists cut short."""
    if not names:
        return "(none)"
    shown = [_short(repr(n) if not n or n != n.strip() or not n.isprintable() else n) for n in names[:limit]]
    return ", ".join(shown) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _read_split(p: str, what: str, modality: str, columns: dict):
    """An explicit --val/--test: an image folder laid out like the training folder (class sub-folders), or a table."""
    path = _existing(p, what)
    if path.is_dir():
        if modality != "image":
            raise XferError(f"{what} {p!r} is a folder, but the training data is {modality} data; give {what} as a "
                            ".csv/.tsv/.jsonl table with the same columns as the training data.")
        return _read_image_folder(path)
    return _read_table(path, **columns)


def _extra_split(read, modality: str, notes: list[str], what: str):
    """(items, labels) of a val/test split read as (modality, items, labels, notes); its notes join the task's."""
    if read[0] != modality:
        fix = ("an image folder laid out like the training data (<folder>/<class name>/<image>) or a table of image "
               "paths" if modality == "image" else "a .csv/.tsv/.jsonl table with a text column")
        raise XferError(f"{what} holds {read[0]} data but the training data is {modality} data; give {fix}.")
    if not read[1]:
        raise XferError(f"{what} holds no readable examples; give a split with at least one, or leave it out.")
    notes.extend(read[3])
    return read[1], read[2]


def _existing(p: str, what: str) -> Path:
    try:
        path = Path(p).expanduser()
    except RuntimeError:  # "~someone" with no such user: read it literally
        path = Path(p)
    try:
        exists = path.exists()
    except OSError as e:  # e.g. a name too long for the file system
        raise XferError(f"{what} path {_short(p)!r} cannot be looked up ({e.strerror or e}). Check the path.") from e
    if not exists:
        raise XferError(f"{what} path {_short(p, 200)!r} does not exist. Give an image folder, a .csv/.tsv/.jsonl "
                        f"file, builtin:<name> ({', '.join(BUILTINS)}) or hf:<dataset>[:config].")
    return path


def _stratified(split: Split, n, seed: int) -> tuple[Split, Split]:
    """Seeded stratified split; falls back to a plain seeded split when a class is too small to stratify."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(split))
    counts = Counter(split.labels.tolist())
    stratify = split.labels if min(counts.values()) >= 2 else None
    too_few = f"Too few examples ({len(split)}) to hold out a split of {n}; add data or pass --val/--test."
    try:
        a, b = train_test_split(idx, test_size=n, random_state=seed, stratify=stratify)
    except ValueError:
        try:
            a, b = train_test_split(idx, test_size=n, random_state=seed, stratify=None)
        except ValueError as e:  # the split would leave nothing to train on
            raise XferError(too_few) from e
    if len(a) == 0 or len(b) == 0:
        raise XferError(too_few)
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
    from PIL import Image

    good, bad = [], []
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im.verify()
            good.append(i)
        except Exception as e:  # whatever a decoder raises on a bad file (not only OSError), it is unreadable
            bad.append(f"{p} ({type(e).__name__})")
    if bad and len(bad) > max(1, MAX_BAD_IMAGE_FRACTION * len(paths)):
        listing = "; ".join(bad[:20]) + (" ..." if len(bad) > 20 else "")
        raise XferError(f"{len(bad)} of {len(paths)} images in {source} cannot be read: {listing}. "
                        "Remove or replace them, then run again.")
    notes = [f"skipped {len(bad)} unreadable image(s) in {source}: {'; '.join(bad[:5])}"] if bad else []
    return good, notes


def _image_files(folder: Path) -> list[Path]:
    """Image files at any depth under `folder`, sorted; hidden files and folders (.git, ._x.jpg) are left out."""

    def fail(e: OSError):
        raise e  # os.walk would skip an unreadable folder silently, and its images with it

    found = []
    for top, dirs, files in os.walk(folder, onerror=fail):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(top) / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTS]
    return sorted(found)


def _read_image_folder(root: Path):
    try:
        classes = sorted(d for d in root.iterdir() if not d.name.startswith(".") and d.is_dir())
        found = {d.name: _image_files(d) for d in classes}
    except OSError as e:
        raise XferError(f"Cannot read the image folder {root}: {e.strerror or e} ({e.filename}). Check that it "
                        "and its sub-folders can be read.") from e
    if not classes:
        raise XferError(f"Image folder {root} has no class sub-folders. Lay it out as {root}/<class name>/<image>.")
    paths = [f for d in classes for f in found[d.name]]
    raw = [d.name for d in classes for _ in found[d.name]]
    if not paths:
        raise XferError(f"Image folder {root} has class folders but no images ({', '.join(sorted(IMAGE_EXTS))}).")
    good, notes = _check_images(paths, str(root))
    empty = [name for name, files in found.items() if not files]
    if empty:
        notes.append(f"left out {len(empty)} class folder(s) without images in {root}: {_show(empty, 10)}")
    return "image", [paths[i] for i in good], [raw[i] for i in good], notes


def _decode(path: Path) -> str:
    """The file's text: UTF-8 (a byte-order mark is dropped), or UTF-16 when it starts with a UTF-16 byte-order mark."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise XferError(f"Cannot read {path}: {e.strerror or e}. Give a readable file.") from e
    utf16 = data[:2] in (b"\xff\xfe", b"\xfe\xff")
    try:
        text = data.decode("utf-16") if utf16 else data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        if utf16:
            raise XferError(f"{path} starts with a UTF-16 byte-order mark but is not valid UTF-16 text (byte "
                            f"{e.start}: {e.reason}). Re-save the file as UTF-8.") from e
        line = len(_NEWLINE.split(data[: e.start].decode("utf-8", errors="replace")))
        raise XferError(f"{path} is not UTF-8 text: byte 0x{data[e.start]:02x} at line {line} ({e.reason}). "
                        "Re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).") from e
    if "\x00" in text:
        line = len(_NEWLINE.split(text[: text.index("\x00")]))
        raise XferError(f"{path} holds a NUL character at line {line}: it is binary data, or UTF-16 text without a "
                        "byte-order mark. Save it as UTF-8 text.")
    return text


def _norm(name: str) -> str:
    return name.strip().lstrip("\ufeff").strip().lower()


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, path: Path,
          taken: str | None = None) -> str | None:
    """The column named `wanted` (exactly, else ignoring case and blanks), or the first of `candidates` present;
    several columns that fit are an error, since the reader cannot know which one the user meant."""
    if wanted is not None:
        hits = [c for c in columns if c == wanted] or [c for c in columns if _norm(c) == _norm(wanted)]
        if not hits:
            raise XferError(f"{path} has no {what} column {_short(wanted)!r}; its columns are: {_show(columns)}.")
    else:
        hits = []
        for cand in candidates:
            hits = [c for c in columns if _norm(c) == cand and c != taken]
            if hits:
                break
    if len(hits) > 1:
        raise XferError(f"{path} has {len(hits)} columns that could be the {what} column ({_show(hits)}). Rename "
                        f"all but one, or name the one to use exactly with --{what}-column.")
    return hits[0] if hits else None


@contextmanager
def _long_csv_fields() -> Iterator[None]:
    """Let csv read a field of any length (a whole document in one cell); the module's own limit is put back after.
    The largest limit csv accepts is a C long: 2**63 - 1 on most systems, 2**31 - 1 on Windows."""
    old = csv.field_size_limit()
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            break
        except OverflowError:
            limit //= 2
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _csv_rows(path: Path, text: str, delimiter: str) -> tuple[list[str], list[dict], list[int]]:
    """Header, rows and the file line each row starts on. A row with more filled cells than the header is an error:
    it is most often a text with an unquoted delimiter, which would shift its label into the wrong column."""
    kind = "TSV" if delimiter == "\t" else "CSV"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header, rows, line_nos, end = None, [], [], 0
    try:
        with _long_csv_fields():
            for cells in reader:
                start, end = end + 1, reader.line_num
                if not cells:  # a blank line
                    continue
                if header is None:
                    header = cells
                    continue
                if any(c.strip() for c in cells[len(header):]):
                    raise XferError(f"{path} line {start} has {len(cells)} cells but the header has {len(header)} "
                                    f"columns. Quote fields that hold the delimiter ({delimiter!r}) or a line break, "
                                    "or add the missing column names to the header.")
                row: dict = {}
                for name, cell in zip(header, cells):
                    row.setdefault(name, cell)
                rows.append(row)
                line_nos.append(start)
    except csv.Error as e:
        raise XferError(f"{path} line {reader.line_num} cannot be read as {kind} ({e}). Check the quoting around "
                        "that line.") from e
    return header or [], rows, line_nos


class _JsonObject(dict):
    """A JSON object that remembers the keys it held more than once (json itself keeps only the last value)."""

    def __init__(self, pairs: list[tuple[str, object]]):
        super().__init__(pairs)
        self.repeated = sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)


def _jsonl_rows(path: Path, text: str) -> tuple[list[str], list[dict], list[int]]:
    rows, line_nos = [], []
    for n, line in enumerate(_NEWLINE.split(text), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=_JsonObject)
        except json.JSONDecodeError as e:
            raise XferError(f"{path} line {n} is not valid JSON ({e.msg}).") from e
        except (ValueError, RecursionError) as e:  # a number too long to convert, or nesting too deep
            raise XferError(f"{path} line {n} cannot be read as JSON ({_short(str(e), 120)}).") from e
        if not isinstance(row, dict):
            raise XferError(f"{path} line {n} is not a JSON object ({{\"column\": value, ...}}).")
        if row.repeated:
            raise XferError(f"{path} line {n} gives the key(s) {_show(row.repeated)} more than once; only one value "
                            "would be kept. Give each key once.")
        rows.append(row)
        line_nos.append(n)
    return list(dict.fromkeys(k for r in rows for k in r)), rows, line_nos


def _arrow_rows(path: Path) -> tuple[list[str], list[dict], list[int]]:
    """Columns and rows of a Parquet file or an Arrow IPC file (Feather v2; the stream format too, as `datasets`
    writes it). Row numbers stand in for line numbers, counted from 1."""
    try:
        import pyarrow as pa
        import pyarrow.feather
        import pyarrow.parquet
    except ImportError as e:
        raise XferError(f"Reading {path} needs pyarrow; install it with `pip install pyarrow`, or give a .csv "
                        "or .jsonl table.") from e
    try:
        if path.suffix.lower() == ".parquet":
            table = pyarrow.parquet.read_table(path)
        else:
            try:
                table = pyarrow.feather.read_table(path)
            except pa.ArrowInvalid:  # not the IPC file format: maybe the stream format
                with pa.OSFile(str(path)) as f:
                    table = pa.ipc.open_stream(f).read_all()
    except (pa.ArrowException, OSError, ValueError) as e:
        kind = "a Parquet" if path.suffix.lower() == ".parquet" else "an Arrow IPC / Feather"
        raise XferError(f"{path} cannot be read as {kind} file ({type(e).__name__}: {_short(str(e), 160)}). "
                        "The file is corrupt or of another format; write it again, or give a .csv or .jsonl "
                        "table.") from e
    columns = [str(c) for c in table.column_names]
    if len(set(columns)) < len(columns):
        repeated = sorted(c for c, n in Counter(columns).items() if n > 1)
        raise XferError(f"{path} has the column name(s) {_show(repeated)} more than once. Rename the columns so "
                        "each name is used once.")
    rows = table.to_pylist()
    return columns, rows, list(range(1, len(rows) + 1))


def _cell(row: dict, column: str, path: Path, line: int) -> str | None:
    """A cell as text (None if missing); a JSON array or object is not one label or one text, so it is an error."""
    value = row.get(column)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, dict)):
        raise XferError(f"{path} line {line}: column {_short(column)!r} holds a JSON {type(value).__name__}, not a "
                        "single value. Give one text (or label, or image path) per row.")
    return str(value)


def _image_path(folder: Path, cell: str | None) -> Path | None:
    """The image file a table cell names, relative to the table's folder; None if there is no such file."""
    if cell is None or not cell.strip():
        return None
    try:
        p = (folder / cell).resolve()
        return p if p.is_file() else None
    except (OSError, ValueError):  # a name too long, or with a NUL in it, names no file
        return None


def choose_columns(columns: list[str], path, text_column=None, image_column=None, label_column=None):
    """(label, image, text) column of a table whose columns are `columns`: the ones named, else found by name (one
    of them is None); `path` names the table in messages."""
    if text_column is not None and image_column is not None:
        raise XferError(f"Give a text column or an image column for {path}, not both "
                        f"({text_column!r} and {image_column!r}).")
    label_col = _pick(columns, label_column, LABEL_COLUMNS, "label", path)
    if label_col is None:
        raise XferError(f"{path}: no label column found (looked for {', '.join(LABEL_COLUMNS)}); its columns are: "
                        f"{_show(columns)}. Name it with --label-column.")
    image_col = _pick(columns, image_column, IMAGE_COLUMNS, "image", path, label_col) if text_column is None else None
    # a column may be named "" (a blank header cell), so "no column" is None, never a falsy name
    text_col = None if image_col is not None else _pick(columns, text_column, TEXT_COLUMNS, "text", path, label_col)
    if image_col is None and text_col is None:
        others = [c for c in columns if c != label_col]
        if len(others) == 1:
            text_col = others[0]
        else:
            raise XferError(f"{path}: no text or image column found (looked for {', '.join(TEXT_COLUMNS)} / "
                            f"{', '.join(IMAGE_COLUMNS)}); its columns are: {_show(columns)}. "
                            "Name it with --text-column or --image-column.")
    if label_col in (text_col, image_col):
        raise XferError(f"{path}: column {_short(label_col)!r} cannot be both the label and the "
                        f"{'text' if text_col is not None else 'image'} column. Name two different columns.")
    return label_col, image_col, text_col


def _read_table(path: Path, text_column=None, image_column=None, label_column=None):
    """(modality, items, labels, notes) of a CSV/TSV/JSONL/Parquet/Arrow table: every row is one example, or the table is refused
    with the reason (only missing or unreadable images may be skipped, a few of them and with a note)."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise XferError(f"{path}: unsupported data file type {suffix!r}; use .csv, .tsv, .jsonl, .parquet, .arrow, "
                        ".feather or an image folder.")
    if suffix in ARROW_SUFFIXES:
        columns, rows, line_nos = _arrow_rows(path)
    elif suffix == ".jsonl":
        columns, rows, line_nos = _jsonl_rows(path, _decode(path))
    else:
        columns, rows, line_nos = _csv_rows(path, _decode(path), "\t" if suffix == ".tsv" else ",")
    if not rows:
        raise XferError(f"{path} has no data rows.")
    label_col, image_col, text_col = choose_columns(columns, path, text_column, image_column, label_column)
    labels = [_cell(r, label_col, path, n) for r, n in zip(rows, line_nos)]
    missing = [n for lab, n in zip(labels, line_nos) if lab is None or not lab.strip()]
    if missing:
        raise XferError(f"{path}: {len(missing)} row(s) have no label in column {_short(label_col)!r} "
                        f"(lines {', '.join(map(str, missing[:10]))}). Fill or remove them.")
    raw = [lab.strip() for lab in labels]
    if image_col is not None:
        cells = [_cell(r, image_col, path, n) for r, n in zip(rows, line_nos)]
        paths = [_image_path(path.parent, c) for c in cells]
        absent = [f"line {n}: {_short(c or '', 100)!r}" for c, p, n in zip(cells, paths, line_nos) if p is None]
        if len(absent) > max(1, MAX_BAD_IMAGE_FRACTION * len(paths)):
            raise XferError(f"{path}: {len(absent)} image paths name no file, e.g. {'; '.join(absent[:5])}. Paths "
                            f"are read relative to the table's folder. If column {_short(image_col)!r} is not an "
                            "image path, name the text column with --text-column.")
        keep = [i for i, p in enumerate(paths) if p is not None]
        good, notes = _check_images([paths[i] for i in keep], str(path))
        keep = [keep[i] for i in good]
        if absent:
            notes.append(f"skipped {len(absent)} missing image(s) listed in {path}: {'; '.join(absent[:5])}")
        return "image", [paths[i] for i in keep], [raw[i] for i in keep], notes
    texts = [(_cell(r, text_col, path, n) or "").strip() for r, n in zip(rows, line_nos)]
    empty = [line_nos[i] for i, t in enumerate(texts) if not t]
    if empty:
        raise XferError(f"{path}: {len(empty)} row(s) have empty text in column {_short(text_col)!r} "
                        f"(lines {', '.join(map(str, empty[:10]))}). Remove them or fill them in.")
    return "text", texts, raw, []
