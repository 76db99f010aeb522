"""The HTTP envelope as API Gateway delivers it: odd events, headers and bodies through `lambda_handler`.

Each case is a full API Gateway REST (v1), HTTP API (v2) or ALB event sent to the Lambda entry, with
Mangum and the real app behind it; what it must answer is a 4xx (or 503) in the one error shape, never
a 500, an exception, or an answer Lambda cannot return.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from handler.app import app, lambda_handler
from handler.config import LAMBDA_PAYLOAD_BYTES
from handler.logs import logger
from tests.conftest import image_bytes
from tests.handler.test_app import Context, _multipart, _v1, _v2
from tests.handler.test_hostile_corpus import LogLines

PNG = image_bytes("PNG", (48, 32))


def _alb(method: str, path: str, body: bytes, headers: dict[str, str], query: dict[str, str] | None = None) -> dict:
    """An Application Load Balancer target event (single-value headers), the shape Mangum serves as ALB."""
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

    loop = asyncio.new_event_loop()  # not asyncio.run: it leaves the thread without a loop, which Mangum needs
    try:
        loop.run_until_complete(app(scope, receive, send))
    finally:
        loop.close()
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize("declared", [b"\xb2", b"\xb9\xb2\xb3"])
def test_a_content_length_of_superscript_digits_is_not_a_number(serving_env: Path, declared: bytes) -> None:
    """Latin-1 0xB2 is '²', a digit to str.isdigit but not to int(): it was a 500 `internal_error`."""
    headers = [(b"content-type", b"image/png"), (b"content-length", declared)]
    status, body = _asgi_post("/caption", headers, PNG)
    assert status == 200 and json.loads(body)["caption"], body


# ------------------------------------------------------------------ property: any envelope, never a 5xx but 503

HEADER_NAMES = [
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "expect",
    "origin",
    "host",
    "x-forwarded-for",
    "access-control-request-method",
    "accept",
    "cookie",
]
DIGITS = st.text(alphabet="0123456789", min_size=1, max_size=50)
CONTENT_LENGTHS = st.one_of(
    st.integers(0, 10_000_000).map(str),
    st.integers(4_000, 6_000).map(lambda n: "9" * n),  # past int()'s 4,300 digits
    st.text(max_size=10),
)
HEADER_VALUES = st.one_of(
    st.text(max_size=40),
    DIGITS,
    st.sampled_from(
        ["image/png", "application/json", "multipart/form-data; boundary=b", "gzip", "identity", "-1", "²"]
    ),
    st.builds(
        str.__add__,
        st.sampled_from(["image/png; ", "application/json; ", "multipart/form-data; "]),
        st.text(max_size=60),
    ),
)
QUERY_VALUES = st.one_of(
    st.text(max_size=30), DIGITS, st.sampled_from(["png", "json", "caption", "caption,detect", "0.5", "nan", "1e999"])
)
_MULTIPART, _MULTIPART_TYPE = _multipart(PNG, "photo.png")
BODIES = st.one_of(
    st.just(PNG),
    st.binary(max_size=200),
    st.just(json.dumps({"image_base64": base64.b64encode(PNG).decode()}).encode()),
    st.just(_MULTIPART),
)
ENVELOPE = settings(
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def log_lines(serving_env: Path) -> Iterator[LogLines]:
    lines = LogLines()
    logger().addHandler(lines)
    try:
        yield lines
    finally:
        logger().removeHandler(lines)


@ENVELOPE
@given(
    entry=st.sampled_from(sorted(EVENTS)),
    method=st.one_of(st.just("POST"), st.sampled_from(["GET", "HEAD", "OPTIONS", "PATCH", "TRACE", "CONNECT"])),
    path=st.one_of(
        st.sampled_from(["/caption", "/detect", "/analyze", "/caption/"]),
        st.sampled_from(["/health", "/", "/openapi.json", "/nope", "/caption/../health", "/caption%2F"]),
        st.text(max_size=30).map(lambda text: "/" + text),
    ),
    content_length=st.one_of(st.none(), CONTENT_LENGTHS),
    body=BODIES,
    headers=st.dictionaries(st.one_of(st.sampled_from(HEADER_NAMES), st.text(max_size=20)), HEADER_VALUES, max_size=6),
    query=st.dictionaries(
        st.one_of(st.sampled_from(["format", "min_score", "tasks"]), st.text(max_size=10)), QUERY_VALUES, max_size=4
    ),
)
@example(  # the Content-Length that was a 500
    entry="apigw-v2",
    method="POST",
    path="/caption",
    body=PNG,
    headers={"content-type": "image/png"},
    query={},
    content_length="9" * 5000,
)
def test_any_envelope_is_answered_in_the_error_shape_never_a_500(
    log_lines: LogLines,
    entry: str,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    query: dict[str, str],
    content_length: str | None,
) -> None:
    """Methods, paths, header and query values, and Content-Length past int()'s limit, through v1, v2 and ALB."""
    if content_length is not None:
        headers = {**headers, "content-length": content_length}
    log_lines.lines.clear()
    response = lambda_handler(EVENTS[entry](method, path, body, headers, query), Context())
    status = response["statusCode"]
    assert status < 500 or status == 503, response
    assert [line["status"] for line in log_lines.lines] == [status], (status, log_lines.lines)
    assert len(json.dumps(response, ensure_ascii=False).encode()) <= LAMBDA_PAYLOAD_BYTES
    if method == "HEAD":  # GET's status and headers, never a body (RFC 9110 9.3.2)
        assert response["body"] == "", response
    elif status >= 400:
        _error(response, status, json.loads(response["body"])["error"]["code"])


