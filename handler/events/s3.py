"""S3 upload worker: caption and detect every uploaded image, write `<OUTPUT_PREFIX><key>.json`.

With OUTPUT_BUCKET set the result goes to that bucket instead, as `<OUTPUT_PREFIX><source bucket>/<key>.json`
(`result_key`), so the same key in two source buckets gets two results.

Results carry the source ETag, which makes redelivered events cheap no-ops. A record the input
itself dooms (too big, not an image, a key S3 refuses, a malformed record) gets an error result
where one can be written and is not retried; any other failure is retried by Lambda: the invocation
raises after every record has had its turn. Result keys always fit S3's 1,024 bytes.

`process_object` is the per-object work; S3 Batch Operations tasks (`handler.events.batch`) and
`python -m handler.backfill --local` run it too, so every door writes the same result document. Each object a
notification names is an `ObjectNotice`, and `process_notices` gives notices their work and log lines, also
for notifications delivered through SQS, SNS or EventBridge (`handler.events.notifications`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from handler.config import Settings
from handler.errors import (
    BadImage,
    BadRequest,
    InvalidRequest,
    Misconfigured,
    NotFound,
    ServiceError,
    TooLarge,
    error_body,
    quoted,
)
from handler.florence.tasks import Task
from handler.logs import annotate, request_log
from handler.service import ALL_TASKS, analyze

if TYPE_CHECKING:
    from handler.inputs.s3 import ObjectHead

ETAG_METADATA = "source-etag"
TASKS_METADATA = "tasks"
ERROR_METADATA = "error-code"
PERMANENT = (BadImage, TooLarge, BadRequest, InvalidRequest)
"""Failures caused by the uploaded bytes, its key or the record itself; retrying cannot fix them."""
MAX_KEY_BYTES = 1024
KEY_HASH_CHARS = 16
"""A long key's result name keeps its start and ends in 16 hex digits of its sha256 (64 bits)."""


class S3BatchError(RuntimeError):
    """Raised after all records ran when some failed, so Lambda retries or dead-letters the event."""


UPLOAD_EVENTS = ("ObjectCreated:", "ObjectRestore:Completed")
"""Event names after which the object holds bytes to read. Removals, lifecycle expiry, tagging and ACL
events carry no new image: processing a removal would fail on the missing object and be retried."""
UPLOAD_DETAIL_TYPES = ("Object Created", "Object Restore Completed")
"""The same two events as EventBridge names them (its `detail-type`)."""
TEST_EVENT = "s3:TestEvent"
"""What S3 sends (without `Records`) when a notification is configured, to check it can invoke."""


class Disposition(str, Enum):
    """What became of one object; every door that processes objects reports these."""

    WRITTEN = "written"
    ALREADY_PRESENT = "already present"
    UNDER_OUTPUT_PREFIX = "under OUTPUT_PREFIX"
    NOT_CURRENT_VERSION = "not the current version"
    SUPERSEDED = "overwritten while it was analyzed"
    FOLDER_MARKER = "folder marker (key ends in '/')"
    NOT_AN_UPLOAD = "not an upload event"
    REJECTED = "rejected"


@dataclass(frozen=True)
class ObjectResult:
    """One object's outcome: the result key it has (if any) and the error that doomed it (if any)."""

    key: str
    disposition: Disposition
    result_uri: str | None = None
    error: dict[str, str] | None = None
    """`{"code", "message"}` of a rejected object, or of an error result already present."""
    version_id: str | None = None
    """The version the event or task named, when it is not the current one."""


MAX_SUMMARY_BYTES = 1_048_576
"""An answer lists objects while their JSON fits in this, then counts the rest (`omitted`): a hand-written event
of 60,000 malformed records (1.6 MB) was answered with 6.9 MB, more than the 6 MB Lambda can return."""


