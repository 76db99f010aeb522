"""Reading the image out of an HTTP request: raw image body, multipart `file`, or JSON.

Bodies are read with a byte cap, so an oversized upload is refused while it streams in rather
than after it has been buffered.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator

from starlette.requests import Request

from handler.config import Settings
from handler.errors import InvalidRequest, TooLarge, UnsupportedMediaType
from handler.inputs.payload import image_from_payload

RAW_TYPES = ("application/octet-stream",)
FORM_OVERHEAD = 64 * 1024
"""Multipart boundaries and part headers on top of the file itself."""


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _declared_over(declared: str, limit: int) -> bool:
    """Whether a Content-Length header says more than `limit` bytes; a value that is not a number says nothing.

    Compared by its digits first: int() refuses a string of over 4,300 digits (a ValueError, which was a 500).
    """
    if not (declared.isascii() and declared.isdigit()):  # "²" is a digit to isdigit, not to int
        return False
    digits = declared.lstrip("0")
    return len(digits) > len(str(limit)) or int(digits or "0") > limit


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if _declared_over(declared, limit):
        size = declared.lstrip("0") if len(declared) <= 20 else f"a {len(declared.lstrip('0'))}-digit number of"
        raise TooLarge(f"request body is {size} bytes; the limit is {limit}")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise TooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _once(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


async def _multipart_file(request: Request, settings: Settings) -> bytes:
    from starlette.formparsers import MultiPartException, MultiPartParser

    limit = settings.max_image_bytes + FORM_OVERHEAD
    body = await read_limited(request, limit)
    # A part without a filename is a text field, which Starlette caps at 1 MB; the body's cap bounds it
    # already, and past 1 MB the refusal ("Part exceeded maximum size") hid what was wrong with it.
    parser = MultiPartParser(request.headers, _once(body), max_files=1, max_fields=16, max_part_size=limit)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidRequest(f"malformed multipart body: {exc.message}") from exc
    except Exception as exc:  # python-multipart raises its own types on hostile bodies
        raise InvalidRequest(f"malformed multipart body: {exc}") from exc
    try:
        upload = form.get("file")
        if isinstance(upload, str):  # `curl -F "file=<photo.jpg"` sends no filename
            raise InvalidRequest(
                'the "file" part has no filename, so it arrived as a text field; send the image as a file'
                " (a filename in its Content-Disposition, as `curl -F file=@photo.jpg` sends)"
            )
        if upload is None:
            raise InvalidRequest('multipart body needs a file part named "file"')
        data = await upload.read()
    finally:
        await form.close()
    if len(data) > settings.max_image_bytes:
        raise TooLarge(f"file is {len(data)} bytes; the limit is {settings.max_image_bytes}")
    return data


async def _json_image(request: Request, settings: Settings) -> bytes:
    body = await read_limited(request, settings.max_image_bytes * 4 // 3 + FORM_OVERHEAD)
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # deep nesting is a hostile body too
        raise InvalidRequest(f"body is not valid JSON: {exc}") from exc
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(image_from_payload, payload, settings)  # S3 reads block


async def image_bytes(request: Request, settings: Settings) -> bytes:
    """The image bytes of a request, whatever of the accepted content types it used."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):  # else a gzipped image reads as "not an image"
        raise UnsupportedMediaType(
            f"content encoding {encoding[:100]!r} is not accepted; send the body uncompressed"
            " (JPEG, PNG and WebP are compressed already)"
        )
    kind = media_type(request)
    if kind.startswith("image/") or kind in RAW_TYPES:
        return await read_limited(request, settings.max_image_bytes)
    if kind == "multipart/form-data":
        return await _multipart_file(request, settings)
    if kind == "application/json" or kind.endswith("+json"):
        return await _json_image(request, settings)
    raise UnsupportedMediaType(
        f"content type {kind or '(none)'!r} is not accepted; send image/*, multipart/form-data with a"
        ' "file" part, or application/json with "image_base64" or "s3"'
    )
