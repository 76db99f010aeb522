"""S3 upload events and S3-sourced requests against moto's S3 (in-process)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote_plus

import pytest
from fastapi.testclient import TestClient

from handler.app import app, lambda_handler
from handler.events.s3 import S3BatchError
from handler.inputs import s3 as s3io
from tests.conftest import REPO_ROOT, image_bytes, scene_with_scored_boxes
from tests.handler.test_app import Context

EVENTS = REPO_ROOT / "events"
BUCKET = "allowed-bucket"
KEYS = ["uploads/my cat photo.png", "a+b=c.jpg", "ünïcødé/猫 ☕.png"]


@pytest.fixture
def s3(serving_env: Path, monkeypatch: pytest.MonkeyPatch):
    from moto import mock_aws

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        import boto3

        s3io.s3_client.cache_clear()
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client
    s3io.s3_client.cache_clear()


def s3_event(*keys: str, bucket: str = BUCKET, event_name: str = "ObjectCreated:Put") -> dict:
    """The `sam local generate-event s3 put` template, one record per key, keys encoded as S3 sends them."""
    template = json.loads((EVENTS / "s3_put.json").read_text())
    records = []
    for key in keys:
        record = json.loads(json.dumps(template["Records"][0]))
        record["s3"]["bucket"].update(name=bucket, arn=f"arn:aws:s3:::{bucket}")
        record["s3"]["object"]["key"] = quote_plus(key, safe="/")
        record["eventName"] = event_name
        records.append(record)
    return {"Records": records}


@contextmanager
def s3_answers(operation: str, status: int, code: str) -> Iterator[None]:
    """The service's S3 client gets S3's error answer `code` (HTTP `status`) for every `operation` call.

    moto cannot be told to throttle or to find a KMS key disabled; the answer is handed to botocore
    at `before-call`, so botocore raises the very ClientError it raises for that answer from S3.
    """
    error = {"Error": {"Code": code, "Message": "injected"}, "ResponseMetadata": {"HTTPStatusCode": status}}

    def answer(**_: Any) -> tuple[Any, dict[str, Any]]:
        return SimpleNamespace(status_code=status, headers={}, content=b""), error

    events = s3io.s3_client().meta.events
    events.register_first(f"before-call.s3.{operation}", answer)
    try:
        yield
    finally:
        events.unregister(f"before-call.s3.{operation}", answer)


def _result(client, key: str, bucket: str = BUCKET) -> dict:
    return json.loads(client.get_object(Bucket=bucket, Key=f"results/{key}.json")["Body"].read())


def test_upload_event_writes_results_for_awkward_keys(s3, tiny_artifact: Path) -> None:
    for key in KEYS:
        s3.put_object(Bucket=BUCKET, Key=key, Body=image_bytes("JPEG" if key.endswith("jpg") else "PNG"))
    summary = lambda_handler(s3_event(*KEYS), Context())
    assert len(summary["written"]) == 3 and not summary["failed"]
    sha = json.loads((tiny_artifact / "manifest.json").read_text())["model_sha256"][:12]
    for key in KEYS:
        result = _result(s3, key)
        etag = s3.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"')
        assert result["source"] == {"bucket": BUCKET, "key": key, "etag": etag}
        assert result["model_sha"] == sha
        assert isinstance(result["caption"], str) and isinstance(result["detections"], list)
        assert result["image"]["width"] == 96


def test_redelivery_is_idempotent_and_new_versions_recompute(s3) -> None:
    key = KEYS[0]
    s3.put_object(Bucket=BUCKET, Key=key, Body=image_bytes("PNG"))
    lambda_handler(s3_event(key), Context())
    first = s3.head_object(Bucket=BUCKET, Key=f"results/{key}.json")["LastModified"]
    again = lambda_handler(s3_event(key), Context())
    assert again["skipped"] == [{"key": key, "reason": "result exists for this ETag"}] and not again["written"]
    assert s3.head_object(Bucket=BUCKET, Key=f"results/{key}.json")["LastModified"] == first

    s3.put_object(Bucket=BUCKET, Key=key, Body=image_bytes("PNG", (50, 40)))  # a new upload, new ETag
    third = lambda_handler(s3_event(key), Context())
    assert len(third["written"]) == 1 and _result(s3, key)["image"]["width"] == 50


def test_an_event_for_an_overwritten_version_leaves_the_current_result(s3) -> None:
    """S3 events of a versioned bucket carry `versionId`; a late or retried event for a version that was
    overwritten since is skipped: its successor's own event writes the key's one result."""
    key = KEYS[0]
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    old = s3.put_object(Bucket=BUCKET, Key=key, Body=image_bytes("PNG", (50, 40)))["VersionId"]
    current = s3.put_object(Bucket=BUCKET, Key=key, Body=image_bytes("PNG"))["VersionId"]
    event = s3_event(key, key)
    event["Records"][0]["s3"]["object"]["versionId"] = old
    event["Records"][1]["s3"]["object"]["versionId"] = current

    summary = lambda_handler(event, Context())
    assert summary["skipped"] == [{"key": key, "reason": "not the current version"}]
    assert len(summary["written"]) == 1 and not summary["failed"]
    assert _result(s3, key)["source"]["version_id"] == current and _result(s3, key)["image"]["width"] == 96

    late = s3_event(key)
    late["Records"][0]["s3"]["object"]["versionId"] = old
    assert lambda_handler(late, Context())["skipped"] == [{"key": key, "reason": "not the current version"}]
    assert _result(s3, key)["source"]["version_id"] == current


def overwrite_during_analysis(client, monkeypatch: pytest.MonkeyPatch, key: str, body: bytes) -> None:
    """A second upload of `key` lands while the first is being analyzed (the real analysis, then the PUT)."""
    from handler.events import s3 as s3_events

    real = s3_events.analyze

    def analyze_then_overwrite(*args: Any, **kwargs: Any) -> Any:
        analysis = real(*args, **kwargs)
        monkeypatch.setattr(s3_events, "analyze", real)  # once
        client.put_object(Bucket=BUCKET, Key=key, Body=body)
        return analysis

    monkeypatch.setattr(s3_events, "analyze", analyze_then_overwrite)


def test_an_upload_overwritten_during_analysis_leaves_its_result_to_the_newer_upload(
    s3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first event's result, written after the second upload, described an image the key no longer held
    (and could land after the second event's result); the newer upload's own event must write it."""
    key = KEYS[0]
    s3.put_object(Bucket=BUCKET, Key=key, Body=image_bytes("PNG", (50, 40)))
    overwrite_during_analysis(s3, monkeypatch, key, image_bytes("PNG"))
    first = lambda_handler(s3_event(key), Context())
    assert first["skipped"] == [{"key": key, "reason": "overwritten while it was analyzed"}] and not first["written"]
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="results/")

    second = lambda_handler(s3_event(key), Context())  # the newer upload's own event
    assert len(second["written"]) == 1
    etag = s3.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"')
    assert _result(s3, key)["source"]["etag"] == etag and _result(s3, key)["image"]["width"] == 96


