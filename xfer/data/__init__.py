"""Data: the user's examples as a Task, and the loaders that turn its splits into batches."""

from xfer.data.builtin import BUILTINS
from xfer.data.loaders import ImagePrep, TextPrep, batches
from xfer.data.readers import load_task
from xfer.data.task import Split, Task

__all__ = ["BUILTINS", "ImagePrep", "Split", "Task", "TextPrep", "batches", "load_task"]
