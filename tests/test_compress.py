"""ONNX export and int8 (xfer/compress/onnx.py, quantize.py), ONNX runs served without PyTorch
(xfer/runs/onnx_run.py, xfer/data/arrays.py) and `xfer compress` end to end (xfer/tools/compress.py)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import xfer
from xfer.compress.quantize import int8_operators, quantize_onnx
from xfer.data.arrays import image_array, load_fast_tokenizer, token_batch
from xfer.data.loaders import ImagePrep, TextBatches, TextPrep, image_transform, load_tokenizer, open_image
from xfer.data.task import Split
from xfer.errors import XferError
from xfer.runs.folder import ONNX_MODEL, RunFolder
from xfer.runs.onnx_run import load_onnx
from xfer.tools.compress import TABLE, compress, export_onnx_run

from helpers import TINY_IMAGE_FIT, run_main

ROW_KEYS = {"variant", "size_mb", "params", "test_accuracy", "latency_ms_b1_p50", "latency_ms_b1_p95",
            "latency_ms_b32_p50", "path"}


@pytest.mark.parametrize("channels,shape", [(1, (28, 28)), (3, (40, 25, 3)), (3, (17, 61, 3)), (1, (64, 64))])
def test_numpy_image_preprocessing_equals_the_torch_transform(channels, shape):
    rng = np.random.default_rng(sum(shape))
    arr = rng.integers(0, 256, shape, dtype=np.uint8)
    prep = ImagePrep(32, (0.45,) * channels, (0.22,) * channels, "bicubic", channels)
    expected = image_transform(prep)(open_image(arr, channels)).numpy()
    got = image_array(arr, {"size": 32, "mean": prep.mean, "std": prep.std, "interpolation": "bicubic",
                            "channels": channels})
    assert got.shape == expected.shape == (channels, 32, 32)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def minilm_dir():
    from xfer.sources import load_source, resolve_source

    return load_source(resolve_source("all-MiniLM-L6-v2")).hf_dir


def test_fast_tokenizer_batches_equal_the_training_tokenisation(minilm_dir):
    texts = ["a gripping, beautiful film", "Ünïcödé and émojis 😀 too", "word " * 50, "x"]
    hf = load_tokenizer(minilm_dir)
    ds = TextBatches(Split(texts, np.zeros(len(texts), dtype=np.int64)), hf, TextPrep(16))
    expected, _, _ = ds[list(range(len(texts)))]
    got = token_batch(load_fast_tokenizer(minilm_dir, 16), texts, hf.pad_token_id)
    np.testing.assert_array_equal(got["input_ids"], expected["input_ids"].numpy())
    np.testing.assert_array_equal(got["attention_mask"], expected["attention_mask"].numpy())


@pytest.fixture(scope="module")
def image_run(image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("compress") / "image-run"
    xfer.fit(data=str(image_folder), out=str(out), **TINY_IMAGE_FIT)
    return out


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress-text")
    rows = [("a wonderful, moving film", "pos"), ("dull and lifeless", "neg")] * 12
    rows += [(f"truly great acting {i}", "pos") for i in range(6)] + [(f"boring plot {i}", "neg") for i in range(6)]
    data = root / "reviews.csv"
    data.write_text("text,label\n" + "\n".join(f'"{t}",{y}' for t, y in rows) + "\n")
    out = root / "text-run"
    xfer.fit(data=str(data), strategy="linear-probe", epochs=2, batch_size=8, max_length=16, min_steps=0,
             out=str(out), quiet=True)
    return out


def _torch_logits(run_dir, items):
    run = xfer.load(run_dir)
    return run.logits(Split(list(items), np.zeros(len(items), dtype=np.int64)), precision="no").numpy()


@pytest.fixture(scope="module")
def image_onnx(image_run, tmp_path_factory):
    return export_onnx_run(image_run, tmp_path_factory.mktemp("exports") / "image-onnx")


@pytest.fixture(scope="module")
def text_onnx(text_run, tmp_path_factory):
    return export_onnx_run(text_run, tmp_path_factory.mktemp("exports") / "text-onnx")


def test_image_export_agrees_with_pytorch_at_batch_sizes_never_traced(image_run, image_onnx, image_folder):
    items = sorted(str(p) for p in Path(image_folder).rglob("*.png"))
    onnx_run = load_onnx(image_onnx)
    assert isinstance(onnx_run.session.get_inputs()[0].shape[0], str)  # a symbolic (dynamic) batch axis
    ref = _torch_logits(image_run, items)
    for batch in (1, 2, 7):
        got = onnx_run.logits(items, batch_size=batch)
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
        assert (got.argmax(1) == ref.argmax(1)).all()
    report = json.loads((Path(image_onnx) / "compression.json").read_text())
    assert report["parity"]["argmax_equal"] and 3 not in report["parity"]["batch_sizes"]


def test_text_export_has_dynamic_batch_and_sequence_axes(text_run, text_onnx):
    texts = ["great", "a wonderful, moving film with truly great acting and a plot that never drags", "dull"]
    onnx_run = load_onnx(text_onnx)
    assert all(isinstance(d, str) for d in onnx_run.session.get_inputs()[0].shape)
    ref = _torch_logits(text_run, texts)
    for batch in (1, 3):
        got = onnx_run.logits(texts, batch_size=batch)
        assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
        assert (got.argmax(1) == ref.argmax(1)).all()


def test_an_onnx_run_predicts_and_evaluates_without_pytorch(text_run, text_onnx):
    code = ("import sys, json; sys.modules['torch'] = None\n"
            "from xfer.cli import _open_run\n"
            f"run = _open_run({str(text_onnx)!r})\n"
            "print(json.dumps([p['label'] for p in run.predict(['a wonderful film', 'dull and lifeless'])]))\n"
            "assert sys.modules.get('torch') is None")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    expected = [p["label"] for p in xfer.load(text_run).predict(["a wonderful film", "dull and lifeless"])]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == expected


def test_cli_predict_and_eval_read_an_onnx_run(monkeypatch, capsys, text_onnx):
    code, out, _ = run_main(monkeypatch, capsys, "predict", str(text_onnx), "a wonderful film", "--json")
    assert code == 0 and json.loads(out)[0]["label"] in ("pos", "neg")
    code, out, _ = run_main(monkeypatch, capsys, "eval", str(text_onnx), "--json")
    assert code == 0 and 0 <= json.loads(out)["test.accuracy"] <= 1


def test_a_tampered_onnx_run_is_refused(text_onnx, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(text_onnx, copy)
    graph = copy / ONNX_MODEL
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(XferError, match="modified after it was written"):
        load_onnx(copy)
    shutil.copytree(text_onnx, tmp_path / "run2")
    (tmp_path / "run2" / "extra.onnx").write_bytes(b"not listed")
    with pytest.raises(XferError, match="does not list"):
        load_onnx(tmp_path / "run2")


def test_dynamic_int8_stores_int8_weights_and_shrinks_the_text_graph(text_onnx, tmp_path):
    dst = tmp_path / "q.onnx"
    info = quantize_onnx(Path(text_onnx) / ONNX_MODEL, dst, "dynamic")
    ops = int8_operators(dst)
    assert info["mode"] == "dynamic" and ops["int8_initializers"] >= 36  # 6 layers x 6 linear layers at least
    assert ops.get("DynamicQuantizeLinear", 0) + ops.get("MatMulInteger", 0) > 0
    assert dst.stat().st_size <= 0.35 * (Path(text_onnx) / ONNX_MODEL).stat().st_size
    assert int8_operators(Path(text_onnx) / ONNX_MODEL)["int8_initializers"] == 0


def test_compress_writes_verified_variants_and_the_table(image_run, tmp_path):
    out = tmp_path / "small"
    table = compress(image_run, out, int8="static", prune=0.3, recover_epochs=0, threads=1)
    names = [r["variant"] for r in table["rows"]]
    assert names == ["original", "pruned-0.3", "original-onnx", "original-int8-static", "pruned-0.3-onnx",
                     "pruned-0.3-int8-static"]
    assert json.loads((out / TABLE).read_text())["rows"] == json.loads(json.dumps(table["rows"]))
    assert (out / "compress.png").stat().st_size > 1000
    rows = {r["variant"]: r for r in table["rows"]}
    for row in table["rows"]:
        assert ROW_KEYS <= set(row) and row["threads"] == 1
        assert 0 <= row["test_accuracy"] <= 1 and row["latency_ms_b1_p50"] > 0
        RunFolder(Path(row["path"])).verify()
        assert xfer.load(row["path"]).predict([np.zeros((24, 24, 3), dtype=np.uint8)])[0]["label"]
    assert rows["pruned-0.3"]["params"] < 0.7 * rows["original"]["params"]
    assert rows["original-int8-static"]["size_mb"] < 0.5 * rows["original-onnx"]["size_mb"]
    ops = int8_operators(Path(rows["original-int8-static"]["path"]) / ONNX_MODEL)
    assert ops["int8_initializers"] > 0 and ops.get("QuantizeLinear", 0) > 0
    # The fp32 ONNX export predicts what the PyTorch original predicts, on the same test split.
    assert abs(rows["original-onnx"]["test_accuracy"] - rows["original"]["test_accuracy"]) < 1e-9
    with pytest.raises(XferError, match="--overwrite"):
        compress(image_run, out, int8="static")


@pytest.mark.parametrize("options,match", [
    ({"prune": 1.5}, "between 0 and 1"),
    ({}, "Nothing to do"),
    ({"int8": "float4"}, "dynamic, static"),
    ({"distill": "mobilenet_v9"}, "mobilenet_v9"),
])
def test_bad_compression_requests_are_clear_errors(image_run, tmp_path, options, match):
    with pytest.raises(XferError, match=match):
        compress(image_run, tmp_path / "o", **options)


def test_int8_on_an_unmerged_lora_run_is_refused(image_run, tmp_path):
    import shutil

    from xfer.runs.folder import write_checksums

    lora = tmp_path / "lora"
    shutil.copytree(image_run, lora)
    spec = json.loads((lora / "spec.json").read_text())
    spec["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0}
    (lora / "spec.json").write_text(json.dumps(spec))
    write_checksums(lora)
    with pytest.raises(XferError, match="xfer export"):
        compress(lora, tmp_path / "o", int8="dynamic")


def test_cli_export_onnx_refuses_to_overwrite(monkeypatch, capsys, image_run, image_onnx):
    code, _, err = run_main(monkeypatch, capsys, "export", str(image_run), "--format", "onnx", "--out",
                            str(image_onnx))
    assert code == 2 and "--overwrite" in err


def test_quantising_leaves_no_files_in_the_working_directory(text_onnx, tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    quantize_onnx(Path(text_onnx) / ONNX_MODEL, tmp_path / "q.onnx", "dynamic")
    assert list(work.iterdir()) == []
