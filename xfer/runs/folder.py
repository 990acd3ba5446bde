"""The run folder: the only place that knows its file names and writes or reads them (RunFolder, write_run).

A run is first written into a hidden temporary folder beside its destination, checksummed (SHA256SUMS), then moved
into place with one rename, so a crash never leaves a half-written run and an existing run is replaced only when the
user asked for it. Loading verifies every checksum first and reads weights only from safetensors.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import yaml

from xfer.errors import XferError
from xfer.hashing import sha256_file

if TYPE_CHECKING:  # torch is imported where tensors are read or written: an ONNX run is served without it
    import torch

SUMS = "SHA256SUMS"
WEIGHTS = "model.safetensors"
ONNX_MODEL = "model.onnx"  # an ONNX run (spec["runtime"] == "onnx") holds this graph instead of WEIGHTS
SPEC = "spec.json"
CONFIG = "config.yaml"
METRICS = "metrics.json"
HISTORY = "history.json"
TRANSFER_REPORT = "transfer_report.json"
BACKBONE = "backbone"  # text runs: the encoder's config and tokenizer, so loading needs no download
MODEL_CARD = "MODEL_CARD.md"  # what the model is, how it was made and measured (Hugging Face model card layout)
REPORT = "report.html"  # the run's self-contained HTML report (`xfer report`); the serving page links to it
EXAMPLES = "examples.json"  # a sample of misclassified test examples, shown by the report
SPEC_FORMAT = 1
# Flat copies of the nested metrics that tools and scripts read without knowing the nesting.
HEADLINE = ("test.accuracy", "test.macro_f1", "val.accuracy", "baseline.test.accuracy", "defended.test.accuracy")


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


def check_destination(dest: Path, overwrite: bool) -> None:
    """A run may be written at `dest`: nothing is there, or `overwrite` and what is there is an xfer folder (it
    has SHA256SUMS) or empty. A folder that is not xfer's is never replaced, whatever the flags say."""
    dest = Path(dest)
    if not dest.exists():
        return
    if not overwrite:
        raise XferError(f"Run folder {dest} already exists. Choose another --out, or pass --overwrite to replace it.")
    if not dest.is_dir():
        raise XferError(f"{dest} is a file, not a run folder; xfer will not replace it. Choose another --out.")
    if not (dest / SUMS).is_file() and any(dest.iterdir()):
        raise XferError(f"{dest} is not an xfer run (no {SUMS}) and is not empty; --overwrite only replaces xfer's own "
                        f"folders. Choose another --out, or move that folder away yourself.")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 with RENAME_EXCHANGE). False where the system has no such
    call (other platforms, old kernels, some filesystems), so the caller can fall back."""
    import ctypes
    import ctypes.util
    import errno

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_folder(tmp: Path, dest: Path) -> None:
    """Put the complete folder `tmp` at `dest`. An existing `dest` is swapped out in one step where the system
    allows it, so a reader sees the old folder or the new one, never none; the old one is deleted afterwards."""
    if not dest.exists():
        os.replace(tmp, dest)
        return
    if _exchange(tmp, dest):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
        return
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def new_run(dest: Path, overwrite: bool = False):
    """Yield a temporary folder to fill; on success it is checksummed and put at `dest` (see replace_folder)."""
    dest = Path(dest)
    check_destination(dest, overwrite)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    try:
        yield tmp
        write_checksums(tmp)
        check_destination(dest, overwrite)  # something may have appeared there while we trained
        replace_folder(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_weights(folder: Path, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write(Path(folder) / WEIGHTS, save(tensors))


def _files(folder: Path) -> list[Path]:
    """Every file a run's checksums cover: all but SHA256SUMS itself and hidden files (temporary writes)."""
    return sorted(p for p in Path(folder).rglob("*")
                  if p.is_file() and p.name != SUMS and not any(part.startswith(".") for part in
                                                                 p.relative_to(folder).parts))


def write_checksums(folder: Path) -> None:
    lines = [f"{sha256_file(p)}  {p.relative_to(folder).as_posix()}" for p in _files(folder)]
    atomic_write(Path(folder) / SUMS, "\n".join(lines) + "\n")


