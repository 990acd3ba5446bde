"""Shared test set-up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def _xfer_cache_dir(tmp_path_factory, monkeypatch):
    """Every test gets its own feature cache, so tests never read or fill the user's ~/.cache/xfer."""
    monkeypatch.setenv("XFER_CACHE_DIR", str(tmp_path_factory.mktemp("xfer-cache")))


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """Two easy classes of 24 px colour images (12 each): red-ish and blue-ish noise."""
    root = tmp_path_factory.mktemp("images") / "data"
    rng = np.random.default_rng(0)
    for label, colour in (("red", 0), ("blue", 2)):
        (root / label).mkdir(parents=True)
        for i in range(12):
            arr = rng.integers(0, 60, (24, 24, 3), dtype=np.uint8)
            arr[..., colour] += 180
            Image.fromarray(arr).save(root / label / f"{i}.png")
    return root
