"""End to end on tiny data: fit -> run folder -> load -> identical predictions; the run folder is protected."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import xfer
from xfer.errors import XferError


def _text_csv(path: Path) -> Path:
    good = ["a wonderful, moving film", "brilliant acting and a great story", "I loved every minute",
            "a delight from start to end", "superb and touching", "funny, warm and smart"]
    bad = ["a dull, boring mess", "terrible script and awful acting", "I hated every minute",
           "a tedious waste of time", "clumsy and lifeless", "painfully unfunny and stupid"]
    rows = [(t, "pos") for t in good] * 3 + [(t, "neg") for t in bad] * 3
    path.write_text("text,label\n" + "\n".join(f'"{t}",{lab}' for t, lab in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, image_folder):
    root = tmp_path_factory.mktemp("img")
    data = image_folder
    return xfer.fit(data=str(data), source="mobilenet_v2", strategy="lp-ft", epochs=1, lp_epochs=3,
                    image_size=64, batch_size=8, out=str(root / "run"), quiet=True, baseline=True)


def test_image_run_folder_contents(image_run):
    files = {p.name for p in image_run.path.iterdir()}
    assert {"model.safetensors", "spec.json", "config.yaml", "metrics.json", "history.json",
            "transfer_report.json", "SHA256SUMS"} <= files
    metrics = json.loads((image_run.path / "metrics.json").read_text())
    assert metrics["test.accuracy"] == metrics["test"]["accuracy"] == image_run.metrics["test"]["accuracy"]
    assert metrics["test.macro_f1"] == metrics["test"]["macro_f1"]
    assert metrics["baseline.test.accuracy"] == metrics["baseline"]["test"]["accuracy"]
    assert not any(p.suffix in (".pt", ".pth", ".pkl", ".bin") for p in image_run.path.rglob("*"))
    history = json.loads((image_run.path / "history.json").read_text())
    assert [h["phase"] for h in history][-1] == "fine-tune"


def test_save_load_gives_identical_predictions(image_run, tmp_path):
    img = tmp_path / "x.png"
    Image.fromarray(np.full((24, 24, 3), 30, np.uint8)).save(img)
    loaded = xfer.load(image_run.path)
    a = image_run.logits(_split([img]))
    b = loaded.logits(_split([img]))
    assert np.array_equal(a.numpy(), b.numpy())
    assert loaded.predict([img])[0]["label"] in ("blue", "red")


def _split(items):
    from xfer.data.task import Split

    return Split(items, np.zeros(len(items), dtype=np.int64))


def test_existing_run_is_not_overwritten(image_run):
    before = (image_run.path / "SHA256SUMS").read_text()
    with pytest.raises(XferError, match="already exists"):
        xfer.fit(data="builtin:mnist5k", out=str(image_run.path), quiet=True)
    assert (image_run.path / "SHA256SUMS").read_text() == before


def test_tampered_run_is_refused(image_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(image_run.path, copy)
    spec = json.loads((copy / "spec.json").read_text())
    spec["labels"] = ["blue", "green"]
    (copy / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(XferError, match="modified"):
        xfer.load(copy)
    shutil.rmtree(copy)
    shutil.copytree(image_run.path, copy)
    (copy / "model.safetensors").unlink()
    with pytest.raises(XferError, match="model.safetensors"):
        xfer.load(copy)


def test_text_fit_and_reload_without_the_source(tmp_path):
    data = _text_csv(tmp_path / "reviews.csv")
    run = xfer.fit(data=str(data), strategy="full", epochs=1, batch_size=8, max_length=16,
                   out=str(tmp_path / "run"), quiet=True, test_fraction=0.25, val_fraction=0.25)
    assert (run.path / "backbone" / "tokenizer.json").exists()
    loaded = xfer.load(run.path)
    texts = ["what a great film", "awful"]
    assert [p["label"] for p in loaded.predict(texts)] == [p["label"] for p in run.predict(texts)]
    # The loaded run computes exactly what the run in memory computes.
    assert np.array_equal(loaded.logits(_split(texts), precision="no").numpy(),
                          run.logits(_split(texts), precision="no").numpy())
    with pytest.raises(XferError, match="empty"):
        loaded.predict(["ok", "  "])
    m = loaded.evaluate(str(data))
    import csv

    rows = list(csv.DictReader(data.open()))
    predicted = [p["label"] for p in loaded.predict([r["text"] for r in rows])]
    assert m["n"] == 36
    assert m["accuracy"] == pytest.approx(np.mean([p == r["label"] for p, r in zip(predicted, rows)]))


def test_a_short_real_fit_beats_its_from_scratch_twin():
    """MNIST, 10 examples per class, 32 px, two epochs of full fine-tuning: ImageNet weights against the same
    network from random initialisation with the same budget (measured 66% against 12%)."""
    run = xfer.fit(data="builtin:mnist5k", shots=10, image_size=32, strategy="full", epochs=2, batch_size=32,
                   min_steps=30, precision="no", baseline=True, save=False, quiet=True)
    gain = run.metrics["transfer_gain"]
    assert run.metrics["test"]["accuracy"] > 0.5
    assert gain["gain"] > 0.3 and not gain["negative_transfer"]
    assert gain["gain"] == pytest.approx(run.metrics["test"]["accuracy"] - run.metrics["baseline"]["test"]["accuracy"])
    assert run.metrics["baseline"]["epochs"] == 2