def verify_run(folder: Path) -> None:
    """Every file listed in SHA256SUMS must exist and match; weights and spec must be listed; no unlisted weight
    file may sit beside them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise XferError(f"Run folder {folder} does not exist. Give the folder that `xfer fit` wrote (runs/<name>).")
    listed = _verify_sums(folder, (SPEC,))
    if WEIGHTS not in listed and ONNX_MODEL not in listed:
        raise XferError(f"{folder}/{SUMS} lists neither {WEIGHTS} nor {ONNX_MODEL}; the folder was altered.")


# Files that hold weights or code to deserialise: one that SHA256SUMS does not list is refused, never loaded.
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".npy", ".npz", ".h5", ".onnx",
                   ".msgpack", ".gguf", ".joblib", ".py"}


def _verify_sums(folder: Path, required: tuple[str, ...]) -> dict[str, str]:
    """Check SHA256SUMS both ways and return it as {relative path: digest}. A listed file that is missing or
    changed is an error; an unlisted file is an error when it could hold weights or code (WEIGHT_SUFFIXES) and a
    warning otherwise (notes a user added, say, which nothing reads)."""
    sums = folder / SUMS
    if not sums.is_file():
        raise XferError(f"{folder} is not an xfer run (no {SUMS}). Give the folder that `xfer fit` wrote.")
    listed = {}
    try:
        text = sums.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise XferError(f"{sums} is not a checksum list; the folder was altered.") from e
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        if not name or len(digest) != 64 or name.startswith("/") or ".." in Path(name).parts:
            raise XferError(f"{sums} has a malformed line ({line[:80]!r}); the folder was altered.")
        listed[name] = digest
    for name in required:
        if name not in listed:
            raise XferError(f"{folder}/{SUMS} does not list {name}; the folder was altered.")
    bad = [n for n, d in listed.items() if not (folder / n).is_file() or sha256_file(folder / n) != d]
    if bad:
        raise XferError(f"Run folder {folder} was modified after it was written: checksum mismatch or missing file "
                        f"for {', '.join(bad)}. Refusing to load it; re-run `xfer fit` or restore the original files.")
    unlisted = [p.relative_to(folder).as_posix() for p in _files(folder)
                if p.relative_to(folder).as_posix() not in listed]
    dangerous = [n for n in unlisted if Path(n).suffix.lower() in WEIGHT_SUFFIXES]
    if dangerous:
        raise XferError(f"{folder} holds files that its {SUMS} does not list: {', '.join(dangerous[:10])}. Weight and "
                        f"code files are only loaded when checksummed; remove them or restore the original folder.")
    if unlisted:
        import warnings

        from xfer.errors import XferWarning

        warnings.warn(f"{folder} holds files its {SUMS} does not list, which xfer ignores: {', '.join(unlisted[:10])}",
                      XferWarning, stacklevel=3)
    return listed


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
    listed = _verify_sums(folder, ("meta.json",))
    tensors = {Path(n).stem: load_file(str(folder / n)) for n in listed if n.endswith(".safetensors") and "/" not in n}
    return tensors, read_json(folder, "meta.json")


def read_json(folder: Path, name: str) -> dict:
    try:
        return json.loads((Path(folder) / name).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise XferError(f"{Path(folder) / name} is not valid JSON: {e}") from e


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / WEIGHTS))


def flat_metrics(metrics: dict) -> dict:
    """The metrics with the HEADLINE keys added (`test.accuracy` = metrics["test"]["accuracy"], ...)."""
    out = dict(metrics)
    for key in HEADLINE:
        value = metrics
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            out[key] = value
    return out


@dataclass(frozen=True)
class RunFolder:
    """A saved run, read through named accessors; `verify()` checks every checksum before anything is trusted."""

    path: Path

    def exists(self) -> bool:
        """A finished run is there (its spec and checksums were written last, by the rename)."""
        return (self.path / SPEC).is_file() and (self.path / SUMS).is_file()

    def verify(self) -> "RunFolder":
        verify_run(self.path)
        return self

    def listed(self) -> list[str]:
        """The files SHA256SUMS lists (relative POSIX paths): what a copy of the run must carry to verify. Trust
        them after `verify()`."""
        text = (self.path / SUMS).read_text(encoding="utf-8")
        return sorted(line.partition("  ")[2] for line in text.splitlines() if line.strip())

    def spec(self) -> dict:
        spec = read_json(self.path, SPEC)
        if spec.get("format") != SPEC_FORMAT:
            raise XferError(f"{self.path} was written by an incompatible xfer version (spec format "
                            f"{spec.get('format')}).")
        return spec

    def weights(self) -> dict[str, torch.Tensor]:
        return load_weights(self.path)

    def config(self) -> dict:
        """The resolved options the run was made with."""
        if not (self.path / CONFIG).exists():
            return {}
        try:
            return yaml.safe_load((self.path / CONFIG).read_text(encoding="utf-8")) or {}
        except (UnicodeDecodeError, yaml.YAMLError) as e:
            raise XferError(f"{self.path / CONFIG} cannot be read: {e}") from e

    def metrics(self) -> dict:
        return read_json(self.path, METRICS) if (self.path / METRICS).exists() else {}

    def headline(self) -> dict:
        """The HEADLINE metrics the run has (a run without a baseline has no `baseline.test.accuracy`)."""
        metrics = self.metrics()
        return {k: metrics[k] for k in HEADLINE if k in metrics}

    def history(self) -> list:
        return read_json(self.path, HISTORY) if (self.path / HISTORY).exists() else []

    def transfer_report(self) -> dict:
        return read_json(self.path, TRANSFER_REPORT) if (self.path / TRANSFER_REPORT).exists() else {}

    def examples(self) -> list:
        """Misclassified test examples saved by fit (older runs have none)."""
        return read_json(self.path, EXAMPLES) if (self.path / EXAMPLES).exists() else []

    @property
    def backbone(self) -> Path:
        return self.path / BACKBONE


def write_run(dest: Path, *, spec: dict, weights: dict[str, torch.Tensor] | None = None, onnx: Path | None = None,
              config: dict | None = None, metrics: dict | None = None, history: list | None = None,
              transfer_report: dict | None = None, backbone: Callable[[Path], None] | None = None,
              copy_from: Path | None = None, extra: dict[str, dict] | None = None, overwrite: bool = False) -> Path:
    """Write a run folder atomically (see new_run): PyTorch `weights`, or an `onnx` graph file (copied in).
    `backbone(folder)` saves the encoder's files; `copy_from` copies every other file of an existing run (an export
    keeps the original's config, metrics and reports); `extra` adds files by name: a string is written as UTF-8 text
    (the model card, the HTML report), anything else as JSON (a compression report, examples)."""
    if (weights is None) == (onnx is None):
        raise ValueError("write_run needs exactly one of weights= and onnx=")
    with new_run(dest, overwrite) as tmp:
        if copy_from is not None:
            for p in Path(copy_from).iterdir():
                if p.name in (WEIGHTS, ONNX_MODEL, SPEC, SUMS) or p.name.startswith("."):
                    continue
                (shutil.copytree if p.is_dir() else shutil.copy2)(p, tmp / p.name)
        if weights is not None:
            save_weights(tmp, weights)
        else:
            shutil.copyfile(onnx, tmp / ONNX_MODEL)
        for name, obj in (extra or {}).items():
            (atomic_write if isinstance(obj, str) else write_json)(tmp / name, obj)
        write_json(tmp / SPEC, spec)
        if config is not None:
            write_yaml(tmp / CONFIG, config)
        if metrics is not None:
            write_json(tmp / METRICS, flat_metrics(metrics))
        if history is not None:
            write_json(tmp / HISTORY, history)
        if transfer_report is not None:
            write_json(tmp / TRANSFER_REPORT, transfer_report)
        if backbone is not None:
            (tmp / BACKBONE).mkdir(exist_ok=True)
            backbone(tmp / BACKBONE)
    return Path(dest)