def test_results_never_trigger_work(s3) -> None:
    s3.put_object(Bucket=BUCKET, Key="results/x.png.json", Body=b"{}")
    summary = lambda_handler(s3_event("results/x.png.json"), Context())
    assert summary["skipped"] == [{"key": "results/x.png.json", "reason": "under OUTPUT_PREFIX"}]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]] == ["results/x.png.json"]


def test_with_an_output_bucket_a_source_buckets_results_folder_holds_images(s3, monkeypatch) -> None:
    """Results go to OUTPUT_BUCKET, so `results/` in a source bucket is the user's own folder: its images
    were skipped as results (and a backfill that planned them saw every task skipped)."""
    s3.create_bucket(Bucket="out-bucket")
    monkeypatch.setenv("OUTPUT_BUCKET", "out-bucket")
    s3.put_object(Bucket=BUCKET, Key="results/race.png", Body=image_bytes("PNG"))
    summary = lambda_handler(s3_event("results/race.png"), Context())
    assert summary["written"] == [f"s3://out-bucket/results/{BUCKET}/results/race.png.json"]
    s3.put_object(Bucket="out-bucket", Key="results/own.png", Body=image_bytes("PNG"))
    summary = lambda_handler(s3_event("results/own.png", bucket="out-bucket"), Context())
    assert summary["skipped"] == [{"key": "results/own.png", "reason": "under OUTPUT_PREFIX"}]


