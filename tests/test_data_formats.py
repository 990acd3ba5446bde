"""Parquet and Arrow IPC / Feather tables, and hf:<dataset> data (offline error, DatasetDict conversion)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as parquet
import pytest
from PIL import Image

from xfer.data.readers import load_task, read_labelled
from xfer.errors import XferError

REVIEWS = {"review": [f"{w} film number {i}" for i in range(10) for w in ("great", "awful")],
           "label": ["pos", "neg"] * 10}


def _write(table: pa.Table, path: Path) -> Path:
    if path.suffix == ".parquet":
        parquet.write_table(table, path)
    elif path.name.endswith(".stream.arrow"):  # the IPC stream format, as `datasets` writes its cache files
        with pa.OSFile(str(path), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
            w.write_table(table)
    else:
        feather.write_feather(table, path)
    return path


@pytest.mark.parametrize("name", ["reviews.parquet", "reviews.arrow", "reviews.feather", "reviews.stream.arrow"])
def test_text_table_formats(tmp_path, name):
    path = _write(pa.table(REVIEWS), tmp_path / name)
    task = load_task(str(path), val_fraction=0.2, test_fraction=0.2)
    assert task.modality == "text" and task.labels == ("neg", "pos")
    assert len(task.train) + len(task.val) + len(task.test) == 20
    assert all(t.endswith(tuple("0123456789")) for t in task.train.items)
    items, labels = read_labelled(str(path))
    assert items[:2] == ["great film number 0", "awful film number 0"] and labels[:2] == ["pos", "neg"]


def test_integer_labels_and_named_columns(tmp_path):
    table = pa.table({"body_text": REVIEWS["review"], "y_true": pa.array([1, 0] * 10, pa.int64())})
    path = _write(table, tmp_path / "t.parquet")
    task = load_task(str(path), text_column="body_text", label_column="y_true")
    assert task.labels == ("0", "1")


def test_image_path_column(tmp_path, image_folder):
    paths = sorted(image_folder.glob("*/*.png"))
    table = pa.table({"image": [str(p) for p in paths], "label": [p.parent.name for p in paths]})
    path = _write(table, tmp_path / "images.feather")
    task = load_task(str(path), val_fraction=0.25, test_fraction=0.25)
    assert task.modality == "image" and task.labels == ("blue", "red") and task.channels == 3
    assert all(isinstance(p, Path) and p.is_file() for p in task.train.items)


@pytest.mark.parametrize("name, kind", [("bad.parquet", "Parquet"), ("bad.arrow", "Arrow"), ("bad.feather", "Arrow")])
def test_corrupt_file_is_named(tmp_path, name, kind):
    path = tmp_path / name
    path.write_bytes(b"label,text\npos,not a columnar file\n" * 3)
    with pytest.raises(XferError, match=rf"{path}.*{kind}.*corrupt"):
        load_task(str(path))


def test_truncated_parquet(tmp_path):
    path = _write(pa.table(REVIEWS), tmp_path / "cut.parquet")
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(XferError, match="cut.parquet cannot be read as a Parquet file"):
        load_task(str(path))


def test_same_column_errors_as_csv(tmp_path):
    no_label = _write(pa.table({"review": ["a", "b"], "score": ["x", "y"], "other": ["1", "2"]}), tmp_path / "n.parquet")
    with pytest.raises(XferError, match="no label column found.*review, score, other.*--label-column"):
        load_task(str(no_label))
    missing = _write(pa.table({"text": ["a", "b", "c"], "label": ["x", None, "y"]}), tmp_path / "m.arrow")
    with pytest.raises(XferError, match=r"1 row\(s\) have no label"):
        load_task(str(missing))
    nested = _write(pa.table({"text": [["a"], ["b"]], "label": ["x", "y"]}), tmp_path / "l.parquet")
    with pytest.raises(XferError, match="holds a JSON list"):
        load_task(str(nested))
    with pytest.raises(XferError, match="has no data rows"):
        load_task(str(_write(pa.table({"text": pa.array([], pa.string()), "label": pa.array([], pa.string())}),
                             tmp_path / "e.feather")))


# hf:<dataset>: no network here, so the download is never tried; the conversion is tested on in-memory data sets.

@pytest.mark.parametrize("offline", ["1", None])
def test_hf_data_offline_fails_at_once(monkeypatch, offline):
    import socket

    def no_network(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(socket, "getaddrinfo", no_network)
    with pytest.raises(XferError, match="'hf:imdb' needs the Hugging Face Hub.*(HF_HUB_OFFLINE|offline).*Parquet"):
        load_task("hf:imdb")


def test_hf_dataset_dict_conversion():
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    from xfer.data.hub import dataset_splits, parse_hf_data

    assert parse_hf_data("hf:glue:sst2") == ("glue", "sst2")
    assert parse_hf_data("hf:stanfordnlp/imdb") == ("stanfordnlp/imdb", None)
    features = Features({"idx": Value("int32"), "sentence": Value("string"),
                         "label": ClassLabel(names=["negative", "positive"])})

    def split(n, labels):
        return Dataset.from_dict({"idx": list(range(n)), "sentence": [f"s{i}" for i in range(n)], "label": labels},
                                 features=features)

    loaded = DatasetDict(train=split(6, [0, 1] * 3), validation=split(2, [1, 0]), test=split(2, [-1, -1]))
    modality, items, labels, val, test, notes = dataset_splits(loaded, "hf:glue:sst2")
    assert modality == "text" and items[:2] == ["s0", "s1"] and labels[:2] == ["negative", "positive"]
    assert val == (["s0", "s1"], ["positive", "negative"])
    assert test is None and "test split) has no labels" in notes[0]  # GLUE-style hidden test labels


def test_hf_image_dataset_and_task():
    from datasets import ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature

    from xfer.data import hub

    rng = np.random.default_rng(0)
    grey = [Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)) for _ in range(20)]
    features = Features({"img": ImageFeature(), "fine_label": ClassLabel(names=["zero", "one"])})
    train = Dataset.from_dict({"img": grey, "fine_label": [0, 1] * 10}, features=features)
    modality, items, labels, val, test, notes = hub.dataset_splits(DatasetDict(train=train), "hf:digits")
    assert modality == "image" and items[0].shape == (12, 12) and items[0].dtype == np.uint8
    assert labels[:2] == ["zero", "one"] and val is None and test is None

    with pytest.raises(XferError, match="no label column found"):  # two ClassLabel columns: name one
        two = Dataset.from_dict({"img": grey[:2], "a": [0, 1], "b": [1, 0]},
                                features=Features({"img": ImageFeature(), "a": ClassLabel(names=["x", "y"]),
                                                   "b": ClassLabel(names=["x", "y"])}))
        hub.dataset_splits(DatasetDict(train=two), "hf:two")
    with pytest.raises(XferError, match="has no train split"):
        hub.dataset_splits(DatasetDict(test=train), "hf:x")


def test_hf_task_through_load_task(monkeypatch):
    from datasets import Dataset, DatasetDict

    from xfer.data import hub

    texts = {"text": [f"{w} {i}" for i in range(15) for w in ("good", "bad")], "label": ["g", "b"] * 15}
    loaded = DatasetDict(train=Dataset.from_dict(texts), test=Dataset.from_dict({k: v[:6] for k, v in texts.items()}))
    monkeypatch.setattr(hub, "require_hub", lambda what, retry: None)
    monkeypatch.setattr("datasets.load_dataset", lambda name, config: loaded)
    task = load_task("hf:reviews", val_fraction=0.2)
    assert task.name == "hf:reviews" and task.labels == ("b", "g")
    assert len(task.test) == 6 and len(task.train) + len(task.val) == 30  # its own test split; val held out
    items, labels = read_labelled("hf:reviews")  # what `xfer eval RUN --data hf:...` scores: the test split
    assert items == texts["text"][:6] and labels == texts["label"][:6]