@dataclass
class Outcome:
    written: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)

    def add(self, result: ObjectResult) -> None:
        if result.disposition is Disposition.WRITTEN:
            self.written.append(str(result.result_uri))
        elif result.disposition is Disposition.REJECTED:
            self.rejected.append({"key": quoted(result.key), **(result.error or {})})
        elif result.disposition is Disposition.ALREADY_PRESENT:
            self.skipped.append({"key": quoted(result.key), "reason": "result exists for this ETag"})
        else:
            self.skipped.append({"key": quoted(result.key), "reason": result.disposition.value})

    def summary(self) -> dict[str, Any]:
        """What became of each object, as far as MAX_SUMMARY_BYTES allows; `omitted` counts the rest, if any."""
        lists: dict[str, list[Any]] = {
            "written": self.written,
            "skipped": self.skipped,
            "rejected": self.rejected,
            "failed": self.failed,
        }
        summary: dict[str, Any] = {name: [] for name in lists}
        room, omitted = MAX_SUMMARY_BYTES, 0
        for name, entries in lists.items():
            for entry in entries:
                room -= len(json.dumps(entry, ensure_ascii=False).encode()) + 2  # and its ", "
                if room < 0:
                    omitted += 1
                else:
                    summary[name].append(entry)
        if omitted:
            summary["omitted"] = omitted
        return summary


@dataclass(frozen=True)
class ObjectNotice:
    """One object a notification names, decoded once, however it came: an S3 record (sent directly, or
    inside an SQS message or SNS notification) or an EventBridge event."""

    bucket: str
    key: str
    version_id: str | None
    event_name: str
    """As the source names it: S3's `eventName` (`ObjectCreated:Put`), EventBridge's `detail-type` (`Object Created`)."""
    upload: bool
    """Whether the event brings bytes to read (`UPLOAD_EVENTS`, `UPLOAD_DETAIL_TYPES`)."""

    @classmethod
    def checked(cls, bucket: Any, key: Any, version_id: Any, event_name: Any, upload: bool, what: str) -> ObjectNotice:
        """The notice, or a 400 for a location no S3 event would carry (`what` names the event in the message)."""
        if not isinstance(bucket, str) or not bucket or not isinstance(key, str) or not key:
            raise BadRequest(f"{what}'s bucket name and object key must be non-empty strings")
        if version_id is not None and not isinstance(version_id, str):
            raise BadRequest(f"{what}'s object version id must be a string")
        return cls(bucket, key, version_id, quoted(str(event_name)), upload)

    @classmethod
    def from_record(cls, record: Any) -> ObjectNotice:
        """An S3 notification record, whose key arrives URL-encoded (`unquote_plus`)."""
        try:
            bucket, key = record["s3"]["bucket"]["name"], record["s3"]["object"]["key"]
            version_id = record["s3"]["object"].get("versionId")
        except (KeyError, TypeError, AttributeError) as exc:
            raise BadRequest(f"S3 record without s3.bucket.name and s3.object.key: missing {exc}") from exc
        name = record.get("eventName", UPLOAD_EVENTS[0])  # hand-written events may leave it out
        upload = isinstance(name, str) and name.startswith(UPLOAD_EVENTS)
        notice = cls.checked(bucket, key, version_id, name, upload, "S3 record")
        return replace(notice, key=unquote_plus(notice.key))


MAX_RECORDS = 10
"""S3 names one object per notification. A hand-written one's records past this many are rejected unread: 2,000
records naming objects cost 2,000 S3 calls one after another (1.3 ms each against moto in process; at 10 ms a call
from Lambda, near the 29 s timeout, and a 6 MB synchronous event holds 60,000), repeated by each retry. Ten uploads at
~1 s each (docs/deploy.md §8) fit the timeout."""
PAST_MAX_RECORDS = f"S3 names one object per notification; records past the first {MAX_RECORDS} are not read"


def notices_in(records: list[Any]) -> list[ObjectNotice | BadRequest]:
    """Each S3 record's notice, or the 400 that rejects that record alone; records past MAX_RECORDS are rejected."""
    notices: list[ObjectNotice | BadRequest] = []
    for index, record in enumerate(records):
        try:
            if index >= MAX_RECORDS:
                raise BadRequest(PAST_MAX_RECORDS)
            notices.append(ObjectNotice.from_record(record))
        except BadRequest as exc:
            notices.append(exc)
    return notices


