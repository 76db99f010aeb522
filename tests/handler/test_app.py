"""`lambda_handler` with the API Gateway events `sam local generate-event` writes, and direct invokes.

Bodies are real images (base64, as API Gateway delivers binary) and real multipart uploads; the
responses must come back byte-exact through Mangum.
"""

from __future__ import annotations

import base64
import copy
import io
import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from PIL import Image

from handler.app import event_kind, lambda_handler
from tests.conftest import REPO_ROOT, scene_with_scored_boxes

EVENTS = REPO_ROOT / "events"


@dataclass
class Context:
    """What the Lambda runtime passes as `context`, reduced to the fields the handler reads."""

    aws_request_id: str = "req-123"
    function_name: str = "florence"


def _v1(method: str, path: str, body: bytes, headers: dict[str, str], query: dict[str, str] | None = None) -> dict:
    event = json.loads((EVENTS / "apigw_v1.json").read_text())
    event.update(
        httpMethod=method,
        path=path,
        resource=path,
        body=base64.b64encode(body).decode(),
        isBase64Encoded=True,
        queryStringParameters=query or None,
        multiValueQueryStringParameters={k: [v] for k, v in (query or {}).items()} or None,
    )
    event["headers"] = {**event["headers"], **headers}
    event["multiValueHeaders"] = {k: [v] for k, v in event["headers"].items()}
    event["requestContext"].update(httpMethod=method, path=path)
    return event


def _v2(
    method: str, path: str, body: bytes | str, headers: dict[str, str], query: dict[str, str] | None = None
) -> dict:
    event = json.loads((EVENTS / "apigw_v2.json").read_text())
    binary = isinstance(body, bytes)
    event.update(
        rawPath=path,
        rawQueryString=urlencode(query or {}),
        queryStringParameters=query or None,
        body=base64.b64encode(body).decode() if binary else body,
        isBase64Encoded=binary,
    )
    event["headers"] = {**event["headers"], **headers}
    event["requestContext"]["http"].update(method=method, path=path)
    return event


def _multipart(data: bytes, filename: str = "photo.jpg") -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/", files={"file": (filename, data, "image/jpeg")})
    return request.read(), request.headers["content-type"]


def _json_body(response: dict) -> dict:
    assert response["isBase64Encoded"] is False, response
    return json.loads(response["body"])


@pytest.fixture
def ctx(serving_env: Path) -> Context:
    return Context()


def test_event_templates_are_recognised() -> None:
    assert event_kind(json.loads((EVENTS / "apigw_v1.json").read_text())) == "http"
    assert event_kind(json.loads((EVENTS / "apigw_v2.json").read_text())) == "http"
    assert event_kind(json.loads((EVENTS / "s3_put.json").read_text())) == "s3"
    assert event_kind({"task": "caption"}) == "direct"
    assert event_kind({"hello": 1}) == event_kind([1]) == event_kind("x") == "unknown"


@pytest.mark.parametrize("make", [_v1, _v2], ids=["v1", "v2"])
def test_caption_through_api_gateway(make, ctx: Context, jpeg_bytes: bytes) -> None:
    response = lambda_handler(make("POST", "/caption", jpeg_bytes, {"content-type": "image/jpeg"}), ctx)
    assert response["statusCode"] == 200
    body = _json_body(response)
    assert isinstance(body["caption"], str) and body["image"]["bytes"] == len(jpeg_bytes)
    assert body["image"]["format"] == "JPEG"


@pytest.mark.parametrize("make", [_v1, _v2], ids=["v1", "v2"])
def test_multipart_equals_raw_body(make, ctx: Context, jpeg_bytes: bytes) -> None:
    raw = _json_body(lambda_handler(make("POST", "/analyze", jpeg_bytes, {"content-type": "image/jpeg"}), ctx))
    body, content_type = _multipart(jpeg_bytes)
    multi = _json_body(lambda_handler(make("POST", "/analyze", body, {"content-type": content_type}), ctx))
    assert multi["image"] == raw["image"]  # same byte count: the upload arrived byte-exact
    assert multi["caption"] == raw["caption"] and multi["detections"] == raw["detections"]