def test_output_bucket_setting(s3, monkeypatch: pytest.MonkeyPatch) -> None:
    s3.create_bucket(Bucket="out-bucket")
    monkeypatch.setenv("OUTPUT_BUCKET", "out-bucket")
    monkeypatch.setenv("OUTPUT_PREFIX", "captions")  # no trailing slash: one is added
    s3.put_object(Bucket=BUCKET, Key="p.png", Body=image_bytes("PNG"))
    summary = lambda_handler(s3_event("p.png"), Context())
    assert summary["written"] == [f"s3://out-bucket/captions/{BUCKET}/p.png.json"]
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="captions/")

    # The same key in a second bucket gets its own result: both shared captions/p.png.json, each
    # upload overwrote the other's, and every redelivery found the other's ETag and ran again.
    s3.create_bucket(Bucket="second-bucket")
    s3.put_object(Bucket="second-bucket", Key="p.png", Body=image_bytes("PNG", (50, 40)))
    assert lambda_handler(s3_event("p.png", bucket="second-bucket"), Context())["written"] == [
        "s3://out-bucket/captions/second-bucket/p.png.json"
    ]
    for bucket, width in ((BUCKET, 96), ("second-bucket", 50)):
        stored = json.loads(s3.get_object(Bucket="out-bucket", Key=f"captions/{bucket}/p.png.json")["Body"].read())
        assert stored["source"]["bucket"] == bucket and stored["image"]["width"] == width
        assert lambda_handler(s3_event("p.png", bucket=bucket), Context())["skipped"][0]["reason"] == (
            "result exists for this ETag"
        )

    # Misconfigured: retried (for a redrive once fixed), with a message that names the setting or bucket.
    # A name S3 can never use was botocore's ParamValidationError; a missing bucket read as a missing result.
    for setting, error in (
        ("s3://out-bucket", "'code': 'misconfigured', 'message': \"OUTPUT_BUCKET: 's3://out-bucket' is not a valid"),
        ("gone-bucket", "'code': 'not_found', 'message': \"bucket 'gone-bucket' does not exist\""),
    ):
        monkeypatch.setenv("OUTPUT_BUCKET", setting)
        with pytest.raises(S3BatchError) as raised:
            lambda_handler(s3_event("p.png"), Context())
        assert error in str(raised.value)


