"""Response schemas of the HTTP API, so `/docs` shows exactly what callers get back."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ImageInfo(BaseModel):
    width: int = Field(description="width in pixels after EXIF rotation; boxes use this frame")
    height: int
    format: str = Field(description="format Pillow detected, e.g. JPEG, PNG")
    bytes: int


class DetectionOut(BaseModel):
    label: str
    box: list[float] = Field(description="[x0, y0, x1, y1] in pixels of the original image", min_length=4, max_length=4)
    score: float = Field(
        ge=0, le=1, description="confidence: mean probability of the box's label and location tokens (docs/serving.md)"
    )


class ResultBase(BaseModel):
    model_sha: str = Field(description="first 12 hex digits of the served model's sha256")
    image: ImageInfo
    timings_ms: dict[str, float] = Field(
        description="decode, vision, per-task and total (decode + inference) milliseconds"
    )


CAPTION_SCORE = Field(None, ge=0, le=1, description="mean probability of the caption's word tokens")


class CaptionResponse(ResultBase):
    caption: str
    caption_score: float | None = CAPTION_SCORE


class DetectResponse(ResultBase):
    detections: list[DetectionOut]


class AnalyzeResponse(ResultBase):
    caption: str | None = None
    caption_score: float | None = CAPTION_SCORE
    detections: list[DetectionOut] | None = None


class HealthResponse(BaseModel):
    status: str
    model_loaded: bool
    load_count: int = Field(description="artifact loads attempted by this process; 1 once warm")
    model_sha: str | None = None
    last_error: str | None = None


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
