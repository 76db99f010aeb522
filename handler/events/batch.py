"""S3 Batch Operations worker: caption what a bucket already holds, one answer per task.

A Batch Operations job (`python -m handler.backfill` creates one) invokes the function synchronously
with `tasks` naming objects. Each task gets exactly the work and the result document of an S3 upload
event (`handler.events.s3.process_object`), so a backfill and live uploads never disagree, and a
result already present for the object's ETag is not computed again.

Batch Operations reads only the response: `Succeeded`, `TemporaryFailure` (it retries the task) or
`PermanentFailure` (it records the task as failed in the completion report, with `resultString`).
So no task may raise: every error becomes one of those codes, and the invocation always answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import unquote_plus

from handler.config import Settings
from handler.errors import MAX_LISTED_ERRORS, InvalidRequest, ServiceError, printable, quoted
from handler.events.s3 import Disposition, ObjectResult, process_object
from handler.florence.tasks import Task
from handler.inputs.payload import check_bucket
from handler.logs import annotate, request_log
from handler.service import ALL_TASKS, parse_min_score, parse_tasks

SCHEMA_VERSIONS = ("1.0", "2.0")
"""1.0 names the bucket by ARN (`s3BucketArn`); 2.0 by name (`s3Bucket`) and carries `job.userArguments`."""
BUCKET_FIELDS = {"1.0": ("s3BucketArn", "s3Bucket"), "2.0": ("s3Bucket", "s3BucketArn")}
"""Where a task names its bucket, the schema's own field first: either is read in either schema."""

TREAT_MISSING_KEYS_AS = "PermanentFailure"
"""A task this answer leaves out failed for good: the handler answers every task it was given."""

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
"""Errors that time can clear: throttling (429), S3 failing or busy (502, 503), the model still loading (503)."""

RESULT_STRING_LIMIT = 1024
"""Batch Operations keeps `resultString` in the completion report; keep it short and whole."""

MAX_TASKS = 10
"""Batch Operations sends one task per invocation. A hand-written event's tasks past this many are neither run nor
answered (`treatMissingKeysAs` fails them): 100,000 tasks took two minutes, past the 29 s timeout, and their answer
of 21 MB was more than the runtime can post (it exited; the next invoke started cold). Ten images at ~1 s each
(docs/deploy.md §8) fit the timeout."""


class ResultCode(str, Enum):
    SUCCEEDED = "Succeeded"
    TEMPORARY_FAILURE = "TemporaryFailure"
    PERMANENT_FAILURE = "PermanentFailure"


def is_batch_event(event: Any) -> bool:
    """Batch Operations' shape: a schema version, a list of tasks, and its job or invocation id (a direct
    invoke that happens to carry `invocationSchemaVersion` and `tasks` is not answered as a batch)."""
    return (
        isinstance(event, dict)
        and "invocationSchemaVersion" in event
        and isinstance(event.get("tasks"), list)
        and ("job" in event or "invocationId" in event)
    )


_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no", ""})


def _flag(name: str, value: str) -> bool:
    if value.strip().lower() in _TRUE:
        return True
    if value.strip().lower() in _FALSE:
        return False
    raise InvalidRequest(f"userArguments.{name} must be true or false, not {value!r}")


@dataclass(frozen=True)
class JobOptions:
    """Per-job options from schema 2.0's `job.userArguments` (a string-to-string map of at most 10).

    `tasks`, `overwrite` and `min_score` (a floor on box scores; default MIN_SCORE) apply to every
    task of the job; keys this version does not know are kept in `ignored` and logged, so a job
    written for a newer function still runs on this one.
    """

    tasks: list[Task] = field(default_factory=lambda: list(ALL_TASKS))
    overwrite: bool = False
    min_score: float | None = None
    ignored: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_user_arguments(cls, arguments: Any) -> JobOptions:
        if arguments is None:
            return cls()
        if not isinstance(arguments, dict) or not all(isinstance(v, str) for v in arguments.values()):
            raise InvalidRequest("job.userArguments must map names to strings")
        known = {"tasks", "overwrite", "min_score"}
        return cls(
            tasks=parse_tasks(arguments.get("tasks")),
            overwrite=_flag("overwrite", arguments.get("overwrite", "")),
            min_score=parse_min_score(arguments.get("min_score", "").strip()),
            ignored={k: v for k, v in arguments.items() if k not in known},
        )


def _bucket_from_arn(arn: Any) -> str:
    """`arn:<partition>:s3:::<bucket>` in any partition (aws, aws-cn, aws-us-gov); anything else is a 422."""
    parts = arn.split(":") if isinstance(arn, str) else []
    if len(parts) != 6 or parts[0] != "arn" or parts[2] != "s3" or any(parts[3:5]) or "/" in parts[5]:
        raise InvalidRequest(f"s3BucketArn must be an S3 bucket ARN (arn:<partition>:s3:::<bucket>), not {arn!r}")
    return parts[5]


