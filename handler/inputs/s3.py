"""Reading and writing S3 objects with limits and errors the API can report.

boto3 costs about half a second to import, so it is imported on first S3 use, not with the app.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from handler.errors import (
    BadRequest,
    Forbidden,
    Misconfigured,
    NotFound,
    TooLarge,
    UpstreamError,
    UpstreamUnavailable,
)

MAX_KEY_BYTES = 1024
"""S3's limit on an object key, in UTF-8 bytes."""
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
"""S3's rule for bucket names (3-63 lowercase letters, digits, dots and hyphens)."""
_MISSING_CODES = frozenset({"404", "NoSuchKey", "NoSuchBucket", "NotFound"})
_DENIED_CODES = frozenset({"403", "AccessDenied", "Forbidden", "AllAccessDisabled"})
_BUSY_CODES = frozenset({"503", "SlowDown", "ServiceUnavailable", "Throttling", "ThrottlingException"})
_TRANSIENT_4XX = frozenset({"RequestTimeout", "RequestTimeTooSkewed", "PreconditionFailed", "412", "409"})
"""4xx answers that are not the caller's fault: a slow link, a clock, an object overwritten mid-read."""
_KMS_PREFIX = "KMS."
"""S3's 400s for an SSE-KMS object whose key is disabled, pending deletion, missing or throttled
(`KMS.DisabledException`, ...): the bucket owner's key, not the request, and fixed by fixing the key.
As a 400 they became error results that stuck to the object's ETag, so a redelivery never retried."""


S3_CONNECT_TIMEOUT_S, S3_READ_TIMEOUT_S, S3_ATTEMPTS = 2, 3, 2
"""Per S3 call: seconds to connect, seconds of silence while reading, tries. botocore's defaults (60 s,
60 s, 5 tries in legacy mode) let a stalled S3 hold a request for minutes, past API Gateway's wait, so
the caller got API Gateway's own 504 instead of our 502. A read is two calls (HEAD, then GET): at most
2 x 2 x (2 + 3) = 20 s, inside API_GATEWAY_TIMEOUT_S. A healthy S3 answers in milliseconds."""


@functools.cache
def s3_client() -> Any:
    """One client per process (clients are thread-safe); tests clear the cache to rebind to moto."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=S3_CONNECT_TIMEOUT_S,
        read_timeout=S3_READ_TIMEOUT_S,
        retries={"mode": "standard", "total_max_attempts": S3_ATTEMPTS},
    )
    return boto3.client("s3", config=config)


@dataclass
class S3Object:
    bucket: str
    key: str
    body: bytes
    etag: str


def check_key(key: str) -> None:
    """Refuse a key S3 can never hold (lone surrogates, over 1,024 bytes) before botocore sees it."""
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise BadRequest(f"S3 key {key!r} is not valid UTF-8: {exc.reason}") from exc
    if not 0 < size <= MAX_KEY_BYTES:
        raise BadRequest(f"S3 key is {size} bytes in UTF-8; S3 keys are 1 to {MAX_KEY_BYTES} bytes")


def check_bucket_name(bucket: str) -> None:
    if not BUCKET_NAME.fullmatch(bucket):
        raise BadRequest(f"{bucket!r} is not a valid S3 bucket name")


def _client_error_code(exc: Exception) -> tuple[str, int] | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return str(response.get("Error", {}).get("Code")), int(status) if isinstance(status, int) else 0
    return None


def _is_connection_error(exc: Exception) -> bool:
    """Network faults between us and S3: botocore's connection/timeout errors and urllib3's."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError, ResponseStreamingError

    return isinstance(
        exc, (BotoConnectionError, HTTPClientError, ResponseStreamingError, ConnectionError, TimeoutError)
    )


def translate_error(exc: Exception, bucket: str, key: str) -> Exception:
    """Class a botocore failure: the caller's (4xx, never retried), S3's (502/503, retried) or ours.

    Missing credentials are ours too, named (`misconfigured`); anything unrecognised passes
    through untouched and is ours: the entry point answers 500.
    """
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError

    where = f"s3://{bucket}/{key!r}"
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        # The function has no role to sign with: the deployment's fault, which no retry fixes.
        return Misconfigured(f"cannot call S3 for {where}: {exc}")
    error = _client_error_code(exc)
    if error is None:
        if _is_connection_error(exc):
            return UpstreamError(f"S3 unreachable reading {where}: {type(exc).__name__}")
        return exc
    code, status = error
    if code == "NoSuchBucket":  # a write names the bucket in its answer; a HEAD only says 404
        return NotFound(f"bucket {bucket!r} does not exist")
    if code in _MISSING_CODES or status == 404:
        return NotFound(f"{where} does not exist")
    if code in _DENIED_CODES or status == 403:
        return Forbidden(f"access to {where} was denied ({code})")  # AccessDenied, InvalidObjectState, ...
    if code in _BUSY_CODES or status in (429, 503) or (code.startswith(_KMS_PREFIX) and "Throttl" in code):
        return UpstreamUnavailable(f"S3 is busy ({code}) for {where}; retry later")
    if code.startswith(_KMS_PREFIX):
        return UpstreamError(f"S3 could not use the KMS key of {where}: {code}")
    if code in _TRANSIENT_4XX or status >= 500 or status == 0:
        return UpstreamError(f"S3 error {code} for {where}")
    return BadRequest(f"S3 refused {where}: {code}")


@dataclass
class ObjectHead:
    size: int
    etag: str
    """Quoted, exactly as S3 returns it, so it can be passed back in IfMatch."""
    version_id: str | None = None
    """The current version's id in a versioned bucket ("null" for one written while versioning was off)."""


def head(bucket: str, key: str) -> ObjectHead:
    check_key(key)
    try:
        response = s3_client().head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        raise translate_error(exc, bucket, key) from exc
    return ObjectHead(int(response["ContentLength"]), response["ETag"], response.get("VersionId"))


def download(bucket: str, key: str, object_head: ObjectHead, max_bytes: int) -> S3Object:
    """Download an object whose size was checked from its header, so a huge upload is never read."""
    if object_head.size > max_bytes:
        raise TooLarge(f"s3://{bucket}/{key} is {object_head.size} bytes; the limit is {max_bytes}")
    try:
        # IfMatch pins the version we sized, so a concurrent overwrite cannot slip a bigger object in.
        response = s3_client().get_object(Bucket=bucket, Key=key, IfMatch=object_head.etag)
        body = response["Body"].read(max_bytes + 1)
    except Exception as exc:
        raise translate_error(exc, bucket, key) from exc
    if len(body) > max_bytes:
        raise TooLarge(f"s3://{bucket}/{key} is over the limit of {max_bytes} bytes")
    return S3Object(bucket, key, body, object_head.etag.strip('"'))


def fetch(bucket: str, key: str, max_bytes: int) -> S3Object:
    return download(bucket, key, head(bucket, key), max_bytes)


def head_metadata(bucket: str, key: str) -> dict[str, str] | None:
    """User metadata of an object, or None when it does not exist."""
    check_key(key)
    try:
        return s3_client().head_object(Bucket=bucket, Key=key).get("Metadata", {})
    except Exception as exc:
        if isinstance(translate_error(exc, bucket, key), NotFound):
            return None
        raise translate_error(exc, bucket, key) from exc


def put_json(bucket: str, key: str, payload: bytes, metadata: dict[str, str]) -> None:
    check_key(key)
    try:
        s3_client().put_object(Bucket=bucket, Key=key, Body=payload, ContentType="application/json", Metadata=metadata)
    except Exception as exc:
        raise translate_error(exc, bucket, key) from exc