def test_oversized_and_non_image_uploads_get_error_results(s3, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_S3_IMAGE_BYTES", "20000")
    s3.put_object(Bucket=BUCKET, Key="huge.bmp", Body=image_bytes("BMP", (200, 200)))
    s3.put_object(Bucket=BUCKET, Key="notes.png", Body=b"shopping list")
    downloads: list[str] = []
    s3io.s3_client().meta.events.register(
        "provide-client-params.s3.GetObject", lambda params, **_: downloads.append(params["Key"])
    )
    summary = lambda_handler(s3_event("huge.bmp", "notes.png"), Context())
    assert {r["key"]: r["code"] for r in summary["rejected"]} == {"huge.bmp": "too_large", "notes.png": "bad_image"}
    assert downloads == ["notes.png"]  # the size came from HeadObject: the big one was never read
    assert _result(s3, "huge.bmp")["error"]["code"] == "too_large"
    assert _result(s3, "notes.png")["source"]["key"] == "notes.png"


def test_a_failing_record_does_not_stop_the_others_but_fails_the_invocation(s3) -> None:
    s3.put_object(Bucket=BUCKET, Key="good.png", Body=image_bytes("PNG"))
    event = s3_event("deleted-before-we-ran.png", "good.png")
    with pytest.raises(S3BatchError, match="1 of 2 records failed"):
        lambda_handler(event, Context())
    assert _result(s3, "good.png")["image"]["width"] == 96  # processed after the failure


def test_api_and_direct_invoke_read_allowed_buckets(s3, png_bytes: bytes) -> None:
    s3.put_object(Bucket=BUCKET, Key="in/ph oto+1.png", Body=png_bytes)
    client = TestClient(app)
    ok = client.post("/analyze", json={"s3": {"bucket": BUCKET, "key": "in/ph oto+1.png"}})
    assert ok.status_code == 200 and ok.json()["image"]["bytes"] == len(png_bytes)
    raw = client.post("/analyze", content=png_bytes, headers={"content-type": "image/png"}).json()
    assert ok.json()["caption"] == raw["caption"] and ok.json()["detections"] == raw["detections"]

    missing = client.post("/caption", json={"s3": {"bucket": BUCKET, "key": "nope.png"}})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    s3.create_bucket(Bucket="private")
    s3.put_object(Bucket="private", Key="a.png", Body=png_bytes)
    denied = client.post("/caption", json={"s3": {"bucket": "private", "key": "a.png"}})
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"

    direct = lambda_handler({"task": "caption", "s3": {"bucket": BUCKET, "key": "in/ph oto+1.png"}}, Context())
    assert direct["caption"] == raw["caption"]
    assert (
        lambda_handler({"task": "caption", "s3": {"bucket": BUCKET, "key": "x"}}, Context())["error"]["code"]
        == "not_found"
    )


def test_s3_object_over_the_byte_limit_is_413_without_download(s3, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_S3_IMAGE_BYTES", "1000")
    s3.put_object(Bucket=BUCKET, Key="big.bmp", Body=image_bytes("BMP", (100, 100)))
    response = TestClient(app).post("/caption", json={"s3": {"bucket": BUCKET, "key": "big.bmp"}})
    assert response.status_code == 413 and "limit is 1000" in response.json()["error"]["message"]


@pytest.mark.parametrize("length", [1012, 1019, 1024])
def test_long_upload_keys_get_result_keys_that_fit(s3, length: int) -> None:
    """A key of 1,012-1,024 bytes would give `results/<key>.json` over S3's 1,024: it gets a hashed name."""
    key = "uploads/" + "é" * ((length - 8) // 2) + "x" * ((length - 8) % 2)
    assert len(key.encode()) == length
    s3.put_object(Bucket=BUCKET, Key=key, Body=image_bytes("PNG"))
    summary = lambda_handler(s3_event(key), Context())
    (written,) = summary["written"]
    out_key = written.removeprefix(f"s3://{BUCKET}/")
    assert len(out_key.encode()) <= 1024 and out_key.startswith("results/uploads/é") and out_key.endswith(".json")
    stored = json.loads(s3.get_object(Bucket=BUCKET, Key=out_key)["Body"].read())
    assert stored["source"]["key"] == key
    assert lambda_handler(s3_event(key), Context())["skipped"][0]["reason"] == "result exists for this ETag"


def test_keys_s3_cannot_hold_are_rejected_not_retried(s3) -> None:
    event = s3_event("ok.png")
    event["Records"][0]["s3"]["object"]["key"] = "k" * 1025
    summary = lambda_handler(event, Context())  # no S3BatchError: a retry could never succeed
    assert summary["rejected"][0]["code"] == "bad_request" and "1025 bytes" in summary["rejected"][0]["message"]
    event["Records"][0]["s3"] = {"bucket": {"name": BUCKET}}  # malformed: no object at all
    assert lambda_handler(event, Context())["rejected"][0]["code"] == "bad_request"


def test_upload_results_carry_scores_and_honour_the_min_score_setting(s3, monkeypatch: pytest.MonkeyPatch) -> None:
    from handler.config import settings
    from handler.events.direct import handle

    def direct_analyze(png: bytes) -> dict:
        return handle({"task": "analyze", "image_base64": base64.b64encode(png).decode()}, settings())

    png, answer = scene_with_scored_boxes(direct_analyze)
    s3.put_object(Bucket=BUCKET, Key="all.png", Body=png)
    lambda_handler(s3_event("all.png"), Context())
    assert _result(s3, "all.png")["detections"] == answer["detections"]  # every box, each with its score
    top = max(d["score"] for d in answer["detections"])
    monkeypatch.setenv("MIN_SCORE", str(top))
    s3.put_object(Bucket=BUCKET, Key="strong.png", Body=png)
    lambda_handler(s3_event("strong.png"), Context())
    assert _result(s3, "strong.png")["detections"] == [d for d in answer["detections"] if d["score"] >= top]


def test_events_that_are_not_uploads_and_folder_markers_are_skipped(s3) -> None:
    """Removals, lifecycle expiry, tagging: no new bytes. Before, a removal failed on the missing object and was retried."""
    s3.put_object(Bucket=BUCKET, Key="kept.png", Body=image_bytes("PNG"))
    s3.put_object(Bucket=BUCKET, Key="uploads/album/", Body=b"")  # the console's "Create folder"
    not_uploads = [
        "ObjectRemoved:Delete",
        "ObjectRemoved:DeleteMarkerCreated",
        "LifecycleExpiration:Delete",
        "ObjectRestore:Post",
        "ObjectTagging:Put",
        "ObjectAcl:Put",
    ]
    event = {"Records": [s3_event("gone.png", event_name=name)["Records"][0] for name in not_uploads]}
    event["Records"].append(s3_event("uploads/album/")["Records"][0])
    summary = lambda_handler(event, Context())
    assert summary["failed"] == [] and summary["rejected"] == [] and summary["written"] == []
    assert [s["reason"] for s in summary["skipped"]] == ["not an upload event"] * 6 + [
        "folder marker (key ends in '/')"
    ]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]] == ["kept.png", "uploads/album/"]

    for name in ("ObjectCreated:CompleteMultipartUpload", "ObjectCreated:Copy", "ObjectRestore:Completed"):
        s3.delete_object(Bucket=BUCKET, Key="results/kept.png.json")
        assert len(lambda_handler(s3_event("kept.png", event_name=name), Context())["written"]) == 1, name


S3_TEST_EVENT = {
    "Service": "Amazon S3",
    "Event": "s3:TestEvent",
    "Time": "2026-12-01T02:30:00.000Z",
    "Bucket": BUCKET,
    "RequestId": "5582815E1AEA5ADF",
    "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE",
}
"""What S3 sends, without Records, when a notification is configured."""


def test_the_s3_test_event_is_answered(s3) -> None:
    """S3 sends it, without Records, when a notification is configured; before it was an unsupported event (400)."""
    test_event = S3_TEST_EVENT
    assert lambda_handler(test_event, Context()) == {"written": [], "skipped": [], "rejected": [], "failed": []}
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)


