"""Direct Lambda invokes: `{"task": "caption"|"detect"|"analyze", "image_base64"|"s3": ..., "min_score"?: 0..1}`.

Answers with the same JSON the HTTP API returns (no statusCode wrapper), or `{"error": ...}`.
"""

from __future__ import annotations

from typing import Any

from handler.config import Settings
from handler.errors import InvalidRequest, ServiceError
from handler.florence.tasks import Task
from handler.inputs.payload import image_from_payload
from handler.logs import annotate
from handler.service import analyze, parse_min_score, parse_tasks

_SINGLE = {"caption": [Task.CAPTION], "detect": [Task.DETECT]}


def tasks_of(event: dict[str, Any]) -> list[Task]:
    task = event.get("task")
    if task in _SINGLE:
        return _SINGLE[task]
    if task == "analyze":
        return parse_tasks(event.get("tasks"))
    raise InvalidRequest(f'task must be "caption", "detect" or "analyze", not {task!r}')


def handle(event: dict[str, Any], settings: Settings) -> dict[str, Any]:
    try:
        tasks = tasks_of(event)
        min_score = parse_min_score(event.get("min_score"), settings.min_score)
        data = image_from_payload(event, settings)
        payload = analyze(data, tasks, settings, min_score=min_score).payload
        annotate(status=200)
        return payload
    except ServiceError as exc:
        annotate(status=exc.status, error=exc.code)
        return exc.body()
