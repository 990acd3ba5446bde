"""The run folder: the only place that writes run files, and the only place that loads them back.

A run is first written into a hidden temporary folder beside its destination, checksummed (SHA256SUMS), then moved
into place with one rename, so a crash never leaves a half-written run and an existing run is replaced only when the
user asked for it. Loading verifies every checksum first and reads weights only from safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml

from xfer.errors import XferError

SUMS = "SHA256SUMS"
WEIGHTS = "model.safetensors"
SPEC = "spec.json"


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write to a temporary file in the same folder, then rename over the target (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def write_yaml(path: Path, obj) -> None:
    atomic_write(path, yaml.safe_dump(obj, sort_keys=False))


def _jsonable(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_destination(dest: Path, overwrite: bool) -> None:
    if dest.exists() and not overwrite:
        raise XferError(f"Run folder {dest} already exists. Choose another --out, or pass --overwrite to replace it.")


@contextmanager
def new_run(dest: Path, overwrite: bool = False):
    """Yield a temporary folder to fill; on success it is checksummed and renamed to `dest`."""
    dest = Path(dest)
    check_destination(dest, overwrite)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    try:
        yield tmp
        write_checksums(tmp)
        if dest.exists():
            check_destination(dest, overwrite)  # it may have appeared while we trained
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_weights(folder: Path, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write(Path(folder) / WEIGHTS, save(tensors))


def write_checksums(folder: Path) -> None:
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.name != SUMS and not p.name.startswith("."))
    lines = [f"{_sha256(p)}  {p.relative_to(folder).as_posix()}" for p in files]
    atomic_write(Path(folder) / SUMS, "\n".join(lines) + "\n")


def verify_run(folder: Path) -> None:
    """Every file listed in SHA256SUMS must exist and match; weights and spec must be listed."""
    folder = Path(folder)
    if not folder.is_dir():
        raise XferError(f"Run folder {folder} does not exist. Give the folder that `xfer fit` wrote (runs/<name>).")
    _verify_sums(folder, (WEIGHTS, SPEC))


def _verify_sums(folder: Path, required: tuple[str, ...]) -> None:
    sums = folder / SUMS
    if not sums.exists():
        raise XferError(f"{folder} is not an xfer run (no {SUMS}). Give the folder that `xfer fit` wrote.")
    listed = {}
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    for name in required:
        if name not in listed:
            raise XferError(f"{folder}/{SUMS} does not list {name}; the folder was altered.")
    bad = [n for n, d in listed.items() if not (folder / n).is_file() or _sha256(folder / n) != d]
    if bad:
        raise XferError(f"Run folder {folder} was modified after it was written: checksum mismatch or missing file "
                        f"for {', '.join(bad)}. Refusing to load it; re-run `xfer fit` or restore the original files.")


def save_tensor_folder(folder: Path, tensors: dict[str, dict[str, torch.Tensor]], meta: dict) -> None:
    """A folder of named safetensors files plus meta.json, replaced as a whole (checkpoints: the previous one stays
    intact until the new one is complete)."""
    from safetensors.torch import save

    with new_run(folder, overwrite=True) as tmp:
        for name, state in tensors.items():
            atomic_write(tmp / f"{name}.safetensors",
                         save({k: v.detach().cpu().contiguous() for k, v in state.items()}))
        write_json(tmp / "meta.json", meta)


def load_tensor_folder(folder: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    from safetensors.torch import load_file

    folder = Path(folder)
    _verify_sums(folder, ("meta.json",))
    tensors = {p.stem: load_file(str(p)) for p in folder.glob("*.safetensors")}
    return tensors, read_json(folder, "meta.json")


def read_json(folder: Path, name: str) -> dict:
    return json.loads((Path(folder) / name).read_text())


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / WEIGHTS))
