"""Direct Lambda invokes: `{"task": "caption"|"detect"|"analyze", "image_base64"|"s3": ..., "min_score"?: 0..1}`.

Answers with the same JSON the HTTP API returns (no statusCode wrapper), or `{"error": ...}`. The
event is validated by the HTTP API's own pydantic models, so a list or dict where a string belongs
is a 422, never a TypeError.
"""

from __future__ import annotations

from typing import Any

from handler.config import Settings
from handler.errors import ServiceError
from handler.florence.tasks import Task
from handler.inputs.payload import DirectInvoke, image_from, parse_as
from handler.logs import annotate
from handler.service import analyze, parse_min_score, parse_tasks

_SINGLE = {"caption": [Task.CAPTION], "detect": [Task.DETECT]}


def tasks_of(invoke: DirectInvoke) -> list[Task]:
    if invoke.task in _SINGLE:
        return _SINGLE[invoke.task]
    return parse_tasks(invoke.tasks)


def handle(event: dict[str, Any], settings: Settings) -> dict[str, Any]:
    try:
        invoke = parse_as(DirectInvoke, event)
        tasks = tasks_of(invoke)
        min_score = parse_min_score(invoke.min_score)
        data = image_from(invoke, settings)
        payload = analyze(data, tasks, settings, min_score=min_score).payload
        annotate(status=200)
        return payload
    except ServiceError as exc:
        annotate(status=exc.status, error=exc.code)
        return exc.body()
