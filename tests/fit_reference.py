"""Short fits whose final weights are pinned in tests/data/fit_reference.json, so a change of the fitting code
that changes any strategy's result is caught (test_fit_reference.py).

Pins are kept per platform (torch version and the CPU's vector extensions): on a platform with its own pins the
weights must match bit for bit; elsewhere only the logits are compared, within CROSS_PLATFORM_TOLERANCE.

    .venv/bin/python tests/fit_reference.py     # rewrite the reference, only after a deliberate change of results
    .venv/bin/python tests/fit_reference.py --keep-other-platforms   # add this platform's pins, code unchanged
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REFERENCE = Path(__file__).parent / "data" / "fit_reference.json"
# Short fits amplify kernel rounding: the same code's logits were up to 0.066 apart between an AMX Xeon and an
# AVX512-BF16 EPYC (torch 2.14.1, fp32), so another platform's pins are a coarse check only.
CROSS_PLATFORM_TOLERANCE = 0.15
IMAGE_STRATEGIES = ("linear-probe", "full", "partial", "lp-ft", "layer-decay", "gradual-unfreeze", "l2-sp", "bitfit",
                    "lora", "wise-ft")
FAST = dict(source="mobilenet_v2", image_size=32, batch_size=8, quiet=True, min_steps=0, epochs=2, lp_epochs=2,
            precision="no", patience=0)


def make_images(root: Path) -> Path:
    """The same two easy classes as conftest's image_folder fixture."""
    rng = np.random.default_rng(0)
    for label, colour in (("red", 0), ("blue", 2)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(12):
            arr = rng.integers(0, 60, (24, 24, 3), dtype=np.uint8)
            arr[..., colour] += 180
            Image.fromarray(arr).save(root / label / f"{i}.png")
    return root


def make_texts(path: Path) -> Path:
    good = ["a wonderful, moving film", "brilliant acting and a sharp script", "i loved every minute",
            "a joy from start to finish", "beautifully shot and deeply felt", "funny, warm and clever"]
    bad = ["a dull, lifeless mess", "the plot makes no sense", "i wanted to leave after ten minutes",
           "boring and far too long", "wooden acting and a lazy script", "a tedious waste of time"]
    rows = ["text,label"] + [f'"{t}",pos' for t in good * 3] + [f'"{t}",neg' for t in bad * 3]
    path.write_text("\n".join(rows) + "\n")
    return path


def platform_key() -> str:
    """Floating-point results are exact only on the same kernels: torch version and the CPU's vector extensions."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        flags = ""
    isa = "amx" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else \
        "avx512" if "avx512f" in flags else "other"
    return f"torch {torch.__version__} {platform.machine()} {isa}"


def fingerprint(run, probe) -> dict:
    state = run.model.state_dict()
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    logits = run.logits(probe, precision="no")
    return {"sha256": h.hexdigest(), "logits": [round(float(v), 6) for v in logits.flatten()]}


def fits(tmp: Path):
    """(name, run, probe split) for every pinned fit."""
    import xfer
    from xfer.data.task import Split

    images = make_images(tmp / "images")
    probe = Split(sorted(images.rglob("*.png"))[:4], np.zeros(4, dtype=np.int64))
    for strategy in IMAGE_STRATEGIES:
        yield f"image/{strategy}", xfer.fit(data=str(images), strategy=strategy, save=False, **FAST), probe
    texts = make_texts(tmp / "reviews.csv")
    probe = Split(["a wonderful film", "a dull mess"], np.zeros(2, dtype=np.int64))
    text = dict(FAST, source="all-MiniLM-L6-v2", max_length=16)
    text.pop("image_size")
    for strategy in ("lp-ft", "l2-sp"):
        yield f"text/{strategy}", xfer.fit(data=str(texts), strategy=strategy, save=False, **text), probe


def main() -> None:
    import argparse
    import tempfile

    from xfer.runs.folder import atomic_write

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep-other-platforms", action="store_true",
                    help="keep other platforms' pins (only when the fitting code has not changed since they were taken)")
    args = ap.parse_args()
    pins = json.loads(REFERENCE.read_text())["pins"] if args.keep_other_platforms and REFERENCE.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        pins[platform_key()] = {name: fingerprint(run, probe) for name, run, probe in fits(Path(tmp))}
    atomic_write(REFERENCE, json.dumps({"pins": pins}, indent=1) + "\n")
    print(f"wrote {REFERENCE} ({', '.join(f'{k}: {len(v)} fits' for k, v in pins.items())})", file=sys.stderr)


if __name__ == "__main__":
    main()
