"""Where an image comes from in a JSON request: inline base64 or an allowed S3 object.

Shared by the HTTP API (`application/json` bodies) and direct Lambda invokes: both are validated by
the same pydantic models, so they accept the same shapes and fail with the same 4xx errors whatever
type a hostile field has. pydantic is imported with this module, which only requests that carry
JSON import.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError

from handler.config import Settings
from handler.errors import Forbidden, InvalidRequest, TooLarge, validation_message

ModelT = TypeVar("ModelT", bound=BaseModel)

MAX_TASK_NAMES = 8
"""More names than any request needs (there are two tasks); a longer list is refused before its items are checked."""


class S3Location(BaseModel):
    model_config = ConfigDict(strict=True)

    bucket: StrictStr = Field(min_length=1, description="must be listed in ALLOWED_BUCKETS")
    key: StrictStr = Field(min_length=1, description="1 to 1,024 bytes of UTF-8")


class ImagePayload(BaseModel):
    """The JSON body of `/caption`, `/detect` and `/analyze`: one of `image_base64` or `s3`."""

    model_config = ConfigDict(strict=True)

    image_base64: StrictStr | None = Field(None, description="the image file, base64 (a data: URL is accepted)")
    s3: S3Location | None = Field(None, description="an object in an allowed bucket")


class DirectInvoke(ImagePayload):
    """A direct Lambda invoke: the JSON body plus the task(s) the HTTP API takes from the path."""

    task: Literal["caption", "detect", "analyze"]
    tasks: StrictStr | Annotated[list[StrictStr], Field(max_length=MAX_TASK_NAMES)] | None = Field(
        None, description='with task "analyze": which tasks'
    )
    min_score: StrictFloat | StrictInt | StrictStr | None = Field(None, description="hide boxes scored below, 0..1")


def parse_as(model: type[ModelT], payload: Any) -> ModelT:
    """`payload` validated as `model`, or a 422 that names every bad field."""
    if not isinstance(payload, dict):
        raise InvalidRequest(f"expected a JSON object, got {type(payload).__name__}")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise InvalidRequest(validation_message(exc.errors(include_input=False))) from exc


def _decode_base64(value: str, max_bytes: int) -> bytes:
    if value.startswith("data:") and "," in value:  # accept data URLs as browsers produce them
        value = value.split(",", 1)[1]
    value = "".join(value.split())
    if len(value) // 4 * 3 > max_bytes + 3:  # reject before allocating the decoded copy
        raise TooLarge(f"image_base64 decodes to more than the limit of {max_bytes} bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"image_base64 is not valid base64: {exc}") from exc


def image_from(payload: ImagePayload, settings: Settings) -> bytes:
    """The image bytes a validated payload names; 422 when it names none or both, 400/403/404/413/502/503 from S3.

    Both named was answered for the inline image alone, without a word: a caller who meant the S3 object
    got another image's caption.
    """
    if payload.image_base64 is not None and payload.s3 is not None:
        raise InvalidRequest('JSON body has both "image_base64" and "s3": send one image')
    if payload.image_base64 is not None:
        return _decode_base64(payload.image_base64, settings.max_image_bytes)
    if payload.s3 is not None:
        check_bucket(payload.s3.bucket, settings)
        from handler.inputs import s3 as s3io

        return s3io.fetch(payload.s3.bucket, payload.s3.key, settings.max_s3_image_bytes).body
    raise InvalidRequest('JSON body needs "image_base64" or "s3": {"bucket", "key"}')


def image_from_payload(payload: Any, settings: Settings) -> bytes:
    """The image bytes of an unvalidated JSON body."""
    return image_from(parse_as(ImagePayload, payload), settings)


def check_bucket(bucket: str, settings: Settings) -> None:
    if bucket not in settings.allowed_buckets:
        raise Forbidden(f"bucket {bucket!r} is not in ALLOWED_BUCKETS")
