"""Reading and writing S3 objects with limits and errors the API can report.

boto3 costs about half a second to import, so it is imported on first S3 use, not with the app.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from handler.errors import Forbidden, NotFound, TooLarge, UpstreamError

_MISSING_CODES = frozenset({"404", "NoSuchKey", "NoSuchBucket", "NotFound"})
_DENIED_CODES = frozenset({"403", "AccessDenied", "Forbidden"})


@functools.cache
def s3_client() -> Any:
    """One client per process (clients are thread-safe); tests clear the cache to rebind to moto."""
    import boto3

    return boto3.client("s3")


@dataclass
class S3Object:
    bucket: str
    key: str
    body: bytes
    etag: str


def _client_error_code(exc: Exception) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code"))
    return None


def translate_error(exc: Exception, bucket: str, key: str) -> Exception:
    """Map botocore errors onto the service's vocabulary; other exceptions pass through untouched."""
    code = _client_error_code(exc)
    if code is None:
        return exc
    if code in _MISSING_CODES:
        return NotFound(f"s3://{bucket}/{key} does not exist")
    if code in _DENIED_CODES:
        return Forbidden(f"access to s3://{bucket}/{key} was denied")
    return UpstreamError(f"S3 error {code} for s3://{bucket}/{key}")


@dataclass
class ObjectHead:
    size: int
    etag: str
    """Quoted, exactly as S3 returns it, so it can be passed back in IfMatch."""


def head(bucket: str, key: str) -> ObjectHead:
    try:
        response = s3_client().head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        raise translate_error(exc, bucket, key) from exc
    return ObjectHead(int(response["ContentLength"]), response["ETag"])


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
    try:
        return s3_client().head_object(Bucket=bucket, Key=key).get("Metadata", {})
    except Exception as exc:
        if _client_error_code(exc) in _MISSING_CODES:
            return None
        raise translate_error(exc, bucket, key) from exc


def put_json(bucket: str, key: str, payload: bytes, metadata: dict[str, str]) -> None:
    s3_client().put_object(Bucket=bucket, Key=key, Body=payload, ContentType="application/json", Metadata=metadata)
