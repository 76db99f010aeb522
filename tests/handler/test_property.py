"""Property: whatever bytes arrive, the API answers 2xx or 4xx, never 5xx."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handler.app import app
from tests.conftest import image_bytes

VALID = {"jpeg": image_bytes("JPEG", (48, 32), quality=80), "png": image_bytes("PNG", (48, 32))}
ENDPOINTS = ["/caption", "/detect", "/detect?format=png", "/analyze"]


@pytest.fixture
def client(serving_env: Path) -> TestClient:
    return TestClient(app, raise_server_exceptions=False)


def _no_server_error(response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"code", "message"}


truncations = st.sampled_from(sorted(VALID)).flatmap(
    lambda name: st.integers(0, len(VALID[name])).map(lambda n: VALID[name][:n])
)
payloads = st.one_of(st.binary(max_size=2048), truncations)
transports = st.sampled_from(["raw", "multipart", "base64"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=payloads,
    endpoint=st.sampled_from(ENDPOINTS),
    transport=transports,
    content_type=st.sampled_from(["image/jpeg", "image/png", "application/octet-stream"]),
)
def test_random_and_truncated_images_never_5xx(
    client: TestClient, data: bytes, endpoint: str, transport: str, content_type: str
) -> None:
    if transport == "raw":
        response = client.post(endpoint, content=data, headers={"content-type": content_type})
    elif transport == "multipart":
        response = client.post(endpoint, files={"file": ("f", data, content_type)})
    else:
        response = client.post(endpoint, json={"image_base64": base64.b64encode(data).decode()})
    _no_server_error(response)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.binary(max_size=512),
    content_type=st.sampled_from(
        ["application/json", "multipart/form-data; boundary=b", "multipart/form-data", "text/plain", ""]
    ),
)
def test_random_bodies_with_structured_content_types_never_5xx(
    client: TestClient, body: bytes, content_type: str
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    _no_server_error(client.post("/analyze", content=body, headers=headers))
