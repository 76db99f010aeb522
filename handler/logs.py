"""One structured JSON log line per request, whichever entry point served it.

Entry points open a `request_log`; code deeper down adds fields (task, image size, model sha) to
the current record without having it passed around.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any, TextIO

from handler.errors import ServiceError

LOGGER_NAME = "handler.requests"
_current: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("request_log", default=None)


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever `sys.stdout` is now, so redirected or captured stdout still gets the line."""

    @property
    def stream(self) -> TextIO:
        return sys.stdout

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def logger(level: str = "INFO") -> logging.Logger:
    """The request logger writes bare JSON lines to stdout, which CloudWatch stores as-is."""
    log = logging.getLogger(LOGGER_NAME)
    if not log.handlers:
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(level.upper())
    return log


def annotate(**fields: Any) -> None:
    """Add fields to the current request's log line (a no-op outside a request)."""
    record = _current.get()
    if record is not None:
        record.update({k: v for k, v in fields.items() if v is not None})


def request_id_from(context: Any) -> str:
    return str(getattr(context, "aws_request_id", None) or uuid.uuid4())


@contextlib.contextmanager
def request_log(request_id: str, source: str, level: str = "INFO") -> Iterator[dict[str, Any]]:
    """Time a request and emit its record once, even when it fails."""
    record: dict[str, Any] = {"request_id": request_id, "source": source}
    token = _current.set(record)
    start = time.perf_counter()
    try:
        yield record
    except BaseException as exc:
        status, code = (exc.status, exc.code) if isinstance(exc, ServiceError) else (500, type(exc).__name__)
        record.setdefault("status", status)
        record.setdefault("error", code)
        raise
    finally:
        _current.reset(token)
        record["latency_ms"] = round((time.perf_counter() - start) * 1000, 1)
        logger(level).info(json.dumps(record, default=str, sort_keys=True))
