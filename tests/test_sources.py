"""xfer.sources: the catalogue, name resolution, verified offline weights, and safe checkpoint loading."""

from __future__ import annotations

import dataclasses
import hashlib
import socket
from pathlib import Path

import pytest
import torch

from xfer import sources
from xfer.errors import XferError
from xfer.sources import CATALOGUE, load_checkpoint, load_source, resolve_source

OFFLINE = ["mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "all-MiniLM-L6-v2"]


# --------------------------------------------------------------------------------------------------- resolving


def test_catalogue_holds_the_offline_sources():
    assert list(CATALOGUE) == OFFLINE
    for name, spec in CATALOGUE.items():
        assert spec.name == name and spec.origin == "wheel" and spec.offline
        assert len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0
        assert resolve_source(name) is spec


@pytest.mark.parametrize("typo", ["mobilenet_v3", "mobilenet_v", "mobilnet_v2", "MobileNet_v2"])
def test_typo_suggests_mobilenet_v2(typo):
    with pytest.raises(XferError) as e:
        resolve_source(typo)
    msg = str(e.value)
    assert f"Unknown source {typo!r}" in msg
    assert "Did you mean mobilenet_v2" in msg
    assert "timm:<name>" in msg  # and the online forms are listed too


def test_unknown_source_without_near_match_lists_the_catalogue():
    with pytest.raises(XferError) as e:
        resolve_source("resnet50-imagenet-xyz")
    msg = str(e.value)
    assert "Did you mean" not in msg
    for name in OFFLINE:
        assert name in msg


def test_timm_unknown_architecture():
    with pytest.raises(XferError, match="Unknown timm architecture 'not_a_real_net_123'"):
        resolve_source("timm:not_a_real_net_123")


def test_timm_and_hf_forms_resolve_without_network():
    spec = resolve_source("timm:resnet18")
    assert (spec.modality, spec.arch, spec.origin, spec.location) == ("image", "resnet18", "timm", "resnet18")
    assert not spec.offline
    spec = resolve_source("hf:someone/some-encoder")
    assert (spec.modality, spec.origin, spec.location) == ("text", "hf", "someone/some-encoder")


def test_file_source_missing_path(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(XferError, match="does not exist") as e:
        resolve_source(f"file:{missing}", arch="mobilenetv2_100")
    assert str(missing) in str(e.value)


def test_file_source_without_arch(tmp_path):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"")
    with pytest.raises(XferError, match="--arch"):
        resolve_source(f"file:{f}")


# ------------------------------------------------------------------------------------- offline, verified weights


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name, key, shape", [
    ("mobilenet_v2", "classifier.1.weight", (1000, 1280)),
    ("efficientnet_lite0", "_fc.weight", (1000, 1280)),
])
def test_load_offline_image_source(name, key, shape):
    spec = resolve_source(name)
    loaded = load_source(spec)
    assert loaded.spec is spec
    assert _sha256(sources.wheel_path(spec)) == spec.sha256  # the pinned file is the one in the wheel
    assert all(isinstance(v, torch.Tensor) for v in loaded.state_dict.values())
    assert len(loaded.state_dict) > 100
    assert tuple(loaded.state_dict[key].shape) == shape
    assert loaded.hf_dir is None
    assert tuple(loaded.data_config["mean"]) == pytest.approx((0.485, 0.456, 0.406))
    assert tuple(loaded.data_config["input_size"]) == (3, 224, 224)


def test_load_offline_text_source():
    spec = resolve_source("all-MiniLM-L6-v2")
    loaded = load_source(spec)
    assert _sha256(loaded.hf_dir / "model.safetensors") == spec.sha256
    assert (loaded.hf_dir / "config.json").is_file()
    assert (loaded.hf_dir / "tokenizer.json").is_file() or (loaded.hf_dir / "vocab.txt").is_file()
    emb = next(v for k, v in loaded.state_dict.items() if k.endswith("word_embeddings.weight"))
    assert emb.shape[1] == 384


@pytest.mark.parametrize("name", ["mobilenet_v2", "all-MiniLM-L6-v2"])
def test_tampered_sha256_fails_verification(name):
    spec = dataclasses.replace(resolve_source(name), sha256="0" * 64)
    with pytest.raises(XferError, match="fail verification") as e:
        load_source(spec)
    msg = str(e.value)
    assert "0" * 64 in msg and CATALOGUE[name].sha256 in msg  # expected and actual digests
    assert "make setup" in msg


def test_missing_wheel_package():
    spec = dataclasses.replace(resolve_source("mobilenet_v2"), package="xfer_no_such_weights_pkg")
    with pytest.raises(XferError, match="xfer_no_such_weights_pkg.*not installed"):
        load_source(spec)


