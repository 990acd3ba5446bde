"""`xfer compare`: runs side by side, failures isolated, finished runs reused, a recommendation from validation."""

import json

import pytest

from xfer.tools.compare import compare, recommend
from xfer.config import FitConfig
from xfer.errors import XferError


def test_compare_isolates_a_failure_and_reuses_runs(image_folder, tmp_path):
    cfg = FitConfig(data=str(image_folder), source="mobilenet_v2", image_size=32, batch_size=8, epochs=1,
                    lp_epochs=2, partial_blocks=99, min_steps=0)
    out = tmp_path / "cmp"
    lines = []
    result = compare(cfg, ["linear-probe", "partial"], [0], out, lines.append)
    by = {s["strategy"]: s for s in result["strategies"]}
    assert by["linear-probe"]["status"] == "ok" and by["partial"]["status"] == "failed"
    assert "partial-blocks" in by["partial"]["error"]
    saved = json.loads((out / "compare.json").read_text())
    for s in saved["strategies"]:
        assert {"strategy", "test_accuracy", "trainable_params", "train_seconds", "status"} <= set(s)
    assert (out / "compare.png").stat().st_size > 0
    assert (out / "linear-probe" / "model.safetensors").exists()
    assert result["recommendation"]["strategy"] == "linear-probe"

    lines.clear()
    again = compare(cfg, ["linear-probe"], [0], out, lines.append)
    assert again["runs"][0]["status"] == "reused" and "reused" in lines[0]
    assert again["strategies"][0]["test_accuracy"] == by["linear-probe"]["test_accuracy"]

    with pytest.raises(XferError, match="other options"):
        compare(FitConfig(**{**cfg.to_dict(), "lp_epochs": 3}), ["linear-probe"], [0], out, lines.append)


def test_recommendation_breaks_ties_by_cost_and_ignores_test():
    summary = [
        {"strategy": "full", "val_accuracy": 0.90, "test_accuracy": 0.99, "train_seconds": 100, "trainable_params": 9},
        {"strategy": "bitfit", "val_accuracy": 0.89, "test_accuracy": 0.50, "train_seconds": 10, "trainable_params": 1},
        {"strategy": "lora", "val_accuracy": 0.70, "test_accuracy": 0.99, "train_seconds": 1, "trainable_params": 1},
    ]
    assert recommend(summary, val_n=100)["strategy"] == "bitfit"  # 0.01 = one example of 100: a tie
    assert recommend(summary, val_n=1000)["strategy"] == "full"
    assert recommend([], None) is None
