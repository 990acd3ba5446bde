"""`xfer serve` as users meet it: a real server process answering concurrent requests exactly as `Run.predict`
does, every bad request a 4xx JSON error, tokens enforced, a tampered run refused at start; and, in process, the
deadline and the hidden traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

import xfer
from serve_helpers import REVIEWS, XFER, digit_png, image_run, server, text_run
from xfer.tools.serve.app import host_warning, make_app


@pytest.fixture(scope="module")
def runs(tmp_path_factory, image_folder):
    return text_run(tmp_path_factory), image_run(tmp_path_factory, image_folder)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return [digit_png(tmp_path_factory, i) for i in range(3)]


@pytest.fixture(scope="module")
def url(runs):
    with server(*runs) as base:
        yield base


def _close(got: list[dict], expected: list[dict]):
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    for g, e in zip(got, expected):
        assert g["confidence"] == pytest.approx(e["confidence"], abs=1e-5)
        assert [t["label"] for t in g["top_k"]] == [t["label"] for t in e["top_k"]]
        assert [t["probability"] for t in g["top_k"]] == pytest.approx([t["probability"] for t in e["top_k"]],
                                                                       abs=1e-5)


def test_sixteen_parallel_requests_get_the_answers_of_run_predict(url, runs, digits):
    text_dir, image_dir = runs
    texts = [[t] for t, _ in REVIEWS[:4]] + [["a film to see twice", "nothing happens", "great"], ["boring"]]
    jobs = [("text", texts[i % len(texts)]) for i in range(10)] + [("image", [digits[i % 3]]) for i in range(4)]
    jobs += [("image", digits), ("text", [t for t, _ in REVIEWS[:20]])]
    assert len(jobs) == 16

    def ask(job):
        kind, inputs = job
        if kind == "text":
            return httpx.post(f"{url}/predict", json={"model": "reviews", "inputs": inputs, "top_k": 2}, timeout=120)
        files = [("files", (p.name, p.read_bytes(), "image/png")) for p in inputs]
        return httpx.post(f"{url}/predict", data={"model": "colours", "top_k": "2"}, files=files, timeout=120)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, jobs))
    text_model, image_model = xfer.load(text_dir), xfer.load(image_dir)
    for (kind, inputs), r in zip(jobs, answers):
        assert r.status_code == 200, r.text[:500]
        got = r.json()["predictions"]
        model = text_model if kind == "text" else image_model
        _close(got, model.predict([str(x) for x in inputs], top_k=2))  # image paths: the same files, read by the run
        assert [g["input"] for g in got] == [x if kind == "text" else x.name for x in inputs]


def test_models_health_and_offline_docs(url):
    models = {m["name"]: m for m in httpx.get(f"{url}/models").json()["models"]}
    assert models["reviews"]["modality"] == "text" and models["reviews"]["labels"] == ["neg", "pos"]
    assert models["colours"]["modality"] == "image" and set(models["colours"]["labels"]) == {"blue", "red"}
    assert "test.accuracy" in models["colours"]["metrics"]
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["auth"] is False and health["workers"] == 1
    docs = httpx.get(f"{url}/docs")
    assert docs.status_code == 200 and "/swagger/swagger-ui-bundle.js" in docs.text
    assert "http://" not in docs.text and "https://" not in docs.text  # nothing from a CDN
    assert httpx.get(f"{url}/swagger/swagger-ui-bundle.js").status_code == 200
    assert httpx.get(f"{url}/swagger/swagger-ui.css").status_code == 200
    assert "/predict" in httpx.get(f"{url}/openapi.json").json()["paths"]
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and "/static/app.js" in page.text


def test_the_report_is_served_sandboxed(url, runs):
    if not (runs[0] / "report.html").exists():  # runs written before fit wrote reports
        pytest.skip("this run has no report.html")
    r = httpx.get(f"{url}/models/reviews/report")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["content-security-policy"].startswith("sandbox")
    assert {m["name"]: m["report"] for m in httpx.get(f"{url}/models").json()["models"]}["reviews"] == \
        "/models/reviews/report"


BAD = {
    "text to an image model": (dict(json={"model": "colours", "inputs": ["a film"]}), 415, "reads images"),
    "image to a text model": (dict(data={"model": "reviews"}, files=[("files", ("d.png", b"PNG", "image/png"))]),
                              415, "reads text"),
    "undecodable image": (dict(data={"model": "colours"}, files=[("files", ("x.png", b"not an image", "image/png"))]),
                          422, "x.png is not an image"),
    "empty text": (dict(json={"model": "reviews", "inputs": ["fine", "  "]}), 422, "[1] are empty"),
    "no inputs": (dict(json={"model": "reviews", "inputs": []}), 422, "No inputs"),
    "no files": (dict(data={"model": "colours", "top_k": "2"}, files=[("other", ("a.txt", b"x", "text/plain"))]),
                 422, "No inputs"),
    "too many inputs": (dict(json={"model": "reviews", "inputs": ["a"] * 65}), 413, "limit is 64"),
    "oversized payload": (dict(json={"model": "reviews", "inputs": ["a" * (11 << 20)]}), 413, "limit of 10.0 MB"),
    "unknown model": (dict(json={"model": "nope", "inputs": ["a"]}), 404, "Unknown model 'nope'"),
    "no model with two served": (dict(json={"inputs": ["a"]}), 422, "name one with \"model\""),
    "inputs not a list": (dict(json={"model": "reviews", "inputs": "a film"}), 422, "inputs"),
    "not JSON": (dict(content=b"{inputs:", headers={"content-type": "application/json"}), 422, "not valid JSON"),
    "bad top_k": (dict(json={"model": "reviews", "inputs": ["a"], "top_k": 0}), 422, "top_k"),
    "other content type": (dict(content=b"a film", headers={"content-type": "text/plain"}), 415, "Content-Type"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_request_is_a_4xx_with_a_json_error(url, case):
    kwargs, status, words = BAD[case]
    r = httpx.post(f"{url}/predict", timeout=60, **kwargs)
    assert r.status_code == status, r.text[:500]
    assert words in r.json()["error"]
    assert "Traceback" not in r.text


def test_unknown_paths_and_methods_are_json_errors(url):
    r = httpx.get(f"{url}/nowhere")
    assert r.status_code == 404 and "/docs" in r.json()["error"]
    r = httpx.get(f"{url}/predict")
    assert r.status_code == 405 and "error" in r.json()


def test_the_token_is_required_everywhere_but_health_and_the_page(runs, digits):
    with server(runs[0], token="s3cret") as base:
        assert httpx.get(f"{base}/health").json()["auth"] is True
        assert httpx.get(f"{base}/").status_code == 200  # the page asks for the token itself
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = httpx.get(f"{base}/models", headers=headers)
            assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]
            assert r.headers["www-authenticate"] == "Bearer"
            r = httpx.post(f"{base}/predict", json={"inputs": ["a film"]}, headers=headers)
            assert r.status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert httpx.get(f"{base}/models", headers=ok).status_code == 200
        r = httpx.post(f"{base}/predict", json={"inputs": ["a wonderful film"]}, headers=ok, timeout=60)
        assert r.status_code == 200 and r.json()["predictions"][0]["label"] in ("pos", "neg")  # one model: no name
        assert "bearer" in httpx.get(f"{base}/openapi.json").json()["components"]["securitySchemes"]


def test_a_tampered_run_is_refused_at_start(runs, tmp_path):
    bad = tmp_path / "reviews"
    shutil.copytree(runs[0], bad)
    weights = bad / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    proc = subprocess.run([XFER, "serve", str(bad), "--port", "0"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error:" in proc.stderr and "checksum mismatch" in proc.stderr and "model.safetensors" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_two_runs_with_one_name_are_refused(runs, tmp_path):
    other = tmp_path / "copy" / "reviews"
    shutil.copytree(runs[0], other)
    proc = subprocess.run([XFER, "serve", str(runs[0]), str(other), "--port", "0"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "Two runs are named 'reviews'" in proc.stderr


def test_binding_beyond_loopback_warns_about_authentication():
    assert host_warning("127.0.0.1", None) is None and host_warning("localhost", None) is None
    assert host_warning("::1", None) is None
    assert "no authentication" in host_warning("0.0.0.0", None)
    assert "TLS" in host_warning("192.168.1.5", "t")


class _SlowModel:
    """A stand-in run whose model calls take `delay` seconds (or fail), to check the app around the model."""

    reads_text, labels, spec, path = True, ("a", "b"), {}, None

    def __init__(self, delay=0.0, fail=False):
        self.delay, self.fail = delay, fail

    def predict(self, inputs, top_k=0):
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("secret internal detail")
        return [{"input": t, "label": "a", "confidence": 1.0, "top_k": [{"label": "a", "probability": 1.0}]}
                for t in inputs]


def test_the_deadline_answers_504_and_the_event_loop_stays_free():
    from fastapi.testclient import TestClient

    app = make_app({"slow": _SlowModel(delay=1.5)}, timeout=0.5)
    with TestClient(app) as client:
        answers = {}
        worker = threading.Thread(target=lambda: answers.update(r=client.post("/predict", json={"inputs": ["x"]})))
        worker.start()
        time.sleep(0.1)
        start = time.monotonic()
        assert client.get("/health").status_code == 200  # answered while the model is busy
        assert time.monotonic() - start < 0.4
        worker.join()
        r = answers["r"]
        assert r.status_code == 504 and "did not answer within 0.5 s" in r.json()["error"]


def test_an_unexpected_error_is_a_json_500_without_traceback():
    from fastapi.testclient import TestClient

    with TestClient(make_app({"broken": _SlowModel(fail=True)}), raise_server_exceptions=False) as client:
        r = client.post("/predict", json={"inputs": ["x"]})
        missing = client.get("/models/broken/report")
    assert missing.status_code == 404 and "has no report.html" in missing.json()["error"]
    assert r.status_code == 500
    assert json.loads(r.text) == {"error": "Internal error (RuntimeError); the server log has the details."}
