"""Load on `xfer serve`: requests/s and p50/p95/p99 latency at 1, 4 and 16 concurrent clients, per model, for a
MiniLM text run and a MobileNet-V2 image run served together (one uvicorn worker, one model call at a time per
model). Each request carries one input: a review of ~20 words, or one 28x28 digit PNG.

    .venv/bin/python bench/serve_load.py --text runs/reviews --image runs/digits [--seconds 10] [--clients 1,4,16]
    .venv/bin/python bench/serve_load.py            # no runs given: makes both with a short fit first
    .venv/bin/python bench/serve_load.py --smoke    # seconds: tiny fits, 1 and 4 clients, 1 s each

Without --text/--image, the script fits the missing run(s) in --work (default: a temporary folder): all-MiniLM-L6-v2
on 400 Rotten Tomatoes reviews and ImageNet MobileNet-V2 on 400 MNIST digits, linear probe, one epoch. Their
accuracy is beside the point; latency depends on the architecture and the input size, which are the defaults'.
The table goes to stdout with the thread settings (torch threads in the server, uvicorn workers, CPU count).
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

XFER = os.environ.get("XFER") or str(Path(sys.executable).parent / "xfer")


def make_runs(work: Path, n: int, smoke: bool, need_text: bool, need_image: bool) -> tuple[Path | None, Path | None]:
    """Short fits on the first `n` examples of the built-in sets (both offline)."""
    import xfer
    from xfer.data.builtin import load_builtin

    text = image = None
    tiny = dict(max_length=32) if smoke else {}
    if need_text:
        _, texts, labels, _ = load_builtin("rotten_tomatoes")
        pick = _balanced(labels, n)
        data = work / "reviews.csv"
        data.write_text("text,label\n" + "".join(f'"{texts[i].replace(chr(34), "")}",{labels[i]}\n' for i in pick))
        text = work / "reviews"
        xfer.fit(data=str(data), source="all-MiniLM-L6-v2", strategy="linear-probe", epochs=1, min_steps=0,
                 out=str(text), overwrite=True, quiet=True, **tiny)
    if need_image:
        _, images, labels, _ = load_builtin("mnist5k")
        root = work / "digit-images"
        for i in _balanced(labels, n):
            (root / labels[i]).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(images[i], dtype=np.uint8)).save(root / labels[i] / f"{i}.png")
        image = work / "digits"
        xfer.fit(data=str(root), source="mobilenet_v2", strategy="linear-probe", epochs=1, min_steps=0,
                 out=str(image), overwrite=True, quiet=True, **(dict(image_size=32) if smoke else {}))
    return text, image


def _balanced(labels: list[str], n: int) -> list[int]:
    """The first examples of each class in turn, `n` in all (every class gets some)."""
    by_class: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(lab, []).append(i)
    per = max(4, n // len(by_class))
    return sorted(i for idx in by_class.values() for i in idx[:per])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(runs: list[Path]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([XFER, "serve", *map(str, runs), "--port", str(port), "--timeout", "120"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"xfer serve exited with {proc.returncode}:\n{proc.stdout.read()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    sys.exit("xfer serve did not answer /health within 300 s")


def request_maker(modality: str, name: str):
    """A function (client, i) -> response sending the i-th input of a small fixed pool."""
    from xfer.data.builtin import load_builtin

    if modality == "text":
        _, texts, _, _ = load_builtin("rotten_tomatoes")
        pool = [t for t in texts[:200] if 15 <= len(t.split()) <= 30][:32] or texts[:32]
        return lambda client, i: client.post("/predict", json={"model": name, "inputs": [pool[i % len(pool)]]})
    _, images, _, _ = load_builtin("mnist5k")
    pool = []
    for arr in images[:32]:
        buf = io.BytesIO()
        Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(buf, format="PNG")
        pool.append(buf.getvalue())
    return lambda client, i: client.post("/predict", data={"model": name},
                                         files=[("files", ("digit.png", pool[i % len(pool)], "image/png"))])


def load(url: str, send, clients: int, seconds: float) -> dict:
    """`clients` threads, each sending one request after another for `seconds`; latencies of the successful ones."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start_line = threading.Barrier(clients + 1)
    stop = [0.0]

    def client(k: int):
        with httpx.Client(base_url=url, timeout=180) as c:
            send(c, k)  # warm the connection
            start_line.wait()
            i = k
            while time.perf_counter() < stop[0]:
                t = time.perf_counter()
                r = send(c, i)
                dt = time.perf_counter() - t
                with lock:
                    if r.status_code == 200:
                        latencies.append(dt)
                    else:
                        errors[0] += 1
                i += clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    stop[0] = time.perf_counter() + 1e9
    start_line.wait()
    begin = time.perf_counter()
    stop[0] = begin + seconds
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - begin
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"clients": clients, "requests": len(latencies), "errors": errors[0], "rps": len(latencies) / elapsed,
            "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "p99": float(np.percentile(ms, 99))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", default=None, help="a MiniLM text run folder (made by a short fit when absent)")
    ap.add_argument("--image", default=None, help="a MobileNet-V2 image run folder (made by a short fit when absent)")
    ap.add_argument("--clients", default="1,4,16", help="concurrent clients, comma-separated")
    ap.add_argument("--seconds", type=float, default=10.0, help="measuring time per (model, clients)")
    ap.add_argument("--n", type=int, default=400, help="examples for a fit made here")
    ap.add_argument("--work", default=None, help="folder for the runs fitted here (default: a temporary folder)")
    ap.add_argument("--smoke", action="store_true", help="seconds-long run on tiny fits (checks the script works)")
    args = ap.parse_args()
    if args.smoke:
        args.clients, args.seconds, args.n = "1,4", 1.0, 40
    temporary = None if args.work else tempfile.TemporaryDirectory(prefix="serve-load-")
    work = Path(args.work or temporary.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        run_bench(args, work)
    finally:
        if temporary is not None:
            temporary.cleanup()


def run_bench(args, work: Path) -> None:
    os.environ.setdefault("XFER_CACHE_DIR", str(work / "cache"))
    text, image = Path(args.text) if args.text else None, Path(args.image) if args.image else None
    if text is None or image is None:
        print(f"fitting the missing run(s) in {work} ...", flush=True)
        made = make_runs(work, args.n, args.smoke, text is None, image is None)
        text, image = text or made[0], image or made[1]
    proc, url = start_server([text, image])
    try:
        health = httpx.get(url + "/health").json()
        models = {m["name"]: m for m in httpx.get(url + "/models").json()["models"]}
        print(f"server: {url}; uvicorn workers {health['workers']}; torch threads {health['torch_threads']}; "
              f"CPU cores {os.cpu_count()}; one model call at a time per model; batch 1 per request")
        rows = []
        for name, m in models.items():
            send = request_maker(m["modality"], name)
            for c in [int(x) for x in args.clients.split(",")]:
                rows.append({"model": f"{name} ({m['modality']})", **load(url, send, c, args.seconds)})
        print(f"\n{'model':<24}{'clients':>8}{'requests':>10}{'errors':>8}{'requests/s':>12}"
              f"{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}")
        for r in rows:
            print(f"{r['model']:<24}{r['clients']:>8}{r['requests']:>10}{r['errors']:>8}{r['rps']:>12.1f}"
                  f"{r['p50']:>9.1f}{r['p95']:>9.1f}{r['p99']:>9.1f}")
    finally:
        proc.terminate()
        proc.wait(15)


if __name__ == "__main__":
    main()
