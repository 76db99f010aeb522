"""A real uvicorn server on 127.0.0.1, for the tests that need a socket (concurrency, the browser)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import REPO_ROOT


def server_env(artifact: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "ARTIFACT_DIR": str(artifact), "TORCH_THREADS": "1"}


@contextmanager
def live_server(artifact: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """uvicorn on a socket this process bound to a free port (no port race); yields its base URL.

    `env` adds settings (CORS_ALLOW_ORIGINS) to the server's environment."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "handler.app:app", "--fd", str(sock.fileno()), "--log-level", "warning"],
        cwd=REPO_ROOT,
        env={**server_env(artifact), **(env or {})},
        pass_fds=[sock.fileno()],
        stdout=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, "uvicorn exited"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=20)
        sock.close()
