"""`xfer export`: a run written again as a new run folder, with LoRA adapters folded into the base weights."""

from __future__ import annotations

from pathlib import Path

from xfer.models import merge_lora
from xfer.runs.folder import write_run
from xfer.runs.run import load


def export(run_dir: str | Path, out: str | Path, merge: bool = True, overwrite: bool = False) -> Path:
    """A copy of a run as a new run folder (checksums verified on the way), merged when `merge`."""
    run = load(run_dir)
    spec = dict(run.spec)
    if merge and spec.get("lora"):
        merge_lora(run.model)
        spec["lora"] = None
    return write_run(Path(out), spec=spec, weights=run.model.state_dict(), copy_from=Path(run_dir),
                     overwrite=overwrite)
