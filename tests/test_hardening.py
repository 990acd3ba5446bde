"""Bad input gets a one-paragraph XferError (exit code 2 from the CLI), before any data or weights load; a run is
replaced atomically and only when it is xfer's; no remote code; caches and checksums that cannot be fooled."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from helpers import run_main

import xfer
from xfer.config import FIELDS, FitConfig, make_config
from xfer.errors import XferError, XferWarning
from xfer.runs import folder as runs

FAST = dict(source="mobilenet_v2", image_size=32, batch_size=8, quiet=True, min_steps=0, epochs=1, lp_epochs=1)


# ------------------------------------------------------------------------------------------------ config files


def test_config_file_not_utf8_or_a_folder(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_bytes("data: caf\xe9\n".encode("latin-1"))
    with pytest.raises(XferError, match="not UTF-8"):
        make_config(bad)
    with pytest.raises(XferError, match="is a folder"):
        make_config(tmp_path)
    for args in (["fit", "--config", str(bad)], ["fit", "--config", str(tmp_path)],
                 ["search", "--data", "builtin:mnist5k", "--space", str(bad), "--out", str(tmp_path / "s")],
                 ["search", "--data", "builtin:mnist5k", "--space", str(tmp_path), "--out", str(tmp_path / "s")]):
        code, _, err = run_main(monkeypatch, capsys, *args)
        assert code == 2 and "Traceback" not in err and "error:" in err, args


@pytest.mark.parametrize("values, message", [
    ({"epochs": "many"}, "epochs .* must be a whole number, got 'many'"),
    ({"epochs": -1}, "epochs .* must be at least 1, got -1"),
    ({"batch_size": 0}, "batch_size .* must be between 1 and 65536, got 0"),
    ({"image_size": 3}, "image_size .* must be between 16 and 4096"),
    ({"lr": float("nan")}, "lr .* must be a finite number"),
    ({"quiet": "no"}, "quiet .* must be true or false"),
    ({"precision": "fp8"}, "precision .* must be one of auto, bf16, fp16, no"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction \\+ test_fraction must leave training examples"),
])
def test_yaml_values_are_checked_before_anything_loads(tmp_path, values, message, monkeypatch):
    import xfer.fitting.prepare

    monkeypatch.setattr(xfer.fitting.prepare, "load_task", lambda *a, **k: pytest.fail("data was loaded"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": "builtin:mnist5k", **values}))
    with pytest.raises(XferError, match=message):
        make_config(cfg)
    with pytest.raises(XferError, match=message):
        xfer.fit(data="builtin:mnist5k", save=False, **values)


@pytest.mark.parametrize("flag, value", [("--epochs", "-1"), ("--batch-size", "0"), ("--image-size", "3"),
                                         ("--lp-epochs", "0"), ("--val-fraction", "1.5")])
def test_bad_flag_values_exit_2_with_the_option_named(monkeypatch, capsys, flag, value):
    code, _, err = run_main(monkeypatch, capsys, "fit", "--data", "builtin:mnist5k", flag, value)
    assert code == 2 and flag.lstrip("-").replace("-", "_") in err and "Traceback" not in err


def test_all_problems_are_reported_at_once():
    with pytest.raises(XferError) as e:
        FitConfig(data="x", epochs=0, batch_size=-3, warmup=2.0)
    assert all(k in str(e.value) for k in ("epochs", "batch_size", "warmup"))


def test_whole_numbers_are_accepted_for_rates_and_durations_parsed():
    cfg = FitConfig(data="x", lr=1, time_budget="2m")
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.time_budget == 120.0


# Property: any mapping of option names (known or not) to YAML values gives a FitConfig or an XferError.
YAML_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                        st.text(max_size=12), st.lists(st.integers(), max_size=3),
                        st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
OPTION_NAMES = st.one_of(st.sampled_from(sorted(FIELDS)), st.text(max_size=10))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(OPTION_NAMES, YAML_VALUES, max_size=6))
def test_property_any_yaml_mapping_is_a_config_or_a_clear_error(tmp_path, mapping):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(mapping, allow_unicode=True))
    try:
        cfg = make_config(path)
    except XferError as e:
        assert str(e)
        return
    assert isinstance(cfg, FitConfig) and cfg.data


# Property: the CLI never shows a traceback for any flag value; a user error exits 2.
NUMERIC_FLAGS = ["--epochs", "--batch-size", "--lr", "--image-size", "--max-length", "--shots", "--warmup",
                 "--val-fraction", "--layer-decay", "--lora-r", "--patience", "--seed", "--time-budget"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(NUMERIC_FLAGS + ["--precision", "--optimizer", "--bn-policy",
                                                             "--strategy"]),
                          st.one_of(st.text(max_size=8), st.integers(-5, 10**5).map(str),
                                    st.floats(allow_nan=True).map(str))), max_size=4))
def test_property_cli_flag_values_never_give_a_traceback(monkeypatch, capsys, tmp_path, flags):
    # The data does not exist, so a valid set of flags stops there, with exit 2, before anything is trained.
    args = ["fit", "--data", str(tmp_path / "missing.csv")] + [x for pair in flags for x in pair]
    code, _, err = run_main(monkeypatch, capsys, *args)
    assert code == 2, err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------------- run replacement


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, image_folder):
    return xfer.fit(data=str(image_folder), strategy="linear-probe", out=str(tmp_path_factory.mktemp("r") / "run"),
                    **FAST)


def test_overwrite_swaps_the_run_in_one_step_and_leaves_nothing_behind(image_folder, tmp_path, monkeypatch):
    out = tmp_path / "run"
    first = xfer.fit(data=str(image_folder), strategy="linear-probe", out=str(out), **FAST)
    before = (out / runs.SUMS).read_text()
    swaps = []
    real = runs._exchange
    monkeypatch.setattr(runs, "_exchange", lambda a, b: swaps.append((a, b)) or real(a, b))
    # While the new run is swapped in, the destination must never be missing.
    real_replace = runs.os.replace
    monkeypatch.setattr(runs.os, "replace", lambda a, b: pytest.fail("two-step replace used") if Path(b) == out
                        else real_replace(a, b))
    second = xfer.fit(data=str(image_folder), strategy="linear-probe", out=str(out), overwrite=True, seed=1, **FAST)
    assert swaps and Path(swaps[0][1]) == out
    assert (out / runs.SUMS).read_text() != before
    assert runs.RunFolder(out).config()["seed"] == 1  # the new run is there
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary or old folder left
    assert first.path == second.path


def test_overwrite_never_deletes_a_folder_that_is_not_an_xfer_run(image_folder, tmp_path):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    with pytest.raises(XferError, match="not an xfer run"):
        xfer.fit(data=str(image_folder), out=str(precious), overwrite=True, **FAST)
    assert (precious / "chapter1.tex").read_text() == "years of work"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert xfer.fit(data=str(image_folder), strategy="linear-probe", out=str(empty), overwrite=True,
                    **FAST).path == empty


# ------------------------------------------------------------------------------------ checksums, both ways


def _copy(run, tmp_path) -> Path:
    import shutil

    dest = tmp_path / "copy"
    shutil.copytree(run.path, dest)
    return dest


def test_an_unlisted_weight_file_is_refused(tiny_run, tmp_path):
    copy = _copy(tiny_run, tmp_path)
    (copy / "extra.safetensors").write_bytes((copy / "model.safetensors").read_bytes())
    with pytest.raises(XferError, match="does not list: extra.safetensors"):
        xfer.load(copy)
    (copy / "extra.safetensors").unlink()
    (copy / "backbone").mkdir()
    (copy / "backbone" / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(XferError, match="backbone/pytorch_model.bin"):
        xfer.load(copy)


def test_an_unlisted_harmless_file_is_a_warning(tiny_run, tmp_path):
    copy = _copy(tiny_run, tmp_path)
    (copy / "NOTES.txt").write_text("tried on Tuesday")
    with pytest.warns(XferWarning, match="NOTES.txt"):
        xfer.load(copy)


def test_a_checkpoint_folder_loads_only_listed_tensors(tmp_path):
    runs.save_tensor_folder(tmp_path / "ck", {"model": {"w": torch.ones(2)}}, {"phase": 0})
    tensors, meta = runs.load_tensor_folder(tmp_path / "ck")
    assert set(tensors) == {"model"} and meta == {"phase": 0}
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "ck" / "best.safetensors"))
    with pytest.raises(XferError, match="best.safetensors"):
        runs.load_tensor_folder(tmp_path / "ck")


def test_malformed_checksum_lines_are_refused(tiny_run, tmp_path):
    copy = _copy(tiny_run, tmp_path)
    sums = copy / runs.SUMS
    sums.write_text(sums.read_text() + "0" * 64 + "  ../../etc/passwd\n")
    with pytest.raises(XferError, match="malformed"):
        xfer.load(copy)


# ---------------------------------------------------------------------------- sources: remote code, errors, keys


def test_a_model_that_needs_remote_code_is_refused(tmp_path, monkeypatch):
    from xfer import sources
    from xfer.models import build_text_model

    folder = tmp_path / "hub"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "auto_map": {
        "AutoModel": "modeling_evil.EvilModel"}}))
    with pytest.raises(XferError, match="trust_remote_code=False"):
        build_text_model(folder, 2)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: str(folder))
    with pytest.raises(XferError, match="never runs such code"):
        sources.load_source(sources.resolve_source("hf:someone/evil-encoder"))


def test_timm_failures_are_not_all_called_offline(monkeypatch):
    import timm

    from xfer import sources

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    spec = sources.resolve_source("timm:resnet18")

    def broken(*a, **k):
        raise RuntimeError("checkpoint has 3 classifier tensors, expected 2")

    monkeypatch.setattr(timm, "create_model", broken)
    with pytest.raises(XferError) as e:
        sources.load_source(spec)
    assert "offline" not in str(e.value) and "classifier tensors" in str(e.value)

    def unreachable(*a, **k):
        try:
            raise ConnectionError("Name or service not known")
        except ConnectionError as inner:
            raise OSError("could not fetch pretrained weights") from inner

    monkeypatch.setattr(timm, "create_model", unreachable)
    with pytest.raises(XferError, match="looks offline"):
        sources.load_source(spec)


def test_a_replaced_local_checkpoint_gets_new_cached_features(tmp_path):
    from safetensors.torch import save_file

    from xfer.fitting.prepare import feature_id
    from xfer.sources import load_source, resolve_source

    base = load_source(resolve_source("mobilenet_v2")).state_dict
    path = tmp_path / "mine.safetensors"
    save_file({k: v.contiguous() for k, v in base.items()}, str(path))
    first = load_source(resolve_source(f"file:{path}", arch="mobilenetv2_100"))
    changed = dict(base)
    changed["features.0.0.weight"] = changed["features.0.0.weight"] * 0.5
    save_file({k: v.contiguous() for k, v in changed.items()}, str(path))
    second = load_source(resolve_source(f"file:{path}", arch="mobilenetv2_100"))
    assert first.digest and second.digest and first.digest != second.digest
    assert feature_id(first, 0) != feature_id(second, 0)
    offline = load_source(resolve_source("mobilenet_v2"))
    assert feature_id(offline, 0) == f"mobilenet_v2:{offline.spec.sha256}"  # wheel sources: the pinned hash
