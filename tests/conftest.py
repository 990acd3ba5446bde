"""Shared test set-up."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _xfer_cache_dir(tmp_path_factory, monkeypatch):
    """Every test gets its own feature cache, so tests never read or fill the user's ~/.cache/xfer."""
    monkeypatch.setenv("XFER_CACHE_DIR", str(tmp_path_factory.mktemp("xfer-cache")))
