"""`xfer rank`: sources scored on the target's data, unloadable ones skipped, random controls, validation."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import xfer
from xfer.tools.rank import kendall_tau, rank_sources, stratified_sample
from xfer.cli import cli
from xfer.config import FitConfig
from xfer.data import load_task
from xfer.data.task import Split
from xfer.errors import XferError
from xfer.sources import resolve_source


def test_rank_scores_sources_and_skips_the_unloadable(image_folder, tmp_path):
    cfg = FitConfig(data=str(image_folder), image_size=32, batch_size=8, epochs=1, lp_epochs=2, min_steps=0,
                    quiet=True)
    result = rank_sources(cfg, ["mobilenet_v2", "random:mobilenet_v2", "no_such_source"], out=tmp_path,
                          log=lambda m: None)
    rows = {r["source"]: r for r in result["ranking"]}
    assert rows["no_such_source"]["status"] == "skipped" and "Unknown source" in rows["no_such_source"]["reason"]
    ok = [r for r in result["ranking"] if r["status"] == "ok"]
    assert [r["rank"] for r in ok] == [1, 2]
    assert ok[0]["scores"]["logme"] >= ok[1]["scores"]["logme"]
    for r in ok:
        # The ImageNet head of the source gives LEEP and NCE; the random control gets a random head of that size.
        assert set(r["scores"]) == {"logme", "hscore", "probe_accuracy", "leep", "nce"}
        assert r["feature_dim"] == 1280 and r["samples"] == len(load_task(str(image_folder)).train)
    assert rows["mobilenet_v2"]["backbone_fraction"] == 1.0 and rows["random:mobilenet_v2"]["backbone_fraction"] == 0
    saved = json.loads((tmp_path / "rank.json").read_text())
    assert [r["source"] for r in saved["ranking"]] == [r["source"] for r in result["ranking"]]


def test_rank_validate_fine_tunes_the_top_sources(image_folder, tmp_path):
    cfg = FitConfig(data=str(image_folder), image_size=32, batch_size=8, epochs=1, lp_epochs=2, min_steps=0,
                    quiet=True, strategy="linear-probe")
    result = rank_sources(cfg, ["mobilenet_v2", "random:mobilenet_v2"], validate=2, out=tmp_path,
                          log=lambda m: None)
    v = result["validation"]
    assert len(v["sources"]) == 2 and all(0 <= a <= 1 for a in v["test_accuracy"])
    assert set(v["kendall_tau"]) == {"logme", "hscore", "probe_accuracy", "leep", "nce"}
    assert all(t is None or -1 <= t <= 1 for t in v["kendall_tau"].values())
    assert (tmp_path / "validate-mobilenet_v2" / "model.safetensors").exists()


def test_rank_cli_json(image_folder, tmp_path):
    res = CliRunner().invoke(cli, ["rank", "--data", str(image_folder), "--sources", "mobilenet_v2",
                                   "--image-size", "32", "--out", str(tmp_path / "r"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["ranking"][0]["source"] == "mobilenet_v2"


def test_random_source_is_a_from_scratch_control(image_folder, tmp_path):
    spec = resolve_source("random:mobilenet_v2")
    assert spec.origin == "random" and spec.arch == "mobilenetv2_100" and spec.offline
    with pytest.raises(XferError, match="once"):
        resolve_source("random:random:mobilenet_v2")
    run = xfer.fit(data=str(image_folder), source="random:mobilenet_v2", strategy="full", epochs=1,
                   image_size=32, batch_size=8, min_steps=0, out=str(tmp_path / "r"), quiet=True)
    assert run.report.backbone_fraction == 0.0
    assert xfer.load(run.path).spec["source"]["origin"] == "random"


def test_stratified_sample_and_kendall_tau():
    split = Split(list(range(100)), np.array([0] * 80 + [1] * 20))
    s = stratified_sample(split, 10, seed=0)
    assert len(s) == 10 and np.bincount(s.labels).tolist() == [8, 2]
    assert stratified_sample(split, 0) is split and stratified_sample(split, 500) is split
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert kendall_tau([1], [2]) is None