def is_test_event(event: Any) -> bool:
    return isinstance(event, dict) and event.get("Event") == TEST_EVENT and "Records" not in event


def records_from(event: Any, source_field: str, source: str) -> bool:
    """Whether `event` is a non-empty list of `Records` whose `source_field` all name `source` (`aws:s3`, `aws:sqs`...)."""
    records = event.get("Records") if isinstance(event, dict) else None
    return (
        bool(records)
        and isinstance(records, list)
        and all(isinstance(r, dict) and r.get(source_field) == source for r in records)
    )


def is_s3_event(event: Any) -> bool:
    return is_test_event(event) or records_from(event, "eventSource", "aws:s3")


def is_result(bucket: str, key: str, settings: Settings) -> bool:
    """Whether `key` lies where this service writes its results: never an image to caption.

    Only in the bucket results go to: with OUTPUT_BUCKET elsewhere, a source bucket's own results/ folder
    holds images like any other (backfill planned them, and every task was skipped). The function and
    backfill's plan both read this rule.
    """
    return (settings.output_bucket or bucket) == bucket and key.startswith(settings.output_prefix)


def is_folder_marker(key: str) -> bool:
    """The console's "Create folder" writes an empty object whose key ends in '/'; it is never an image."""
    return key.endswith("/")


def result_prefix(bucket: str, settings: Settings) -> str:
    """Where the results of `bucket`'s objects go: OUTPUT_PREFIX, then the source bucket when OUTPUT_BUCKET is set.

    OUTPUT_BUCKET gathers the results of every source bucket (uploads, Batch tasks over any of
    ALLOWED_BUCKETS, itself included), where `a.png` of two buckets would otherwise share, and
    overwrite, one result.
    """
    return settings.output_prefix + (f"{bucket}/" if settings.output_bucket else "")


def result_key(bucket: str, key: str, settings: Settings) -> str:
    """`<result_prefix><key>.json`, or, past 1,024 bytes, the key cut short plus a hash of `[<bucket>/]<key>`."""
    prefix = result_prefix(bucket, settings)
    plain = f"{prefix}{key}.json"
    if len(plain.encode("utf-8", "surrogatepass")) <= MAX_KEY_BYTES:
        return plain
    named = plain[len(settings.output_prefix) : -len(".json")]  # the key, after its source bucket if any
    digest = hashlib.sha256(named.encode("utf-8", "surrogatepass")).hexdigest()[:KEY_HASH_CHARS]
    tail = f"~{digest}.json"
    room = MAX_KEY_BYTES - len(prefix.encode("utf-8")) - len(tail)
    head = key.encode("utf-8", "surrogatepass")[: max(0, room)].decode("utf-8", "ignore")
    return f"{prefix}{head}{tail}"


def _write(
    bucket: str, key: str, document: dict[str, Any], etag: str, tasks: list[Task], model_sha: str | None
) -> None:
    from handler.inputs import s3 as s3io

    metadata = {ETAG_METADATA: etag, TASKS_METADATA: ",".join(t.api_name for t in tasks)}
    if model_sha:
        metadata["model-sha"] = model_sha
    else:
        metadata[ERROR_METADATA] = document["error"]["code"]
    s3io.put_json(bucket, key, json.dumps(document, indent=2, ensure_ascii=False).encode(), metadata)


def _rejected(key: str, exc: ServiceError, result_uri: str | None = None) -> ObjectResult:
    annotate(status=exc.status, error=exc.code)
    return ObjectResult(key, Disposition.REJECTED, result_uri, exc.body()["error"])