# -------------------------------------------------------------------------------------------- local checkpoints


def _touch_marker(path: str):
    Path(path).write_text("pwned")
    return {}


class Evil:
    """Unpickling this object runs code: it creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch_marker, (self.marker,))


def test_checkpoint_with_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "marker"
    ckpt = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": Evil(marker)}, ckpt)
    assert not marker.exists()  # saving did not run it
    with pytest.raises(XferError, match="unpickled") as e:
        load_checkpoint(ckpt)
    assert "run code" in str(e.value)
    assert str(ckpt) in str(e.value)
    assert not marker.exists()


def test_evil_file_source_is_refused(tmp_path):
    marker = tmp_path / "marker"
    ckpt = tmp_path / "evil.pth"
    torch.save(Evil(marker), ckpt)
    with pytest.raises(XferError, match="Refused"):
        load_source(resolve_source(f"file:{ckpt}", arch="mobilenetv2_100"))
    assert not marker.exists()


def _state():
    return {"layer.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "layer.bias": torch.ones(2)}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_safetensors_checkpoint(tmp_path):
    from safetensors.torch import save_file

    f = tmp_path / "w.safetensors"
    save_file(_state(), str(f))
    assert _same(load_checkpoint(f), _state())


def test_plain_tensor_state_dict_pt(tmp_path):
    f = tmp_path / "w.pt"
    torch.save(_state(), f)
    assert _same(load_checkpoint(f), _state())


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict"])
def test_wrapped_state_dict_unwraps(tmp_path, key):
    f = tmp_path / "w.pth"
    torch.save({key: _state(), "epoch": 7, "optimizer": {"lr": 0.1}}, f)
    assert _same(load_checkpoint(f), _state())


def test_checkpoint_that_is_not_a_state_dict(tmp_path):
    f = tmp_path / "w.pt"
    torch.save([torch.zeros(2)], f)
    with pytest.raises(XferError, match="does not hold a state dict"):
        load_checkpoint(f)


def test_corrupt_and_unsupported_checkpoints(tmp_path):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(XferError, match="not a valid safetensors"):
        load_checkpoint(bad)
    bad_pt = tmp_path / "w.pt"
    bad_pt.write_bytes(b"garbage")
    with pytest.raises(XferError, match="Could not read checkpoint"):
        load_checkpoint(bad_pt)
    other = tmp_path / "w.onnx"
    other.write_bytes(b"x")
    with pytest.raises(XferError, match="expected .safetensors"):
        load_checkpoint(other)
    with pytest.raises(XferError, match="does not exist"):
        load_checkpoint(tmp_path / "gone.pt")


def test_file_source_loads_with_timm_data_config(tmp_path):
    from safetensors.torch import save_file

    f = tmp_path / "w.safetensors"
    save_file(_state(), str(f))
    loaded = load_source(resolve_source(f"file:{f}", arch="mobilenetv2_100"))
    assert _same(loaded.state_dict, _state())
    assert loaded.spec.origin == "file" and loaded.spec.offline
    assert tuple(loaded.data_config["input_size"]) == (3, 224, 224)


# ------------------------------------------------------------------------------------------------ online forms


@pytest.fixture
def no_network(monkeypatch):
    """Record (and refuse) any attempt to reach the network, so 'offline' really means no traffic."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_timm_source_offline_names_the_alternatives(monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(XferError) as e:
        load_source(resolve_source("timm:resnet18"))
    msg = str(e.value)
    assert "offline" in msg
    for name in ("mobilenet_v2", "efficientnet_lite0", "file:<path>"):
        assert name in msg
    assert "all-MiniLM-L6-v2" not in msg  # only sources of the same modality
    assert no_network == []


def test_hf_source_offline_fails_fast_without_network(monkeypatch, no_network):
    import huggingface_hub.constants  # noqa: F401  (imported before the variable is set, as in a long session)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(XferError) as e:
        load_source(resolve_source("hf:xfer-tests/no-such-encoder"))
    msg = str(e.value)
    assert "hf:xfer-tests/no-such-encoder" in msg
    assert "offline" in msg and "all-MiniLM-L6-v2" in msg and "file:<path>" in msg
    assert "mobilenet_v2" not in msg
    assert no_network == []


@pytest.mark.parametrize("value, offline", [("1", True), ("true", True), ("YES", True), ("0", False),
                                            ("false", False), ("False", False), ("", False)])
def test_hub_offline_variable(monkeypatch, value, offline):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert sources._hub_offline() is offline
