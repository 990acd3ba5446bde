"""`xfer serve`: trained runs behind an HTTP API (FastAPI, uvicorn) with a page to try them (docs/serving.md)."""

from xfer.tools.serve.app import load_runs, make_app, serve

__all__ = ["load_runs", "make_app", "serve"]