S3_FAULTS = [
    # (S3's error code, HTTP status, the error the service reports)
    ("KMS.DisabledException", 400, "upstream_error"),
    ("KMS.KMSInvalidStateException", 400, "upstream_error"),
    ("KMS.NotFoundException", 400, "upstream_error"),
    ("KMS.ThrottlingException", 400, "upstream_unavailable"),
    ("SlowDown", 503, "upstream_unavailable"),
    ("InternalError", 500, "upstream_error"),
    ("AccessDenied", 403, "forbidden"),
]
"""Reading an upload fails for a reason that is not in its bytes: retried, and no error result is left behind."""


@pytest.mark.parametrize("code, status, error", S3_FAULTS)
def test_faults_reading_an_upload_are_retried_and_leave_no_error_result(s3, code: str, status: int, error: str) -> None:
    """A KMS key S3 could not use was a 400, so the upload got an error result for its ETag and no redelivery
    or backfill ever captioned it, even after the key was enabled again."""
    s3.put_object(Bucket=BUCKET, Key="sealed.png", Body=image_bytes("PNG"))
    with s3_answers("GetObject", status, code), pytest.raises(S3BatchError) as raised:
        lambda_handler(s3_event("sealed.png"), Context())
    assert f"'code': '{error}'" in str(raised.value) and code in str(raised.value)
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="results/")
    # The key is enabled again, the throttling is over: Lambda's retry of the same event succeeds.
    assert len(lambda_handler(s3_event("sealed.png"), Context())["written"]) == 1
    assert _result(s3, "sealed.png")["image"]["width"] == 96


