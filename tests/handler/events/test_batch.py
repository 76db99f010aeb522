"""S3 Batch Operations events (schema 1.0 and 2.0) through `lambda_handler`, against moto's S3 in-process."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from handler.app import event_kind, lambda_handler
from handler.config import LAMBDA_PAYLOAD_BYTES
from handler.errors import ModelUnavailable, UpstreamError
from handler.events import batch
from tests.conftest import REPO_ROOT, image_bytes, runtime_posts
from tests.handler.events.test_s3 import (  # noqa: F401  (s3: the moto fixture)
    BUCKET,
    S3_FAULTS,
    overwrite_during_analysis,
    s3,
    s3_answers,
)
from tests.handler.test_app import Context

EVENTS = REPO_ROOT / "events"
GOOD = "uploads/good.png"
MISSING = "uploads/deleted-before-the-job-ran.jpg"
NOT_IMAGE = "uploads/notes.png"
AWKWARD = "uploads/my cat+dog ünïcødé/猫 ☕.jpg"
RESULT = "results/uploads/earlier.png.json"


def batch_event(schema: str, keys: list[str], bucket: str = BUCKET, user_arguments: dict | None = None) -> dict:
    """The committed documented event for `schema`, one task per key, keys URL-encoded as Batch sends them."""
    event = json.loads((EVENTS / f"s3_batch_v{schema[0]}.json").read_text())
    template = event["tasks"][0]
    event["tasks"] = []
    for index, key in enumerate(keys):
        task = copy.deepcopy(template)
        # quote_plus in one schema, quote in the other: the handler must decode both spellings.
        task.update(taskId=f"task-{index}", s3Key=(quote_plus if schema == "1.0" else quote)(key, safe="/"))
        if schema == "1.0":
            task["s3BucketArn"] = f"arn:aws:s3:::{bucket}"
        else:
            task["s3Bucket"] = bucket
        event["tasks"].append(task)
    if user_arguments is not None:
        event["job"]["userArguments"] = user_arguments
    return event


def _codes(response: dict) -> dict[str, str]:
    return {r["taskId"]: r["resultCode"] for r in response["results"]}


def _stored(client, key: str) -> dict:
    return json.loads(client.get_object(Bucket=BUCKET, Key=f"results/{key}.json")["Body"].read())


def _put_inputs(client) -> None:
    client.put_object(Bucket=BUCKET, Key=GOOD, Body=image_bytes("PNG"))
    client.put_object(Bucket=BUCKET, Key=NOT_IMAGE, Body=b"shopping list")
    client.put_object(Bucket=BUCKET, Key=AWKWARD, Body=image_bytes("JPEG", (80, 60), quality=90))
    client.put_object(Bucket=BUCKET, Key=RESULT, Body=b"{}")


KEYS = [GOOD, MISSING, NOT_IMAGE, AWKWARD, RESULT]


@pytest.mark.parametrize("schema", ["1.0", "2.0"])
def test_batch_event_answers_every_task_and_writes_results(s3, schema: str) -> None:  # noqa: F811
    _put_inputs(s3)
    event = batch_event(schema, KEYS)
    assert event_kind(event) == "batch"
    response = lambda_handler(event, Context())

    assert set(response) == {"invocationSchemaVersion", "treatMissingKeysAs", "invocationId", "results"}
    assert response["invocationSchemaVersion"] == schema
    assert response["invocationId"] == event["invocationId"]
    assert response["treatMissingKeysAs"] == "PermanentFailure"
    assert [set(r) for r in response["results"]] == [{"taskId", "resultCode", "resultString"}] * len(KEYS)
    assert _codes(response) == {
        "task-0": "Succeeded",
        "task-1": "PermanentFailure",
        "task-2": "PermanentFailure",
        "task-3": "Succeeded",
        "task-4": "Succeeded",
    }
    strings = [r["resultString"] for r in response["results"]]
    assert strings[0] == f"written: s3://{BUCKET}/results/{GOOD}.json"
    assert strings[1].startswith("not_found:") and MISSING in strings[1]
    assert strings[2].startswith("bad_image:") and f"results/{NOT_IMAGE}.json" in strings[2]
    assert strings[3] == f"written: s3://{BUCKET}/results/{AWKWARD}.json"
    assert strings[4].startswith("skipped:")

    for key, width in ((GOOD, 96), (AWKWARD, 80)):
        stored = _stored(s3, key)
        etag = s3.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"')
        assert stored["source"] == {"bucket": BUCKET, "key": key, "etag": etag}
        assert stored["image"]["width"] == width
        assert isinstance(stored["caption"], str) and isinstance(stored["detections"], list)
    assert _stored(s3, NOT_IMAGE)["error"]["code"] == "bad_image"
    written = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="results/")["Contents"]}
    assert written == {RESULT, f"results/{GOOD}.json", f"results/{NOT_IMAGE}.json", f"results/{AWKWARD}.json"}


def test_second_run_reports_results_already_present_and_writes_nothing(s3) -> None:  # noqa: F811
    _put_inputs(s3)
    lambda_handler(batch_event("2.0", KEYS), Context())
    before = {o["Key"]: o["LastModified"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    again = lambda_handler(batch_event("2.0", KEYS), Context())
    strings = [r["resultString"] for r in again["results"]]
    assert strings[0] == f"already present: s3://{BUCKET}/results/{GOOD}.json"
    assert _codes(again)["task-2"] == "PermanentFailure" and strings[2].startswith("bad_image")
    assert strings[3].startswith("already present:")
    assert {o["Key"]: o["LastModified"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]} == before


def test_user_arguments_choose_tasks_and_overwrite(s3) -> None:  # noqa: F811
    s3.put_object(Bucket=BUCKET, Key=GOOD, Body=image_bytes("PNG"))
    caption_only = lambda_handler(batch_event("2.0", [GOOD], user_arguments={"tasks": "caption"}), Context())
    assert _codes(caption_only) == {"task-0": "Succeeded"}
    stored = _stored(s3, GOOD)
    assert "caption" in stored and "detections" not in stored

    # A caption-only result does not answer a later job that asks for boxes too.
    both = lambda_handler(batch_event("2.0", [GOOD], user_arguments={"tasks": "caption,detect"}), Context())
    assert both["results"][0]["resultString"].startswith("written:")
    assert "detections" in _stored(s3, GOOD)
    same = lambda_handler(batch_event("2.0", [GOOD], user_arguments={"tasks": "detect"}), Context())
    assert same["results"][0]["resultString"].startswith("already present:")

    first = s3.head_object(Bucket=BUCKET, Key=f"results/{GOOD}.json")["ETag"]
    s3.put_object(Bucket=BUCKET, Key=f"results/{GOOD}.json", Body=b"{}", Metadata={"source-etag": "stale"})
    forced = {"tasks": "caption", "overwrite": "true", "min_score": "0.3", "from_a_newer_version": "x"}
    overwritten = lambda_handler(batch_event("2.0", [GOOD], user_arguments=forced), Context())
    assert overwritten["results"][0]["resultString"].startswith("written:")
    assert s3.head_object(Bucket=BUCKET, Key=f"results/{GOOD}.json")["ETag"] != first
    assert "caption" in _stored(s3, GOOD)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"tasks": "segment"}, "segment"),
        ({"overwrite": "maybe"}, "overwrite"),
        ({"min_score": "1.5"}, "min_score"),
        ({"min_score": "nan"}, "min_score"),
    ],
)
def test_invalid_user_arguments_fail_each_task_permanently(s3, arguments: dict, message: str) -> None:  # noqa: F811
    s3.put_object(Bucket=BUCKET, Key=GOOD, Body=image_bytes("PNG"))
    response = lambda_handler(batch_event("2.0", [GOOD, GOOD], user_arguments=arguments), Context())
    assert _codes(response) == {"task-0": "PermanentFailure", "task-1": "PermanentFailure"}
    assert all(message in r["resultString"] for r in response["results"])
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="results/")


def test_bucket_outside_allowed_buckets_and_malformed_tasks_fail_permanently(s3) -> None:  # noqa: F811
    s3.create_bucket(Bucket="someone-elses")
    s3.put_object(Bucket="someone-elses", Key=GOOD, Body=image_bytes("PNG"))
    denied = lambda_handler(batch_event("1.0", [GOOD], bucket="someone-elses"), Context())
    assert _codes(denied) == {"task-0": "PermanentFailure"}
    assert denied["results"][0]["resultString"].startswith("forbidden:")
    assert "Contents" not in s3.list_objects_v2(Bucket="someone-elses", Prefix="results/")

    event = batch_event("1.0", [GOOD])
    event["tasks"][0]["s3BucketArn"] = "not-an-arn"
    event["tasks"].append({"no": "taskId"})
    broken = lambda_handler(event, Context())
    assert [r["resultCode"] for r in broken["results"]] == ["PermanentFailure", "PermanentFailure"]
    assert [r["taskId"] for r in broken["results"]] == ["task-0", "1"]

    unknown = batch_event("2.0", [GOOD])
    unknown["invocationSchemaVersion"] = "3.0"
    answer = lambda_handler(unknown, Context())
    assert answer["invocationSchemaVersion"] == "3.0" and "not one of" in answer["results"][0]["resultString"]


def test_an_answer_never_outgrows_its_event(s3) -> None:  # noqa: F811
    """A task id that is not a string was echoed as Python text, half as long again as its JSON:
    six tasks with 480,000-item list ids in a 5.8 MB event made a 9 MB answer (Lambda returns 6 MB)."""
    event = batch_event("2.0", [GOOD] * 6)
    for task in event["tasks"]:
        task["taskId"] = [0] * 480_000
    wire = json.dumps(event, separators=(",", ":")).encode()
    assert len(wire) <= LAMBDA_PAYLOAD_BYTES  # an event Lambda accepts
    answer = lambda_handler(json.loads(wire), Context())
    assert len(json.dumps(answer, ensure_ascii=False).encode()) < len(wire)
    assert [r["taskId"] for r in answer["results"]] == ["0", "1", "2", "3", "4", "5"]
    assert {r["resultCode"] for r in answer["results"]} == {"PermanentFailure"}


@pytest.mark.parametrize(
    "field, value",
    [
        ("taskId", "\ud800"),
        ("invocationId", "\udfff"),
        ("invocationSchemaVersion", "2.0\ud800"),
        ("taskId", "é" * 2_900_000),
        ("invocationId", "é" * 2_900_000),
        ("invocationSchemaVersion", [0] * 2_000_000),
    ],
    ids=[
        "surrogate-taskId",
        "surrogate-invocationId",
        "surrogate-schema",
        "huge-taskId",
        "huge-invocationId",
        "list-schema",
    ],
)
def test_fields_the_answer_repeats_are_posted_whole_and_small(
    s3,  # noqa: F811
    field: str,
    value: object,
) -> None:
    """A taskId "\\ud800" was repeated as is, which the runtime cannot encode as UTF-8 (on python3.12+ runtimes its
    process exited: a 502); 2.9 million "é" made a 17 MB post in this image, a 2,000,000-item list schema a 6 MB one."""
    event = batch_event("2.0", [MISSING])
    if field == "taskId":
        event["tasks"][0][field] = value
    else:
        event[field] = value
    answer = lambda_handler(event, Context())
    for post in runtime_posts(answer):
        assert len(post) < 200_000, post[:300]
    assert [r["resultCode"] for r in answer["results"]] == ["PermanentFailure"], str(answer)[:300]
    repeated = answer["results"][0]["taskId"] if field == "taskId" else answer[field]
    if isinstance(value, str) and len(value) < 100:
        assert repeated == value.encode("utf-8", "backslashreplace").decode()  # escaped, not dropped
    assert answer["invocationId"] == (batch_event("2.0", [])["invocationId"] if field != "invocationId" else repeated)


def test_tasks_past_max_tasks_are_left_out_so_the_answer_stays_small(
    s3,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Batch sends one task; 100,000 hand-written ones (a 3.6 MB event) were each answered, 15 MB in UTF-8 and 19 MB
    as this image posts it: the runtime could not post that, and exited (a 502; the next invoke started cold)."""
    event = batch_event("2.0", [MISSING])
    event["tasks"] = [{**event["tasks"][0], "taskId": "é" * 10}] * 100_000
    capsys.readouterr()
    answer = lambda_handler(event, Context())
    for post in runtime_posts(answer):
        assert len(post) < 20_000, len(post)
    assert [r["taskId"] for r in answer["results"]] == ["é" * 10] * batch.MAX_TASKS
    assert {r["resultCode"] for r in answer["results"]} == {"PermanentFailure"}  # the object is missing
    log = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(log) == batch.MAX_TASKS + 1  # the tasks left out were not run
    assert [(line["status"], line["tasks"], line["tasks_left_out"]) for line in log if "tasks" in line] == [
        (400, 100_000, 100_000 - batch.MAX_TASKS)
    ]


