"""The HTTP routes: `/caption`, `/detect`, `/analyze` and `/health` (OpenAPI at `/docs`)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from handler.config import MAX_BINARY_BODY_BYTES, settings
from handler.florence.tasks import Task
from handler.http.body import image_bytes
from handler.http.schemas import AnalyzeResponse, CaptionResponse, DetectResponse, ErrorResponse, HealthResponse

if TYPE_CHECKING:
    from handler.service import ImageAnalysis

router = APIRouter()

DRAWN_PNG_HEADERS = ("X-Model-Sha", "X-Timings-Ms", "X-Detections", "X-Drawn-Scale")
"""What `/detect?format=png` says about the drawing; a cross-origin caller reads them only if exposed."""

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


MIN_SCORE = Query(None, ge=0, le=1, description="drop boxes scored below this (default: the MIN_SCORE setting, 0)")


async def _serve(
    request: Request, tasks: list[Task], full_resolution: bool = False, min_score: float | None = None
) -> ImageAnalysis:
    from handler import service

    config = settings()
    data = await image_bytes(request, config)
    return await run_in_threadpool(service.analyze, data, tasks, config, full_resolution, min_score)


@router.get("/health", response_model=HealthResponse)
@router.head("/health", include_in_schema=False)  # uptime monitors; one schema entry, no duplicate operation id
def health() -> dict:
    """Liveness and model state; never loads the model."""
    from handler.service import runtime_for

    return {"status": "ok", **runtime_for(settings()).health()}


@router.post("/caption", response_model=CaptionResponse, responses=ERRORS, openapi_extra=IMAGE_BODY)
async def caption(request: Request) -> dict:
    """One-sentence caption of the image."""
    return (await _serve(request, [Task.CAPTION])).payload


@router.post(
    "/detect",
    response_model=DetectResponse,
    responses={**ERRORS, 200: {"content": {"image/png": {}}, "description": "JSON, or PNG with format=png"}},
    openapi_extra=IMAGE_BODY,
)
async def detect(
    request: Request,
    format: Literal["json", "png"] = Query(
        "json", description="png: the image with boxes and scores drawn, downscaled if needed to fit a Lambda response"
    ),
    min_score: float | None = MIN_SCORE,
) -> Any:
    """Objects with labels, scores and boxes in the original image's pixel coordinates."""
    result = await _serve(request, [Task.DETECT], full_resolution=format == "png", min_score=min_score)
    if format == "json":
        return result.payload
    from handler.http.drawing import drawn_png

    drawn = await run_in_threadpool(drawn_png, result.image.image, result.detections, MAX_BINARY_BODY_BYTES)
    values = (
        result.payload["model_sha"],
        json.dumps(result.payload["timings_ms"], separators=(",", ":")),
        str(len(result.detections)),
        f"{drawn.scale:.4f}",
    )
    headers = dict(zip(DRAWN_PNG_HEADERS, values, strict=True))
    return Response(drawn.png, media_type="image/png", headers=headers)


@router.post(
    "/analyze",
    response_model=AnalyzeResponse,
    response_model_exclude_none=True,
    responses=ERRORS,
    openapi_extra=IMAGE_BODY,
)
async def analyze(
    request: Request,
    tasks: str = Query("caption,detect", description="comma-separated: caption, detect"),
    min_score: float | None = MIN_SCORE,
) -> dict:
    """Several tasks on one image in one call (the image is decoded once)."""
    from handler.service import parse_tasks

    return (await _serve(request, parse_tasks(tasks), min_score=min_score)).payload