def answers(existing: dict[str, str], etag: str, tasks: list[Task]) -> bool:
    """Whether a stored result (its user metadata) answers `tasks` for the object with `etag` (unquoted).

    It must name that ETag and every task asked for now (results before the tag ran them all). The
    function skips such objects; backfill's plan reads the same rule, so neither skips the other's work.
    """
    done = existing.get(TASKS_METADATA)
    covered = done is None or {t.api_name for t in tasks} <= set(done.split(","))
    return existing.get(ETAG_METADATA) == etag and covered


def _keeping(existing: dict[str, str] | None, etag: str, tasks: list[Task]) -> list[Task]:
    """`tasks`, plus those the result for this same image already holds, which the new result replaces:
    a job asking for boxes must not drop the caption an earlier caption-only job wrote."""
    if existing is None or existing.get(ETAG_METADATA) != etag or ERROR_METADATA in existing:
        return tasks
    held = set(existing.get(TASKS_METADATA, "").split(","))
    return tasks + [t for t in ALL_TASKS if t not in tasks and t.api_name in held]


def _overwritten_since(bucket: str, key: str, read: ObjectHead) -> bool:
    """Whether the object changed (or went) after `read`: a second upload during the ~1 s of analysis.

    Its result written now would carry the old ETag over whatever the newer upload's own event
    writes, or land after it; then the key's result describes an image it no longer holds, and no
    redelivery would notice (the stale result matches no ETag, but nothing asks again).
    """
    from handler.inputs import s3 as s3io

    try:
        return s3io.head(bucket, key).etag != read.etag
    except NotFound:
        return True


def _superseded(key: str, result_uri: str) -> ObjectResult:
    annotate(status="skipped", error="superseded")
    return ObjectResult(key, Disposition.SUPERSEDED, result_uri)


def process_object(
    bucket: str,
    key: str,
    settings: Settings,
    tasks: list[Task] = ALL_TASKS,
    overwrite: bool = False,
    min_score: float | None = None,
    version_id: str | None = None,
) -> ObjectResult:
    """Run `tasks` on one object and write its result document; the work every S3 door shares.

    Skips keys under OUTPUT_PREFIX (results never become inputs), folder markers, and objects whose
    result already covers these tasks for the same ETag, unless `overwrite`. Boxes scored below `min_score`
    (default: MIN_SCORE) are left out. Raises for failures a retry may fix.

    A key has one result, and it describes the key's current version: an event or Batch task that
    names an older `version_id` (overwritten since; its successor's own event writes the result) is
    skipped, never answered with another version's result nor allowed to overwrite a newer one.
    """
    from handler.inputs import s3 as s3io

    # Quoted, not whole: a record naming a key of 2,000,000 "é" (which S3 refuses) made a 12 MB log line.
    annotate(bucket=quoted(bucket), key=quoted(key))
    try:  # a location S3 cannot hold: nothing to read, no result to name
        s3io.check_bucket_name(bucket)
        s3io.check_key(key)
    except BadRequest as exc:
        return _rejected(key, exc)
    if is_result(bucket, key, settings):
        annotate(status="skipped")
        return ObjectResult(key, Disposition.UNDER_OUTPUT_PREFIX)
    if is_folder_marker(key):
        annotate(status="skipped")
        return ObjectResult(key, Disposition.FOLDER_MARKER)
    out_bucket = settings.output_bucket or bucket
    try:  # before any work: botocore would refuse the name only when the result is written
        s3io.check_bucket_name(out_bucket)
    except BadRequest as exc:
        raise Misconfigured(f"OUTPUT_BUCKET: {exc.message}") from exc
    out_key = result_key(bucket, key, settings)
    result_uri = f"s3://{out_bucket}/{out_key}"
    try:
        head = s3io.head(bucket, key)
    except PERMANENT as exc:
        return _rejected(key, exc)
    etag = head.etag.strip('"')
    if version_id is not None and head.version_id is not None and version_id != head.version_id:
        annotate(status="skipped", version_id=quoted(version_id), current_version_id=head.version_id)
        return ObjectResult(key, Disposition.NOT_CURRENT_VERSION, result_uri, version_id=version_id)
    existing = None if overwrite else s3io.head_metadata(out_bucket, out_key)
    if existing is not None and answers(existing, etag, tasks):
        annotate(status="skipped")
        error = {"code": existing[ERROR_METADATA]} if ERROR_METADATA in existing else None
        return ObjectResult(key, Disposition.ALREADY_PRESENT, result_uri, error)
    tasks = _keeping(existing, etag, tasks)
    source = {"bucket": bucket, "key": key, "etag": etag}
    if head.version_id is not None:
        source["version_id"] = head.version_id
    try:
        data = s3io.download(bucket, key, head, settings.max_s3_image_bytes).body
        payload = analyze(data, tasks, settings, min_score=min_score).payload
    except PERMANENT as exc:
        if _overwritten_since(bucket, key, head):
            return _superseded(key, result_uri)
        _write(out_bucket, out_key, {"source": source, **exc.body()}, etag, tasks, None)
        return _rejected(key, exc, result_uri)
    if _overwritten_since(bucket, key, head):
        return _superseded(key, result_uri)
    _write(out_bucket, out_key, {"source": source, **payload}, etag, tasks, payload["model_sha"])
    annotate(status=200, output=out_key)
    return ObjectResult(key, Disposition.WRITTEN, result_uri)


