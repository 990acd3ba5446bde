"""xfer: transfer learning for image and text classification, from source choice to a saved, verified model."""

from xfer.api import Run, fit, load
from xfer.config import FitConfig
from xfer.errors import XferError

__all__ = ["FitConfig", "Run", "XferError", "fit", "load"]
__version__ = "0.1.0"
