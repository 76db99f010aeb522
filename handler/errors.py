"""The service's error vocabulary: one exception type per client-visible failure.

Every entry point (HTTP, direct invoke, S3 worker) turns these into the same
`{"error": {"code", "message"}}` body, so callers see one shape whatever door they used.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class ServiceError(Exception):
    """A failure with an HTTP status and a stable machine-readable code."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str) -> None:
        message = bounded(message)
        super().__init__(message)
        self.message = message

    def body(self) -> dict:
        return error_body(self.code, self.message)


class BadRequest(ServiceError):
    """The request names something S3 or this service can never accept (e.g. a key over 1,024 bytes)."""

    status, code = 400, "bad_request"


class BadImage(ServiceError):
    status, code = 400, "bad_image"


class Forbidden(ServiceError):
    status, code = 403, "forbidden"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class TooLarge(ServiceError):
    status, code = 413, "too_large"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class InvalidRequest(ServiceError):
    status, code = 422, "invalid_request"


class UpstreamError(ServiceError):
    """S3 failed in a way that is not the caller's fault (throttling, outage)."""

    status, code = 502, "upstream_error"


class UpstreamUnavailable(ServiceError):
    """S3 is throttling or briefly unavailable; a retry later should succeed."""

    status, code = 503, "upstream_unavailable"


class ModelUnavailable(ServiceError):
    status, code = 503, "model_unavailable"


class Misconfigured(ServiceError):
    """A setting that does not parse (MAX_IMAGE_BYTES "abc") or names a place S3 can never use (OUTPUT_BUCKET
    "s3://x"): ours, fixed by a redeploy, not a retry."""

    status, code = 500, "misconfigured"


GATEWAY_ERRORS: dict[str, tuple[int | None, str]] = {
    "MISSING_AUTHENTICATION_TOKEN": (403, "unauthenticated"),
    "INVALID_SIGNATURE": (403, "unauthenticated"),
    "EXPIRED_TOKEN": (403, "unauthenticated"),
    "INVALID_API_KEY": (403, "unauthenticated"),
    "ACCESS_DENIED": (403, "forbidden"),
    "WAF_FILTERED": (403, "forbidden"),
    "THROTTLED": (429, "throttled"),
    "QUOTA_EXCEEDED": (429, "throttled"),
    "REQUEST_TOO_LARGE": (413, "too_large"),
    "INTEGRATION_TIMEOUT": (504, "timeout"),
    "DEFAULT_4XX": (None, "api_gateway_refused"),
    "DEFAULT_5XX": (None, "api_gateway_error"),
}
"""API Gateway's own answers, given before the function runs, by response type: (status, code). template.yaml's
`GatewayResponses` answer each in the one shape with this code and API Gateway's own message, at this status
(None: API Gateway's, which varies); tests/deploy/test_template_rules.py holds the template to this table."""

MAX_MESSAGE_CHARS = 8_192
"""Messages quote what the caller sent (a task name, a bucket); past this they are cut. Room for any S3
key (1,024 bytes) quoted with repr (4 characters for an escaped byte), so S3 messages stay whole; escaped
for JSON a character can take 12 bytes, and an uncut echo of a 2 MB field outgrew Lambda's 6 MB response."""
MAX_LISTED_ERRORS = 10
"""A validation message names this many bad fields, then counts the rest (a list of a million wrong items)."""


def bounded(text: str) -> str:
    """`text` cut to MAX_MESSAGE_CHARS, saying how much was left out."""
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    return f"{text[:MAX_MESSAGE_CHARS]}... ({len(text) - MAX_MESSAGE_CHARS} more characters)"


def printable(text: str) -> str:
    """`text` with anything UTF-8 cannot carry (lone surrogates from hostile JSON) escaped, so it serializes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def shape_of(value: Any) -> str:
    """What an unexpected event or message looked like, for its error: its first ten keys, or its type."""
    return printable(str(sorted(map(str, value))[:10])) if isinstance(value, dict) else type(value).__name__


def quoted(text: str) -> str:
    """What the caller sent, as an answer or a log line repeats it: `bounded`, then `printable`."""
    return printable(bounded(text))


def error_body(code: str, message: str) -> dict:
    """The one error shape, with a message bounded in length and safe to serialize."""
    return {"error": {"code": code, "message": quoted(message)}}


def validation_message(errors: Iterable[Any]) -> str:
    """pydantic's error list as one line: `field.path: what is wrong; ...`, the first MAX_LISTED_ERRORS of them."""
    errors = list(errors)
    parts = [f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}" for err in errors[:MAX_LISTED_ERRORS]]
    if len(errors) > MAX_LISTED_ERRORS:
        parts.append(f"and {len(errors) - MAX_LISTED_ERRORS} more")
    return "; ".join(parts) or "invalid request"
