"""Where an image comes from in a JSON request: inline base64 or an allowed S3 object.

Shared by the HTTP API (`application/json` bodies) and direct Lambda invokes, so both accept the
same shapes and fail with the same errors.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from handler.config import Settings
from handler.errors import Forbidden, InvalidRequest, TooLarge


def _decode_base64(value: Any, max_bytes: int) -> bytes:
    if not isinstance(value, str):
        raise InvalidRequest("image_base64 must be a string")
    if value.startswith("data:") and "," in value:  # accept data URLs as browsers produce them
        value = value.split(",", 1)[1]
    value = "".join(value.split())
    if len(value) // 4 * 3 > max_bytes + 3:  # reject before allocating the decoded copy
        raise TooLarge(f"image_base64 decodes to more than the limit of {max_bytes} bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"image_base64 is not valid base64: {exc}") from exc


def _s3_location(value: Any) -> tuple[str, str]:
    if not isinstance(value, dict):
        raise InvalidRequest('s3 must be an object {"bucket": ..., "key": ...}')
    bucket, key = value.get("bucket"), value.get("key")
    if not isinstance(bucket, str) or not bucket or not isinstance(key, str) or not key:
        raise InvalidRequest("s3.bucket and s3.key must be non-empty strings")
    return bucket, key


def image_from_payload(payload: Any, settings: Settings) -> bytes:
    """The image bytes a JSON request names; 422 when it names none, 403/404/413 from S3."""
    if not isinstance(payload, dict):
        raise InvalidRequest('JSON body must be an object with "image_base64" or "s3"')
    if "image_base64" in payload:
        return _decode_base64(payload["image_base64"], settings.max_image_bytes)
    if "s3" in payload:
        bucket, key = _s3_location(payload["s3"])
        check_bucket(bucket, settings)
        from handler.inputs import s3 as s3io

        return s3io.fetch(bucket, key, settings.max_image_bytes).body
    raise InvalidRequest('JSON body needs "image_base64" or "s3": {"bucket", "key"}')


def check_bucket(bucket: str, settings: Settings) -> None:
    if bucket not in settings.allowed_buckets:
        raise Forbidden(f"bucket {bucket!r} is not in ALLOWED_BUCKETS")
