"""S3 upload worker: caption and detect every uploaded image, write `<OUTPUT_PREFIX><key>.json`.

Results carry the source ETag, which makes redelivered events cheap no-ops. A record the input
itself dooms (too big, not an image) gets an error result and is not retried; any other failure
is retried by Lambda: the invocation raises after every record has had its turn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from handler.config import Settings
from handler.errors import BadImage, ServiceError, TooLarge, error_body
from handler.logs import annotate, request_log
from handler.service import ALL_TASKS, analyze

ETAG_METADATA = "source-etag"
PERMANENT = (BadImage, TooLarge)
"""Failures caused by the uploaded bytes; retrying cannot fix them."""


class S3BatchError(RuntimeError):
    """Raised after all records ran when some failed, so Lambda retries or dead-letters the event."""


@dataclass
class Outcome:
    written: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"written": self.written, "skipped": self.skipped, "rejected": self.rejected, "failed": self.failed}


def is_s3_event(event: Any) -> bool:
    records = event.get("Records") if isinstance(event, dict) else None
    return (
        bool(records)
        and isinstance(records, list)
        and all(isinstance(r, dict) and r.get("eventSource") == "aws:s3" for r in records)
    )


def result_key(key: str, settings: Settings) -> str:
    return f"{settings.output_prefix}{key}.json"


def _write(bucket: str, key: str, document: dict[str, Any], etag: str, model_sha: str | None) -> None:
    from handler.inputs import s3 as s3io

    metadata = {ETAG_METADATA: etag}
    if model_sha:
        metadata["model-sha"] = model_sha
    s3io.put_json(bucket, key, json.dumps(document, indent=2, ensure_ascii=False).encode(), metadata)


def process_record(record: dict[str, Any], settings: Settings, outcome: Outcome) -> None:
    from handler.inputs import s3 as s3io

    bucket = record["s3"]["bucket"]["name"]
    key = unquote_plus(record["s3"]["object"]["key"])
    annotate(bucket=bucket, key=key)
    if key.startswith(settings.output_prefix):
        outcome.skipped.append({"key": key, "reason": "under OUTPUT_PREFIX"})
        annotate(status="skipped")
        return
    out_bucket = settings.output_bucket or bucket
    out_key = result_key(key, settings)
    head = s3io.head(bucket, key)
    etag = head.etag.strip('"')
    existing = s3io.head_metadata(out_bucket, out_key)
    if existing is not None and existing.get(ETAG_METADATA) == etag:
        outcome.skipped.append({"key": key, "reason": "result exists for this ETag"})
        annotate(status="skipped")
        return
    source = {"bucket": bucket, "key": key, "etag": etag}
    try:
        data = s3io.download(bucket, key, head, settings.max_image_bytes).body
        payload = analyze(data, ALL_TASKS, settings, min_score=settings.min_score).payload
    except PERMANENT as exc:
        _write(out_bucket, out_key, {"source": source, **exc.body()}, etag, None)
        outcome.rejected.append({"key": key, "code": exc.code, "message": exc.message})
        annotate(status=exc.status, error=exc.code)
        return
    _write(out_bucket, out_key, {"source": source, **payload}, etag, payload["model_sha"])
    outcome.written.append(f"s3://{out_bucket}/{out_key}")
    annotate(status=200, output=out_key)


def handle(event: dict[str, Any], request_id: str, settings: Settings) -> dict[str, Any]:
    """Process every record; raise at the end if any failed for a reason a retry might fix."""
    outcome = Outcome()
    for index, record in enumerate(event["Records"]):
        try:
            with request_log(f"{request_id}#{index}", "s3", settings.log_level):
                process_record(record, settings, outcome)
        except ServiceError as exc:
            outcome.failed.append({"record": str(index), **exc.body()["error"]})
        except Exception as exc:  # one bad record must not starve the rest
            outcome.failed.append({"record": str(index), **error_body(type(exc).__name__, str(exc))["error"]})
    if outcome.failed:
        raise S3BatchError(f"{len(outcome.failed)} of {len(event['Records'])} records failed: {outcome.failed}")
    return outcome.summary()
