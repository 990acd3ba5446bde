"""xfer.data.load_task: built-in sets, tables, image folders, splits, and the errors users see for bad input."""

from __future__ import annotations

import csv
import importlib.util
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xfer.data import Task, load_task
from xfer.data.builtin import load_builtin
from xfer.errors import XferError


def labels_of(task: Task, split: str) -> list[str]:
    return [task.labels[i] for i in getattr(task, split).labels]


# ----------------------------------------------------------------------------------------------- built-in sets


@pytest.fixture(scope="module")
def mnist() -> Task:
    return load_task("builtin:mnist5k", seed=0)


def test_mnist5k_sizes_classes_and_channels(mnist):
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (3500, 500, 1000)
    assert mnist.modality == "image"
    assert mnist.labels == tuple(str(d) for d in range(10))
    assert mnist.num_classes == 10
    assert mnist.channels == 1
    first = mnist.train.items[0]
    assert isinstance(first, np.ndarray) and first.shape == (28, 28) and first.dtype == np.uint8
    for split in (mnist.train, mnist.val, mnist.test):
        assert split.labels.dtype == np.int64
        assert len(split.items) == len(split.labels)
        assert set(split.labels.tolist()) == set(range(10))


def test_mnist5k_split_is_stratified(mnist):
    total = Counter(labels_of(mnist, "train") + labels_of(mnist, "val") + labels_of(mnist, "test"))
    assert sum(total.values()) == 5000
    train = Counter(labels_of(mnist, "train"))
    test = Counter(labels_of(mnist, "test"))
    for label, n in total.items():
        # every class keeps its share of the whole: 70% in train (~350 each), 20% in test
        assert abs(train[label] - 0.7 * n) <= 2, (label, train[label], n)
        assert abs(test[label] - 0.2 * n) <= 2, (label, test[label], n)
        assert 300 <= train[label] <= 400


def test_mnist5k_split_is_deterministic_per_seed(mnist):
    again = load_task("builtin:mnist5k", seed=0)
    assert np.array_equal(again.train.labels, mnist.train.labels)
    assert np.array_equal(np.stack(again.train.items), np.stack(mnist.train.items))
    assert np.array_equal(np.stack(again.test.items), np.stack(mnist.test.items))

    other = load_task("builtin:mnist5k", seed=1)
    assert (len(other.train), len(other.val), len(other.test)) == (3500, 500, 1000)
    assert not np.array_equal(np.stack(other.test.items), np.stack(mnist.test.items))
    assert not np.array_equal(np.stack(other.train.items), np.stack(mnist.train.items))