@pytest.mark.parametrize("make", [_v1, _v2], ids=["v1", "v2"])
def test_detect_png_comes_back_base64_and_decodes(make, ctx: Context, png_bytes: bytes) -> None:
    event = make("POST", "/detect", png_bytes, {"content-type": "image/png"}, {"format": "png"})
    response = lambda_handler(event, ctx)
    assert response["statusCode"] == 200 and response["isBase64Encoded"] is True
    headers = {k.lower(): v for k, v in response["headers"].items()}
    assert headers["content-type"] == "image/png" and headers["x-model-sha"]
    png = base64.b64decode(response["body"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    img = Image.open(io.BytesIO(png))
    img.load()
    assert img.size == (96, 64)


def test_json_base64_body_through_v2(ctx: Context, png_bytes: bytes) -> None:
    payload = json.dumps({"image_base64": base64.b64encode(png_bytes).decode()})
    response = lambda_handler(_v2("POST", "/detect", payload, {"content-type": "application/json"}), ctx)
    assert response["statusCode"] == 200 and "detections" in _json_body(response)


def test_errors_through_api_gateway(ctx: Context, png_bytes: bytes) -> None:
    not_image = lambda_handler(_v1("POST", "/caption", b"plain text", {"content-type": "image/png"}), ctx)
    assert not_image["statusCode"] == 400 and _json_body(not_image)["error"]["code"] == "bad_image"
    wrong_type = lambda_handler(_v2("POST", "/caption", png_bytes, {"content-type": "text/csv"}), ctx)
    assert wrong_type["statusCode"] == 415
    missing = lambda_handler(_v2("GET", "/missing", b"", {}), ctx)
    assert missing["statusCode"] == 404 and _json_body(missing)["error"]["code"] == "not_found"


def test_health_through_function_url_shape(ctx: Context) -> None:
    event = _v2("GET", "/health", "", {})
    event["requestContext"]["domainName"] = "abcdefg.lambda-url.us-east-1.on.aws"  # Function URLs use v2
    response = lambda_handler(event, ctx)
    assert response["statusCode"] == 200 and _json_body(response)["status"] == "ok"


def test_malformed_http_event_is_a_clear_400(ctx: Context) -> None:
    response = lambda_handler({"requestContext": {"http": {}}, "body": "x"}, ctx)
    assert response["statusCode"] == 400
    assert json.loads(response["body"])["error"]["code"] == "bad_event"


# --- direct invokes ------------------------------------------------------------------------------


def test_direct_invokes(ctx: Context, png_bytes: bytes) -> None:
    b64 = base64.b64encode(png_bytes).decode()
    caption = lambda_handler({"task": "caption", "image_base64": b64}, ctx)
    detect = lambda_handler({"task": "detect", "image_base64": b64}, ctx)
    both = lambda_handler({"task": "analyze", "image_base64": b64}, ctx)
    only = lambda_handler({"task": "analyze", "tasks": ["detect"], "image_base64": b64}, ctx)
    assert "statusCode" not in caption and isinstance(caption["caption"], str)
    assert both["caption"] == caption["caption"] and both["detections"] == detect["detections"]
    assert "caption" not in only and only["detections"] == detect["detections"]
    assert caption["model_sha"] and caption["image"]["width"] == 96


def test_direct_invoke_min_score_filters_boxes(ctx: Context) -> None:
    def detect(png: bytes) -> dict:
        # the task's own answer: "analyze" decodes both tasks as one batch, which can move a score's fourth decimal
        return lambda_handler({"task": "detect", "image_base64": base64.b64encode(png).decode()}, ctx)

    png, answer = scene_with_scored_boxes(detect)
    scores = [d["score"] for d in answer["detections"]]
    floor = (min(scores) + max(scores)) / 2
    event = {"task": "detect", "image_base64": base64.b64encode(png).decode(), "min_score": floor}
    kept = lambda_handler(event, ctx)["detections"]
    assert kept == [d for d in answer["detections"] if d["score"] >= floor] and 0 < len(kept) < len(scores)
    as_text = lambda_handler({**event, "min_score": str(floor)}, ctx)["detections"]  # userArguments are strings
    assert as_text == kept


@pytest.mark.parametrize(
    ("event", "code"),
    [
        ({"task": "segment", "image_base64": "aGk="}, "invalid_request"),
        ({"task": "caption"}, "invalid_request"),
        ({"task": "caption", "image_base64": "!!"}, "invalid_request"),
        ({"task": "caption", "image_base64": base64.b64encode(b"not an image").decode()}, "bad_image"),
        ({"task": "caption", "s3": {"bucket": "not-allowed", "key": "k"}}, "forbidden"),
        ({"task": "analyze", "tasks": "caption,nope", "image_base64": "aGk="}, "invalid_request"),
        ({"task": "detect", "min_score": 1.5, "image_base64": "aGk="}, "invalid_request"),
        ({"task": "detect", "min_score": True, "image_base64": "aGk="}, "invalid_request"),
        ({"task": "detect", "min_score": "lots", "image_base64": "aGk="}, "invalid_request"),
        (
            {"task": "caption", "image_base64": "aGk=", "s3": {"bucket": "allowed-bucket", "key": "k"}},
            "invalid_request",
        ),
    ],
)
def test_direct_invoke_errors_are_plain_dicts(ctx: Context, event: dict, code: str) -> None:
    response = lambda_handler(copy.deepcopy(event), ctx)
    assert set(response) == {"error"} and response["error"]["code"] == code and response["error"]["message"]


@pytest.mark.parametrize(
    "event",
    [{"hello": "world"}, [], "caption", None, {"Records": [{"eventSource": "aws:kinesis"}]}, {"source": "aws.ec2"}],
)
def test_unknown_events_get_a_clear_error(ctx: Context, event, capsys: pytest.CaptureFixture) -> None:
    response = lambda_handler(event, ctx)
    assert response["error"]["code"] == "unsupported_event" and "expected" in response["error"]["message"]
    log = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert log["request_id"] == "req-123" and log["error"] == "unsupported_event"


def test_direct_invoke_logs_one_line(ctx: Context, png_bytes: bytes, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    lambda_handler({"task": "detect", "image_base64": base64.b64encode(png_bytes).decode()}, Context("abc"))
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
    assert len(lines) == 1
    assert lines[0]["request_id"] == "abc" and lines[0]["task"] == "detect" and lines[0]["source"] == "direct"
    assert lines[0]["model_sha"] and lines[0]["image"]["height"] == 64 and lines[0]["latency_ms"] > 0


def test_api_gateway_request_logs_the_lambda_request_id(
    ctx: Context, png_bytes: bytes, capsys: pytest.CaptureFixture
) -> None:
    capsys.readouterr()
    lambda_handler(_v2("POST", "/caption", png_bytes, {"content-type": "image/png"}), Context("gw-42"))
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
    assert len(lines) == 1
    assert lines[0]["request_id"] == "gw-42" and lines[0]["task"] == "caption" and lines[0]["status"] == 200
    assert lines[0]["image"]["bytes"] == len(png_bytes) and lines[0]["model_sha"]


def test_an_unexpected_exception_is_the_documented_500_and_logged_as_such(
    ctx: Context, png_bytes: bytes, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A bug (not bad input) must not escape to the runtime as a stack trace, nor log a 200."""
    from handler.events import direct

    def broken(event, settings):
        raise RuntimeError("a bug")

    monkeypatch.setattr(direct, "handle", broken)
    response = lambda_handler({"task": "caption", "image_base64": "aGk="}, ctx)
    assert response["error"]["code"] == "internal_error" and "a bug" not in response["error"]["message"]
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(line["status"], line["error"]) for line in logged] == [(500, "internal_error")]


@pytest.mark.parametrize(
    "event",
    [
        {"task": ["caption"], "image_base64": "aGk="},
        {"task": {"caption": 1}, "image_base64": "aGk="},
        {"task": "caption", "image_base64": 12},
        {"task": "analyze", "tasks": [1, 2], "image_base64": "aGk="},
        {"task": "caption", "s3": {"bucket": "allowed-bucket", "key": ["k"]}},
        {"task": "caption", "s3": "bucket/key"},
        {"task": "detect", "min_score": 10**400, "image_base64": "aGk="},  # JSON's integers have no bound; a float has
        {"task": "detect", "min_score": -(10**400), "image_base64": "aGk="},
        {"task": "analyze", "tasks": ["caption"] * 9, "image_base64": "aGk="},
    ],
)
def test_direct_invoke_fields_of_the_wrong_type_are_422(ctx: Context, event: dict, capsys) -> None:
    response = lambda_handler(event, ctx)
    assert response["error"]["code"] == "invalid_request", response
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert logged[-1]["status"] == 422


def test_an_http_event_with_fields_of_the_wrong_type_is_a_400(ctx: Context, png_bytes: bytes) -> None:
    event = _v1("POST", "/caption", png_bytes, {"content-type": "image/png"})
    event["httpMethod"] = ["POST"]  # reached routing as a list, and failed there as a 500
    response = lambda_handler(event, ctx)
    assert response["statusCode"] == 400 and "httpMethod" in _json_body(response)["error"]["message"]


def test_a_setting_that_does_not_parse_answers_misconfigured_at_every_door(
    ctx: Context, png_bytes: bytes, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A deployment fault, not the caller's: each door answers 500 `misconfigured` in its own shape,
    naming the setting, and logs that status; S3 events raise so Lambda retries them after the fix."""
    monkeypatch.setenv("MAX_S3_IMAGE_BYTES", "20MB")
    capsys.readouterr()
    http = lambda_handler(_v2("POST", "/caption", png_bytes, {"content-type": "image/png"}), ctx)
    assert http["statusCode"] == 500 and _json_body(http)["error"]["code"] == "misconfigured"
    assert "MAX_S3_IMAGE_BYTES" in _json_body(http)["error"]["message"]
    direct = lambda_handler({"task": "caption", "image_base64": base64.b64encode(png_bytes).decode()}, ctx)
    assert direct["error"]["code"] == "misconfigured"
    batch_event = json.loads((EVENTS / "s3_batch_v2.json").read_text())
    batch = lambda_handler(batch_event, ctx)
    assert [r["taskId"] for r in batch["results"]] == [t["taskId"] for t in batch_event["tasks"]]
    assert {r["resultCode"] for r in batch["results"]} == {"PermanentFailure"}
    assert all(r["resultString"].startswith("misconfigured: ") for r in batch["results"])
    with pytest.raises(Exception, match="MAX_S3_IMAGE_BYTES"):
        lambda_handler(json.loads((EVENTS / "s3_put.json").read_text()), ctx)
    logs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(log["status"], log["error"]) for log in logs] == [(500, "misconfigured")] * 4


def test_a_setting_that_does_not_parse_answers_misconfigured_over_plain_asgi(
    serving_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`uvicorn handler.app:app` reads the settings per request too; a bad one is JSON, not Starlette's text 500."""
    from fastapi.testclient import TestClient

    from handler.app import asgi_app

    monkeypatch.setenv("LOG_LEVEL", "loud")
    response = TestClient(asgi_app()).get("/health")
    assert response.status_code == 500 and response.json()["error"]["code"] == "misconfigured"
    assert "LOG_LEVEL" in response.json()["error"]["message"]


@pytest.mark.parametrize("make", [_v1, _v2], ids=["v1", "v2"])
def test_cors_headers_reach_the_lambda_response(
    make, ctx: Context, png_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin = {"origin": "https://app.example.com"}
    before = lambda_handler(make("POST", "/caption", b"plain text", {"content-type": "image/png", **origin}), ctx)
    assert not any(k.lower().startswith("access-control-") for k in before["headers"])
    monkeypatch.setenv("CORS_ALLOW_ORIGINS", "https://app.example.com")
    error = lambda_handler(make("POST", "/caption", b"plain text", {"content-type": "image/png", **origin}), ctx)
    assert error["statusCode"] == 400 and _json_body(error)["error"]["code"] == "bad_image"
    assert {k.lower(): v for k, v in error["headers"].items()}["access-control-allow-origin"] == origin["origin"]
    preflight_headers = {
        **origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "x-api-key",
    }
    preflight = lambda_handler(make("OPTIONS", "/caption", b"", preflight_headers), ctx)
    assert preflight["statusCode"] == 200
    assert {k.lower(): v for k, v in preflight["headers"].items()}["access-control-allow-origin"] == origin["origin"]


@pytest.mark.parametrize("make", [_v1, _v2], ids=["v1", "v2"])
def test_head_answers_what_get_answers_without_a_body(make, ctx: Context) -> None:
    """Mangum returns whatever body the app sends (uvicorn drops it for HEAD): `HEAD /docs` came back
    200 with the 1,029-byte page, `HEAD /health` with its JSON, and `HEAD /` (the demo page) was a 405."""
    for path in ("/", "/health", "/docs", "/openapi.json"):
        get = lambda_handler(make("GET", path, b"", {}), ctx)
        head = lambda_handler(make("HEAD", path, b"", {}), ctx)
        assert get["statusCode"] == head["statusCode"] == 200, (path, head)
        assert get["body"] and head["body"] == "", (path, head["body"][:80])
        assert head["headers"]["content-length"] == get["headers"]["content-length"], path
        assert head["headers"]["content-type"] == get["headers"]["content-type"], path
    not_allowed = lambda_handler(make("HEAD", "/caption", b"", {}), ctx)
    assert not_allowed["statusCode"] == 405 and not_allowed["body"] == ""
