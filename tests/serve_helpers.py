"""What the serving tests share: one tiny text run and one tiny image run per test session (fitted by whichever
module asks first, then read from disk), a digit PNG, and a real `xfer serve` process on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

import xfer
from helpers import TINY_IMAGE_FIT

XFER = str(Path(sys.executable).parent / "xfer")
REVIEWS = [("a wonderful, moving film", "pos"), ("dull and lifeless", "neg")] * 12
REVIEWS += [(f"truly great acting {i}", "pos") for i in range(6)] + [(f"boring plot {i}", "neg") for i in range(6)]


def _shared(tmp_path_factory) -> Path:
    root = tmp_path_factory.getbasetemp() / "serve-shared"
    root.mkdir(exist_ok=True)
    return root


def text_run(tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2 with a linear probe on 36 short reviews (seconds), folder name `reviews`."""
    out = _shared(tmp_path_factory) / "reviews"
    if not (out / "SHA256SUMS").exists():
        data = _shared(tmp_path_factory) / "reviews.csv"
        data.write_text("text,label\n" + "\n".join(f'"{t}",{y}' for t, y in REVIEWS) + "\n")
        xfer.fit(data=str(data), strategy="linear-probe", epochs=2, batch_size=8, max_length=16, min_steps=0,
                 out=str(out), quiet=True)
    return out


def image_run(tmp_path_factory, image_folder) -> Path:
    """ImageNet MobileNet-V2 fitted for seconds on the conftest colour images, folder name `colours`."""
    out = _shared(tmp_path_factory) / "colours"
    if not (out / "SHA256SUMS").exists():
        xfer.fit(data=str(image_folder), out=str(out), **TINY_IMAGE_FIT)
    return out


def digit_png(tmp_path_factory, index: int = 0) -> Path:
    """A handwritten digit from builtin:mnist5k, saved as a grey PNG."""
    path = _shared(tmp_path_factory) / f"digit{index}.png"
    if not path.exists():
        from xfer.data.builtin import load_builtin

        _, images, labels, _ = load_builtin("mnist5k")
        Image.fromarray(np.asarray(images[index], dtype=np.uint8)).save(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(*runs: Path, token: str | None = None, args: tuple[str, ...] = (), timeout: float = 180):
    """`xfer serve RUNS --port <free>` as a child process; yields its base URL once /health answers."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("XFER_SERVE_TOKEN", None)
    if token:
        env["XFER_SERVE_TOKEN"] = token
    log = tempfile.TemporaryFile("w+")  # the server's output, shown when it fails to start
    proc = subprocess.Popen([XFER, "serve", *map(str, runs), "--port", str(port), *args], env=env, stdout=log,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        start = time.monotonic()
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError(f"xfer serve exited with {proc.returncode}:\n{log.read()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - start > timeout:
                raise AssertionError(f"xfer serve did not answer /health within {timeout} s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
