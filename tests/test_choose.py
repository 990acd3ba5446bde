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
    assert len(ok) == 2
    for r in ok:
        # The ImageNet head of the source gives LEEP and NCE; the random control gets a random head of that size.
        assert set(r["scores"]) == {"logme", "hscore", "probe_accuracy", "leep", "nce"}
        assert r["feature_dim"] == 1280 and r["samples"] == len(load_task(str(image_folder)).train)
    assert rows["mobilenet_v2"]["backbone_fraction"] == 1.0 and rows["random:mobilenet_v2"]["backbone_fraction"] == 0
    saved = json.loads((tmp_path / "rank.json").read_text())
    assert [r["source"] for r in saved["ranking"]] == [r["source"] for r in result["ranking"]]


def test_pretrained_source_outranks_its_random_twin_before_and_after_fine_tuning(tmp_path):
    """MNIST, 20 examples per class: ImageNet MobileNet-V2 against the same network untrained. Every estimator must
    put the pretrained source first, fine-tuning must agree, and the scores must see the few-shot training set the
    validation fine-tunes on (200 examples, not the full 3,500)."""
    cfg = FitConfig(data="builtin:mnist5k", shots=20, image_size=32, batch_size=32, epochs=1, lp_epochs=5,
                    min_steps=0, quiet=True)
    result = rank_sources(cfg, ["random:mobilenet_v2", "mobilenet_v2"], validate=2, out=tmp_path,
                          log=lambda m: None)
    rows = {r["source"]: r for r in result["ranking"]}
    pre, rnd = rows["mobilenet_v2"], rows["random:mobilenet_v2"]
    assert pre["samples"] == rnd["samples"] == 200
    for name in ("logme", "leep", "nce", "hscore", "probe_accuracy"):
        assert pre["scores"][name] > rnd["scores"][name], name
    assert pre["rank"] == 1
    assert pre["fine_tuned"]["test_accuracy"] > rnd["fine_tuned"]["test_accuracy"] + 0.2
    assert result["validation"]["kendall_tau"] == {k: 1.0 for k in ("logme", "hscore", "probe_accuracy", "leep",
                                                                    "nce")}
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
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)  # 5 concordant pairs, 1 discordant
    assert kendall_tau([1, 2, 3], [5, 5, 5]) is None
    assert kendall_tau([1], [2]) is None
