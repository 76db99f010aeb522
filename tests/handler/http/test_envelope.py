"""The HTTP envelope as API Gateway delivers it: odd events, headers and bodies through `lambda_handler`.

Each case is a full API Gateway REST (v1), HTTP API (v2) or ALB event sent to the Lambda entry, with
Mangum and the real app behind it; what it must answer is a 4xx (or 503) in the one error shape, never
a 500, an exception, or an answer Lambda cannot return.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from handler.app import app, lambda_handler
from handler.config import LAMBDA_PAYLOAD_BYTES
from tests.conftest import image_bytes
from tests.handler.test_app import Context, _v1, _v2

PNG = image_bytes("PNG", (48, 32))


def _alb(method: str, path: str, body: bytes, headers: dict[str, str], query: dict[str, str] | None = None) -> dict:
    """An Application Load Balancer target event (single-value headers), the shape Mangum serves as ALB."""
    import base64

    return {
        "requestContext": {"elb": {"targetGroupArn": "arn:aws:elasticloadbalancing:us-east-1:1:targetgroup/t/1"}},
        "httpMethod": method,
        "path": path,
        "queryStringParameters": query or {},
        "headers": headers,
        "body": base64.b64encode(body).decode(),
        "isBase64Encoded": True,
    }


EVENTS = {"apigw-v1": _v1, "apigw-v2": _v2, "alb": _alb}


def _error(response: Any, status: int, code: str) -> dict:
    """The error body of a Lambda proxy answer, checked for status, shape and size."""
    assert isinstance(response, dict) and response["statusCode"] == status, response
    assert len(json.dumps(response, ensure_ascii=False).encode()) <= LAMBDA_PAYLOAD_BYTES
    body = json.loads(response["body"])
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    return body


@pytest.fixture
def ctx(serving_env: Path) -> Context:
    return Context()


@pytest.mark.parametrize("entry", sorted(EVENTS))
@pytest.mark.parametrize("declared", ["9" * 4301, "1" + "0" * 5000, "0" * 5000 + "1" + "0" * 9])
def test_a_content_length_of_thousands_of_digits_is_a_413(ctx: Context, entry: str, declared: str) -> None:
    """int() refuses a string of over 4,300 digits (ValueError): the header was a 500 `internal_error`."""
    event = EVENTS[entry]("POST", "/caption", PNG, {"content-type": "image/png", "content-length": declared})
    _error(lambda_handler(event, ctx), 413, "too_large")


def test_a_content_length_of_thousands_of_digits_is_a_413_under_uvicorn(serving_env: Path) -> None:
    client = TestClient(app, raise_server_exceptions=False)
    for content_type in ("image/png", "application/json", "multipart/form-data; boundary=b"):
        response = client.post(
            "/caption", content=PNG, headers={"content-type": content_type, "content-length": "9" * 5000}
        )
        assert response.status_code == 413 and response.json()["error"]["code"] == "too_large", response.text


@pytest.mark.parametrize("declared", ["0" * 5000 + str(len(PNG)), f"{len(PNG)}"])
def test_a_content_length_within_the_limit_is_served(ctx: Context, declared: str) -> None:
    """Leading zeros are still the number they spell: the refusal counts digits of the value, not of the text."""
    event = _v2("POST", "/caption", PNG, {"content-type": "image/png", "content-length": declared})
    response = lambda_handler(event, ctx)
    assert response["statusCode"] == 200, response


def _asgi_post(path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, bytes]:
    """One request straight into the ASGI app, header bytes as given (httpx and Mangum would re-encode them)."""
    import asyncio

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize("declared", [b"\xb2", b"\xb9\xb2\xb3"])
def test_a_content_length_of_superscript_digits_is_not_a_number(serving_env: Path, declared: bytes) -> None:
    """Latin-1 0xB2 is '²', a digit to str.isdigit but not to int(): it was a 500 `internal_error`."""
    headers = [(b"content-type", b"image/png"), (b"content-length", declared)]
    status, body = _asgi_post("/caption", headers, PNG)
    assert status == 200 and json.loads(body)["caption"], body