def _task_bucket(task: dict[str, Any], fields: tuple[str, str]) -> Any:
    name = next((f for f in fields if task.get(f) is not None), fields[0])
    return _bucket_from_arn(task.get(name)) if name == "s3BucketArn" else task.get(name)


@dataclass(frozen=True)
class BatchTask:
    """One object to process, decoded once: the bucket by name, the key URL-decoded, and the version a
    manifest of a versioned bucket names (`s3VersionId`; null otherwise)."""

    task_id: str
    bucket: str
    key: str
    version_id: str | None = None

    @classmethod
    def parse(cls, task: Any, schema: str) -> BatchTask:
        if not isinstance(task, dict) or not isinstance(task.get("taskId"), str):
            raise InvalidRequest("a task must be an object with a taskId")
        bucket = _task_bucket(task, BUCKET_FIELDS[schema])
        key, version_id = task.get("s3Key"), task.get("s3VersionId")
        if not isinstance(bucket, str) or not bucket or not isinstance(key, str) or not key:
            raise InvalidRequest("a task needs a non-empty bucket and s3Key")
        if version_id is not None and (not isinstance(version_id, str) or not version_id):
            raise InvalidRequest("a task's s3VersionId must be a non-empty string or null")
        # Keys arrive URL-encoded, as in S3 event notifications and CSV manifests.
        return cls(task["taskId"], bucket, unquote_plus(key), version_id)


def echoed(value: Any) -> str | None:
    """A string the event carries (`invocationId`, `invocationSchemaVersion`, a `taskId`) as the answer repeats it:
    cut to MAX_MESSAGE_CHARS, with what UTF-8 cannot carry escaped; anything but a string is not repeated.

    The runtime posts the answer as UTF-8 (escaped to ASCII where AWS_EXECUTION_ENV is not a python3.12+ runtime,
    as in this image: 6 bytes per accented letter): a taskId of "\\ud800" made an answer it could not encode, and one
    of 2.9 million "é" an answer of 17 MB; either way the runtime process exited without answering.
    """
    return quoted(value) if isinstance(value, str) else None


def _result(task_id: str, code: ResultCode, text: str) -> dict[str, str]:
    text = printable(text)
    if len(text) > RESULT_STRING_LIMIT:
        text = text[: RESULT_STRING_LIMIT - 1] + "…"
    return {"taskId": echoed(task_id) or "", "resultCode": code.value, "resultString": text}


def _succeeded(task_id: str, result: ObjectResult) -> dict[str, str]:
    if result.disposition is Disposition.UNDER_OUTPUT_PREFIX:
        # A manifest built from an inventory lists results too; they are not inputs, and failing
        # them would count against the job's failure threshold.
        return _result(task_id, ResultCode.SUCCEEDED, f"skipped: {result.key} is a result (under OUTPUT_PREFIX)")
    if result.disposition is Disposition.FOLDER_MARKER:  # an inventory lists these too
        return _result(task_id, ResultCode.SUCCEEDED, f"skipped: {result.key} is a folder marker")
    if result.disposition is Disposition.NOT_CURRENT_VERSION:  # a manifest of every version lists these
        return _result(
            task_id,
            ResultCode.SUCCEEDED,
            f"skipped: version {result.version_id} of {result.key} is no longer current; "
            f"{result.result_uri} describes the current version",
        )
    return _result(task_id, ResultCode.SUCCEEDED, f"{result.disposition.value}: {result.result_uri}")


def _failure_code(exc: Exception) -> ResultCode:
    """Retry what time can fix (throttling, S3 5xx, timeouts, the model not loaded yet); fail the rest.

    A 500 is ours (a setting that names what S3 cannot use): retrying the task cannot fix it.
    """
    if isinstance(exc, ServiceError):
        return ResultCode.TEMPORARY_FAILURE if exc.status in RETRYABLE_STATUSES else ResultCode.PERMANENT_FAILURE
    if type(exc).__module__.startswith(("botocore", "urllib3")) or isinstance(exc, TimeoutError | ConnectionError):
        return ResultCode.TEMPORARY_FAILURE  # connection drops and read timeouts never became ServiceErrors
    return ResultCode.PERMANENT_FAILURE


def run_task(task: BatchTask, options: JobOptions, settings: Settings) -> dict[str, str]:
    """Process one task and answer for it; never raises."""
    try:
        check_bucket(task.bucket, settings)
        result = process_object(
            task.bucket, task.key, settings, options.tasks, options.overwrite, options.min_score, task.version_id
        )
    except Exception as exc:
        code = _failure_code(exc)
        status, error = (exc.status, exc.code) if isinstance(exc, ServiceError) else (500, type(exc).__name__)
        annotate(status=status, error=error, result_code=code.value)
        message = exc.message if isinstance(exc, ServiceError) else str(exc)
        return _result(task.task_id, code, f"{error}: {message}")
    if result.disposition is Disposition.SUPERSEDED:  # a retry reads the upload that replaced it
        annotate(result_code=ResultCode.TEMPORARY_FAILURE.value)
        return _result(
            task.task_id,
            ResultCode.TEMPORARY_FAILURE,
            f"superseded: s3://{task.bucket}/{task.key} was overwritten while it was analyzed; no result written",
        )
    if result.disposition is Disposition.REJECTED or result.error is not None:
        stored = result.error or {}
        annotate(result_code=ResultCode.PERMANENT_FAILURE.value)
        detail = f"{stored.get('code')}: {stored['message']}" if "message" in stored else f"{stored.get('code')}"
        where = f" (error result at {result.result_uri})" if result.result_uri else ""
        return _result(task.task_id, ResultCode.PERMANENT_FAILURE, detail + where)
    annotate(result_code=ResultCode.SUCCEEDED.value)
    return _succeeded(task.task_id, result)


