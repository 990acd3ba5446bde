"""The `xfer` command: user errors exit with status 2 and a one-line message, never a traceback."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import run_main

from xfer.runs import folder as runs
from xfer.cli import cli
from xfer.sources import CATALOGUE

XFER = Path(sys.executable).parent / "xfer"


def run_xfer(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed console script in a fresh process: the exit status and stderr a user would see."""
    if not XFER.exists():
        pytest.skip(f"console script {XFER} is not installed")
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_COLOR="1")
    return subprocess.run([str(XFER), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def small_csv(folder: Path) -> Path:
    f = folder / "reviews.csv"
    with open(f, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows([f"review number {i}", "good" if i % 2 else "bad"] for i in range(30))
    return f


# ------------------------------------------------------------------------------------- real processes (3 cases)


def test_fit_missing_data_exits_2_without_traceback(tmp_path):
    r = run_xfer("fit", "--data", "missing.csv", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "error:" in r.stderr
    assert "'missing.csv' does not exist" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert not (tmp_path / "runs").exists()


def test_fit_source_typo_suggests_the_right_name(tmp_path):
    data = small_csv(tmp_path)
    r = run_xfer("fit", "--data", str(data), "--source", "mobilnet_v2", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "error:" in r.stderr
    assert "Unknown source 'mobilnet_v2'" in r.stderr
    assert "Did you mean mobilenet_v2" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert not (tmp_path / "runs").exists()  # nothing was written


def test_eval_not_a_run_folder_exits_2(tmp_path):
    (tmp_path / "somefolder").mkdir()
    (tmp_path / "somefolder" / "notes.txt").write_text("hello")
    r = run_xfer("eval", "somefolder", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "error:" in r.stderr
    assert "is not an xfer run" in r.stderr and "SHA256SUMS" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


# ------------------------------------------------------------------------------------------------- in process


def test_sources_json_lists_the_offline_sources():
    result = CliRunner().invoke(cli, ["sources", "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    offline = listing["offline"]
    assert [s["name"] for s in offline] == list(CATALOGUE)
    assert len(offline) == 5
    for s in offline:
        spec = CATALOGUE[s["name"]]
        assert s["offline"] is True and s["installed"] is True
        assert s["sha256"] == spec.sha256 and s["modality"] == spec.modality and s["arch"] == spec.arch
    assert {s["modality"] for s in offline} == {"image", "text"}
    assert [s["name"] for s in listing["online"]][:2] == ["timm:<name>", "hf:<repo id>"]
    # file: and random: need no download
    assert [s["offline"] for s in listing["online"]] == [False, False, True, True]


def test_sources_table_mentions_every_source(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps its table to the terminal's width
    result = CliRunner().invoke(cli, ["sources"])
    assert result.exit_code == 0, result.output
    for name in CATALOGUE:
        assert name in result.output


def test_eval_missing_run_folder(monkeypatch, capsys, tmp_path):
    code, out, err = run_main(monkeypatch, capsys, "eval", str(tmp_path / "runs" / "nope"))
    assert code == 2
    assert err.startswith("error: ")
    assert "does not exist" in err and "xfer fit" in err


def test_eval_tampered_run_folder(monkeypatch, capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / runs.WEIGHTS).write_bytes(b"not really weights")
    runs.write_json(run / runs.SPEC, {"format": 1})
    runs.write_checksums(run)
    runs.write_json(run / runs.SPEC, {"format": 1, "labels": ["edited"]})
    code, _, err = run_main(monkeypatch, capsys, "eval", str(run))
    assert code == 2
    assert "was modified" in err and "spec.json" in err


def test_predict_missing_run_folder(monkeypatch, capsys, tmp_path):
    missing = tmp_path / "no-such-run"
    code, out, err = run_main(monkeypatch, capsys, "predict", str(missing), "some text")
    assert code == 2
    assert err.startswith("error: ")
    assert str(missing) in err and "does not exist" in err
    assert out == ""


def test_predict_missing_input_file(monkeypatch, capsys, tmp_path):
    code, _, err = run_main(monkeypatch, capsys, "predict", str(tmp_path), "--file", str(tmp_path / "inputs.txt"))
    assert code == 2
    assert "inputs.txt does not exist" in err


def test_predict_nothing_to_predict(monkeypatch, capsys, tmp_path):
    code, _, err = run_main(monkeypatch, capsys, "predict", str(tmp_path))
    assert code == 2
    assert "Nothing to predict" in err


def test_fit_bad_data_file_exits_2(monkeypatch, capsys, tmp_path):
    f = tmp_path / "one.csv"
    f.write_text("text,label\na,x\nb,x\n", encoding="utf-8")
    code, _, err = run_main(monkeypatch, capsys, "fit", "--data", str(f), "--out", str(tmp_path / "run"))
    assert code == 2
    assert "single class" in err
    assert not (tmp_path / "run").exists()


def test_fit_unknown_option_is_a_usage_error(monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "fit", "--data", "builtin:mnist5k", "--epoch", "3")
    assert code == 2
    assert "--epoch" in err and "--epochs" in err  # click suggests the real option


def test_fit_config_file_typo(monkeypatch, capsys, tmp_path):
    cfg = tmp_path / "fit.yaml"
    cfg.write_text("data: builtin:mnist5k\nepoch: 3\n", encoding="utf-8")
    code, _, err = run_main(monkeypatch, capsys, "fit", "--config", str(cfg))
    assert code == 2
    assert "epoch (did you mean epochs?)" in err


def test_fit_without_data(monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "fit")
    assert code == 2
    assert "No data given" in err and "--data" in err
