"""Calibration (xfer/fitting/evaluate.py), the model card, misclassified examples and the HTML report (xfer/report/),
and `xfer report` on runs, compare folders, rank results and search folders."""

import json
import re

import numpy as np
import pytest
import yaml

import xfer
from xfer.errors import XferError
from xfer.fitting.evaluate import (expected_calibration_error, fit_temperature, reliability_bins, softmax)
from xfer.report import misclassified, report_kind, run_report_html, write_report
from xfer.report.html import read_run
from xfer.runs.answers import answers
from xfer.runs.folder import EXAMPLES, MODEL_CARD, REPORT, RunFolder

from helpers import TINY_IMAGE_FIT, run_main


def _overconfident(n, seed):
    """A nearly separable 3-class problem with label noise: labels drawn from softmax(scores), so the scores are
    calibrated, and a model whose logits are those scores scaled up 10x (over-confident)."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(0, 1, (n, 3))
    scores[np.arange(n), rng.integers(0, 3, n)] += 2.5
    y = np.array([rng.choice(3, p=p) for p in softmax(scores)])
    return 10 * scores, y


def test_temperature_scaling_lowers_the_ece_of_an_overconfident_model():
    val_logits, val_y = _overconfident(3000, 0)
    test_logits, test_y = _overconfident(3000, 1)
    t = fit_temperature(val_logits, val_y)
    assert 7 < t < 14  # softened back near the true 10
    before = expected_calibration_error(softmax(test_logits), test_y)
    after = expected_calibration_error(softmax(test_logits, t), test_y)
    assert before > 0.1 and after < before / 4
    assert (softmax(test_logits, t).argmax(1) == test_logits.argmax(1)).all()  # accuracy unchanged


def test_ece_and_reliability_bins():
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 0, 1])
    bins = reliability_bins(probs, y)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 4
    top = next(b for b in bins if b["lower"] < 0.95 <= b["upper"])
    assert top["count"] == 2 and top["accuracy"] == 0.5 and top["confidence"] == pytest.approx(0.95)
    # 2/4 * |0.5 - 0.95| + 1/4 * |1 - 0.6| + 1/4 * |1 - 0.7|
    assert expected_calibration_error(probs, y) == pytest.approx(0.5 * 0.45 + 0.25 * 0.4 + 0.25 * 0.3)
    assert expected_calibration_error(np.eye(3), np.arange(3)) == 0.0
    assert fit_temperature(np.zeros((0, 2)), np.zeros(0, dtype=int)) == 1.0
    assert fit_temperature(5 * np.eye(3), np.arange(3)) == 1.0  # no validation error: nothing to fit


def test_answers_apply_the_temperature_in_one_place():
    logits = np.array([[4.0, 0.0], [0.0, 1.0]])
    plain, scaled = answers(["a", "b"], logits, ("x", "y")), answers(["a", "b"], logits, ("x", "y"), 4.0)
    assert [a["label"] for a in plain] == [a["label"] for a in scaled] == ["x", "y"]
    assert plain[0]["confidence"] == pytest.approx(softmax(logits)[0, 0])
    assert scaled[0]["confidence"] == pytest.approx(np.exp(1) / (np.exp(1) + 1))


def test_misclassified_examples_most_confident_first():
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.7, 0.3]])
    labels = np.array([0, 0, 0, 1])
    texts = misclassified(["ok", "meh", "bad " * 200, "x"], labels, probs, ("pos", "neg"), image=False)
    assert [e["index"] for e in texts] == [2, 3, 1]
    assert texts[0]["predicted"] == "neg" and texts[0]["true"] == "pos" and texts[0]["confidence"] == 0.8
    assert texts[0]["text"].endswith("...") and len(texts[0]["text"]) < 420
    arrays = [np.full((20, 20, 3), 60 * i, np.uint8) for i in range(4)]
    images = misclassified(arrays, labels, probs, ("pos", "neg"), image=True, limit=2)
    assert len(images) == 2 and all(e["image"].startswith("data:image/png;base64,") for e in images)


@pytest.fixture(scope="module")
def run_dir(image_folder, tmp_path_factory):
    """One tiny real fit with its from-scratch baseline (the report's baseline curve and gain)."""
    out = tmp_path_factory.mktemp("report") / "tiny-run"
    xfer.fit(data=str(image_folder), out=str(out), baseline=True, **TINY_IMAGE_FIT)
    return out


def test_fit_stores_a_temperature_that_predict_uses(run_dir, image_folder):
    folder = RunFolder(run_dir).verify()  # the documents are checksummed with the run
    spec, metrics = folder.spec(), folder.metrics()
    cal = metrics["calibration"]
    t = spec["temperature"]
    assert isinstance(t, float) and t > 0 and t == cal["temperature"]
    for split in ("val", "test"):
        assert 0 <= cal[split]["ece"] <= 1 and 0 <= cal[split]["ece_scaled"] <= 1
    assert len(cal["test"]["bins"]) == 15 and sum(b["count"] for b in cal["test"]["bins"]) == metrics["test"]["n"]
    assert metrics["split_sizes"] == {"train": 12, "val": 6, "test": 6}
    run = xfer.load(run_dir)
    images = sorted(str(p) for p in image_folder.rglob("*.png"))[:4]
    got = run.predict(images)
    from xfer.data.task import Split

    logits = run.logits(Split(images, np.zeros(len(images), dtype=np.int64))).float().numpy()
    expected = softmax(logits, t).max(1)
    np.testing.assert_allclose([g["confidence"] for g in got], expected, rtol=1e-5)
    if abs(t - 1) > 1e-3:
        assert not np.allclose(expected, softmax(logits).max(1))


def test_model_card_content(run_dir):
    text = (run_dir / MODEL_CARD).read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["library_name"] == "xfer" and front["license"] == "bsd-3-clause"
    assert "image-classification" in front["tags"] and front["datasets"] == ["data"]
    assert front["model-index"][0]["results"][0]["metrics"][0]["type"] == "accuracy"
    for section in ("Model details", "Intended use", "Source model", "Training data and splits",
                    "Training procedure", "Evaluation", "Limitations", "How to use"):
        assert f"\n## {section}\n" in text
    m = RunFolder(run_dir).metrics()
    assert "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889" in text and "BSD-3-Clause" in text
    assert f"{100 * m['test']['accuracy']:.2f}%" in text and "from scratch" in text
    assert "| train | 12 |" in text and "| test | 6 |" in text and "blue, red" in text
    assert "No adversarial evaluation was run: see `xfer robust`" in text
    assert f"T = {m['calibration']['temperature']:.3f}" in text
    assert ("negative transfer" in text.lower()) == m["transfer_gain"]["negative_transfer"]
    assert f"xfer predict {run_dir}" in text


def _assert_self_contained(html: str):
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<script" not in html and "@import" not in html and "url(" not in html
    srcs = re.findall(r'<img[^>]*src="([^"]+)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)


def test_run_report_in_the_folder(run_dir):
    html = (run_dir / REPORT).read_text()
    _assert_self_contained(html)
    m = RunFolder(run_dir).metrics()
    assert f"{100 * m['test']['accuracy']:.2f}%" in html and "gain over scratch" in html
    for part in ('id="per-class"', 'id="calibration"', 'id="transfer-summary"', "<details>", 'id="source"',
                 'id="cost"', 'id="config"', "reliability diagram", "learning curves", "confusion matrix",
                 "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889", "baseline"):
        assert part in html, part
    assert ('id="negative-transfer"' in html) == m["transfer_gain"]["negative_transfer"]
    examples = json.loads((run_dir / EXAMPLES).read_text())
    assert len(examples) == round(m["test"]["n"] * (1 - m["test"]["accuracy"]))
    assert html.count('alt="test example') == len(examples)


def test_negative_transfer_and_examples_are_shown(run_dir):
    docs = read_run(run_dir)
    docs["metrics"]["transfer_gain"] = {"gain": -0.25, "negative_transfer": True}
    docs["metrics"]["baseline"]["test"]["accuracy"] = 0.9
    docs["examples"] = [{"index": 0, "true": "blue", "predicted": "red", "confidence": 0.8,
                         "text": "<b>a quoted text</b>"}]
    html = run_report_html(docs, "x")
    assert 'id="negative-transfer"' in html and "Negative transfer" in html
    assert "<blockquote>&lt;b&gt;a quoted text&lt;/b&gt;</blockquote>" in html  # escaped


def test_report_command_on_a_run(run_dir, monkeypatch, capsys, tmp_path):
    out = tmp_path / "r.html"
    code, stdout, _ = run_main(monkeypatch, capsys, "report", str(run_dir), "--out", str(out))
    assert code == 0 and "run report written" in stdout
    _assert_self_contained(out.read_text())
    code, _, err = run_main(monkeypatch, capsys, "report", str(run_dir), "--out", str(out))
    assert code == 2 and "--overwrite" in err
    code, _, _ = run_main(monkeypatch, capsys, "report", str(run_dir), "--out", str(out), "--overwrite")
    assert code == 0
    kind, default = write_report(run_dir)  # beside the run: its checksummed files stay as they were
    assert kind == "run" and default == run_dir.with_name(run_dir.name + ".report.html") and default.is_file()
    RunFolder(run_dir).verify()


def test_report_refuses_what_it_cannot_read(tmp_path, monkeypatch, capsys):
    (tmp_path / "notes").mkdir()
    code, _, err = run_main(monkeypatch, capsys, "report", str(tmp_path / "notes"))
    assert code == 2 and "spec.json" in err and "compare.json" in err
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(XferError, match="not a result"):
        report_kind(tmp_path / "other.json")
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe")
    with pytest.raises(XferError, match="not a JSON result"):
        report_kind(tmp_path / "bad.json")
    with pytest.raises(XferError, match="does not exist"):
        report_kind(tmp_path / "missing")
    with pytest.raises(XferError, match="is a folder"):
        write_report(_compare_folder(tmp_path), tmp_path)


def _compare_folder(root):
    folder = root / "cmp"
    folder.mkdir(exist_ok=True)
    row = {"strategy": "lp-ft", "runs": 1, "finished": 1, "status": "ok", "test_accuracy": 0.9,
           "test_accuracy_std": 0.0, "test_macro_f1": 0.89, "val_accuracy": 0.88, "val_accuracy_std": 0.0,
           "train_seconds": 12.0, "peak_memory_mb": 900.0, "trainable_params": 1000, "total_params": 2000}
    failed = {"strategy": "lora", "runs": 1, "finished": 0, "status": "failed", "test_accuracy": None,
              "test_accuracy_std": None, "test_macro_f1": None, "val_accuracy": None, "val_accuracy_std": None,
              "train_seconds": None, "peak_memory_mb": None, "trainable_params": None, "total_params": None,
              "error": "out of memory"}
    (folder / "compare.json").write_text(json.dumps({
        "source": "mobilenet_v2", "data": "builtin:mnist5k", "shots": None, "seeds": [0],
        "budget": {"epochs": 2, "time_budget": None}, "strategies": [row, failed],
        "runs": [{"strategy": "lp-ft", "seed": 0, "status": "ok", "run": str(folder / "lp-ft"), "test_accuracy": 0.9},
                 {"strategy": "lora", "seed": 0, "status": "failed", "run": str(folder / "lora"),
                  "test_accuracy": None, "error": "out of memory"}],
        "recommendation": {"strategy": "lp-ft", "val_accuracy": 0.88, "reason": "best validation accuracy"},
        "config": {}}))
    return folder


def test_report_on_compare_rank_and_search_results(tmp_path):
    kind, out = write_report(_compare_folder(tmp_path))
    html = out.read_text()
    assert kind == "compare" and out == tmp_path / "cmp" / "report.html"
    _assert_self_contained(html)
    assert "Recommended: <b>lp-ft</b>" in html and "90.00%" in html and "out of memory" in html

    rank = tmp_path / "rank.json"
    rank.write_text(json.dumps({"data": "builtin:mnist5k", "samples": 100, "score": "logme", "ranking": [
        {"source": "mobilenet_v2", "status": "ok", "rank": 1, "scores": {"logme": 1.2, "hscore": 3.0},
         "feature_dim": 1280, "extract_seconds": 2.0},
        {"source": "random:mobilenet_v2", "status": "ok", "rank": 2, "scores": {"logme": 0.4, "hscore": 1.0},
         "feature_dim": 1280, "extract_seconds": 2.1},
        {"source": "timm:x", "status": "skipped", "reason": "offline"}],
        "validation": {"sources": ["mobilenet_v2", "random:mobilenet_v2"], "test_accuracy": [0.98, 0.8],
                       "kendall_tau": {"logme": 1.0}, "strategy": "default"}}))
    kind, out = write_report(rank, tmp_path / "rank.html")
    html = out.read_text()
    assert kind == "rank"
    _assert_self_contained(html)
    assert "random:mobilenet_v2" in html and "offline" in html and "Kendall" in html and "1.2000" in html

    search = tmp_path / "search"
    search.mkdir()
    (search / "search.json").write_text(json.dumps({
        "study": "s1", "target": 0.95, "states": {"COMPLETE": 2, "PRUNED": 1}, "trials": 3,
        "best": {"number": 1, "value": 0.96, "params": {"lr": 0.001, "strategy": "full"}},
        "target_reached": {"trial": 1, "value": 0.96, "trials_finished_by_then": 2, "seconds": 40.0},
        "best_run": str(search / "best"), "best_test_accuracy": 0.955}))
    (search / "trials.csv").write_text("number,state,value,seconds,train_seconds,worker,lr,strategy\n"
                                       "0,COMPLETE,0.900000,20.0,18,w,0.01,lp-ft\n"
                                       "1,COMPLETE,0.960000,21.0,19,w,0.001,full\n"
                                       "2,PRUNED,,5.0,4,w,0.1,full\n")
    kind, out = write_report(search)
    html = out.read_text()
    assert kind == "search"
    _assert_self_contained(html)
    assert "96.00%" in html and "95.50%" in html and 'id="trials"' in html and "PRUNED" in html