def process_notice(notice: ObjectNotice | BadRequest, settings: Settings, outcome: Outcome) -> None:
    """One object's work, whichever door its notification came through: a malformed record is rejected,
    an event that brings no bytes is skipped, an upload goes to `process_object`."""
    if isinstance(notice, BadRequest):
        annotate(reason=notice.message)  # nothing else would say what was wrong with it
        outcome.add(_rejected("", notice))
        return
    if not notice.upload:
        annotate(bucket=quoted(notice.bucket), key=quoted(notice.key), event_name=notice.event_name, status="skipped")
        outcome.add(ObjectResult(notice.key, Disposition.NOT_AN_UPLOAD))
        return
    outcome.add(process_object(notice.bucket, notice.key, settings, version_id=notice.version_id))


def process_notices(
    notices: list[ObjectNotice | BadRequest],
    request_id: str,
    source: str,
    settings: Settings,
    outcome: Outcome,
    prefix: str = "",
    **fields: Any,
) -> None:
    """Every object under its own log line (`<request_id>#<prefix><index>`, plus `fields`); one that fails
    for a reason a retry may fix is noted in `outcome.failed` and does not stop the others."""
    for index, notice in enumerate(notices):
        label = f"{prefix}{index}"
        try:
            with request_log(f"{request_id}#{label}", source, settings.log_level):
                annotate(**fields)
                process_notice(notice, settings, outcome)
        except ServiceError as exc:
            outcome.failed.append({"record": label, **exc.body()["error"]})
        except Exception as exc:  # one bad record must not starve the rest
            outcome.failed.append({"record": label, **error_body(type(exc).__name__, str(exc))["error"]})


def raise_if_failed(outcome: Outcome, count: int) -> None:
    """Raise after every record ran when any failed for a reason a retry may fix, so Lambda retries the event."""
    if outcome.failed:
        listed = f"{outcome.failed[:10]}" + (
            f" and {len(outcome.failed) - 10} more" if len(outcome.failed) > 10 else ""
        )
        raise S3BatchError(f"{len(outcome.failed)} of {count} records failed: {listed}")


def handle(event: dict[str, Any], request_id: str, settings: Settings) -> dict[str, Any]:
    """Process every record; raise at the end if any failed for a reason a retry might fix."""
    outcome = Outcome()
    if is_test_event(event):  # S3 checking that it may invoke us: nothing to process, and not a bad event
        with request_log(request_id, "s3", settings.log_level):
            annotate(status="skipped", event_name=TEST_EVENT)
        return outcome.summary()
    records = event["Records"]
    process_notices(notices_in(records), request_id, "s3", settings, outcome)
    raise_if_failed(outcome, len(records))
    return outcome.summary()
