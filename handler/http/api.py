"""The HTTP app factory: FastAPI with the request log, the error handlers and the routes.

Every failure, FastAPI's own 404/405/422 included, leaves as `{"error": {"code", "message"}}`.
No response may be larger than Lambda can return (MAX_BINARY_BODY_BYTES of body, base64'd): the
routes size what they draw to fit, and the request log middleware refuses anything bigger with a 500
rather than let the runtime's post fail and the process die. Paths answer with or without a trailing
slash: a redirect would drop the API Gateway stage from `Location`.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from handler.config import MAX_BINARY_BODY_BYTES, SettingError, Settings, settings
from handler.errors import Misconfigured, ServiceError, error_body, validation_message
from handler.http.demo import router as demo_router
from handler.http.routes import DRAWN_PNG_HEADERS, router
from handler.logs import annotate, request_id_from, request_log

_log = logging.getLogger(__name__)

_STATUS_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


def _declared_length(message: Message) -> int:
    for name, value in message.get("headers", []):
        if name.lower() == b"content-length" and value.isdigit():
            return int(value)
    return 0


class RequestLogMiddleware:
    """Logs one JSON line per request and turns an unhandled fault, or a body Lambda could not
    return, into a bare JSON 500; the logged status is always the one sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope.get("aws.context"))
        started = False
        oversized = False

        async def tracking_send(message: Message) -> None:
            nonlocal started, oversized
            if message["type"] == "http.response.start":
                started = True
                size = _declared_length(message)
                if size > MAX_BINARY_BODY_BYTES:
                    oversized = True
                    _log.error("response of %d bytes is over the %d Lambda can return", size, MAX_BINARY_BODY_BYTES)
                    annotate(status=500, error="response_too_large", response_bytes=size)
                    body = error_body("response_too_large", f"the response ({size} bytes) is over the limit")
                    await JSONResponse(body, status_code=500)(scope, receive, send)
                    return
                annotate(status=message["status"])
            elif oversized:
                return  # the body of the response that was replaced
            await send(message)

        try:
            log_level = settings().log_level
        except SettingError as error:  # a setting that does not parse: every route answers it, logged as sent
            exc = Misconfigured(str(error))
            with request_log(request_id, "http", Settings.log_level) as record:
                record.update(method=scope.get("method"), path=scope.get("path"), status=exc.status, error=exc.code)
                await JSONResponse(exc.body(), status_code=exc.status)(scope, receive, send)
            return
        with request_log(request_id, "http", log_level) as record:
            record.update(method=scope.get("method"), path=scope.get("path"))
            try:
                await self.app(scope, receive, tracking_send)
            except Exception:
                _log.exception("unhandled error serving %s %s", scope.get("method"), scope.get("path"))
                record.update(status=500, error="internal_error")
                if not started:
                    response = JSONResponse(error_body("internal_error", "internal server error"), status_code=500)
                    await response(scope, receive, send)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    annotate(error=exc.code)
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "http_error")
    annotate(error=code)
    return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    annotate(error="invalid_request")
    return JSONResponse(error_body("invalid_request", validation_message(exc.errors())), status_code=422)


CORS_METHODS = ("GET", "HEAD", "POST", "OPTIONS")
CORS_HEADERS = (
    "Content-Type",
    "x-api-key",
    "Authorization",
    "X-Amz-Date",
    "X-Amz-Security-Token",
    "X-Amz-Content-Sha256",
)
"""Content-Type makes a JSON or image POST preflighted; x-api-key is AuthType=API_KEY's header, the
rest are the SigV4 headers a browser signing for AuthType=AWS_IAM sends (temporary credentials)."""


class _JsonCorsMiddleware(CORSMiddleware):
    """Starlette's CORS, but a refused preflight answers in the one error shape, not plain text."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        reason = bytes(response.body).decode()  # "Disallowed CORS origin, method"
        headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
        annotate(error="cors_refused")
        return JSONResponse(error_body("cors_refused", reason), status_code=response.status_code, headers=headers)


class OptionalCors:
    """CORS headers for the origins in CORS_ALLOW_ORIGINS; none at all while it is empty.

    Outermost, so every answer carries them: error bodies (4xx, and the request log's own 500s)
    included, or a browser hides them from the page; preflights are answered (and logged) here. The
    setting is read per request like the others; a malformed one passes through to the request log,
    which answers `misconfigured` (without CORS headers: no origin list parsed).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._cors: dict[tuple[str, ...], ASGIApp] = {}  # one per value the setting takes: one on Lambda

    def _for(self, origins: tuple[str, ...]) -> ASGIApp:
        if origins not in self._cors:
            self._cors[origins] = _JsonCorsMiddleware(
                self.app,
                allow_origins=origins,
                allow_methods=CORS_METHODS,
                allow_headers=CORS_HEADERS,
                expose_headers=DRAWN_PNG_HEADERS,
            )
        return self._cors[origins]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            config = settings() if scope["type"] == "http" else None
        except SettingError:
            config = None
        if config is None or not config.cors_allow_origins:
            await self.app(scope, receive, send)
            return
        cors = self._for(config.cors_allow_origins)
        headers = Headers(scope=scope)
        if not (scope["method"] == "OPTIONS" and "origin" in headers and "access-control-request-method" in headers):
            await cors(scope, receive, send)
            return

        async def answer_preflight(scope: Scope, receive: Receive, send: Send) -> None:
            annotate(origin=headers["origin"][:200])
            await cors(scope, receive, send)

        # A preflight is answered here, outside the app's request log middleware: it gets its line by
        # going through that middleware here.
        await RequestLogMiddleware(answer_preflight)(scope, receive, send)


class HeadWithoutBody:
    """A HEAD answer is GET's status and headers with no body (RFC 9110 9.3.2). uvicorn drops the body
    itself; Mangum does not, so through API Gateway `HEAD /docs` returned the whole page."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app(scope, receive, send_without_body)


class OptionalTrailingSlash:
    """`POST /caption/` is `POST /caption`: routing sees the path without its trailing slash."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and len(path) > 1 and path.endswith("/"):
            scope = {**scope, "path": path.rstrip("/") or "/"}
            if "raw_path" in scope and isinstance(scope["raw_path"], bytes):
                scope["raw_path"] = scope["raw_path"].rstrip(b"/") or b"/"
        await self.app(scope, receive, send)


def create_app() -> FastAPI:
    app = FastAPI(
        title="Florence-2 image understanding",
        version="0.1.0",
        description="Captions and object detection from one int8 Florence-2 model on CPU.",
    )
    app.router.redirect_slashes = False
    app.add_middleware(OptionalTrailingSlash)
    app.add_middleware(RequestLogMiddleware)
    app.add_middleware(OptionalCors)
    app.add_middleware(HeadWithoutBody)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)

    app.include_router(router)
    app.include_router(demo_router)
    return app
