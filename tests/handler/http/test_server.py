"""A real uvicorn server: cheap import, /health without a model, 16 concurrent first requests."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import REPO_ROOT
from tests.handler.http.live_server import server_env

ROOT = REPO_ROOT


def test_importing_the_app_loads_no_heavy_modules(tiny_artifact: Path) -> None:
    code = (
        "import sys, handler.app;"
        "heavy = [m for m in ('torch', 'transformers', 'boto3', 'PIL', 'fastapi') if m in sys.modules];"
        "assert not heavy, heavy;"
        "assert callable(handler.app.lambda_handler) and handler.app.app.title;"
        "heavy = [m for m in ('torch', 'transformers', 'boto3', 'PIL') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=server_env(tiny_artifact), timeout=60)


def test_sixteen_concurrent_first_requests_load_the_model_once(
    server: str, jpeg_bytes: bytes, png_bytes: bytes
) -> None:
    health = httpx.get(f"{server}/health").json()
    assert health["model_loaded"] is False and health["load_count"] == 0  # /health did not load it

    def call(i: int) -> httpx.Response:
        path = ("/caption", "/detect", "/analyze", "/detect?format=png")[i % 4]
        body, kind = (jpeg_bytes, "image/jpeg") if i % 2 else (png_bytes, "image/png")
        return httpx.post(f"{server}{path}", content=body, headers={"content-type": kind}, timeout=300)

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(call, range(16)))
    assert [r.status_code for r in responses] == [200] * 16
    shas = {
        r.json()["model_sha"] if r.headers["content-type"] == "application/json" else r.headers["x-model-sha"]
        for r in responses
    }
    assert len(shas) == 1
    health = httpx.get(f"{server}/health").json()
    assert health["model_loaded"] is True and health["load_count"] == 1 and health["model_sha"] in shas
