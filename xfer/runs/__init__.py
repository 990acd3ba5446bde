"""Runs: the folder a fit writes (folder.py, the one owner of its files) and the trained model in memory (run.py)."""

from xfer.runs.folder import (RunFolder, atomic_write, check_destination, new_run, read_json, verify_run,
                              write_json, write_run, write_yaml)

__all__ = ["RunFolder", "atomic_write", "check_destination", "new_run", "read_json", "verify_run", "write_json",
           "write_run", "write_yaml"]