def _orange_tab_rows(path: Path) -> list[tuple[str, str]]:
    """Rows of an Orange .tab file: three header lines (names, types, flags), then category<TAB>text rows."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[3:]
    return [(r[0], r[1]) for r in rows if r and r[0].strip()]


def test_reuters_r8_uses_its_own_test_split():
    spec = importlib.util.find_spec("orangecontrib")
    folder = Path(list(spec.submodule_search_locations)[0]) / "text" / "datasets"
    test_rows = _orange_tab_rows(folder / "reuters-r8-test.tab")
    train_rows = _orange_tab_rows(folder / "reuters-r8-train.tab")
    assert len(test_rows) > 1000  # the file was found and parsed

    task = load_task("builtin:reuters_r8")
    assert task.modality == "text"
    assert task.num_classes == 8
    assert len(task.test) == len(test_rows)
    assert Counter(labels_of(task, "test")) == Counter(c for c, _ in test_rows)
    assert task.test.items[0] == test_rows[0][1]
    # train + val come from the training file only
    assert len(task.train) + len(task.val) == len(train_rows)
    assert Counter(labels_of(task, "train") + labels_of(task, "val")) == Counter(c for c, _ in train_rows)


def test_rotten_tomatoes_sizes_and_labels():
    task = load_task("builtin:rotten_tomatoes")
    assert (len(task.train), len(task.val), len(task.test)) == (9808, 1000, 2000)
    assert task.labels == ("fresh", "rotten")
    assert task.modality == "text"
    assert all(isinstance(t, str) and t for t in task.train.items[:100])
    # the three splits partition the set: every snippet exactly once
    _, items, raw, _ = load_builtin("rotten_tomatoes")
    assert Counter(zip(items, raw)) == Counter(
        (t, task.labels[y]) for s in (task.train, task.val, task.test) for t, y in zip(s.items, s.labels))


def test_unknown_builtin_lists_the_builtins():
    with pytest.raises(XferError, match="mnist5k"):
        load_task("builtin:mnist")


# ---------------------------------------------------------------------------------------------------- tables


def write_rows(path: Path, header: list[str], rows: list[list], delimiter: str = ",") -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def text_rows(n: int = 40, labels=("pos", "neg")) -> list[list[str]]:
    return [[f"example number {i} about {labels[i % len(labels)]}", labels[i % len(labels)]] for i in range(n)]


def test_csv_auto_detects_text_and_label_columns(tmp_path):
    rows = text_rows(40)
    f = write_rows(tmp_path / "d.csv", ["id", "text", "label"], [[str(i)] + r for i, r in enumerate(rows)])
    task = load_task(str(f))
    assert task.modality == "text"
    assert task.labels == ("neg", "pos")
    assert task.channels == 0
    assert (len(task.train), len(task.val), len(task.test)) == (28, 4, 8)
    # the text column (not the id column) was read, and each text keeps its own label
    truth = {t: lab for t, lab in rows}
    for split in ("train", "val", "test"):
        for t, lab in zip(getattr(task, split).items, labels_of(task, split)):
            assert truth[t] == lab
    all_items = task.train.items + task.val.items + task.test.items
    assert sorted(all_items) == sorted(truth)


def test_csv_split_fractions_are_honoured(tmp_path):
    f = write_rows(tmp_path / "d.csv", ["text", "label"], text_rows(100))
    task = load_task(str(f), val_fraction=0.2, test_fraction=0.3)
    assert len(task.test) == 30
    assert Counter(labels_of(task, "test")) == {"pos": 15, "neg": 15}
    assert len(task.train) + len(task.val) == 70
    assert len(task.val) > 10  # bigger than the default 0.1's share (NB: taken from what the test split leaves)
    assert abs(Counter(labels_of(task, "val"))["pos"] - len(task.val) / 2) <= 1


def test_tsv(tmp_path):
    rows = [[f"line, with commas {i}", "a" if i % 2 else "b"] for i in range(30)]
    f = write_rows(tmp_path / "d.tsv", ["sentence", "class"], rows, delimiter="\t")
    task = load_task(str(f))
    assert task.modality == "text"
    assert task.labels == ("a", "b")
    assert len(task.train) + len(task.val) + len(task.test) == 30
    assert any("with commas" in t for t in task.train.items)  # commas did not split the row


def test_jsonl(tmp_path):
    f = tmp_path / "d.jsonl"
    lines = [json.dumps({"review": f"review {i}", "label": i % 3}) for i in range(45)]
    f.write_text("\n".join(lines[:20]) + "\n\n" + "\n".join(lines[20:]) + "\n", encoding="utf-8")
    task = load_task(str(f))
    assert task.modality == "text"
    assert task.labels == ("0", "1", "2")
    assert len(task.train) + len(task.val) + len(task.test) == 45
    assert set(task.train.items) <= {f"review {i}" for i in range(45)}


def test_numeric_labels_sort_naturally(tmp_path):
    rows = [[f"t{i}", str(lab)] for i, lab in enumerate([10, 2, 1] * 10)]
    task = load_task(str(write_rows(tmp_path / "d.csv", ["text", "label"], rows)))
    assert task.labels == ("1", "2", "10")


def test_explicit_text_and_label_columns(tmp_path):
    rows = [[f"title {i}", f"body {i}", "x" if i % 2 else "y", "z"] for i in range(30)]
    f = write_rows(tmp_path / "d.csv", ["title", "body", "topic", "label"], rows)
    # without naming them, the `label` column (one class, z) and the `body` column would be picked
    task = load_task(str(f), text_column="title", label_column="topic")
    assert task.labels == ("x", "y")
    assert all(t.startswith("title ") for t in task.train.items)


def test_explicit_val_and_test_files(tmp_path):
    f = write_rows(tmp_path / "train.csv", ["text", "label"], text_rows(30))
    v = write_rows(tmp_path / "val.csv", ["text", "label"], [["val a", "pos"], ["val b", "neg"], ["val c", "neg"]])
    t = write_rows(tmp_path / "test.csv", ["text", "label"], [["test a", "pos"], ["test b", "pos"]])
    task = load_task(str(f), val=str(v), test=str(t))
    assert len(task.train) == 30  # nothing held out of the training file
    assert task.val.items == ["val a", "val b", "val c"]
    assert labels_of(task, "val") == ["pos", "neg", "neg"]
    assert task.test.items == ["test a", "test b"]
    assert labels_of(task, "test") == ["pos", "pos"]

    only_test = load_task(str(f), test=str(t))
    assert only_test.test.items == ["test a", "test b"]
    assert len(only_test.train) + len(only_test.val) == 30 and len(only_test.val) == 3


# ------------------------------------------------------------------------------------------ bad table input


def test_missing_path(tmp_path):
    with pytest.raises(XferError, match="does not exist") as e:
        load_task(str(tmp_path / "nope.csv"))
    assert "nope.csv" in str(e.value)
    assert "builtin:" in str(e.value)  # says what would be accepted


def test_missing_explicit_test_path(tmp_path):
    f = write_rows(tmp_path / "d.csv", ["text", "label"], text_rows(20))
    with pytest.raises(XferError, match="--test.*nope.csv.*does not exist"):
        load_task(str(f), test=str(tmp_path / "nope.csv"))


def test_empty_csv_header_only(tmp_path):
    f = tmp_path / "empty.csv"
    f.write_text("text,label\n", encoding="utf-8")
    with pytest.raises(XferError, match="no data rows") as e:
        load_task(str(f))
    assert "empty.csv" in str(e.value)


def test_single_class(tmp_path):
    f = write_rows(tmp_path / "d.csv", ["text", "label"], [[f"t{i}", "only"] for i in range(20)])
    with pytest.raises(XferError, match="single class") as e:
        load_task(str(f))
    assert "'only'" in str(e.value) and "two" in str(e.value)


def test_label_column_missing_names_the_columns(tmp_path):
    f = write_rows(tmp_path / "d.csv", ["sentence", "sentiment"], [[f"t{i}", "p"] for i in range(10)])
    with pytest.raises(XferError, match="no label column") as e:
        load_task(str(f))
    msg = str(e.value)
    assert "sentence" in msg and "sentiment" in msg
    assert "--label-column" in msg


@pytest.mark.parametrize("option, value", [("text_column", "txt"), ("label_column", "lbl")])
def test_unknown_explicit_column(tmp_path, option, value):
    f = write_rows(tmp_path / "d.csv", ["text", "label"], text_rows(20))
    with pytest.raises(XferError) as e:
        load_task(str(f), **{option: value})
    msg = str(e.value)
    assert repr(value) in msg
    assert "text, label" in msg  # the columns that do exist


def test_non_utf8_file(tmp_path):
    f = tmp_path / "latin.csv"
    f.write_bytes(b"text,label\nhello,a\ncaf\xe9 au lait,b\n")
    with pytest.raises(XferError, match="UTF-8") as e:
        load_task(str(f))
    msg = str(e.value)
    assert "latin.csv" in msg
    assert "0xe9" in msg and "line 3" in msg


def test_empty_text_rows_give_line_numbers(tmp_path):
    rows = text_rows(10)
    rows[2][0] = ""
    rows[6][0] = "   "
    f = write_rows(tmp_path / "d.csv", ["text", "label"], rows)
    with pytest.raises(XferError, match="empty text") as e:
        load_task(str(f))
    assert "2 row(s)" in str(e.value)
    assert "lines 4, 8" in str(e.value)  # file lines: the header is line 1


def test_line_numbers_count_blank_lines_and_multiline_fields(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text('text,label\n"first\nspans two lines",a\n\nsecond,b\n,a\n', encoding="utf-8")
    with pytest.raises(XferError, match=r"lines 6\)"):
        load_task(str(f))
    j = tmp_path / "d.jsonl"
    j.write_text('{"text": "a", "label": "x"}\n\n{"text": "", "label": "y"}\n', encoding="utf-8")
    with pytest.raises(XferError, match=r"lines 3\)"):
        load_task(str(j))


def test_rows_without_label_give_line_numbers(tmp_path):
    rows = text_rows(10)
    rows[4][1] = ""
    rows[5][1] = " "
    f = write_rows(tmp_path / "d.csv", ["text", "label"], rows)
    with pytest.raises(XferError, match="no label") as e:
        load_task(str(f))
    assert "lines 6, 7" in str(e.value)


def test_bad_jsonl_lines(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n', encoding="utf-8")
    with pytest.raises(XferError, match="line 2 is not valid JSON"):
        load_task(str(f))
    f.write_text('{"text": "a", "label": "x"}\n["b", "y"]\n', encoding="utf-8")
    with pytest.raises(XferError, match="line 2 is not a JSON object"):
        load_task(str(f))


def test_unsupported_file_type(tmp_path):
    f = tmp_path / "d.xlsx"
    f.write_bytes(b"text,label\n")
    with pytest.raises(XferError, match="unsupported data file type"):
        load_task(str(f))


def test_test_labels_not_in_train(tmp_path):
    f = write_rows(tmp_path / "train.csv", ["text", "label"], text_rows(20))
    t = write_rows(tmp_path / "test.csv", ["text", "label"], [["x", "pos"], ["y", "maybe"], ["z", "other"]])
    with pytest.raises(XferError, match="not seen in training") as e:
        load_task(str(f), test=str(t))
    assert "'maybe'" in str(e.value) and "'other'" in str(e.value)
    assert "'pos'" not in str(e.value)


# ------------------------------------------------------------------------------------------------ image folders


def make_images(folder: Path, n: int, mode: str = "RGB", size=(8, 8), start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    out = []
    for i in range(start, start + n):
        shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
        p = folder / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(p)
        out.append(p)
    return out


def corrupt(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_bytes(b"this is not a png at all")
    return p


def test_image_folder_rgb(tmp_path):
    for c in ("cat", "dog"):
        make_images(tmp_path / c, 20)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")  # ignored: not an image extension
    task = load_task(str(tmp_path))
    assert task.modality == "image"
    assert task.labels == ("cat", "dog")
    assert task.channels == 3
    assert len(task.train) + len(task.val) + len(task.test) == 40
    assert task.notes == ()
    for p, lab in zip(task.train.items, labels_of(task, "train")):
        assert isinstance(p, Path) and p.parent.name == lab


def test_image_folder_greyscale(tmp_path):
    for c in ("a", "b"):
        make_images(tmp_path / c, 10, mode="L")
    task = load_task(str(tmp_path))
    assert task.channels == 1


def test_image_folder_skips_one_corrupt_file_with_a_note(tmp_path):
    for c in ("a", "b"):
        make_images(tmp_path / c, 20)
    bad = corrupt(tmp_path / "b", "broken.png")
    task = load_task(str(tmp_path))
    everything = task.train.items + task.val.items + task.test.items
    assert len(everything) == 40
    assert bad not in everything
    assert len(task.notes) == 1
    assert "skipped 1 unreadable" in task.notes[0] and "broken.png" in task.notes[0]


def test_image_folder_with_many_corrupt_files_fails_and_lists_them(tmp_path):
    for c in ("a", "b"):
        make_images(tmp_path / c, 20)
    bad = [corrupt(tmp_path / "a", f"bad{i}.jpg") for i in range(6)]
    with pytest.raises(XferError, match="6 of 46 images") as e:
        load_task(str(tmp_path))
    for p in bad:
        assert p.name in str(e.value)


def test_image_folder_without_class_folders(tmp_path):
    make_images(tmp_path, 5)
    with pytest.raises(XferError, match="no class sub-folders"):
        load_task(str(tmp_path))


def test_image_folder_with_train_and_test_subfolders(tmp_path):
    train = {c: make_images(tmp_path / "train" / c, 20) for c in ("a", "b")}
    test = {c: make_images(tmp_path / "test" / c, 3, start=100) for c in ("a", "b")}
    task = load_task(str(tmp_path))
    assert task.labels == ("a", "b")
    assert sorted(task.test.items) == sorted(test["a"] + test["b"])
    assert labels_of(task, "test") == ["a"] * 3 + ["b"] * 3
    # train and val come from train/ only
    assert sorted(task.train.items + task.val.items) == sorted(train["a"] + train["b"])
    assert len(task.val) == 4


def test_image_folder_train_val_test_subfolders_keep_notes(tmp_path):
    for c in ("a", "b"):
        make_images(tmp_path / "train" / c, 20)
        make_images(tmp_path / "val" / c, 2, start=50)
        make_images(tmp_path / "test" / c, 10, start=100)
    corrupt(tmp_path / "test" / "a", "broken.png")
    task = load_task(str(tmp_path))
    assert (len(task.train), len(task.val), len(task.test)) == (40, 4, 20)
    # the unreadable test image is skipped, and the user is told so
    assert any("broken.png" in n for n in task.notes)


def test_test_folder_with_unknown_class(tmp_path):
    for c in ("a", "b"):
        make_images(tmp_path / "train" / c, 10)
    make_images(tmp_path / "test" / "c", 2)
    with pytest.raises(XferError, match=r"not seen in training: \['c'\]"):
        load_task(str(tmp_path))


def test_text_test_file_for_image_data(tmp_path):
    for c in ("a", "b"):
        make_images(tmp_path / "imgs" / c, 10)
    t = write_rows(tmp_path / "test.csv", ["text", "label"], [["x", "a"], ["y", "b"]])
    with pytest.raises(XferError, match="text data.*image data"):
        load_task(str(tmp_path / "imgs"), test=str(t))


def test_image_table(tmp_path):
    paths = make_images(tmp_path / "pics", 20)
    rows = [[p.relative_to(tmp_path).as_posix(), "x" if i % 2 else "y"] for i, p in enumerate(paths)]
    f = write_rows(tmp_path / "d.csv", ["image", "label"], rows)
    task = load_task(str(f))
    assert task.modality == "image"
    assert task.channels == 3
    assert sorted(task.train.items + task.val.items + task.test.items) == sorted(p.resolve() for p in paths)


def test_default_fractions_give_70_10_20(tmp_path):
    rows = [f"text {i},{'a' if i % 2 else 'b'}" for i in range(200)]
    path = tmp_path / "d.csv"
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    task = load_task(str(path))
    assert (len(task.train), len(task.val), len(task.test)) == (140, 20, 40)


# ------------------------------------------------------------------------- image folders as explicit val/test


def test_image_folders_as_explicit_val_and_test_splits(tmp_path):
    for c in ("a", "b"):
        make_images(tmp_path / "train" / c, 10)
    val = {c: make_images(tmp_path / "checks" / c, 2, start=50) for c in ("a", "b")}
    test = {c: make_images(tmp_path / "holdout" / c, 3, start=100) for c in ("a", "b")}
    task = load_task(str(tmp_path / "train"), val=str(tmp_path / "checks"), test=str(tmp_path / "holdout"))
    assert task.modality == "image" and task.labels == ("a", "b")
    assert len(task.train) == 20  # nothing held out of the training folder
    assert task.val.items == val["a"] + val["b"]
    assert labels_of(task, "val") == ["a"] * 2 + ["b"] * 2
    assert task.test.items == test["a"] + test["b"]
    assert labels_of(task, "test") == ["a"] * 3 + ["b"] * 3

    only_test = load_task(str(tmp_path / "train"), test=str(tmp_path / "holdout"))
    assert only_test.test.items == test["a"] + test["b"]
    assert len(only_test.train) + len(only_test.val) == 20


def test_explicit_test_folder_may_lack_a_class(tmp_path):
    for c in ("a", "b", "c"):
        make_images(tmp_path / "train" / c, 10)
    make_images(tmp_path / "holdout" / "b", 2, start=100)
    task = load_task(str(tmp_path / "train"), test=str(tmp_path / "holdout"))
    assert task.labels == ("a", "b", "c")
    assert labels_of(task, "test") == ["b", "b"]


def test_explicit_test_folder_with_unknown_classes(tmp_path):
    for c in ("a", "b"):
        make_images(tmp_path / "train" / c, 10)
    for c in ("a", "zebra", "yak"):
        make_images(tmp_path / "holdout" / c, 2, start=100)
    with pytest.raises(XferError, match=r"not seen in training: \['yak', 'zebra'\]") as e:
        load_task(str(tmp_path / "train"), test=str(tmp_path / "holdout"))
    assert "holdout" in str(e.value)  # says which split is at fault


def test_image_folder_test_split_for_text_data(tmp_path):
    f = write_rows(tmp_path / "d.csv", ["text", "label"], text_rows(20))
    for c in ("pos", "neg"):
        make_images(tmp_path / "holdout" / c, 2)
    with pytest.raises(XferError, match="folder.*text") as e:
        load_task(str(f), val=str(tmp_path / "holdout"))
    assert "holdout" in str(e.value) and ".csv" in str(e.value)  # says what to give instead


def test_text_table_val_split_for_image_folder_says_what_to_give(tmp_path):
    for c in ("a", "b"):
        make_images(tmp_path / "imgs" / c, 10)
    v = write_rows(tmp_path / "val.csv", ["text", "label"], [["x", "a"], ["y", "b"]])
    with pytest.raises(XferError, match="text data.*image data") as e:
        load_task(str(tmp_path / "imgs"), val=str(v))
    assert "val.csv" in str(e.value) and "folder" in str(e.value)


def test_image_table_test_split_for_image_folder_still_works(tmp_path):
    for c in ("a", "b"):
        make_images(tmp_path / "imgs" / c, 10)
    paths = make_images(tmp_path / "extra", 2, start=100)
    t = write_rows(tmp_path / "extra" / "test.csv", ["image", "label"], [[p.name, lab] for p, lab in zip(paths, "ab")])
    task = load_task(str(tmp_path / "imgs"), test=str(t))  # a table of image paths is image data too
    assert task.test.items == [p.resolve() for p in paths]
    assert labels_of(task, "test") == ["a", "b"]


# ------------------------------------------------------------------------------------------------ long fields


@pytest.mark.parametrize("name, delimiter", [("d.csv", ","), ("d.tsv", "\t")])
def test_field_longer_than_the_csv_default_limit_comes_back_whole(tmp_path, name, delimiter):
    long_text = ("a long document, " * 20_000)[:300_000]
    assert len(long_text) == 300_000
    rows = [[long_text, "pos"]] + text_rows(19)
    f = write_rows(tmp_path / name, ["text", "label"], rows, delimiter=delimiter)
    task = load_task(str(f))
    everything = task.train.items + task.val.items + task.test.items
    assert long_text in everything
    assert len(everything) == 20
    # a later csv user still gets the csv module's own limit
    assert csv.field_size_limit() == 131_072


# ------------------------------------------------------------------------ found by tests/test_readers_properties


def test_too_few_rows_to_split_is_an_xfer_error(tmp_path):
    f = write_rows(tmp_path / "d.csv", ["text", "label"], [["one", "a"], ["two", "b"]])
    with pytest.raises(XferError, match="Too few examples|too few examples"):  # was sklearn's ValueError
        load_task(str(f))


def test_a_class_left_without_training_examples_is_named(tmp_path):
    f = write_rows(tmp_path / "d.csv", ["text", "label"], [[f"t{i}", "a"] for i in range(30)] + [["lonely", "b"]])
    for seed in range(6):  # whichever split the single "b" lands in, it is never silently missing from training
        try:
            task = load_task(str(f), seed=seed)
        except XferError as e:
            assert "'b' (1)" in str(e) and "too few examples" in str(e)
        else:
            assert "b" in labels_of(task, "train")


@pytest.mark.parametrize("labels, order", [(["²", "1", "--5"], ("1", "--5", "²")),
                                           (["-1", "10", "2"], ("-1", "2", "10"))])
def test_labels_that_look_like_numbers_sort_without_error(tmp_path, labels, order):
    rows = [[f"t{i}", labels[i % 3]] for i in range(30)]  # int("²") and int("--5") raised ValueError
    task = load_task(str(write_rows(tmp_path / "d.csv", ["text", "label"], rows)))
    assert task.labels == order


def test_utf16_with_byte_order_mark_is_read(tmp_path):
    f = tmp_path / "d.tsv"
    f.write_text("sentence\tlabel\n" + "".join(f"café {i}\t{'ab'[i % 2]}\n" for i in range(20)), encoding="utf-16")
    task = load_task(str(f))
    assert sorted(task.train.items + task.val.items + task.test.items) == sorted(f"café {i}" for i in range(20))


def test_utf16_without_byte_order_mark_says_so(tmp_path):
    f = tmp_path / "d.csv"
    f.write_bytes("text,label\nx,a\n".encode("utf-16-le"))
    with pytest.raises(XferError, match="NUL character.*UTF-16"):
        load_task(str(f))


def test_old_mac_line_endings_and_crlf_in_quoted_fields(tmp_path):
    f = tmp_path / "d.csv"
    rows = "".join(f'"two\r\nlines {i}",{"ab"[i % 2]}\r' for i in range(20))
    f.write_bytes(("text,label\r" + rows).encode())  # lone \r ends lines: was _csv.Error (new-line character seen)
    task = load_task(str(f))
    assert sorted(task.train.items + task.val.items + task.test.items) == sorted(f"two\r\nlines {i}" for i in range(20))


def test_duplicate_or_look_alike_columns_are_an_error_not_a_silent_choice(tmp_path):
    f = write_rows(tmp_path / "d.csv", ["text", "text", "label"], [["first", "second", "ab"[i % 2]] for i in range(20)])
    with pytest.raises(XferError, match="2 columns that could be the text column"):
        load_task(str(f))  # DictReader kept the second "text" column and dropped the first
    with pytest.raises(XferError, match="2 columns that could be the text column"):
        load_task(str(f), text_column="text")
    g = write_rows(tmp_path / "g.csv", ["text", "Label", "label "], [["t", "a", "b"]] * 20)
    with pytest.raises(XferError, match=r"2 columns that could be the label column \(Label, 'label '\)"):
        load_task(str(g))


def test_column_names_with_blanks_or_other_case_are_found(tmp_path):
    f = write_rows(tmp_path / "d.csv", [" Text", "LABEL "], text_rows(20))
    task = load_task(str(f))
    assert task.labels == ("neg", "pos")
    assert load_task(str(f), text_column="text", label_column="label").labels == ("neg", "pos")


def test_rows_with_extra_cells_are_an_error_but_trailing_empty_cells_are_fine(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("text,label\n" + "".join(f"text {i},{'ab'[i % 2]},,\n" for i in range(20)), encoding="utf-8")
    assert len(load_task(str(f)).labels) == 2
    f.write_text("text,label\nhello, world,a\nbye,b\n", encoding="utf-8")  # an unquoted comma shifts the label
    with pytest.raises(XferError, match="line 2 has 3 cells but the header has 2 columns"):
        load_task(str(f))


def test_same_column_for_text_and_label(tmp_path):
    f = write_rows(tmp_path / "d.csv", ["text", "label"], text_rows(20))
    with pytest.raises(XferError, match="both the label and the text column"):
        load_task(str(f), text_column="label")


def test_jsonl_edge_cases(tmp_path):
    f = tmp_path / "d.jsonl"
    lines = [json.dumps({"text": f"a\u2028b {i}", "label": i % 2}, ensure_ascii=False) for i in range(20)]
    f.write_text("\n".join(lines), encoding="utf-8")  # U+2028 inside a string is not a line break
    task = load_task(str(f))
    assert sorted(task.train.items + task.val.items + task.test.items) == sorted(f"a\u2028b {i}" for i in range(20))
    for bad, match in [('{"text": "a", "label": "x", "label": "y"}', "more than once"),
                       ('{"text": "a", "label": ["x", "y"]}', "JSON list, not a single value"),
                       ('{"text": "a", "label": ' + "9" * 5000 + "}", "line 1 cannot be read as JSON"),
                       ("[" * 100_000, "line 1")]:
        f.write_text(bad + "\n", encoding="utf-8")
        with pytest.raises(XferError, match=match):
            load_task(str(f))


def test_image_folder_skips_hidden_files_and_folders_named_like_images(tmp_path):
    for c in ("a", "b"):
        make_images(tmp_path / c, 10)
        corrupt(tmp_path / c, "._img000.png")  # macOS resource forks: garbage with an image extension
        (tmp_path / c / "album.jpg").mkdir()
    (tmp_path / "empty").mkdir()
    task = load_task(str(tmp_path))
    assert task.labels == ("a", "b")
    assert len(task.train) + len(task.val) + len(task.test) == 20
    assert task.notes == (f"left out 1 class folder(s) without images in {tmp_path}: empty",)


def test_image_table_with_unusable_paths(tmp_path):
    paths = make_images(tmp_path / "pics", 40)
    rows = [{"image": p.relative_to(tmp_path).as_posix(), "label": "ab"[i % 2]} for i, p in enumerate(paths)]
    rows[0]["image"] = "bad\x00name.png"  # JSON writes it as \u0000
    rows[1]["image"] = "x" * 5000 + ".png"
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    task = load_task(str(f))  # was ValueError: embedded null byte
    assert len(task.train) + len(task.val) + len(task.test) == 38
    assert "skipped 2 missing image(s)" in task.notes[0] and "line 2" in task.notes[0]


@pytest.mark.parametrize("options, match", [(dict(test_fraction=0), "--test-fraction"),
                                            (dict(val_fraction=1.5), "--val-fraction"),
                                            (dict(val_fraction=0.5, test_fraction=0.5), "--val-fraction"),
                                            (dict(seed=-1), "--seed"), (dict(seed=2**32), "--seed")])
def test_bad_split_options(tmp_path, options, match):
    f = write_rows(tmp_path / "d.csv", ["text", "label"], text_rows(20))
    with pytest.raises(XferError, match=match):
        load_task(str(f), **options)
    assert len(load_task(str(f), seed=2**32 - 1).train) == 14  # the largest seed: was sklearn's ValueError


def test_read_lines(tmp_path):
    from xfer.data.readers import read_lines

    f = tmp_path / "in.txt"
    f.write_text("first\u2028still first\r\nsecond\x0cpage\r\n\n  \nthird", encoding="utf-8")
    assert read_lines(f) == ["first\u2028still first", "second\x0cpage", "third"]
    with pytest.raises(XferError, match="Cannot read"):
        read_lines(tmp_path)  # a folder: was IsADirectoryError


def test_a_column_with_a_blank_name_can_be_named(tmp_path):
    paths = make_images(tmp_path / "pics", 20)
    rows = [[p.relative_to(tmp_path).as_posix(), "ab"[i % 2]] for i, p in enumerate(paths)]
    f = write_rows(tmp_path / "d.csv", ["", "label"], rows)
    task = load_task(str(f), image_column="")  # "" was taken for "no image column"
    assert task.modality == "image"
    assert sorted(task.train.items + task.val.items + task.test.items) == sorted(p.resolve() for p in paths)
