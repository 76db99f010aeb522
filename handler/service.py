"""The inference path every entry point shares: image in, JSON-ready results out."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from handler.config import Settings
from handler.errors import Forbidden, InvalidRequest
from handler.logs import annotate
from handler.runtime import runtime_for
from handler.tasks import Task

if TYPE_CHECKING:  # Pillow is imported on the first request, not with the app
    from handler.images import DecodedImage

ALL_TASKS = [Task.CAPTION, Task.DETECT]


def parse_tasks(value: str | list[str] | None, default: list[Task] = ALL_TASKS) -> list[Task]:
    """`caption,detect` or a list of names -> tasks in request order, without duplicates."""
    if value is None or value == "" or value == []:
        return list(default)
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InvalidRequest("tasks must be a comma-separated string or a list of task names")
    tasks: list[Task] = []
    for name in names:
        try:
            task = Task.from_name(name.strip())
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
        if task not in tasks:
            tasks.append(task)
    return tasks


def decode(data: bytes, settings: Settings) -> tuple[DecodedImage, float]:
    from handler.images import decode_image

    start = time.perf_counter()
    decoded = decode_image(data, settings.max_image_bytes, settings.max_image_pixels)
    annotate(image=decoded.describe())
    return decoded, round((time.perf_counter() - start) * 1000, 1)


def analyze(data: bytes, tasks: list[Task], settings: Settings) -> tuple[dict[str, Any], DecodedImage, list]:
    """Decode and run `tasks`; return the JSON payload, the decoded image and the raw detections."""
    annotate(task=",".join(t.api_name for t in tasks), image_bytes=len(data))
    decoded, decode_ms = decode(data, settings)
    result = runtime_for(settings).run(decoded.image, tasks)
    annotate(model_sha=result.manifest.short_sha)
    payload: dict[str, Any] = {}
    detections: list = []
    for task in tasks:
        prediction = result.predictions[task]
        payload.update(prediction.as_dict())
        if task is Task.DETECT:
            detections = list(prediction.detections)
    timings = {"decode": decode_ms, **result.timings_ms}
    timings["total"] = round(decode_ms + result.timings_ms.get("total", 0.0), 1)
    payload.update(model_sha=result.manifest.short_sha, image=decoded.describe(), timings_ms=timings)
    return payload, decoded, detections


def check_bucket(bucket: str, settings: Settings) -> None:
    if bucket not in settings.allowed_buckets:
        raise Forbidden(f"bucket {bucket!r} is not in ALLOWED_BUCKETS")
