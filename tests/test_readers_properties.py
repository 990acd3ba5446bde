"""Property tests for xfer.data.readers: whatever the user's data holds, the readers give a Task (or items and
labels) that keeps every example, or an XferError that says what is wrong; never another exception.

Examples per property (the whole file takes about 20 s on 2 cores; a run with 7 times as many passed too):
  test_table_from_arbitrary_bytes ......................... 600
  test_table_from_text_in_several_encodings ............... 600
  test_well_formed_table_in_any_encoding_loses_nothing .... 250
  test_table_with_arbitrary_column_layout ................. 800
  test_explicit_columns_that_may_not_exist ................ 600
  test_image_folder_with_junk ............................. 300
  test_image_folder_as_extra_split ........................ 200
  test_read_lines_of_arbitrary_bytes ...................... 400
"""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from xfer.data.readers import IMAGE_COLUMNS, LABEL_COLUMNS, TEXT_COLUMNS, load_task, read_labelled, read_lines
from xfer.data.task import Task
from xfer.errors import XferError

# the conftest's autouse cache-dir fixture is function-scoped; sharing it across examples is harmless here
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

SUFFIXES = [".csv", ".tsv", ".jsonl", ".txt"]
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "latin-1", "cp1252"]
COLUMN_NAMES = ["text", "Text", " text", "text ", "TEXT", "label", "Label", "label ", "LABEL", "", " ", "class",
                "y", "review", "sentence", "id", "image", "path", "file", "notes", "\ufefftext", "a\nb"]


def outcome(call):
    """The call's result, or the XferError it raised (which must say something); anything else fails the test."""
    try:
        got = call()
    except XferError as e:
        assert str(e).strip(), "an XferError with an empty message"
        # a message's plain words, without paths or names: --hypothesis-show-statistics then shows which checks ran
        event(f"XferError: {' '.join(w for w in str(e).split() if w.isalpha())[:40]}")
        return e
    event(f"returned {type(got).__name__}")
    return got


def check_task(task: Task) -> None:
    """A Task's own invariants: labels sorted and unique, every split's labels in range, items of its modality."""
    assert isinstance(task, Task)
    assert len(task.labels) >= 2 and len(set(task.labels)) == len(task.labels)
    for split in (task.train, task.val, task.test):
        assert len(split.items) == len(split.labels) > 0
        assert split.labels.dtype == np.int64
        assert 0 <= split.labels.min() and split.labels.max() < len(task.labels)
        kind = str if task.modality == "text" else Path
        assert all(isinstance(x, kind) for x in split.items)
    assert set(task.train.labels.tolist()) == set(range(len(task.labels)))  # every class can be learnt


def pairs(task: Task) -> Counter:
    return Counter((x, task.labels[y]) for s in (task.train, task.val, task.test) for x, y in zip(s.items, s.labels))


def read_everything(path: Path, **columns) -> None:
    """load_task and read_labelled on one path: each returns a result or raises XferError."""
    task = outcome(lambda: load_task(str(path), **columns))
    if isinstance(task, Task):
        check_task(task)
    got = outcome(lambda: read_labelled(str(path), **columns))
    if not isinstance(got, XferError):
        items, raw = got
        assert len(items) == len(raw) > 0 and all(isinstance(r, str) and r for r in raw)
        if isinstance(task, Task):  # nothing dropped between the two readers
            assert Counter(zip(items, raw)) == pairs(task)


# ------------------------------------------------------------------------------------------------------ tables


@settings(max_examples=600, **SETTINGS)
@given(prefix=st.sampled_from([b"", b"text,label\n", b"text\tlabel\n", b"\xef\xbb\xbf", b"\xff\xfe", b'{"text": "']),
       body=st.binary(max_size=600), suffix=st.sampled_from(SUFFIXES))