# ------------------------------------------------------------------ shapes that were already answered well

FILENAMES = {
    b"../../etc/passwd": 200,  # the filename is never used: no path is built from it
    b"a/b\\c.png": 200,
    b"\x00\x01\x1b[31m.png": 200,
    b"\xff\xfe": 200,
    b"": 200,
    b"x" * 10_240: 422,  # python-multipart refuses a part header line over 4,224 bytes
    b"a\r\nb": 422,
}


@pytest.mark.parametrize("filename", sorted(FILENAMES))
def test_multipart_filenames_are_never_used(ctx: Context, filename: bytes) -> None:
    part = b'Content-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n\r\n' + PNG
    body = b"--b\r\n" + part + b"\r\n--b--\r\n"
    response = lambda_handler(_v1("POST", "/caption", body, {"content-type": "multipart/form-data; boundary=b"}), ctx)
    if FILENAMES[filename] == 200:
        assert response["statusCode"] == 200 and json.loads(response["body"])["caption"], response
    else:
        _error(response, 422, "invalid_request")


@pytest.mark.parametrize(
    ("query", "status"),
    [({"format": "%ZZ"}, 422), ({"format": "%70ng"}, 200), ({"min_score": "%F0"}, 422), ({"%ZZ": "%"}, 200)],
)
def test_alb_query_strings_are_decoded_once(ctx: Context, query: dict[str, str], status: int) -> None:
    """An ALB passes the query string as the client sent it, percent-encoded; Mangum decodes it once."""
    response = lambda_handler(_alb("POST", "/detect", PNG, {"content-type": "image/png"}, query), ctx)
    assert response["statusCode"] == status, response
    if status >= 400:
        _error(response, status, "invalid_request")


def test_an_app_that_cannot_be_built_is_ours_a_500_not_a_bad_event(
    log_lines: LogLines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building FastAPI is our code: its failure was answered 400 `bad_event`, "malformed HTTP event"."""
    import handler.app
    import handler.http.api

    def broken() -> Any:
        raise ImportError("cannot import name 'FastAPI'")

    monkeypatch.setattr(handler.http.api, "create_app", broken)
    handler.app._asgi_app.cache_clear()
    handler.app._mangum.cache_clear()
    try:
        response = lambda_handler(_v2("POST", "/caption", PNG, {"content-type": "image/png"}), Context())
    finally:
        monkeypatch.undo()
        handler.app._asgi_app.cache_clear()
        handler.app._mangum.cache_clear()
    body = _error(response, 500, "internal_error")
    assert "FastAPI" not in body["error"]["message"]  # the cause goes to the log, not to the caller
    assert [line["status"] for line in log_lines.lines] == [500]
