"""xfer: transfer learning for image and text classification, from source choice to a saved, verified model.

The names below are imported on first use (PEP 562), so `import xfer` and `xfer --help` do not load torch, and an
ONNX run predicts without it.
"""

from importlib import import_module

_EXPORTS = {
    "FitConfig": "xfer.config", "XferError": "xfer.errors", "fit": "xfer.fitting.fit", "Hook": "xfer.fitting.hooks",
    "Prepared": "xfer.fitting.prepare", "prepare": "xfer.fitting.prepare", "Phase": "xfer.fitting.strategies",
    "Plan": "xfer.fitting.strategies", "strategy": "xfer.fitting.strategies", "Run": "xfer.runs.run",
    "load": "xfer.runs.run",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'xfer' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)


def __dir__():
    return sorted([*globals(), *_EXPORTS])
