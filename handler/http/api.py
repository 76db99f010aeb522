"""The HTTP app factory: FastAPI with the request log, the error handlers and the routes.

Every failure, FastAPI's own 404/405/422 included, leaves as `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from handler.config import settings
from handler.errors import ServiceError, error_body
from handler.http.demo import router as demo_router
from handler.http.routes import router
from handler.logs import annotate, request_id_from, request_log

_log = logging.getLogger(__name__)

_STATUS_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


class RequestLogMiddleware:
    """Logs one JSON line per request and turns an unhandled fault into a bare JSON 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope.get("aws.context"))
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                annotate(status=message["status"])
            await send(message)

        with request_log(request_id, "http", settings().log_level) as record:
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
    parts = [f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}" for err in exc.errors()]
    annotate(error="invalid_request")
    return JSONResponse(error_body("invalid_request", "; ".join(parts) or "invalid request"), status_code=422)


def create_app() -> FastAPI:
    app = FastAPI(
        title="Florence-2 image understanding",
        version="0.1.0",
        description="Captions and object detection from one int8 Florence-2 model on CPU.",
    )
    app.add_middleware(RequestLogMiddleware)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)

    app.include_router(router)
    app.include_router(demo_router)
    return app
