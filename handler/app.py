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

from handler.config import settings
from handler.errors import error_body
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
    """Which door an event came through: http, s3, batch (S3 Batch Operations), direct, or unknown."""
    if not isinstance(event, dict):
        return "unknown"
    context = event.get("requestContext")
    if isinstance(context, dict) and ("httpMethod" in event or "http" in context or "elb" in context):
        return "http"
    from handler.events.s3 import is_s3_event

    if is_s3_event(event):
        return "s3"
    from handler.events.batch import is_batch_event

    if is_batch_event(event):
        return "batch"
    if "task" in event:
        return "direct"
    return "unknown"


def _http_fault(message: str) -> dict[str, Any]:
    return {
        "statusCode": 400,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(error_body("bad_event", message)),
        "isBase64Encoded": False,
    }


def lambda_handler(event: Any, context: Any) -> Any:
    """Dispatch an invoke by its shape; never let bad input surface as a stack trace."""
    kind = event_kind(event)
    config = settings()
    request_id = request_id_from(context)
    if kind == "http":
        try:
            return _mangum()(event, context)
        except Exception as exc:  # a malformed API Gateway event Mangum cannot parse
            _log.warning("unparseable HTTP event: %s", exc)
            return _http_fault(f"malformed HTTP event: {exc}")
    if kind == "s3":
        from handler.events import s3 as s3_events

        return s3_events.handle(event, request_id, config)
    if kind == "batch":
        from handler.events import batch

        return batch.handle(event, request_id, config)
    with request_log(request_id, kind, config.log_level):
        if kind == "direct":
            from handler.events import direct

            return direct.handle(event, config)
        from handler.logs import annotate

        annotate(status=400, error="unsupported_event")
        keys = sorted(event)[:10] if isinstance(event, dict) else type(event).__name__
        return error_body(
            "unsupported_event",
            "expected an API Gateway/Function URL event, an S3 event, an S3 Batch Operations event, or a direct invoke"
            f' {{"task": ..., "image_base64" | "s3": ...}}; got {keys}',
        )
