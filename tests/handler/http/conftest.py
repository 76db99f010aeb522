"""The `server` fixture: a real uvicorn on 127.0.0.1 serving the tiny artifact."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.handler.http.live_server import live_server


@pytest.fixture
def server(tiny_artifact: Path) -> Iterator[str]:
    with live_server(tiny_artifact) as base:
        yield base
