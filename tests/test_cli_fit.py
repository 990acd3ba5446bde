"""The command line end to end on a tiny image folder: fit from a YAML config with overrides, eval, predict."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

XFER = [sys.executable, "-m", "xfer.cli"]


def _run(args, cwd, env_cache):
    env = {"XFER_CACHE_DIR": str(env_cache), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(XFER + args, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    for label, channel in (("cat", 0), ("dog", 1)):
        (root / "data" / label).mkdir(parents=True)
        for i in range(10):
            arr = rng.integers(0, 50, (20, 20, 3), dtype=np.uint8)
            arr[..., channel] += 200
            Image.fromarray(arr).save(root / "data" / label / f"{i}.png")
    (root / "cfg.yaml").write_text(yaml.safe_dump({
        "data": "data", "source": "mobilenet_v2", "image_size": 64, "epochs": 3, "lp_epochs": 2, "batch_size": 8,
        "out": "runs/tiny"}))
    proc = _run(["fit", "--config", "cfg.yaml", "--epochs", "1", "--quiet"], root, root / "cache")
    assert proc.returncode == 0, proc.stderr
    return root


def test_config_file_and_overrides_are_resolved_and_saved(fitted):
    saved = yaml.safe_load((fitted / "runs/tiny/config.yaml").read_text())
    assert saved["epochs"] == 1  # the flag beat the file
    assert saved["image_size"] == 64 and saved["source"] == "mobilenet_v2"  # the file beat the defaults
    assert saved["lr"] == 1e-3  # a modality default filled in


def test_eval_json_and_predict(fitted):
    proc = _run(["eval", "runs/tiny", "--data", "data", "--json"], fitted, fitted / "cache")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    import xfer

    run = xfer.load(fitted / "runs/tiny")
    assert result["n"] == 20
    assert result["accuracy"] == pytest.approx(run.evaluate(str(fitted / "data"))["accuracy"])
    assert sum(map(sum, result["confusion_matrix"])) == 20 and len(result["confusion_matrix"]) == 2
    img = str(fitted / "data" / "cat" / "0.png")
    proc = _run(["predict", "runs/tiny", img, "--json"], fitted, fitted / "cache")
    assert proc.returncode == 0, proc.stderr
    preds = json.loads(proc.stdout)
    expected = run.predict([img])[0]
    assert preds[0]["label"] == expected["label"]
    assert preds[0]["confidence"] == pytest.approx(expected["confidence"], abs=1e-5)


def test_refit_into_existing_run_is_refused(fitted):
    before = (fitted / "runs/tiny/SHA256SUMS").read_text()
    proc = _run(["fit", "--config", "cfg.yaml"], fitted, fitted / "cache")
    assert proc.returncode == 2
    assert "already exists" in proc.stderr and "--overwrite" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (fitted / "runs/tiny/SHA256SUMS").read_text() == before


def test_unknown_option_in_config_file_is_named(fitted):
    (fitted / "bad.yaml").write_text("data: data\nlearning_rate: 0.1\n")
    proc = _run(["fit", "--config", "bad.yaml"], fitted, fitted / "cache")
    assert proc.returncode == 2
    assert "learning_rate" in proc.stderr
