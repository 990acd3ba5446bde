"""xfer: transfer learning for image and text classification, from source choice to a saved, verified model."""

from xfer.config import FitConfig
from xfer.errors import XferError
from xfer.fitting.fit import fit
from xfer.fitting.hooks import Hook
from xfer.fitting.prepare import Prepared, prepare
from xfer.fitting.strategies import Phase, Plan, strategy
from xfer.runs.run import Run, load

__all__ = ["FitConfig", "Hook", "Phase", "Plan", "Prepared", "Run", "XferError", "fit", "load", "prepare",
           "strategy"]
__version__ = "0.1.0"