def test_unknown_user_arguments_are_logged_by_their_first_names_and_a_count(
    s3,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    """300,000 unknown userArguments keys, one of them 2 MB long, were all logged on the task's line: 5.3 MB."""
    from handler.errors import MAX_LISTED_ERRORS

    arguments = {f"k{index:06d}": "v" for index in range(300_000)} | {"a" + "x" * 2_000_000: "v", "tasks": "caption"}
    capsys.readouterr()
    answer = lambda_handler(batch_event("2.0", [MISSING], user_arguments=arguments), Context())
    assert [r["resultCode"] for r in answer["results"]] == ["PermanentFailure"]  # the missing object, as ever
    out = capsys.readouterr().out
    assert len(out) < 10_000, len(out)
    (line,) = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert line["ignored_user_arguments"] == ["a" + "x" * 99] + [f"k{index:06d}" for index in range(9)]
    assert line["ignored_user_argument_count"] == 300_001 and len(line["ignored_user_arguments"]) == MAX_LISTED_ERRORS


@pytest.mark.parametrize(
    "error, code",
    [
        (ModelUnavailable("model unavailable: loading"), "TemporaryFailure"),
        (UpstreamError("S3 error SlowDown for s3://b/k"), "TemporaryFailure"),
        (TimeoutError("read timed out"), "TemporaryFailure"),
        (ValueError("a bug"), "PermanentFailure"),
    ],
)
def test_failures_a_retry_may_fix_are_temporary(
    s3,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    code: str,
) -> None:
    """The real per-object code raises these from S3 or the model; force one at that seam."""
    s3.put_object(Bucket=BUCKET, Key=GOOD, Body=image_bytes("PNG"))

    def failing(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(batch, "process_object", failing)
    response = lambda_handler(batch_event("2.0", [GOOD]), Context())
    assert _codes(response) == {"task-0": code}


def test_a_model_that_cannot_load_is_a_temporary_failure(s3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:  # noqa: F811
    """No seam: an artifact folder without a model makes the real service answer 503."""
    monkeypatch.setenv("ARTIFACT_DIR", str(tmp_path / "no-artifact-yet"))
    s3.put_object(Bucket=BUCKET, Key=GOOD, Body=image_bytes("PNG"))
    response = lambda_handler(batch_event("2.0", [GOOD]), Context())
    assert _codes(response) == {"task-0": "TemporaryFailure"}
    assert response["results"][0]["resultString"].startswith("model_unavailable:")
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="results/")


def test_tasks_name_their_bucket_by_either_field_in_any_partition(s3) -> None:  # noqa: F811
    """Each schema's own field first, the other one too; bucket ARNs of aws-cn and aws-us-gov are bucket ARNs."""
    s3.put_object(Bucket=BUCKET, Key=GOOD, Body=image_bytes("PNG"))
    s3.put_object(Bucket=BUCKET, Key="uploads/album/", Body=b"")  # a folder marker an inventory lists
    v1 = batch_event("1.0", [GOOD] * 4 + ["uploads/album/"])
    for task, partition in zip(v1["tasks"], ["aws", "aws-cn", "aws-us-gov"], strict=False):
        task["s3BucketArn"] = f"arn:{partition}:s3:::{BUCKET}"
    v1["tasks"][3] = {**v1["tasks"][3], "s3BucketArn": None, "s3Bucket": BUCKET}
    v2 = batch_event("2.0", [GOOD])
    v2["tasks"][0] = {k: v for k, v in v2["tasks"][0].items() if k != "s3Bucket"} | {
        "s3BucketArn": f"arn:aws:s3:::{BUCKET}"
    }
    answers = [
        r["resultString"] for r in lambda_handler(v1, Context())["results"] + lambda_handler(v2, Context())["results"]
    ]
    assert answers == [f"written: s3://{BUCKET}/results/{GOOD}.json"] + [
        f"already present: s3://{BUCKET}/results/{GOOD}.json"
    ] * 3 + ["skipped: uploads/album/ is a folder marker", f"already present: s3://{BUCKET}/results/{GOOD}.json"]
    assert _keys_under(s3, "results/") == [f"results/{GOOD}.json"]

    malformed = [
        BUCKET,
        f"arn:aws:s3:::{BUCKET}/{GOOD}",
        "arn:aws:s3:us-east-1:123456789012:accesspoint/photos",
        "arn:aws:s3",
    ]
    event = batch_event("1.0", [GOOD] * len(malformed))
    for task, arn in zip(event["tasks"], malformed, strict=True):
        task["s3BucketArn"] = arn
    results = lambda_handler(event, Context())["results"]
    assert {r["resultCode"] for r in results} == {"PermanentFailure"}
    assert all(r["resultString"].startswith("invalid_request: s3BucketArn must be an S3 bucket ARN") for r in results)


def _keys_under(client, prefix: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]


@pytest.mark.parametrize("code, status, error", S3_FAULTS)
def test_faults_reading_an_object_are_not_permanent_error_results(s3, code: str, status: int, error: str) -> None:  # noqa: F811
    """A disabled KMS key made a PermanentFailure with an error result that later jobs reported as present."""
    s3.put_object(Bucket=BUCKET, Key=GOOD, Body=image_bytes("PNG"))
    with s3_answers("GetObject", status, code):
        (result,) = lambda_handler(batch_event("2.0", [GOOD]), Context())["results"]
    expected = "PermanentFailure" if error == "forbidden" else "TemporaryFailure"
    assert (
        result["resultCode"] == expected
        and result["resultString"].startswith(f"{error}: ")
        and code in result["resultString"]
    )
    assert _keys_under(s3, "results/") == []


def test_an_output_bucket_s3_cannot_use_fails_tasks_for_good_before_any_work(
    s3,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ours (500), so not retried; it was botocore's ParamValidationError, which counted as a TemporaryFailure."""
    s3.put_object(Bucket=BUCKET, Key=GOOD, Body=image_bytes("PNG"))
    monkeypatch.setenv("OUTPUT_BUCKET", "s3://out-bucket")
    (result,) = lambda_handler(batch_event("2.0", [GOOD]), Context())["results"]
    assert result == {
        "taskId": "task-0",
        "resultCode": "PermanentFailure",
        "resultString": "misconfigured: OUTPUT_BUCKET: 's3://out-bucket' is not a valid S3 bucket name",
    }


def test_a_direct_invoke_that_carries_batch_field_names_is_not_answered_as_a_batch(capsys) -> None:
    """Batch Operations always sends a task list with its job and invocation id; without them the event
    is a malformed direct invoke, answered and logged as one, not an empty batch answer with no log."""
    assert event_kind({"invocationSchemaVersion": "2.0", "tasks": "caption", "image_base64": "x"}) != "batch"
    assert event_kind({"invocationSchemaVersion": "1.0", "tasks": []}) != "batch"
    capsys.readouterr()
    empty = lambda_handler(
        {"invocationSchemaVersion": "1.0", "invocationId": "i", "job": {"id": "j"}, "tasks": []}, Context()
    )
    assert empty["results"] == []
    log = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(line["status"], line["error"]) for line in log] == [(400, "invalid_request")]


def test_a_task_for_an_overwritten_version_is_skipped_not_answered_with_the_current_one(s3) -> None:  # noqa: F811
    """A versioned bucket's manifest names versions (`s3VersionId`); the key's one result describes its
    current version, so a task for an older version must neither claim that result nor overwrite it."""
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    old = s3.put_object(Bucket=BUCKET, Key=GOOD, Body=image_bytes("PNG", (50, 40)))["VersionId"]
    current = s3.put_object(Bucket=BUCKET, Key=GOOD, Body=image_bytes("PNG", (96, 64)))
    event = batch_event("2.0", [GOOD, GOOD])
    event["tasks"][0]["s3VersionId"], event["tasks"][1]["s3VersionId"] = old, current["VersionId"]

    response = lambda_handler(event, Context())
    assert _codes(response) == {"task-0": "Succeeded", "task-1": "Succeeded"}
    stale, fresh = (r["resultString"] for r in response["results"])
    assert stale == (
        f"skipped: version {old} of {GOOD} is no longer current; s3://{BUCKET}/results/{GOOD}.json describes the"
        " current version"
    )
    assert fresh == f"written: s3://{BUCKET}/results/{GOOD}.json"
    stored = _stored(s3, GOOD)
    assert stored["source"]["etag"] == current["ETag"].strip('"') and stored["image"]["width"] == 96
    assert stored["source"]["version_id"] == current["VersionId"]

    # The old version's task alone, run after the current one's result exists, leaves that result alone.
    written_at = s3.head_object(Bucket=BUCKET, Key=f"results/{GOOD}.json")["LastModified"]
    alone = batch_event("1.0", [GOOD])
    alone["tasks"][0]["s3VersionId"] = old
    assert lambda_handler(alone, Context())["results"][0]["resultString"].startswith(f"skipped: version {old}")
    assert s3.head_object(Bucket=BUCKET, Key=f"results/{GOOD}.json")["LastModified"] == written_at


@pytest.mark.parametrize("version", [7, "", ["v1"]])
def test_a_malformed_version_id_fails_the_task_permanently(s3, version) -> None:  # noqa: F811
    event = batch_event("2.0", [GOOD])
    event["tasks"][0]["s3VersionId"] = version
    result = lambda_handler(event, Context())["results"][0]
    assert result["resultCode"] == "PermanentFailure" and "s3VersionId" in result["resultString"]


def test_a_task_over_the_size_limit_fails_permanently_with_an_error_result(
    s3,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sized by HeadObject before any download: a retry cannot shrink it, so Batch must not redrive it."""
    big = image_bytes("PNG", (400, 300))
    monkeypatch.setenv("MAX_S3_IMAGE_BYTES", str(len(big) - 1))
    s3.put_object(Bucket=BUCKET, Key=GOOD, Body=big)
    result = lambda_handler(batch_event("2.0", [GOOD]), Context())["results"][0]
    assert result["resultCode"] == "PermanentFailure" and result["resultString"].startswith("too_large:")
    assert result["resultString"].endswith(f"(error result at s3://{BUCKET}/results/{GOOD}.json)")
    assert _stored(s3, GOOD)["error"]["code"] == "too_large"


def test_a_task_whose_object_is_overwritten_during_analysis_is_retried_not_answered_stale(
    s3,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Outside the upload prefix no newer event follows the overwrite: Batch must retry the task."""
    s3.put_object(Bucket=BUCKET, Key=GOOD, Body=image_bytes("PNG", (50, 40)))
    overwrite_during_analysis(s3, monkeypatch, GOOD, image_bytes("PNG"))
    result = lambda_handler(batch_event("2.0", [GOOD]), Context())["results"][0]
    assert result["resultCode"] == "TemporaryFailure" and result["resultString"].startswith("superseded:")
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="results/")

    retried = lambda_handler(batch_event("2.0", [GOOD]), Context())["results"][0]  # Batch's redrive
    assert retried["resultString"] == f"written: s3://{BUCKET}/results/{GOOD}.json"
    assert _stored(s3, GOOD)["source"]["etag"] == s3.head_object(Bucket=BUCKET, Key=GOOD)["ETag"].strip('"')


def test_a_job_for_other_tasks_keeps_what_the_result_already_holds(s3) -> None:  # noqa: F811
    """A detect job over results an earlier caption job wrote replaced each with boxes only: the captions
    were lost (and a caption job after it dropped the boxes again)."""
    s3.put_object(Bucket=BUCKET, Key=GOOD, Body=image_bytes("PNG"))
    lambda_handler(batch_event("2.0", [GOOD], user_arguments={"tasks": "caption"}), Context())
    caption = _stored(s3, GOOD)["caption"]
    detect = lambda_handler(batch_event("2.0", [GOOD], user_arguments={"tasks": "detect"}), Context())
    assert detect["results"][0]["resultString"] == f"written: s3://{BUCKET}/results/{GOOD}.json"
    stored = _stored(s3, GOOD)
    assert stored["caption"] == caption and isinstance(stored["detections"], list)
    metadata = s3.head_object(Bucket=BUCKET, Key=f"results/{GOOD}.json")["Metadata"]
    assert set(metadata["tasks"].split(",")) == {"caption", "detect"}
    again = lambda_handler(batch_event("1.0", [GOOD]), Context())  # caption and detect: both there
    assert again["results"][0]["resultString"].startswith("already present:")

    s3.put_object(Bucket=BUCKET, Key=GOOD, Body=image_bytes("PNG", (50, 40)))  # a new image: nothing to keep
    lambda_handler(batch_event("2.0", [GOOD], user_arguments={"tasks": "detect"}), Context())
    assert "caption" not in _stored(s3, GOOD)


def test_a_version_id_utf8_cannot_carry_is_answered_escaped(s3) -> None:  # noqa: F811
    """A task naming s3VersionId "\\ud800" of an object in a versioned bucket is skipped as not current, and its
    resultString quoted the version as is: a post the runtime cannot encode where it posts UTF-8."""
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=BUCKET, Key=GOOD, Body=image_bytes("PNG"))
    event = batch_event("2.0", [GOOD])
    event["tasks"][0]["s3VersionId"] = "\ud800"
    answer = lambda_handler(event, Context())
    (result,) = answer["results"]
    assert result["resultCode"] == "Succeeded" and result["resultString"].startswith("skipped: version \\ud800 of")
    runtime_posts(answer)  # raises UnicodeEncodeError where the runtime could not post it