def _ignored_fields(ignored: dict[str, str]) -> dict[str, Any]:
    """The log fields naming unknown userArguments keys: the first MAX_LISTED_ERRORS, each cut to 100 characters,
    and how many there were when that is more (300,000 keys made a 3 MB log line for every task)."""
    names = [printable(name[:100]) for name in sorted(ignored)[:MAX_LISTED_ERRORS]]
    count = len(ignored) if len(ignored) > MAX_LISTED_ERRORS else None
    return {"ignored_user_arguments": names, "ignored_user_argument_count": count}


def _job_options(event: dict[str, Any], job: dict[str, Any]) -> JobOptions:
    """The job's options, or InvalidRequest (for an unknown schema too), which fails every task alike."""
    schema = event.get("invocationSchemaVersion")
    if schema not in SCHEMA_VERSIONS:
        raise InvalidRequest(f"invocationSchemaVersion {schema!r} is not one of {SCHEMA_VERSIONS}")
    return JobOptions.from_user_arguments(job.get("userArguments") if schema == "2.0" else None)


def _tasks(event: dict[str, Any]) -> list[Any]:
    """The tasks to answer: the first MAX_TASKS."""
    raw_tasks = event.get("tasks")
    return raw_tasks[:MAX_TASKS] if isinstance(raw_tasks, list) else []


def _task_id(raw: Any, index: int) -> str:
    """The id to answer a task under: its own when it is a string (Batch's always are), else its index.

    A list echoed as text grows by half (`[0,0]` is 5 bytes, `'[0, 0]'` 6): tasks with long list ids
    in a 5.8 MB event made an answer over the 6 MB Lambda can return.
    """
    task_id = raw.get("taskId") if isinstance(raw, dict) else None
    return task_id if isinstance(task_id, str) else str(index)


def _response(event: dict[str, Any], results: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "invocationSchemaVersion": echoed(event.get("invocationSchemaVersion")),
        "treatMissingKeysAs": TREAT_MISSING_KEYS_AS,
        "invocationId": echoed(event.get("invocationId")),
        "results": results,
    }


def fail_every_task(event: dict[str, Any], exc: ServiceError) -> dict[str, Any]:
    """Every task answered with `exc` (a setting that does not parse fails the whole invocation alike)."""
    code = _failure_code(exc)
    return _response(
        event, [_result(_task_id(raw, i), code, f"{exc.code}: {exc.message}") for i, raw in enumerate(_tasks(event))]
    )


def handle(event: dict[str, Any], request_id: str, settings: Settings) -> dict[str, Any]:
    """Answer every task of one invocation in the response shape Batch Operations expects."""
    schema = event.get("invocationSchemaVersion")
    tasks = _tasks(event)
    raw_job = event.get("job")
    job: dict[str, Any] = raw_job if isinstance(raw_job, dict) else {}
    options: JobOptions | InvalidRequest
    try:
        options = _job_options(event, job)
    except InvalidRequest as exc:
        options = exc
    results = []
    job_id, named_schema = echoed(job.get("id")), echoed(schema)  # as logged: bounded, as the answer repeats them
    left_out = len(event["tasks"]) - len(tasks) if isinstance(event.get("tasks"), list) else 0
    if not tasks or left_out:  # Batch sends one task per invocation: none, or too many, get a line of their own
        with request_log(request_id, "batch", settings.log_level):
            annotate(job_id=job_id, schema=named_schema, status=400, error="invalid_request")
            annotate(tasks=len(tasks) + left_out, tasks_left_out=left_out or None)
    for index, raw in enumerate(tasks):
        task_id = _task_id(raw, index)
        with request_log(f"{request_id}#{index}", "batch", settings.log_level):
            annotate(job_id=job_id, task_id=echoed(task_id), schema=named_schema)
            try:
                if isinstance(options, InvalidRequest):
                    raise options
                task = BatchTask.parse(raw, str(schema))
            except InvalidRequest as exc:
                annotate(status=exc.status, error=exc.code, result_code=ResultCode.PERMANENT_FAILURE.value)
                results.append(_result(task_id, ResultCode.PERMANENT_FAILURE, f"{exc.code}: {exc.message}"))
                continue
            if options.ignored:
                annotate(**_ignored_fields(options.ignored))
            results.append(run_task(task, options, settings))
    return _response(event, results)
