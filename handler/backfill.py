"""`python -m handler.backfill`: caption and detect what a bucket already holds.

Uploads are handled as they arrive; this is for the images that were there before. It runs on your
machine with boto3 (never in the image: the Lambda path does not import it, import-linter checks).

1. Plan: list `--bucket`/`--prefix`, skip results, backfill files, non-image names, archived objects
   not restored and keys whose result answers `--tasks` for the image as it is now (the function's own
   rule; one HEAD per archived object and per result newer than its image), and print the count and
   size (`--dry-run` stops here).
2. By default, write the plan as a CSV manifest to S3 and create an S3 Batch Operations job that
   invokes the deployed function once per object (ARNs from `--stack NAME` or flags). Batch
   Operations retries `TemporaryFailure` tasks and writes a completion report.
3. With `--local`, run the same per-object code as the function (`handler.events.s3.process_object`)
   in this process instead, with a progress bar: for small buckets and tests. It needs the serve
   dependencies, an artifact (ARTIFACT_DIR) and tqdm.

The function re-checks every object's ETag, so a plan that is slightly stale costs a skip, not a
second result.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

from handler.config import SettingError, Settings
from handler.errors import BadRequest, ModelUnavailable
from handler.events.s3 import (
    ERROR_METADATA,
    Disposition,
    answers,
    is_folder_marker,
    is_result,
    process_object,
    result_key,
    result_prefix,
)
from handler.florence.tasks import Task, tasks_from
from handler.inputs.s3 import check_bucket_name
from handler.service import ALL_TASKS, runtime_for

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
"""Names worth an invocation; anything else would cost one to learn it is not an image."""

SCHEMA_VERSION = "2.0"
"""2.0 carries `userArguments` (tasks, overwrite) to the function."""

MANIFEST_FORMAT = "S3BatchOperations_CSV_20180820"
REPORT_FORMAT = "Report_CSV_20180820"
STACK_OUTPUTS = {
    "function_arn": "FunctionArn",
    "role_arn": "BatchOperationsRoleArn",
    "report_bucket": "UploadsBucketName",
    "batch_prefix": "BatchPrefix",
}
"""Which output of the deployed stack (template.yaml) fills which setting."""
STACK_PREFIX_OUTPUTS = ("UploadPrefix", "OutputPrefix")
"""The stack's trigger and result prefixes: its function reads only `<UploadPrefix>*` of its uploads bucket
and writes `<OutputPrefix>`, which the plan must use (not this machine's OUTPUT_PREFIX) to find results."""
FUNCTION_ARN = re.compile(r"arn:aws[a-z-]*:lambda:[a-z0-9-]+:\d{12}:function:[\w-]{1,64}(:[\w$-]+)?")
ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+")
"""What `--function-arn` and `--role-arn` must look like: the job request reads partition, region and
account out of the function ARN, so a malformed one must stop at the flag, not as a traceback."""
ARCHIVED_STORAGE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
"""Storage classes whose objects cannot be read until restored (Glacier Instant Retrieval can be)."""
HEAD_WORKERS = 32
"""Results whose metadata the plan reads at once: a rerun over a million done images is ~1M HEADs."""
HEAD_SLICE = 10_000
"""Results handed to those workers at a time."""
ENDED_JOB_STATES = frozenset({"Complete", "Failed", "Cancelled"})
"""Batch Operations job states after which a job runs no more tasks."""
MAX_ENDED_JOBS = 50
"""Ended jobs of one identical request that `create_job` steps past before it gives up."""
LOCAL_ATTEMPTS = 3
"""Tries `--local` gives an object that is overwritten while it is analyzed (Batch redrives such a task)."""
INTERRUPTED_EXIT = 130
"""Exit status after Ctrl-C, as shells report SIGINT; every result written so far is kept."""
TERMINATED_EXIT = 143
"""Exit status after SIGTERM (`kill`, `timeout`, a container stopping), as shells report it."""
INTERRUPTED = "interrupted; results written so far are kept, the same command resumes"
JOB_ONLY_FLAGS = ("--function-arn", "--role-arn", "--priority")
"""Flags that only set the Batch Operations job, which `--local` does not create."""
ARCHIVED = "archived (restore it first)"
ERROR_RESULT = "has an error result"
"""Plan skips that leave an image without a caption: `--local`'s last line names them again."""
DEFAULT_BATCH_PREFIX = "batch/"
"""Manifests and reports without `--stack` or `--batch-prefix`: the template's own `BatchPrefix` default."""


@dataclass
class BackfillConfig:
    """What to backfill and where the job's pieces are; flags mirror these fields."""

    bucket: str
    prefix: str = ""
    tasks: list[Task] = field(default_factory=lambda: list(ALL_TASKS))
    overwrite: bool = False
    dry_run: bool = False
    local: bool = False
    stack: str | None = None
    function_arn: str | None = None
    role_arn: str | None = None
    report_bucket: str | None = None
    """Bucket for the manifest and the completion report (the stack's uploads bucket; its role may use it)."""
    batch_prefix: str | None = None
    """`--batch-prefix`; None: the stack's `BatchPrefix`, else `DEFAULT_BATCH_PREFIX` (read it as `batch_folder`)."""
    suffixes: tuple[str, ...] = IMAGE_SUFFIXES
    priority: int = 10
    settings: Settings = field(default_factory=Settings.from_env)
    """OUTPUT_PREFIX / OUTPUT_BUCKET as the function sees them, and the model for `--local`."""

    @property
    def batch_folder(self) -> str:
        """Where manifests/ and reports/ go."""
        return DEFAULT_BATCH_PREFIX if self.batch_prefix is None else self.batch_prefix


@dataclass(frozen=True)
class Candidate:
    key: str
    size: int


@dataclass
class Plan:
    """The objects to process, and how many were left out and why."""

    candidates: list[Candidate] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def total_bytes(self) -> int:
        return sum(c.size for c in self.candidates)

    def describe(self, bucket: str, prefix: str) -> str:
        skips = ", ".join(f"{reason} {count}" for reason, count in sorted(self.skipped.items())) or "none"
        return (
            f"s3://{bucket}/{prefix}: {len(self.candidates)} objects to process, "
            f"{self.total_bytes / 2**20:.1f} MiB; skipped: {skips}"
        )


class Clients:
    """boto3 clients made on first use; tests hand in their own."""

    def __init__(self, region: str | None = None, **given: Any) -> None:
        self.region = region
        self._clients = dict(given)

    def __call__(self, service: str, region: str | None = None) -> Any:
        """The client for `service`, in `region` where the call must go there, else in --region."""
        if service not in self._clients:
            import boto3
            from botocore.config import Config

            make: Any = boto3.client  # its overloads are per service name; this one is any of three
            # A connection for each of the plan's HEAD workers (botocore keeps 10; the rest would wait).
            config = Config(max_pool_connections=HEAD_WORKERS)
            self._clients[service] = make(service, region_name=region or self.region, config=config)
        return self._clients[service]


def _objects(s3: Any, bucket: str, prefix: str) -> Any:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


def _heads(s3: Any, bucket: str, keys: list[str], accept: Callable[[str, dict[str, Any]], bool]) -> set[str]:
    """The keys whose HeadObject answer `accept` takes (a key gone since the listing: not taken)."""

    def check(key: str) -> str | None:
        try:
            head = s3.head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                return None
            raise
        return key if accept(key, head) else None

    taken: set[str] = set()
    pool = ThreadPoolExecutor(max_workers=HEAD_WORKERS)
    try:  # a slice at a time: a million futures at once hold memory, and Ctrl-C would wait for them all
        for start in range(0, len(keys), HEAD_SLICE):
            taken.update(key for key in pool.map(check, keys[start : start + HEAD_SLICE]) if key is not None)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return taken


def _restored(_: str, head: dict[str, Any]) -> bool:
    """Whether an archived object has a readable copy: S3's `Restore` header says `ongoing-request="false"`."""
    return 'ongoing-request="false"' in head.get("Restore", "")


def plan(config: BackfillConfig, clients: Clients) -> Plan:
    """List the bucket once and the results once, then HEAD what a listing cannot tell: whether an archived
    object is restored, and which tasks a result newer than its image holds (a listing shows only that it
    exists: after a `--tasks caption` run, planning caption and detect must still send those images)."""
    s3, settings = clients("s3"), config.settings
    out_bucket = settings.output_bucket or config.bucket
    listed = _objects(s3, out_bucket, result_prefix(config.bucket, settings) + config.prefix)
    results = {o["Key"]: o["LastModified"] for o in listed}
    own_files = config.batch_folder if config.report_bucket in (None, config.bucket) else None
    suffixes = tuple(s.lower() for s in config.suffixes)
    found = Plan()
    images: list[tuple[dict[str, Any], str]] = []  # (listed object, its result's key), in listing order
    for obj in _objects(s3, config.bucket, config.prefix):
        key = obj["Key"]
        if is_result(config.bucket, key, settings):
            found.skipped["result"] += 1
        elif own_files and key.startswith(own_files):
            found.skipped["manifest or report"] += 1
        elif is_folder_marker(key) or (suffixes and not key.lower().endswith(suffixes)):
            found.skipped["not an image name"] += 1
        else:
            images.append((obj, result_key(config.bucket, key, settings)))
    archived = {o["Key"] for o, _ in images if o.get("StorageClass") in ARCHIVED_STORAGE_CLASSES}
    unreadable = archived - _heads(s3, config.bucket, sorted(archived), _restored)
    etags = {}  # result key -> the ETag of the image it must answer, for results newer than their image
    for obj, out_key in images:
        done_at = results.get(out_key)
        if not config.overwrite and done_at is not None and done_at >= obj["LastModified"]:
            etags[out_key] = obj["ETag"].strip('"')
    failed: set[str] = set()  # answered with an error document (bad_image, too_large): not done, but final

    def answered_by(key: str, head: dict[str, Any]) -> bool:
        metadata = head.get("Metadata", {})
        if ERROR_METADATA in metadata:
            failed.add(key)
        return answers(metadata, etags[key], config.tasks)

    answered = _heads(s3, out_bucket, list(etags), answered_by)
    for obj, out_key in images:
        if obj["Key"] in unreadable:
            found.skipped[ARCHIVED] += 1  # every task would fail, and fail the job
        elif out_key in answered:  # the function would skip it too
            found.skipped[ERROR_RESULT if out_key in failed else "has a result"] += 1
        else:
            found.candidates.append(Candidate(obj["Key"], int(obj["Size"])))
    return found


def beside_folder(prefix: str, candidates: list[Candidate]) -> list[str]:
    """Keys a `--prefix` without its '/' takes from beside the folder it names (`photos` -> `photos2/a.png`),
    when it takes keys from that folder too: most likely the folder alone was meant (S3 prefixes are not
    folders). None when every key is beside it (`2024-` for `2024-01.png`: a prefix meant as one)."""
    if not prefix or prefix.endswith("/"):
        return []
    beside = [c.key for c in candidates if not c.key.startswith(f"{prefix}/")]
    return beside if len(beside) < len(candidates) else []


def manifest_csv(bucket: str, candidates: list[Candidate]) -> bytes:
    """Batch Operations' CSV manifest: `bucket,key` rows, keys URL-encoded (the function decodes them)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for candidate in candidates:
        writer.writerow([bucket, quote(candidate.key, safe="/")])
    return buffer.getvalue().encode()


def _resolve_stack(config: BackfillConfig, clients: Clients) -> None:
    """Fill unset ARNs, the report location and the output prefix from the stack's outputs."""
    if config.stack is None:
        return
    stack = clients("cloudformation").describe_stacks(StackName=config.stack)["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    for output in (*STACK_OUTPUTS.values(), *STACK_PREFIX_OUTPUTS):
        if output not in outputs:
            raise SystemExit(f"stack {config.stack} has no output {output}; deploy the current template.yaml")
    if config.role_arn is None and not (config.dry_run or config.local):
        # The stack's role may invoke only its function and read and write only its bucket's BatchPrefix:
        # a job with another report bucket, function or prefix could not even read its manifest.
        for attribute in ("report_bucket", "function_arn", "batch_prefix"):
            given, own = getattr(config, attribute), outputs[STACK_OUTPUTS[attribute]]
            if given is not None and given != own:
                raise SystemExit(
                    f"--{attribute.replace('_', '-')} {given} is not the stack's {STACK_OUTPUTS[attribute]} ({own}),"
                    f" the only one its BatchOperationsRole may use; leave it out, or pass --role-arn too"
                )
    for attribute, output in STACK_OUTPUTS.items():
        if getattr(config, attribute) is None:  # a flag given is kept: with the stack's role, checked above
            setattr(config, attribute, outputs[output])
    config.settings = replace(config.settings, output_prefix=outputs["OutputPrefix"])
    upload_prefix = outputs["UploadPrefix"]
    if config.bucket == outputs["UploadsBucketName"] and not config.prefix.startswith(upload_prefix):
        # Every task outside it would fail with 403 (access denied), and enough of them fail the job.
        raise SystemExit(
            f"--prefix {config.prefix!r} reaches beyond the stack's UploadPrefix: its function may read only"
            f" s3://{config.bucket}/{upload_prefix}*; use --prefix {upload_prefix}"
        )


def job_request(config: BackfillConfig, manifest_key: str, manifest_etag: str, body: bytes) -> dict[str, Any]:
    """The `s3control create_job` arguments: invoke the function on every manifest row, report every task."""
    if not (config.function_arn and config.role_arn and config.report_bucket):
        raise ValueError("a job needs the function ARN, the role ARN and the report bucket")
    account = config.function_arn.split(":")[4]  # arn:aws:lambda:<region>:<account>:function:<name>
    partition = config.function_arn.split(":")[1]
    user_arguments = {"tasks": ",".join(t.api_name for t in config.tasks), "overwrite": str(config.overwrite).lower()}
    # Same manifest, function and options -> same token, so a retried command cannot start a second job.
    token = hashlib.sha256(body + config.function_arn.encode() + repr(sorted(user_arguments.items())).encode())
    return {
        "AccountId": account,
        "ConfirmationRequired": False,
        "Operation": {
            "LambdaInvoke": {
                "FunctionArn": config.function_arn,
                "InvocationSchemaVersion": SCHEMA_VERSION,
                "UserArguments": user_arguments,
            }
        },
        "Report": {
            "Bucket": f"arn:{partition}:s3:::{config.report_bucket}",
            "Prefix": f"{config.batch_folder}reports",
            "Format": REPORT_FORMAT,
            "Enabled": True,
            "ReportScope": "AllTasks",
        },
        "Manifest": {
            "Spec": {"Format": MANIFEST_FORMAT, "Fields": ["Bucket", "Key"]},
            "Location": {
                "ObjectArn": f"arn:{partition}:s3:::{config.report_bucket}/{manifest_key}",
                "ETag": manifest_etag,
            },
        },
        "Priority": config.priority,
        "RoleArn": config.role_arn,
        "ClientRequestToken": token.hexdigest()[:64],
        "Description": f"florence backfill s3://{config.bucket}/{config.prefix}"[:256],
    }


def create_job(control: Any, request: dict[str, Any]) -> str:
    """Create the job, or find the one this very request created before, if that one has not finished.

    The same request carries the same ClientRequestToken, which S3 answers with the job it created
    for it: a retried or repeated command cannot start a second job over the same manifest. But a job
    that already ended (all tasks failed before a fix, or `--overwrite` again after a model update)
    would come back too, and nothing would run: then the token is renewed from that job's id.
    """
    for _ in range(MAX_ENDED_JOBS):
        job_id: str = control.create_job(**request)["JobId"]
        try:
            status = control.describe_job(AccountId=request["AccountId"], JobId=job_id)["Job"]["Status"]
        except Exception as exc:  # refused (no s3:DescribeJob): the job exists; say which, not a failure
            if not hasattr(exc, "response"):
                raise
            print(f"could not read job {job_id}'s status ({exc}); if it had ended before, nothing will run")
            return job_id
        if status not in ENDED_JOB_STATES:
            return job_id
        print(f"job {job_id} ran this same request before ({status}); creating a new one")
        token = hashlib.sha256(f"{request['ClientRequestToken']}:{job_id}".encode())
        request = {**request, "ClientRequestToken": token.hexdigest()[:64]}
    raise SystemExit(f"{MAX_ENDED_JOBS} jobs already ran this same request; the last was {job_id}")


def submit(config: BackfillConfig, found: Plan, clients: Clients) -> str:
    """Write the manifest, create the job, print how to follow it; returns the job id."""
    missing = [name for name in ("function_arn", "role_arn") if getattr(config, name) is None]
    if missing:
        raise SystemExit(f"need --stack NAME or --{missing[0].replace('_', '-')} to create a Batch Operations job")
    config.report_bucket = config.report_bucket or config.bucket
    body = manifest_csv(config.bucket, found.candidates)
    # Named by content: a rerun of the same plan rewrites the same object and sends the same request
    # (create_job: the same token, so the same job while it runs).
    manifest_key = f"{config.batch_folder}manifests/{hashlib.sha256(body).hexdigest()[:16]}.csv"
    # SSE-S3 whatever the bucket's default: Batch Operations cannot read a CSV manifest encrypted with KMS.
    put = clients("s3").put_object(
        Bucket=config.report_bucket, Key=manifest_key, Body=body, ContentType="text/csv", ServerSideEncryption="AES256"
    )
    request = job_request(config, manifest_key, put["ETag"].strip('"'), body)
    # In the function's region, where the printed describe-job looks (not the shell's, which may be another).
    region = config.function_arn.split(":")[3] if config.function_arn else None
    job_id = create_job(clients("s3control", region=region), request)
    print(f"manifest: s3://{config.report_bucket}/{manifest_key} ({len(found.candidates)} objects)")
    print(f"job: {job_id}  (no confirmation step: New -> Preparing -> Ready -> Active -> Complete)")
    print(
        f"follow: aws s3control describe-job --region {region} --account-id {request['AccountId']} --job-id {job_id}"
        " --query 'Job.[Status,ProgressSummary]'"
    )
    print(f"report: s3://{config.report_bucket}/{config.batch_folder}reports/job-{job_id}/ when the job completes")
    return job_id


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be, so both stop a run the same way."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


@dataclass
class LocalSummary:
    done: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stopped: KeyboardInterrupt | None = None
    """The Ctrl-C or SIGTERM that ended the run early, if one did."""
    not_started: int = 0
    """Images of the plan the run did not reach (one stopped mid-way is among them): a rerun does them."""
    uncaptioned: dict[str, int] = field(default_factory=dict)
    """Of `skipped`, the plan's images left without a caption ({ARCHIVED: 2}), by reason."""

    def line(self) -> str:
        rate = self.done / self.seconds if self.seconds > 0 else 0.0
        stopped = f"; stopped with {self.not_started} not done" if self.stopped else ""
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(self.uncaptioned.items()))
        return (
            f"done {self.done}, skipped {self.skipped}, failed {len(self.failed)}"
            f" in {self.seconds:.1f} s ({rate:.2f} images/s){stopped}"
            + (f"; not captioned: {reasons}" if reasons else "")
        )


def _one_line(text: str) -> str:
    """`text` with control characters written as escapes: a key may hold a newline, and one failure is one line."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def run_local(config: BackfillConfig, found: Plan) -> LocalSummary:
    """The function's per-object code over the plan, in this process."""
    try:
        from tqdm import tqdm  # a build/dev dependency, not a serve one: only this mode needs it
    except ImportError as exc:
        raise SystemExit("--local needs tqdm (pip install tqdm) and the serve dependencies") from exc

    if found.candidates:
        try:  # before the first image: a missing artifact would otherwise fail every image, one line each
            runtime_for(config.settings).manifest()
        except ModelUnavailable as exc:
            raise SystemExit(f"python -m handler.backfill: --local: {exc.message}") from exc
    uncaptioned = {reason: found.skipped[reason] for reason in (ARCHIVED, ERROR_RESULT) if found.skipped[reason]}
    summary = LocalSummary(skipped=sum(found.skipped.values()), uncaptioned=uncaptioned)
    start = time.perf_counter()
    progress = tqdm(found.candidates, desc="backfill", unit="image")
    reached = 0
    try:  # Ctrl-C or SIGTERM: stop, but still report what failed so far (a bad image's error result
        # makes a rerun skip it, so this run is the only one that names it)
        for reached, candidate in enumerate(progress):  # noqa: B007  (reached: read after a stop)
            _process_local(config, candidate.key, summary)
        reached = len(found.candidates)
    except KeyboardInterrupt as exc:
        summary.stopped = exc
    finally:
        progress.close()
    summary.not_started = len(found.candidates) - reached
    summary.seconds = time.perf_counter() - start
    return summary


def _process_local(config: BackfillConfig, key: str, summary: LocalSummary) -> None:
    """One image through the function's code, counted in `summary`."""
    try:
        for _ in range(LOCAL_ATTEMPTS):  # overwritten while analyzed: read the new upload, as Batch redrives
            result = process_object(config.bucket, key, config.settings, config.tasks, config.overwrite)
            if result.disposition is not Disposition.SUPERSEDED:
                break
    except Exception as exc:  # one object must not stop the rest; it is listed at the end
        summary.failed.append(_one_line(f"{key}: {getattr(exc, 'message', exc)}"))
        return
    if result.disposition is Disposition.WRITTEN:
        summary.done += 1
    elif result.disposition is Disposition.REJECTED:
        summary.failed.append(_one_line(f"{key}: {(result.error or {}).get('code')}"))
    elif result.disposition is Disposition.SUPERSEDED:  # no result written: a rerun must pick it up
        summary.failed.append(_one_line(f"{key}: {result.disposition.value} {LOCAL_ATTEMPTS} times"))
    else:
        summary.skipped += 1


def run(config: BackfillConfig, clients: Clients) -> int:
    _resolve_stack(config, clients)
    found = plan(config, clients)
    print(found.describe(config.bucket, config.prefix))
    beside = beside_folder(config.prefix, found.candidates)
    if beside:
        print(
            f"python -m handler.backfill: note: --prefix {_one_line(config.prefix)!r} also takes {len(beside)} objects"
            f" beside the folder {_one_line(config.prefix)}/ (first: {_one_line(beside[0])}); for that folder alone,"
            f" use --prefix {_one_line(config.prefix)}/",
            file=sys.stderr,
        )
    if config.dry_run:
        return 0
    if config.local:
        summary = run_local(config, found)
        for failure in summary.failed:
            print(f"failed: {failure}")
        print(summary.line())
        if summary.stopped is not None:
            raise summary.stopped  # main() says so and exits 130 (Ctrl-C) or 143 (SIGTERM)
        return 1 if summary.failed else 0
    if not found.candidates:
        print("nothing to do: no job created")
        return 0
    submit(config, found, clients)
    return 0


def _tasks(text: str) -> list[Task]:
    try:
        return tasks_from(text, ALL_TASKS)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _bucket(text: str) -> str:
    try:
        check_bucket_name(text)
    except BadRequest as exc:
        raise argparse.ArgumentTypeError(exc.message) from exc
    return text


def _prefix(text: str) -> str:
    """A `--prefix` is a key prefix: `s3://bucket/photos/` matched no key, and the plan found 0 objects."""
    if text.lower().startswith("s3://"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is a URI, not a key prefix: give --bucket and, e.g., --prefix photos/"
        )
    return text


def _folder(text: str) -> str:
    """A `--batch-prefix`: `jobs` made the keys `jobsmanifests/...` and `jobsreports/...`, beside the folder meant."""
    if not text.endswith("/") or text.startswith("/"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a folder: it must end in '/' and not start with one (manifests/ and reports/ go under it)"
        )
    return text


def _matching(pattern: re.Pattern[str], what: str) -> Any:
    def check(text: str) -> str:
        if not pattern.fullmatch(text):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return text

    return check


def _priority(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from exc
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more (S3 Batch Operations' range), not {value}")
    return value


def parse_args(argv: list[str] | None = None) -> tuple[BackfillConfig, str | None]:
    defaults = BackfillConfig(bucket="")
    parser = argparse.ArgumentParser(prog="python -m handler.backfill", description=__doc__.splitlines()[0])
    parser.add_argument("--bucket", required=True, type=_bucket, help="bucket holding the images")
    parser.add_argument(
        "--prefix", type=_prefix, default=defaults.prefix, help="only keys under this prefix (default: all)"
    )
    parser.add_argument("--tasks", type=_tasks, default=defaults.tasks, help="caption,detect (default: both)")
    parser.add_argument(
        "--overwrite", action="store_true", help="recompute objects that already have a result (default: off)"
    )
    parser.add_argument("--dry-run", action="store_true", help="count and size the work; write nothing (default: off)")
    parser.add_argument(
        "--local", action="store_true", help="process in this process instead of a Batch job (default: off)"
    )
    parser.add_argument(
        "--stack", help="deployed stack whose outputs give the ARNs, bucket and prefix (default: none; give the ARNs)"
    )
    parser.add_argument(
        "--function-arn",
        type=_matching(FUNCTION_ARN, "a Lambda function ARN"),
        help="function to invoke (default: the stack's FunctionArn)",
    )
    parser.add_argument(
        "--role-arn",
        type=_matching(ROLE_ARN, "an IAM role ARN"),
        help="role the job assumes (default: the stack's BatchOperationsRoleArn)",
    )
    parser.add_argument(
        "--report-bucket",
        type=_bucket,
        help="bucket for manifest and report (default: the stack's, else --bucket)",
    )
    parser.add_argument(
        "--batch-prefix",
        type=_folder,
        help=f"manifests/ and reports/ go under it (default: the stack's BatchPrefix, else {DEFAULT_BATCH_PREFIX})",
    )
    parser.add_argument(
        "--suffixes",
        default=",".join(IMAGE_SUFFIXES),
        help=f"key endings to process, comma-separated; '' = every key (default: {','.join(IMAGE_SUFFIXES)})",
    )
    parser.add_argument(
        "--priority",
        type=_priority,
        default=None,  # None: not given (refused with --local); the dataclass holds the default
        help=f"Batch Operations job priority, 0 or more (default: {defaults.priority})",
    )
    parser.add_argument("--region", help="AWS region (default: your AWS configuration's)")
    args = parser.parse_args(argv)
    if not (args.stack or args.local or args.dry_run or (args.function_arn and args.role_arn)):
        parser.error("a Batch Operations job needs --stack, or --function-arn and --role-arn (or use --local)")
    if args.local:
        for flag in JOB_ONLY_FLAGS:
            if getattr(args, flag.removeprefix("--").replace("-", "_")) is not None:
                parser.error(f"argument {flag}: not allowed with --local, which creates no Batch Operations job")
    config = BackfillConfig(
        bucket=args.bucket,
        prefix=args.prefix,
        tasks=args.tasks,
        overwrite=args.overwrite,
        dry_run=args.dry_run,
        local=args.local,
        stack=args.stack,
        function_arn=args.function_arn,
        role_arn=args.role_arn,
        report_bucket=args.report_bucket,
        batch_prefix=args.batch_prefix,
        suffixes=tuple(s.strip() for s in args.suffixes.split(",") if s.strip()),
        priority=defaults.priority if args.priority is None else args.priority,
    )
    return config, args.region


def main(argv: list[str] | None = None) -> int:
    """Run the command; AWS refusing it (no such bucket or stack, no credentials) is a message, not a traceback."""
    try:
        config, region = parse_args(argv)
    except SettingError as exc:  # the function's settings (OUTPUT_PREFIX, MIN_SCORE, ...) as this shell has them
        print(f"python -m handler.backfill: {exc}", file=sys.stderr)
        return 2
    from botocore.exceptions import BotoCoreError, ClientError

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return run(config, Clients(region))
    except (BotoCoreError, ClientError) as exc:
        print(f"python -m handler.backfill: AWS refused: {exc}", file=sys.stderr)
        return 1
    except Terminated:
        print(f"python -m handler.backfill: terminated (SIGTERM); {INTERRUPTED}", file=sys.stderr)
        return TERMINATED_EXIT
    except KeyboardInterrupt:
        print(f"python -m handler.backfill: {INTERRUPTED}", file=sys.stderr)
        return INTERRUPTED_EXIT
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