def test_table_from_arbitrary_bytes(prefix, body, suffix):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"data{suffix}"
        path.write_bytes(prefix + body)
        read_everything(path)
        # the same file as an explicit validation split of a sound table
        train = Path(d) / "train.csv"
        train.write_text("text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(20)), encoding="utf-8")
        task = outcome(lambda: load_task(str(train), val=str(path)))
        if isinstance(task, Task):
            check_task(task)


def _text_table_lines(draw) -> str:
    """Text that looks like a table often enough to get past the header: a known header, then arbitrary rows."""
    header = draw(st.sampled_from(["text,label", "text\tlabel", "sentence,class", "label", "", "Text,Label,id"]))
    cell = st.text(max_size=12)
    row = st.one_of(st.lists(cell, max_size=4).map(",".join), st.lists(cell, max_size=4).map("\t".join), cell)
    rows = draw(st.lists(row, max_size=8))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    return newline.join([header, *rows]) + draw(st.sampled_from(["", newline]))


json_value = st.one_of(st.text(max_size=10), st.integers(), st.floats(), st.booleans(), st.none(),
                       st.lists(st.integers(), max_size=2),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@st.composite
def table_text(draw) -> str:
    kind = draw(st.sampled_from(["free", "table", "jsonl"]))
    if kind == "free":
        return draw(st.text(max_size=300))
    if kind == "table":
        return _text_table_lines(draw)
    rows = draw(st.lists(st.dictionaries(st.sampled_from(["text", "label", "Text", "y", "review", ""]), json_value,
                                         max_size=4), max_size=8))
    ascii_only = draw(st.booleans())
    junk = draw(st.lists(st.text(max_size=10), max_size=2))
    return "\n".join([json.dumps(r, ensure_ascii=ascii_only) for r in rows] + junk)


@settings(max_examples=600, **SETTINGS)
@given(text=table_text(), encoding=st.sampled_from(ENCODINGS), suffix=st.sampled_from(SUFFIXES))
def test_table_from_text_in_several_encodings(text, encoding, suffix):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"data{suffix}"
        path.write_bytes(text.encode(encoding, errors="replace"))
        read_everything(path)


# a well-formed text table: what comes back is what went in, whatever the encoding a reader can be sure of
plain_text = st.text(st.characters(codec="latin-1", exclude_categories=("Cc", "Zs", "Zl", "Zp")), min_size=1,
                     max_size=15)


@settings(max_examples=250, **SETTINGS)
@given(rows=st.lists(st.tuples(plain_text, st.sampled_from(["a", "b", "ç"])), min_size=10, max_size=30),
       encoding=st.sampled_from(ENCODINGS), suffix=st.sampled_from(SUFFIXES))
def test_well_formed_table_in_any_encoding_loses_nothing(rows, encoding, suffix):
    rows = rows + [("first", "a"), ("second", "b"), ("third", "ç")] * 3  # each class has enough to split
    if suffix == ".jsonl":
        text = "".join(json.dumps({"text": t, "label": lab}, ensure_ascii=False) + "\n" for t, lab in rows)
    else:
        out = io.StringIO()
        w = csv.writer(out, delimiter="\t" if suffix == ".tsv" else ",")
        w.writerow(["text", "label"])
        w.writerows(rows)
        text = out.getvalue()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"data{suffix}"
        path.write_bytes(text.encode(encoding))
        got = outcome(lambda: load_task(str(path)))
    sure = encoding in ("utf-8", "utf-8-sig", "utf-16") or text.isascii() and encoding in ("latin-1", "cp1252")
    if sure:  # UTF-8, or UTF-16 with its byte-order mark: read exactly
        assert isinstance(got, Task), got
        assert pairs(got) == Counter((t.strip(), lab) for t, lab in rows)
    elif isinstance(got, XferError) and encoding in ("latin-1", "cp1252"):
        assert "UTF-8" in str(got)  # says how to fix it
    elif isinstance(got, Task):
        check_task(got)


chars = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")  # what a UTF-8 file can hold
column_name = st.one_of(st.sampled_from(COLUMN_NAMES), st.text(chars, max_size=6))
cell_text = st.one_of(st.text(chars, min_size=1, max_size=10),
                      st.sampled_from(["", " ", "line one\nline two", "cr\r\nlf", 'say "hi"', "a,b", "x\ty",
                                       "é\u2028ü"]))
label_value = st.one_of(st.sampled_from(["a", "b"]), st.sampled_from(["a", "b"]), st.sampled_from(["a", "b", "c"]),
                        st.sampled_from(["", " ", "A", " a", "1", "01", "-1", "²", "٣", "10", "--5", "a\nb"]))


def norm(name: str) -> str:
    """How a reader may match a column name: case, blanks and a stray byte-order mark aside."""
    return name.strip().lstrip("\ufeff").strip().lower()


@st.composite
def layout(draw):
    """(column names, rows of cells): usually a text-like and a label-like column among others, in any order, any
    case and with blanks around them. Each kind of flaw (one class, blank or odd cells, short or long rows) is
    switched on for some tables only, so that many tables are otherwise sound and get past the first check."""
    names = draw(st.lists(column_name, max_size=3))
    if draw(st.integers(0, 4)):
        names.append(draw(st.sampled_from(["text", "Text", " text", "review", "TEXT"])))
    if draw(st.integers(0, 4)):
        names.append(draw(st.sampled_from(["label", "Label", "label ", "class", "y"])))
    names = draw(st.permutations(names)) or [draw(column_name)]
    single, blanks, odd_labels, ragged = (draw(st.integers(0, 5)) == 0 for _ in range(4))
    labels = label_value if odd_labels else st.sampled_from(["a", "b", "c"])
    rows = []
    for _ in range(draw(st.integers(0, 24))):
        cells = [("a" if single else draw(labels)) if norm(n) in LABEL_COLUMNS else draw(cell_text) for n in names]
        if not blanks:
            cells = [c if c.strip() else "x" for c in cells]
        cut = draw(st.sampled_from([None, None, "short", "long"])) if ragged else None
        if cut == "short":
            cells = cells[: draw(st.integers(0, len(cells)))]
        elif cut == "long":
            cells += draw(st.lists(cell_text, min_size=1, max_size=2))
        rows.append(cells)
    return names, rows


def write_table(path: Path, names: list[str], rows: list[list[str]]) -> None:
    if path.suffix == ".jsonl":
        lines = [json.dumps(dict(zip(names, r))) for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t" if path.suffix == ".tsv" else ",")
        w.writerow(names)
        w.writerows(rows)


def as_read(names: list[str], rows: list[list[str]], suffix: str) -> tuple[list[str], list[dict]]:
    """The columns and rows (as {column: cell}) a file written by write_table holds; blank lines are no rows."""
    if suffix == ".jsonl":
        dicts = [dict(zip(names, r)) for r in rows]
        return list(dict.fromkeys(k for d in dicts for k in d)), dicts
    index = {n: names.index(n) for n in names}  # a repeated name: its first column
    return names, [{n: r[i] for n, i in index.items() if i < len(r)} for r in rows if r]


def assert_rows_kept(task: Task, names: list[str], rows: list[list[str]], suffix: str) -> None:
    """Every example is one row's (cell, cell) pair, and no row went missing."""
    check_task(task)
    _, dicts = as_read(names, rows, suffix)
    cells = [r for r in rows if r] if suffix != ".jsonl" else [list(d.values()) for d in dicts]
    assert len(task.train) + len(task.val) + len(task.test) == len(cells)
    stripped = [{c.strip() for c in r} for r in cells]
    for item, label in pairs(task):
        assert any(item in row and label in row for row in stripped), (item, label)


@settings(max_examples=800, **SETTINGS)
@given(table=layout(), suffix=st.sampled_from([".csv", ".tsv", ".jsonl"]))
def test_table_with_arbitrary_column_layout(table, suffix):
    names, rows = table
    columns, dicts = as_read(names, rows, suffix)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"data{suffix}"
        write_table(path, names, rows)
        task = outcome(lambda: load_task(str(path)))
        if dicts and sum(norm(c) == "label" for c in columns) > 1:  # "label" and "Label ": the reader must ask
            assert isinstance(task, XferError), task
        if isinstance(task, Task):
            assert_rows_kept(task, names, rows, suffix)
            texts = [c for c in columns if norm(c) in TEXT_COLUMNS]
            labels = [c for c in columns if norm(c) in LABEL_COLUMNS]
            if len(texts) == 1 and len(labels) == 1 and not any(norm(c) in IMAGE_COLUMNS for c in columns):
                # one obvious text and one obvious label column: each example is exactly its row's two cells
                assert pairs(task) == Counter((r[texts[0]].strip(), r[labels[0]].strip()) for r in dicts)
        read_everything(path)


@settings(max_examples=600, **SETTINGS)
@given(table=layout(), suffix=st.sampled_from([".csv", ".jsonl"]), data=st.data())
def test_explicit_columns_that_may_not_exist(table, suffix, data):
    names, rows = table
    columns, dicts = as_read(names, rows, suffix)
    choice = st.one_of(st.none(), st.sampled_from(names), st.sampled_from(names), column_name)
    text, label = data.draw(choice), data.draw(choice)
    image = data.draw(st.sampled_from(names)) if data.draw(st.integers(0, 4)) == 0 else None
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"data{suffix}"
        write_table(path, names, rows)
        task = outcome(lambda: load_task(str(path), text_column=text, image_column=image, label_column=label))
        if label is not None and not any(norm(c) == norm(label) for c in columns):
            assert isinstance(task, XferError), task  # without its label column, no Task
        if isinstance(task, Task) and task.modality == "text":
            assert_rows_kept(task, names, rows, suffix)
            if text in columns and label in columns and columns.count(text) == columns.count(label) == 1:
                # the named columns, exactly: each example is its row's (text cell, label cell)
                assert pairs(task) == Counter((r[text].strip(), r[label].strip()) for r in dicts)
        read_everything(path, text_column=text, image_column=image, label_column=label)


# ------------------------------------------------------------------------------------------------ image folders


def _image_bytes(fmt: str, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)[..., 0] if mode == "L" else
                    np.arange(48, dtype=np.uint8).reshape(4, 4, 3), mode).save(buf, format=fmt)
    return buf.getvalue()


GOOD = [(".png", _image_bytes("PNG", "RGB")), (".jpg", _image_bytes("JPEG", "RGB")), (".PNG", _image_bytes("PNG", "L")),
        (".gif", _image_bytes("GIF", "L")), (".bmp", _image_bytes("BMP", "RGB"))]
file_stem = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="/\x00"), min_size=1, max_size=8)
class_name = st.one_of(st.sampled_from(["a", "b", "cat", "1", "01", "²", "Ä", "-1", "dir.png", " x "]),
                       file_stem).filter(lambda s: s not in (".", "..") and len(s.encode()) < 100)
