"""The HTTP API (FastAPI): `/caption`, `/detect`, `/analyze`, `/health`, OpenAPI at `/docs`.

Every failure, FastAPI's own 404/405/422 included, leaves as `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from handler.config import settings
from handler.errors import ServiceError, error_body
from handler.http_body import image_bytes
from handler.logs import annotate, request_id_from, request_log
from handler.models import AnalyzeResponse, CaptionResponse, DetectResponse, ErrorResponse, HealthResponse
from handler.tasks import Task

_log = logging.getLogger(__name__)

_IMAGE_SCHEMA = {"type": "string", "format": "binary"}
IMAGE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "image/*": {"schema": _IMAGE_SCHEMA},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": _IMAGE_SCHEMA}, "required": ["file"]}
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image_base64": {"type": "string"},
                        "s3": {
                            "type": "object",
                            "properties": {"bucket": {"type": "string"}, "key": {"type": "string"}},
                        },
                    },
                }
            },
        },
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "not an image, or corrupt",
        403: "S3 bucket not allowed",
        404: "S3 object missing",
        413: "over the byte or pixel limit",
        415: "unsupported content type",
        422: "invalid JSON or parameters",
        503: "model unavailable",
    }.items()
}
_STATUS_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type"}


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


async def _serve(request: Request, tasks: list[Task]) -> tuple[dict, Any, list]:
    from handler import service

    config = settings()
    data = await image_bytes(request, config)
    return await run_in_threadpool(service.analyze, data, tasks, config)


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

    @app.get("/health", response_model=HealthResponse)
    def health() -> dict:
        """Liveness and model state; never loads the model."""
        from handler.runtime import runtime_for

        return {"status": "ok", **runtime_for(settings()).health()}

    @app.post("/caption", response_model=CaptionResponse, responses=ERRORS, openapi_extra=IMAGE_BODY)
    async def caption(request: Request) -> dict:
        """One-sentence caption of the image."""
        payload, _, _ = await _serve(request, [Task.CAPTION])
        return payload

    @app.post(
        "/detect",
        response_model=DetectResponse,
        responses={**ERRORS, 200: {"content": {"image/png": {}}, "description": "JSON, or PNG with format=png"}},
        openapi_extra=IMAGE_BODY,
    )
    async def detect(
        request: Request,
        format: Literal["json", "png"] = Query("json", description="png: the image with boxes drawn"),
    ) -> Any:
        """Objects with labels and boxes in the original image's pixel coordinates."""
        payload, decoded, detections = await _serve(request, [Task.DETECT])
        if format == "json":
            return payload
        from handler.drawing import draw_detections, to_png

        png = await run_in_threadpool(lambda: to_png(draw_detections(decoded.image, detections)))
        headers = {
            "X-Model-Sha": payload["model_sha"],
            "X-Timings-Ms": json.dumps(payload["timings_ms"], separators=(",", ":")),
            "X-Detections": str(len(detections)),
        }
        return Response(png, media_type="image/png", headers=headers)

    @app.post("/analyze", response_model=AnalyzeResponse, response_model_exclude_none=True, responses=ERRORS, openapi_extra=IMAGE_BODY)
    async def analyze(
        request: Request,
        tasks: str = Query("caption,detect", description="comma-separated: caption, detect"),
    ) -> dict:
        """Several tasks on one image in one call (the image is decoded once)."""
        from handler.service import parse_tasks

        payload, _, _ = await _serve(request, parse_tasks(tasks))
        return payload

    return app
