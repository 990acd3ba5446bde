"""Data: the user's examples as a Task, and the loaders that turn its splits into batches (imported on first use:
reading and rendering data needs no torch)."""

from importlib import import_module

_EXPORTS = {"BUILTINS": "xfer.data.builtin", "ImagePrep": "xfer.data.loaders", "TextPrep": "xfer.data.loaders",
            "batches": "xfer.data.loaders", "load_task": "xfer.data.readers", "Split": "xfer.data.task",
            "Task": "xfer.data.task"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'xfer.data' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