junk = st.one_of(
    st.tuples(st.just("zero"), st.sampled_from([".png", ".jpg"])),
    st.tuples(st.just("garbage"), st.binary(max_size=40)),
    st.tuples(st.just("text"), st.sampled_from([".txt", ".csv", "", ".DS_Store"])),
    st.tuples(st.just("hidden"), st.sampled_from([".png", ".jpg"])),
    st.tuples(st.just("emptydir"), st.none()),
    st.tuples(st.just("dir_named_png"), st.none()),
)


@st.composite
def image_tree(draw, names=class_name, min_classes: int = 0):
    """{class name: (number of good images, nested good images, junk entries)}; names unique on this file system."""
    classes = draw(st.lists(names, min_size=min_classes, max_size=4, unique=True))
    entries = st.one_of(st.just([]), st.lists(junk, max_size=2))
    return {n: (draw(st.integers(0, 6)), draw(st.integers(0, 2)), draw(entries)) for n in classes}


def build_tree(root: Path, tree: dict, stem: str = "img") -> dict[Path, str]:
    """Write the tree; return {good image path: class} for the images a reader should find."""
    good = {}
    root.mkdir(parents=True, exist_ok=True)
    for k, (name, (n, nested, entries)) in enumerate(tree.items()):
        folder = root / name
        folder.mkdir()
        for i in range(n + nested):
            ext, data = GOOD[(i + k) % len(GOOD)]
            where = folder / "deeper" / "still" if i >= n else folder
            where.mkdir(parents=True, exist_ok=True)
            p = where / f"{stem}{i}é{ext}"
            p.write_bytes(data)
            if not name.startswith("."):  # a hidden folder (.git, .ipynb_checkpoints) is not a class
                good[p] = name
        for j, (kind, arg) in enumerate(entries):
            if kind == "zero":
                (folder / f"zero{j}{arg}").write_bytes(b"")
            elif kind == "garbage":
                (folder / f"garbage{j}.jpg").write_bytes(arg)
            elif kind == "text":
                (folder / f"notes{j}{arg}").write_text("not an image")
            elif kind == "hidden":
                (folder / f"._{j}{arg}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
            elif kind == "emptydir":
                (folder / f"empty{j}").mkdir()
            else:
                (folder / f"folder{j}.png").mkdir()
    return good


@settings(max_examples=300, **SETTINGS)
@given(tree=image_tree(), hidden_class=st.booleans())
def test_image_folder_with_junk(tree, hidden_class):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "data"
        good = build_tree(root, tree)
        if hidden_class:  # e.g. a .git or .ipynb_checkpoints folder: not a class
            (root / ".hidden").mkdir(exist_ok=True)
            (root / ".hidden" / "x.png").write_bytes(GOOD[0][1])
        task = outcome(lambda: load_task(str(root)))
        if isinstance(task, Task):
            check_task(task)
            everything = Counter(x for s in (task.train, task.val, task.test) for x in s.items)
            assert max(everything.values()) == 1
            assert set(everything) <= set(good)
            # a file is skipped only if it is unreadable, and the user is told
            assert set(everything) == set(good) or task.notes
            assert all(good[p] == lab for p, lab in pairs(task))
        read_everything(root)


@settings(max_examples=200, **SETTINGS)
@given(tree=image_tree(st.one_of(st.sampled_from(["a", "b", "cat"]), class_name), min_classes=1),
       which=st.sampled_from(["val", "test"]))
def test_image_folder_as_extra_split(tree, which):
    with tempfile.TemporaryDirectory() as d:
        train = Path(d) / "train"
        build_tree(train, {"a": (6, 0, []), "b": (6, 0, []), "cat": (6, 0, [])})
        good = build_tree(Path(d) / "extra", tree, stem="x")
        task = outcome(lambda: load_task(str(train), **{which: str(Path(d) / "extra")}))
        unknown = sorted({c for p, c in good.items()} - {"a", "b", "cat"})
        if isinstance(task, Task):
            check_task(task)
            split = getattr(task, which)
            assert not unknown
            assert set(split.items) <= set(good) and (set(split.items) == set(good) or task.notes)
            assert all(good[p] == lab for p, lab in zip(split.items, (task.labels[y] for y in split.labels)))
            assert len(task.train) + len(task.val) + len(task.test) - len(split) == 18  # training folder whole
        elif unknown and good:
            msg = str(task)
            assert "not seen in training" in msg or "unreadable" in msg or "cannot be read" in msg, msg


# ------------------------------------------------------------------------------------------------- read_lines


@settings(max_examples=400, **SETTINGS)
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=200).map(lambda t: t.encode("utf-8"))))
def test_read_lines_of_arbitrary_bytes(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "inputs.txt"
        path.write_bytes(data)
        got = outcome(lambda: read_lines(path))
        if not isinstance(got, XferError):
            assert all(isinstance(line, str) and line.strip() for line in got)
            text = data.decode("utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig")
            # lines end at \n, \r\n or \r only: a form feed or U+2028 inside a line does not split it
            assert got == [line for line in re.split(r"\r\n|\r|\n", text) if line.strip()]