def test_an_answer_for_any_number_of_records_is_one_lambda_can_return(s3) -> None:
    """60,000 malformed records (a 1.6 MB hand-written event) were answered with 6.9 MB of rejections, more than the
    6 MB Lambda returns; the answer now lists them up to MAX_SUMMARY_BYTES and counts the rest."""
    from handler.config import LAMBDA_PAYLOAD_BYTES
    from handler.events.s3 import MAX_SUMMARY_BYTES

    summary = lambda_handler({"Records": [{"eventSource": "aws:s3"}] * 60_000}, Context())
    assert len(json.dumps(summary, ensure_ascii=False).encode()) <= MAX_SUMMARY_BYTES + 100 < LAMBDA_PAYLOAD_BYTES
    assert summary["rejected"][0]["code"] == "bad_request" and len(summary["rejected"]) + summary["omitted"] == 60_000
    assert "omitted" not in lambda_handler({"Records": [{"eventSource": "aws:s3"}]}, Context())  # only when cut


def test_a_record_naming_a_huge_key_or_version_logs_a_bounded_line(s3, capsys: pytest.CaptureFixture[str]) -> None:
    """A record whose key was 2,000,000 "é" was rejected (S3 keys are at most 1,024 bytes), and one naming an old
    version of 2,000,000 "é" was skipped, but each was logged whole: a 12 MB line, as json.dumps escapes it."""
    from handler.errors import MAX_MESSAGE_CHARS

    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=BUCKET, Key="a.png", Body=image_bytes("PNG"))
    huge = "é" * 2_000_000
    old_version = s3_event("a.png")
    old_version["Records"][0]["s3"]["object"]["versionId"] = huge
    capsys.readouterr()
    summary = lambda_handler({"Records": s3_event(huge)["Records"] + old_version["Records"]}, Context())
    assert [r["code"] for r in summary["rejected"]] == ["bad_request"]
    assert [s["reason"] for s in summary["skipped"]] == ["not the current version"]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(len(line) < 7 * MAX_MESSAGE_CHARS for line in lines), [len(x) for x in lines]
    rejected, skipped = (json.loads(line) for line in lines)
    assert rejected["key"].startswith("é" * MAX_MESSAGE_CHARS) and skipped["version_id"].startswith("é" * 100)


def test_records_past_max_records_are_rejected_unread(s3, monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 sends one record; a hand-written event of 2,000 naming missing objects made 2,000 S3 calls one after
    another (each retry again), which from Lambda outlasts the 29 s timeout. Only the first MAX_RECORDS are read."""
    from handler.events.s3 import MAX_RECORDS

    heads: list[str] = []
    head = s3io.head
    monkeypatch.setattr(s3io, "head", lambda bucket, key, *rest: heads.append(key) or head(bucket, key, *rest))
    with pytest.raises(S3BatchError, match=f"^{MAX_RECORDS} of 2000 records failed"):
        lambda_handler(s3_event(*(f"gone/{index}.png" for index in range(2_000))), Context())
    assert heads == [f"gone/{index}.png" for index in range(MAX_RECORDS)]
    summary = lambda_handler(s3_event(*["folder/"] * 2_000), Context())  # folder markers: skipped, never read
    assert len(summary["skipped"]) == MAX_RECORDS and len(summary["rejected"]) == 2_000 - MAX_RECORDS
    assert summary["rejected"][0]["message"].endswith(f"records past the first {MAX_RECORDS} are not read")
