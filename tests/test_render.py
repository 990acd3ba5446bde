"""Text rendered as images, so an ImageNet CNN can classify text (the article's example): deterministic pixels,
limits that are counted rather than silent, and a cross-modal run that predicts, evaluates and ranks like any."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from fit_reference import make_texts

import xfer
from xfer.data.render import RenderSpec, missing_glyphs, render, render_split
from xfer.data.task import Split
from xfer.errors import XferError

SPEC = RenderSpec(size=64, font_size=10, max_chars=200)
FAST = dict(source="mobilenet_v2", strategy="full", epochs=1, batch_size=8, min_steps=0, render_size=64,
            quiet=True)


def test_rendering_is_deterministic_and_depends_on_the_text():
    a, _ = render("a gripping, beautiful film", SPEC)
    b, _ = render("a gripping, beautiful film", SPEC)
    c, _ = render("a gripping, beautiful film!", SPEC)
    assert a.dtype == np.uint8 and a.shape == (64, 64)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() < 100 and a.max() == 255  # dark text on a white canvas
    rgb, _ = render("colour", RenderSpec(size=32, font_size=8, mode="RGB"))
    assert rgb.shape == (32, 32, 3)


def test_limits_are_counted_not_silent():
    image, lost = render("x" * 500, SPEC)  # one word wider than a line is broken by characters
    assert lost["cut_chars"] == 300 and lost["hidden_lines"] > 0
    empty, lost = render("", SPEC)
    assert (empty == 255).all() and lost == {"cut_chars": 0, "hidden_lines": 0, "missing_glyphs": 0}
    _, lost = render("short", SPEC)
    assert lost == {"cut_chars": 0, "hidden_lines": 0, "missing_glyphs": 0}


def test_non_latin_text_renders_and_missing_glyphs_are_counted():
    image, lost = render("Привет, мир: ça va, Ωμέγα", SPEC)
    assert lost["missing_glyphs"] == 0 and image.min() < 100
    image, lost = render("电影很好 good", SPEC)  # DejaVu Sans has no CJK glyphs
    assert lost["missing_glyphs"] == 4 == missing_glyphs("电影很好 good")


def test_rendered_splits_are_cached_and_identical(tmp_path, monkeypatch):
    monkeypatch.setenv("XFER_CACHE_DIR", str(tmp_path))
    split = Split(["one text", "another, longer text " * 5], np.array([0, 1]))
    first, lost = render_split(split, SPEC)
    assert list((tmp_path / "render").glob("*.npz"))
    again, lost_again = render_split(split, SPEC)
    assert lost == lost_again and all(np.array_equal(x, y) for x, y in zip(first.items, again.items))


def test_bad_render_options_are_clear_errors():
    with pytest.raises(XferError, match="render_size"):
        xfer.FitConfig(data="x", render_size=8)
    with pytest.raises(XferError, match="render_mode"):
        xfer.FitConfig(data="x", render_mode="CMYK")
    with pytest.raises(XferError, match="font size"):
        RenderSpec(size=32, font_size=64).check()


@pytest.fixture(scope="module")
def cross_modal_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("xm")
    data = make_texts(root / "reviews.csv")
    return xfer.fit(data=str(data), out=str(root / "run"), **FAST), data


def test_an_image_source_on_text_data_renders_and_round_trips(cross_modal_run):
    run, data = cross_modal_run
    spec = json.loads((run.path / "spec.json").read_text())
    assert spec["modality"] == "image" and spec["render"]["size"] == 64 and len(spec["render"]["font_sha256"]) == 64
    assert spec["prep"]["channels"] == 1 and spec["prep"]["size"] == 64  # grey canvas, one-channel first conv
    assert run.report.summary()["adapted"] == 1
    loaded = xfer.load(run.path)
    texts = ["a wonderful film", "a dull mess", "电影"]
    split = Split(texts, np.zeros(3, dtype=np.int64))
    assert np.array_equal(loaded.logits(split, precision="no").numpy(), run.logits(split, precision="no").numpy())
    assert [p["label"] for p in loaded.predict(texts)] == [p["label"] for p in run.predict(texts)]
    m = loaded.evaluate(str(data))
    preds = [p["label"] for p in loaded.predict([t for t, _ in _rows(data)])]
    assert m["accuracy"] == pytest.approx(np.mean([p == lab for p, (_, lab) in zip(preds, _rows(data))]))
    with pytest.raises(XferError, match="empty"):
        loaded.predict(["fine", " "])


def _rows(path):
    import csv

    return [(r["text"], r["label"]) for r in csv.DictReader(path.open())]


def test_cross_modal_can_be_refused_or_asked_for_wrongly(tmp_path):
    data = make_texts(tmp_path / "r.csv")
    with pytest.raises(XferError, match="image model but .* is text data"):
        xfer.fit(data=str(data), source="mobilenet_v2", text_as_image=False, save=False, quiet=True)
    with pytest.raises(XferError, match="--text-as-image renders text for an image source"):
        xfer.fit(data=str(data), source="all-MiniLM-L6-v2", text_as_image=True, save=False, quiet=True)


def test_rank_scores_text_and_image_sources_on_a_text_task(tmp_path):
    from xfer.tools.rank import rank_sources

    data = make_texts(tmp_path / "r.csv")
    cfg = xfer.FitConfig(data=str(data), render_size=64, quiet=True)
    result = rank_sources(cfg, ["all-MiniLM-L6-v2", "mobilenet_v2", "random:mobilenet_v2"], out=tmp_path,
                          log=lambda m: None)
    rows = {r["source"]: r for r in result["ranking"]}
    assert all(r["status"] == "ok" for r in rows.values()), rows
    assert rows["all-MiniLM-L6-v2"]["feature_dim"] == 384 and rows["mobilenet_v2"]["feature_dim"] == 1280
    assert "leep" in rows["mobilenet_v2"]["scores"] and "leep" not in rows["all-MiniLM-L6-v2"]["scores"]


def test_render_command_writes_a_grid(tmp_path):
    from xfer.cli import cli

    data = make_texts(tmp_path / "r.csv")
    res = CliRunner().invoke(cli, ["render", "--data", str(data), "--out", str(tmp_path / "look"), "-n", "6",
                                   "--render-size", "64"])
    assert res.exit_code == 0, res.output
    from PIL import Image

    with Image.open(tmp_path / "look" / "render.png") as im:
        assert im.size[0] > 200 and im.size[1] > 100


def test_search_and_compare_work_on_text_rendered_for_an_image_source(tmp_path):
    from xfer.tools.compare import compare
    from xfer.tools.search import search

    data = make_texts(tmp_path / "r.csv")
    cfg = xfer.FitConfig(data=str(data), source="mobilenet_v2", render_size=64, min_steps=0, quiet=True,
                         batch_size=8, epochs=1, lp_epochs=1)
    space = {"strategy": "full", "epochs": 1, "lr": {"low": 1e-4, "high": 3e-3, "log": True}, "batch_size": 8}
    result = search(cfg, study_name="xm", out=tmp_path / "search", trials=2, space=space, pruner="none",
                    log=lambda m: None)
    assert result["states"].get("COMPLETE") == 2
    best = xfer.load(tmp_path / "search" / "best")
    assert best.spec["render"]["size"] == 64 and best.predict(["a joy"])[0]["label"] in ("pos", "neg")
    out = compare(cfg, ["linear-probe"], [0], tmp_path / "compare", log=lambda m: None)
    assert out["strategies"][0]["status"] == "ok"


def test_text_for_an_image_source_gets_its_own_defaults(tmp_path):
    from xfer.fitting.prepare import resolve_config
    from xfer.sources import resolve_source

    from xfer.fitting.prepare import load_fit_task

    data = make_texts(tmp_path / "r.csv")
    text_task = load_fit_task(xfer.FitConfig(data=str(data)))
    image = resolve_source("mobilenet_v2")
    cfg = resolve_config(xfer.FitConfig(data=str(data)), image, text_task)
    assert (cfg.strategy, cfg.epochs, cfg.image_size, cfg.lr) == ("full", 2, 128, 1e-3)
    mine = resolve_config(xfer.FitConfig(data=str(data), strategy="lp-ft", epochs=3, image_size=96), image, text_task)
    assert (mine.strategy, mine.epochs, mine.image_size) == ("lp-ft", 3, 96)
    text = resolve_config(xfer.FitConfig(data=str(data)), resolve_source("all-MiniLM-L6-v2"), text_task)
    assert (text.strategy, text.epochs, text.image_size) == ("lp-ft", 2, None)


def test_render_command_refuses_a_count_below_one(tmp_path, monkeypatch, capsys):
    from helpers import run_main

    data = make_texts(tmp_path / "r.csv")
    code, _, err = run_main(monkeypatch, capsys, "render", "--data", str(data), "--out", str(tmp_path / "o"), "-n", "0")
    assert code == 2 and "-n must be at least 1" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "render.png").exists()
