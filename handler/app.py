"""Lambda entry point and ASGI app: `handler.app.lambda_handler` and `handler.app:app`.

Importing this module must stay cheap (no torch, transformers, boto3, or even FastAPI): Lambda
runs it during init, S3 events and direct invokes never need the HTTP stack, and `/health` must
answer before any model is loaded. `app` is built on first access (uvicorn's `handler.app:app`,
or the first API Gateway event).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from typing import Any

from handler.config import SettingError, Settings, settings
from handler.errors import Misconfigured, error_body, shape_of
from handler.logs import request_id_from, request_log

TEXT_MIME_TYPES = ["application/json", "application/problem+json", "text/plain", "text/html"]
"""Everything else (image/png) leaves API Gateway base64-encoded, byte for byte."""

_log = logging.getLogger(__name__)
_build_lock = threading.Lock()


@functools.cache
def _asgi_app() -> Any:
    from handler.http.api import create_app

    return create_app()


def asgi_app() -> Any:
    """The FastAPI app, built once (FastAPI and pydantic cost ~0.4 s to import)."""
    with _build_lock:
        return _asgi_app()


def __getattr__(name: str) -> Any:
    # PEP 562: `handler.app.app` and `from handler.app import app` build the app on first use.
    if name == "app":
        return asgi_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _mangum() -> Any:
    from mangum import Mangum

    return Mangum(asgi_app(), lifespan="off", text_mime_types=TEXT_MIME_TYPES)


def event_kind(event: Any) -> str:
    """Which door an event came through: http, s3, sqs, sns, eventbridge (S3 notifications those deliver),
    batch (S3 Batch Operations), direct, or unknown."""
    if not isinstance(event, dict):
        return "unknown"
    context = event.get("requestContext")
    if isinstance(context, dict) and ("httpMethod" in event or "http" in context or "elb" in context):
        return "http"
    from handler.events.s3 import is_s3_event

    if is_s3_event(event):
        return "s3"
    from handler.events.notifications import wrapped_kind

    wrapped = wrapped_kind(event)
    if wrapped is not None:
        return wrapped
    from handler.events.batch import is_batch_event

    if is_batch_event(event):
        return "batch"
    if "task" in event:
        return "direct"
    return "unknown"


def _http_response(status: int, code: str, message: str) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(error_body(code, message)),
        "isBase64Encoded": False,
    }


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _string_map(value: Any, multi: bool = False) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and (_strings(v) if multi else isinstance(v, str)) for k, v in value.items()
    )


_HTTP_FIELD_TYPES: dict[str, Any] = {
    "httpMethod": lambda v: isinstance(v, str),
    "path": lambda v: isinstance(v, str),
    "rawPath": lambda v: isinstance(v, str),
    "rawQueryString": lambda v: isinstance(v, str),
    "version": lambda v: isinstance(v, str),
    "body": lambda v: v is None or isinstance(v, str),
    "isBase64Encoded": lambda v: isinstance(v, bool),
    "headers": lambda v: v is None or _string_map(v),
    "multiValueHeaders": lambda v: v is None or _string_map(v, multi=True),
    "queryStringParameters": lambda v: v is None or _string_map(v),
    "multiValueQueryStringParameters": lambda v: v is None or _string_map(v, multi=True),
    "cookies": lambda v: v is None or _strings(v),
}
"""What Mangum passes into the ASGI scope unchecked: a list as `httpMethod` would fail inside routing."""


def _http_event_fault(event: dict[str, Any]) -> str | None:
    """Why an API Gateway / Function URL event cannot be served, or None; Mangum reports missing keys."""
    wrong = [name for name, ok in _HTTP_FIELD_TYPES.items() if name in event and not ok(event[name])]
    http = event["requestContext"].get("http")
    if http is not None and not (isinstance(http, dict) and all(isinstance(v, str) for v in http.values())):
        wrong.append("requestContext.http")
    if not isinstance(event["requestContext"].get("identity", {}), dict):
        wrong.append("requestContext.identity")
    return f"fields of the wrong type: {', '.join(wrong)}" if wrong else None


def _serve_http(event: dict[str, Any], context: Any, request_id: str, log_level: str) -> Any:
    """Mangum and the app; the app logs its own request line, a fault outside it is logged here."""
    from handler.logs import annotate

    fault = _http_event_fault(event)
    if fault is None:
        adapter = _mangum()  # building the app is ours: a failure is the boundary's 500, not the event's fault
        try:
            return adapter(event, context)
        except Exception as exc:  # a malformed API Gateway event Mangum cannot parse
            _log.warning("unparseable HTTP event: %s", exc)
            fault = f"{type(exc).__name__}: {exc}"
    with request_log(request_id, "http", log_level):
        annotate(status=400, error="bad_event")
        return _http_response(400, "bad_event", f"malformed HTTP event: {fault}")


def _unsupported(event: Any) -> dict[str, Any]:
    from handler.logs import annotate

    annotate(status=400, error="unsupported_event")
    return error_body(
        "unsupported_event",
        "expected an API Gateway/Function URL event, an S3 event (directly, or through SQS, SNS or EventBridge),"
        " an S3 Batch Operations event, or a direct invoke"
        f' {{"task": ..., "image_base64" | "s3": ...}}; got {shape_of(event)}',
    )


def _misconfigured(event: Any, kind: str, request_id: str, exc: Misconfigured) -> Any:
    """A setting that does not parse: every door answers 500 `misconfigured` in its own shape.

    S3 events (direct or wrapped) re-raise, so Lambda retries them (and then dead-letters them) rather
    than dropping uploads until the setting is fixed; a Batch task fails permanently, to be rerun from the report.
    """
    from handler.events.notifications import KINDS

    _log.error("cannot serve a %s invoke: %s", kind, exc.message)
    with request_log(request_id, kind, Settings.log_level) as record:
        record.update(status=exc.status, error=exc.code)
    if kind == "s3" or kind in KINDS:
        raise exc
    if kind == "batch":
        from handler.events import batch

        return batch.fail_every_task(event, exc)
    if kind == "http":
        return _http_response(exc.status, exc.code, exc.message)
    return exc.body()


def lambda_handler(event: Any, context: Any) -> Any:
    """Dispatch an invoke by its shape; never let bad input surface as a stack trace.

    The catch-all is the last line: any exception that escapes (a bug, not bad input) becomes the
    documented 500 body and a request log line with status 500, so the runtime process lives on.
    S3 events, direct or wrapped, are the exception: their handler raises on purpose so Lambda retries the event.
    """
    kind = event_kind(event)
    request_id = request_id_from(context)
    try:
        config = settings()
    except SettingError as exc:
        return _misconfigured(event, kind, request_id, Misconfigured(str(exc)))
    if kind == "s3":
        from handler.events import s3 as s3_events

        return s3_events.handle(event, request_id, config)
    if kind != "http":  # the HTTP path never imports the S3 workers
        from handler.events import notifications

        if kind in notifications.KINDS:  # raises, or lists SQS messages, for what a retry may fix
            return notifications.handle(kind, event, request_id, config)
    if kind == "batch":  # answers per task; a task that fails unexpectedly is a TemporaryFailure
        from handler.events import batch

        return batch.handle(event, request_id, config)
    try:
        if kind == "http":
            return _serve_http(event, context, request_id, config.log_level)
        with request_log(request_id, kind, config.log_level):
            try:
                if kind == "direct":
                    from handler.events import direct

                    return direct.handle(event, config)
                return _unsupported(event)
            except Exception:
                from handler.logs import annotate

                _log.exception("unhandled error serving a %s invoke", kind)
                annotate(status=500, error="internal_error")
                return error_body("internal_error", f"internal error; request id {request_id}")
    except Exception:  # outside any request log: log one now, with the status the caller gets
        _log.exception("unhandled error at the Lambda boundary (%s event)", kind)
        with request_log(request_id, kind, config.log_level) as record:
            record.update(status=500, error="internal_error")
        message = f"internal error; request id {request_id}"
        if kind == "http":
            return _http_response(500, "internal_error", message)
        return error_body("internal_error", message)
