"""`python -m handler.backfill` against moto: the plan's skip rules, --dry-run, --local, and the job it creates.

moto 5 does not implement `s3control create_job`, so the job request is checked as the HTTP request
botocore actually serializes and would send (captured at `before-send`, answered with the documented
CreateJobResult); the manifest it points at is a real object in moto's S3, and its rows are fed back
through `lambda_handler` as Batch Operations would.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import re
import signal
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import pytest

from handler import backfill
from handler.app import lambda_handler
from handler.events.s3 import Disposition, ObjectResult
from tests.conftest import REPO_ROOT, image_bytes
from tests.handler.events.test_s3 import BUCKET, overwrite_during_analysis, s3  # noqa: F401  (s3: the moto fixture)
from tests.handler.test_app import Context

FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:florence"
ROLE_ARN = "arn:aws:iam::123456789012:role/florence-BatchOperationsRole"
IMAGES = ["photos/a.png", "photos/b c.jpg", "photos/ünï/猫+1.PNG"]
S3CONTROL_NS = "{http://awss3control.amazonaws.com/doc/2018-08-20/}"


def _fill(client) -> None:
    for key in IMAGES:
        client.put_object(Bucket=BUCKET, Key=key, Body=image_bytes("PNG" if key.lower().endswith("png") else "JPEG"))
    client.put_object(Bucket=BUCKET, Key="photos/", Body=b"")  # a console "folder"
    client.put_object(Bucket=BUCKET, Key="photos/notes.txt", Body=b"not an image")
    client.put_object(Bucket=BUCKET, Key="batch/manifests/old.csv", Body=b"x,y\n")
    # done.png has a result written after it; stale.png was re-uploaded after its result.
    client.put_object(Bucket=BUCKET, Key="photos/stale.png", Body=image_bytes("PNG"))
    _result(client, "photos/stale.png")
    time.sleep(1.1)  # S3 LastModified has one-second resolution
    client.put_object(Bucket=BUCKET, Key="photos/stale.png", Body=image_bytes("PNG", (50, 40)))
    client.put_object(Bucket=BUCKET, Key="photos/done.png", Body=image_bytes("PNG"))
    time.sleep(1.1)
    _result(client, "photos/done.png")


def _result(client, key: str, prefix: str = "results/", tasks: str = "caption,detect") -> None:
    """A result for the image now at `key`, with the metadata the function writes (its ETag, the tasks run)."""
    etag = client.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"')
    metadata = {"source-etag": etag, "tasks": tasks}
    client.put_object(Bucket=BUCKET, Key=f"{prefix}{key}.json", Body=b"{}", Metadata=metadata)


def _config(**overrides: Any) -> backfill.BackfillConfig:
    return backfill.BackfillConfig(**{"bucket": BUCKET, **overrides})


def _keys(client, prefix: str = "") -> dict[str, Any]:
    return {o["Key"]: o["ETag"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])}


def test_plan_skips_results_backfill_files_non_images_and_done_keys(s3) -> None:  # noqa: F811
    _fill(s3)
    found = backfill.plan(_config(), backfill.Clients(s3=s3))
    assert sorted(c.key for c in found.candidates) == sorted([*IMAGES, "photos/stale.png"])
    assert found.skipped == {"result": 2, "manifest or report": 1, "not an image name": 2, "has a result": 1}
    sizes = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert found.total_bytes == sum(sizes[c.key] for c in found.candidates)

    only_photos = backfill.plan(_config(prefix="photos/", suffixes=()), backfill.Clients(s3=s3))
    assert "photos/notes.txt" in {c.key for c in only_photos.candidates}  # '' suffixes = every key
    assert only_photos.skipped == {"not an image name": 1, "has a result": 1}
    overwrite = backfill.plan(_config(overwrite=True), backfill.Clients(s3=s3))
    assert "photos/done.png" in {c.key for c in overwrite.candidates}


def test_dry_run_counts_and_writes_nothing(s3, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    _fill(s3)
    before = _keys(s3)
    assert backfill.main(["--bucket", BUCKET, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"s3://{BUCKET}/: 4 objects to process" in out and "has a result 1" in out
    assert _keys(s3) == before


def test_dry_run_sends_no_write_request_at_all(s3, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    """Stronger than comparing keys: in a versioned bucket any PutObject (even of the same bytes), copy or
    delete leaves a version or a delete marker, and a manifest upload an open multipart upload."""
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    _fill(s3)
    s3.put_object(Bucket=BUCKET, Key="photos/gone.png", Body=image_bytes("PNG"))
    s3.delete_object(Bucket=BUCKET, Key="photos/gone.png")  # a delete marker: not listed, not planned

    def versions() -> list[tuple[str, str]]:
        answer = s3.list_object_versions(Bucket=BUCKET)
        entries = answer.get("Versions", []) + answer.get("DeleteMarkers", [])
        return sorted((entry["Key"], entry["VersionId"]) for entry in entries)

    before = versions()
    for flags in ([], ["--local"], ["--overwrite"], ["--function-arn", FUNCTION_ARN, "--role-arn", ROLE_ARN]):
        assert backfill.main(["--bucket", BUCKET, "--dry-run", *flags]) == 0
    assert versions() == before and "Uploads" not in s3.list_multipart_uploads(Bucket=BUCKET)
    assert "photos/gone.png" not in capsys.readouterr().out


def test_a_prefix_without_its_slash_names_the_keys_it_takes_beside_the_folder(
    s3,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--prefix photos planned photos/a.png and photos2/b.png alike, silently: the job would caption (and
    bill) a second folder. It still does (a prefix is a prefix), but says so on stderr."""
    for key in ("photos/a.png", "photos2/b.png", "photos.png", "2024-01.png", "2024-02.png"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=image_bytes("PNG"))
    assert backfill.main(["--bucket", BUCKET, "--dry-run", "--prefix", "photos"]) == 0
    out, err = capsys.readouterr()
    assert f"s3://{BUCKET}/photos: 3 objects to process" in out
    assert err.strip().splitlines() == [
        "python -m handler.backfill: note: --prefix 'photos' also takes 2 objects beside the folder photos/"
        " (first: photos.png); for that folder alone, use --prefix photos/"
    ]
    for meant in ("photos/", "2024-"):  # a folder; a prefix of names, with no folder of that name
        assert backfill.main(["--bucket", BUCKET, "--dry-run", "--prefix", meant]) == 0
        assert capsys.readouterr().err == ""


def test_local_runs_the_function_code_and_a_second_run_does_nothing(s3, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    _fill(s3)
    assert backfill.main(["--bucket", BUCKET, "--prefix", "photos/", "--local"]) == 0
    first = capsys.readouterr().out.strip().splitlines()[-1]
    assert first.startswith("done 4, skipped 3, failed 0 in "), first
    for key in [*IMAGES, "photos/stale.png"]:
        stored = json.loads(s3.get_object(Bucket=BUCKET, Key=f"results/{key}.json")["Body"].read())
        assert stored["source"]["key"] == key and isinstance(stored["caption"], str)
        assert isinstance(stored["detections"], list)
    assert (
        json.loads(s3.get_object(Bucket=BUCKET, Key="results/photos/stale.png.json")["Body"].read())["image"]["width"]
        == 50
    )

    results = _keys(s3, "results/")
    assert backfill.main(["--bucket", BUCKET, "--prefix", "photos/", "--local", "--tasks", "caption"]) == 0
    out = capsys.readouterr().out
    assert "photos/: 0 objects to process" in out
    assert out.strip().splitlines()[-1].startswith("done 0, skipped 7, failed 0")
    assert _keys(s3, "results/") == results


def test_local_reports_objects_that_fail(s3, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    s3.put_object(Bucket=BUCKET, Key="in/fake.png", Body=b"shopping list")
    s3.put_object(Bucket=BUCKET, Key="in/real.png", Body=image_bytes("PNG"))
    s3.put_object(Bucket=BUCKET, Key="in/two\nlines\u200b.png", Body=b"shopping list")  # one failure, one line
    assert backfill.main(["--bucket", BUCKET, "--prefix", "in/", "--local"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert "failed: in/fake.png: bad_image" in lines
    assert "failed: in/two\\nlines\\u200b.png: bad_image" in lines  # it was split over two lines
    assert lines[-1].startswith("done 1, skipped 0, failed 2")


def test_local_without_a_model_stops_before_the_first_image(
    s3,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """ARTIFACT_DIR unset or wrong: every image of the plan failed in turn with the same 'model unavailable'
    line (10,000 images, 10,000 lines) and the summary 'failed 3'; now one line, before any image is read."""
    for index in range(3):
        s3.put_object(Bucket=BUCKET, Key=f"in/{index}.png", Body=image_bytes("PNG"))
    monkeypatch.setenv("ARTIFACT_DIR", "/no/such/artifact")
    monkeypatch.setattr(backfill, "process_object", lambda *args: pytest.fail("an image was processed"))
    with pytest.raises(SystemExit) as exited:
        backfill.main(["--bucket", BUCKET, "--local"])
    assert str(exited.value.code).startswith("python -m handler.backfill: --local: model unavailable: ")
    assert "/no/such/artifact" in str(exited.value.code) and _keys(s3, "results/") == {}
    assert backfill.main(["--bucket", BUCKET, "--local", "--dry-run"]) == 0  # a plan needs no model


def test_a_rerun_counts_images_that_failed_apart_from_done_ones(s3, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    """After a --local run where in/fake.png failed (bad_image, exit 1), the rerun and --dry-run said
    'has a result 2' and exit 0, as if both images were captioned: the error result was counted as done."""
    s3.put_object(Bucket=BUCKET, Key="in/fake.png", Body=b"shopping list")
    s3.put_object(Bucket=BUCKET, Key="in/real.png", Body=image_bytes("PNG"))
    assert backfill.main(["--bucket", BUCKET, "--prefix", "in/", "--local"]) == 1
    capsys.readouterr()
    assert backfill.main(["--bucket", BUCKET, "--prefix", "in/", "--dry-run"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"s3://{BUCKET}/in/: 0 objects to process, 0.0 MiB; skipped: has a result 1, has an error result 1"
    )


def _namespaced(path: str) -> str:
    return "/".join(S3CONTROL_NS + part for part in path.split("/"))


class CapturedControl:
    """A real s3control client whose CreateJob and DescribeJob requests are recorded and answered as S3 does:
    one job per ClientRequestToken (the same token gets the same job back), in the state `status` gives."""

    FIRST_JOB = "00e123a4-c0d8-41f4-a0eb-b46f9ba5b07c"

    def __init__(self, session: Any = None) -> None:
        """With `session`, every s3control client that session makes later is answered so."""
        import boto3
        from botocore.awsrequest import AWSResponse

        self.requests: list[Any] = []
        self.jobs: dict[str, str] = {}
        """ClientRequestToken -> job id."""
        self.status: dict[str, str] = {}
        """Job id -> its state (New until a test moves it on)."""
        self.describe_denied = False
        if session is None:
            self.client = boto3.client("s3control", region_name="us-east-1")

        class _Raw:
            def stream(self, **_: Any):
                yield b""

        def respond(request: Any, body: bytes) -> AWSResponse:
            response = AWSResponse(request.url, 200, {"content-type": "application/xml"}, _Raw())
            response._content = b'<?xml version="1.0" encoding="UTF-8"?>' + body
            return response

        def create(request: Any, **_: Any) -> AWSResponse:
            self.requests.append(request)
            token = ET.fromstring(request.body).findtext(_namespaced("ClientRequestToken")) or ""
            job_id = self.jobs.setdefault(token, self.FIRST_JOB if not self.jobs else f"job-{len(self.jobs)}")
            self.status.setdefault(job_id, "New")
            return respond(request, f"<CreateJobResult><JobId>{job_id}</JobId></CreateJobResult>".encode())

        def describe(request: Any, **_: Any) -> AWSResponse:
            if self.describe_denied:
                response = respond(request, b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>")
                response.status_code = 403
                return response
            job_id = request.url.rsplit("/", 1)[1]
            job = f"<Job><JobId>{job_id}</JobId><Status>{self.status[job_id]}</Status></Job>"
            return respond(request, f"<DescribeJobResult>{job}</DescribeJobResult>".encode())

        events = self.client.meta.events if session is None else session.events
        events.register("before-send.s3-control.CreateJob", create)
        events.register("before-send.s3-control.DescribeJob", describe)


def _stack(
    stack_name: str = "florence",
    upload_prefix: str = "photos/",
    output_prefix: str = "results/",
    batch_prefix: str = "batch/",
) -> None:
    import boto3

    outputs = {
        "FunctionArn": FUNCTION_ARN,
        "BatchOperationsRoleArn": ROLE_ARN,
        "UploadsBucketName": BUCKET,
        "BatchPrefix": batch_prefix,
        "UploadPrefix": upload_prefix,
        "OutputPrefix": output_prefix,
    }
    template = {
        "Resources": {"Queue": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {name: {"Value": value} for name, value in outputs.items()},
    }
    boto3.client("cloudformation", region_name="us-east-1").create_stack(
        StackName=stack_name, TemplateBody=json.dumps(template)
    )


def test_job_is_created_from_the_stack_outputs_with_a_manifest_the_function_reads(
    s3,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    _fill(s3)
    _stack()
    control = CapturedControl()
    clients = backfill.Clients(s3=s3, s3control=control.client)
    config = _config(prefix="photos/", stack="florence", tasks=backfill.tasks_from("detect"))
    assert backfill.run(config, clients) == 0
    out = capsys.readouterr().out
    assert "job: 00e123a4-c0d8-41f4-a0eb-b46f9ba5b07c" in out
    assert "aws s3control describe-job --region us-east-1 --account-id 123456789012 --job-id 00e123a4" in out

    manifests = _keys(s3, "batch/manifests/")
    (manifest_key,) = set(manifests) - {"batch/manifests/old.csv"}
    body = s3.get_object(Bucket=BUCKET, Key=manifest_key)["Body"].read().decode()
    rows = list(csv.reader(io.StringIO(body)))
    assert rows == [  # in listing order
        [BUCKET, "photos/a.png"],
        [BUCKET, "photos/b%20c.jpg"],
        [BUCKET, "photos/stale.png"],
        [BUCKET, "photos/%C3%BCn%C3%AF/%E7%8C%AB%2B1.PNG"],
    ]

    # Run again before the job has done anything: the same manifest object and the same request,
    # which S3 answers with the first job instead of starting a second one.
    assert backfill.run(_config(prefix="photos/", stack="florence", tasks=backfill.tasks_from("detect")), clients) == 0
    assert set(_keys(s3, "batch/manifests/")) == set(manifests)
    request, again = control.requests
    assert again.body == request.body
    assert request.method == "POST" and request.url == (
        "https://123456789012.s3-control.us-east-1.amazonaws.com/v20180820/jobs"
    )
    assert request.headers["x-amz-account-id"] == b"123456789012"
    job = ET.fromstring(request.body)
    text = lambda path: job.findtext(_namespaced(path))
    assert text("ConfirmationRequired") == "false"
    assert text("RoleArn") == ROLE_ARN
    assert text("Priority") == "10"
    assert text("Operation/LambdaInvoke/FunctionArn") == FUNCTION_ARN
    assert text("Operation/LambdaInvoke/InvocationSchemaVersion") == "2.0"
    entries = job.findall(_namespaced("Operation/LambdaInvoke/UserArguments/entry"))
    assert {e.findtext(_namespaced("key")): e.findtext(_namespaced("value")) for e in entries} == {
        "tasks": "detect",
        "overwrite": "false",
    }
    assert text("Manifest/Spec/Format") == "S3BatchOperations_CSV_20180820"
    fields = job.findall(_namespaced("Manifest/Spec/Fields/member"))
    assert [f.text for f in fields] == ["Bucket", "Key"]
    assert text("Manifest/Location/ObjectArn") == f"arn:aws:s3:::{BUCKET}/{manifest_key}"
    assert text("Manifest/Location/ETag") == manifests[manifest_key].strip('"')
    assert text("Report/Bucket") == f"arn:aws:s3:::{BUCKET}"
    assert text("Report/Prefix") == "batch/reports"
    assert text("Report/Format") == "Report_CSV_20180820"
    assert text("Report/ReportScope") == "AllTasks"
    assert len(text("ClientRequestToken") or "") == 64

    # What Batch Operations would send for these rows, with these userArguments, to the function.
    event = json.loads((REPO_ROOT / "events" / "s3_batch_v2.json").read_text())
    event["job"]["userArguments"] = {"tasks": "detect", "overwrite": "false"}
    event["tasks"] = [
        {**copy.deepcopy(event["tasks"][0]), "taskId": str(i), "s3Bucket": bucket, "s3Key": key}
        for i, (bucket, key) in enumerate(rows)
    ]
    response = lambda_handler(event, Context())
    assert [r["resultCode"] for r in response["results"]] == ["Succeeded"] * 4, response
    for _, key in rows:
        stored = json.loads(s3.get_object(Bucket=BUCKET, Key=f"results/{unquote(key)}.json")["Body"].read())
        assert "detections" in stored and "caption" not in stored


def test_the_stack_s_output_prefix_finds_the_results_not_this_machine_s_setting(
    s3,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A stack deployed with OutputPrefix=captions/ writes results there; planning with this machine's
    OUTPUT_PREFIX (results/) found none, so every rerun resubmitted every image."""
    s3.put_object(Bucket=BUCKET, Key="photos/done.png", Body=image_bytes("PNG"))
    s3.put_object(Bucket=BUCKET, Key="photos/new.png", Body=image_bytes("PNG"))
    time.sleep(1.1)  # S3 LastModified has one-second resolution
    _result(s3, "photos/done.png", "captions/")
    _stack(output_prefix="captions/")
    config = _config(prefix="photos/", stack="florence", dry_run=True)
    assert backfill.run(config, backfill.Clients(s3=s3)) == 0
    assert config.settings.output_prefix == "captions/"
    assert "photos/: 1 objects to process" in capsys.readouterr().out

    whole = _config(stack="florence", dry_run=True)  # every key of the bucket, not just the stack's uploads
    with pytest.raises(SystemExit, match=r"beyond the stack's UploadPrefix.*use --prefix photos/"):
        backfill.run(whole, backfill.Clients(s3=s3))


def test_the_same_plan_makes_the_same_request_token(s3) -> None:  # noqa: F811
    """A retried command must not start a second job: the token depends on manifest and options only."""
    config = _config(function_arn=FUNCTION_ARN, role_arn=ROLE_ARN, report_bucket=BUCKET)
    body = backfill.manifest_csv(BUCKET, [backfill.Candidate("a.png", 1)])
    first = backfill.job_request(config, "batch/manifests/1.csv", "etag", body)
    again = backfill.job_request(config, "batch/manifests/2.csv", "etag", body)
    assert first["ClientRequestToken"] == again["ClientRequestToken"]
    config.overwrite = True
    assert backfill.job_request(config, "m", "etag", body)["ClientRequestToken"] != first["ClientRequestToken"]


def test_missing_arns_and_bad_flags_are_named(s3, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    s3.put_object(Bucket=BUCKET, Key="a.png", Body=image_bytes("PNG"))
    with pytest.raises(SystemExit, match="--stack NAME or --function-arn"):
        backfill.run(_config(), backfill.Clients(s3=s3))
    with pytest.raises(SystemExit):
        backfill.parse_args(["--bucket", BUCKET, "--tasks", "segment"])
    assert "segment" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--bucket", "Photos_2019"], "argument --bucket: 'Photos_2019' is not a valid S3 bucket name"),
        (["--bucket", ""], "argument --bucket: '' is not a valid S3 bucket name"),
        (["--bucket", BUCKET, "--report-bucket", "s3://reports"], "argument --report-bucket: 's3://reports' is not"),
        (["--bucket", BUCKET, "--function-arn", "florence"], "argument --function-arn: 'florence' is not a Lambda"),
        (["--bucket", BUCKET, "--function-arn", FUNCTION_ARN, "--role-arn", FUNCTION_ARN], "is not an IAM role ARN"),
        (["--bucket", BUCKET, "--priority", "high"], "argument --priority: invalid int value: 'high'"),
        (["--bucket", BUCKET, "--priority", "-1"], "argument --priority: must be 0 or more"),
        # It wrote the manifest as jobsmanifests/<sha>.csv, the reports under jobsreports/.
        (["--bucket", BUCKET, "--local", "--batch-prefix", "jobs"], "argument --batch-prefix: 'jobs' is not a folder"),
        (["--bucket", BUCKET, "--local", "--batch-prefix", ""], "argument --batch-prefix: '' is not a folder"),
        (["--bucket", BUCKET, "--local", "--batch-prefix", "/jobs/"], "must end in '/' and not start with one"),
        # A job without its ARNs listed the whole bucket first, then exited 1.
        (["--bucket", BUCKET], "a Batch Operations job needs --stack, or --function-arn and --role-arn"),
        (["--bucket", BUCKET, "--function-arn", FUNCTION_ARN], "needs --stack, or --function-arn and --role-arn"),
        # It found 0 objects (no key starts with "s3://") and exited 0.
        (["--bucket", BUCKET, "--dry-run", "--prefix", f"s3://{BUCKET}/photos/"], "argument --prefix: 's3://"),
        # --local ran, ignoring the flags of a job it does not create, and exited 0.
        (["--bucket", BUCKET, "--local", "--function-arn", FUNCTION_ARN], "argument --function-arn: not allowed with"),
        (["--bucket", BUCKET, "--local", "--role-arn", ROLE_ARN], "argument --role-arn: not allowed with --local"),
        (["--bucket", BUCKET, "--local", "--priority", "10"], "argument --priority: not allowed with --local"),
    ],
)
def test_bad_flags_stop_at_the_flag(flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed function ARN got as far as `create_job`'s request and failed there with an IndexError."""
    with pytest.raises(SystemExit) as exited:
        backfill.main(flags)
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_a_setting_that_does_not_parse_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The plan reads the function's settings from this shell: MIN_SCORE=2 was a SettingError traceback."""
    monkeypatch.setenv("MIN_SCORE", "2")
    assert backfill.main(["--bucket", BUCKET, "--dry-run"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "python -m handler.backfill: setting MIN_SCORE='2' is not a number in [0, 1]"
    ]


def test_help_names_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        backfill.parse_args(["--help"])
    assert exited.value.code == 0
    options = re.split(r"\n  (?=-)", capsys.readouterr().out.split("options:", 1)[1])[1:]
    assert len(options) == 15  # --help and the 14 flags
    for option in options:
        assert option.startswith(("-h", "--bucket")) or "(default: " in " ".join(option.split()), option


def test_aws_refusals_are_one_line_not_a_traceback(s3, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    """No such bucket or stack raised botocore's ClientError out of `main` as a traceback."""
    assert backfill.main(["--bucket", "no-such-bucket", "--dry-run"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "python -m handler.backfill: AWS refused: An error occurred (NoSuchBucket) when calling the ListObjectsV2"
        " operation: The specified bucket does not exist"
    ]
    assert backfill.main(["--bucket", BUCKET, "--stack", "no-such-stack"]) == 1
    assert "(ValidationError) when calling the DescribeStacks operation" in capsys.readouterr().err


def test_plan_pages_past_a_thousand_keys(s3) -> None:  # noqa: F811
    """ListObjectsV2 answers 1,000 keys a page: both listings (images and results) span two pages."""
    for index in range(1001):
        s3.put_object(Bucket=BUCKET, Key=f"many/{index:04d}.png", Body=b"x")
    for index in range(1000):
        _result(s3, f"many/{index:04d}.png")
    found = backfill.plan(_config(prefix="many/"), backfill.Clients(s3=s3))
    assert [c.key for c in found.candidates] == ["many/1000.png"]
    assert found.skipped == {"has a result": 1000}


def test_an_interrupted_local_run_resumes_without_redoing_work(
    s3,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Ctrl-C after the first image: a message and status 130; the same command then does only the rest."""
    for key in IMAGES:
        s3.put_object(Bucket=BUCKET, Key=key, Body=image_bytes("PNG" if key.lower().endswith("png") else "JPEG"))
    real = backfill.process_object
    processed: list[str] = []

    def interrupted_after_one(bucket: str, key: str, *args: Any) -> Any:
        if processed:
            raise KeyboardInterrupt  # where the user's Ctrl-C lands: between two objects
        processed.append(key)
        return real(bucket, key, *args)

    monkeypatch.setattr(backfill, "process_object", interrupted_after_one)
    assert backfill.main(["--bucket", BUCKET, "--local"]) == backfill.INTERRUPTED_EXIT
    assert "interrupted; results written so far are kept" in capsys.readouterr().err
    assert list(_keys(s3, "results/")) == [f"results/{processed[0]}.json"]

    monkeypatch.setattr(backfill, "process_object", real)
    assert backfill.main(["--bucket", BUCKET, "--local"]) == 0
    out, progress = capsys.readouterr()
    assert "backfill: 100%" in progress and "2/2" in progress  # tqdm's bar, on stderr
    assert f"s3://{BUCKET}/: 2 objects to process" in out and "has a result 1" in out
    assert out.strip().splitlines()[-1].startswith("done 2, skipped 2, failed 0")  # its result, the done image
    assert sorted(_keys(s3, "results/")) == sorted(f"results/{key}.json" for key in IMAGES)


def _stopping_at(third: Callable[[], None]) -> Callable[..., Any]:
    """`process_object` that calls `third` (a Ctrl-C, a SIGTERM) when the third image starts."""
    real = backfill.process_object
    started: list[str] = []

    def stopping(bucket: str, key: str, *args: Any) -> Any:
        started.append(key)
        if len(started) == 3:
            third()
        return real(bucket, key, *args)

    return stopping


def _bad_first_then_two() -> list[str]:
    return ["in/0-bad.png", "in/1.png", "in/2.png", "in/3.png"]


def _keyboard_interrupt() -> None:
    raise KeyboardInterrupt


def test_ctrl_c_still_reports_what_failed_before_it(
    s3,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--local` over a bad image and three good ones, Ctrl-C at the third: it printed only "interrupted",
    no failure and no counts; the bad image's error result then made the rerun skip it ("has a result")
    and exit 0, so no run ever named it."""
    keys = _bad_first_then_two()
    s3.put_object(Bucket=BUCKET, Key=keys[0], Body=b"shopping list")
    for key in keys[1:]:
        s3.put_object(Bucket=BUCKET, Key=key, Body=image_bytes("PNG"))
    monkeypatch.setattr(backfill, "process_object", _stopping_at(_keyboard_interrupt))
    assert backfill.main(["--bucket", BUCKET, "--local"]) == backfill.INTERRUPTED_EXIT
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert "failed: in/0-bad.png: bad_image" in lines
    assert lines[-1].startswith("done 1, skipped 0, failed 1 in ") and lines[-1].endswith("stopped with 2 not done")
    assert err.strip().splitlines()[-1] == f"python -m handler.backfill: {backfill.INTERRUPTED}"
    assert sorted(_keys(s3, "results/")) == ["results/in/0-bad.png.json", "results/in/1.png.json"]


def test_sigterm_stops_like_ctrl_c_with_the_summary(
    s3,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SIGTERM (`kill`, `timeout`, a container stopping) mid-run killed the process at once: no failure
    list, no counts, no message, status -15. Now it stops as Ctrl-C does, with status 143, and the
    same command resumes."""
    keys = _bad_first_then_two()
    s3.put_object(Bucket=BUCKET, Key=keys[0], Body=b"shopping list")
    for key in keys[1:]:
        s3.put_object(Bucket=BUCKET, Key=key, Body=image_bytes("PNG"))

    def unhandled(signum: int, frame: Any) -> None:  # Python's default would end pytest too
        pytest.fail("SIGTERM reached the caller's handler: main() installed none")

    real, before = backfill.process_object, signal.signal(signal.SIGTERM, unhandled)
    try:
        monkeypatch.setattr(backfill, "process_object", _stopping_at(lambda: os.kill(os.getpid(), signal.SIGTERM)))
        assert backfill.main(["--bucket", BUCKET, "--local"]) == backfill.TERMINATED_EXIT
        assert signal.getsignal(signal.SIGTERM) is unhandled  # main() put the caller's handler back
    finally:
        signal.signal(signal.SIGTERM, before)
    out, err = capsys.readouterr()
    assert "failed: in/0-bad.png: bad_image" in out.splitlines()
    assert out.strip().splitlines()[-1].endswith("stopped with 2 not done")
    assert err.strip().splitlines()[-1] == f"python -m handler.backfill: terminated (SIGTERM); {backfill.INTERRUPTED}"

    monkeypatch.setattr(backfill, "process_object", real)  # the rerun does only the two left
    assert backfill.main(["--bucket", BUCKET, "--local"]) == 0
    assert (
        capsys.readouterr().out.strip().splitlines()[-1].startswith("done 2, skipped 4, failed 0")
    )  # 2 done, their 2 results


def test_with_output_bucket_each_source_bucket_has_its_own_results(s3, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The plan looks for a result where the function writes it: the same key done in one bucket is not done in another."""
    monkeypatch.setenv("OUTPUT_BUCKET", "out-bucket")
    for bucket in ("out-bucket", "second-bucket"):
        s3.create_bucket(Bucket=bucket)
    for bucket in (BUCKET, "second-bucket"):
        s3.put_object(Bucket=bucket, Key="photos/a.png", Body=image_bytes("PNG"))
    assert backfill.main(["--bucket", BUCKET, "--local"]) == 0
    assert list(_keys_in(s3, "out-bucket")) == [f"results/{BUCKET}/photos/a.png.json"]
    assert backfill.plan(_config(prefix="photos/"), backfill.Clients(s3=s3)).skipped == {"has a result": 1}
    second = backfill.plan(_config(bucket="second-bucket"), backfill.Clients(s3=s3))
    assert [c.key for c in second.candidates] == ["photos/a.png"] and not second.skipped


def _keys_in(client, bucket: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_a_result_without_the_tasks_asked_for_is_planned_again(s3) -> None:  # noqa: F811
    """After `--tasks caption`, planning caption and detect counted every caption-only result as done
    ('has a result'): no job was created and no image ever got its boxes, though the function would compute them."""
    s3.put_object(Bucket=BUCKET, Key="photos/a.png", Body=image_bytes("PNG"))
    assert backfill.main(["--bucket", BUCKET, "--local", "--tasks", "caption"]) == 0
    caption_only = backfill.plan(
        _config(prefix="photos/", tasks=backfill.tasks_from("caption")), backfill.Clients(s3=s3)
    )
    assert caption_only.skipped == {"has a result": 1} and not caption_only.candidates

    both = backfill.plan(_config(prefix="photos/"), backfill.Clients(s3=s3))
    assert [c.key for c in both.candidates] == ["photos/a.png"] and not both.skipped
    assert backfill.main(["--bucket", BUCKET, "--local"]) == 0
    stored = json.loads(s3.get_object(Bucket=BUCKET, Key="results/photos/a.png.json")["Body"].read())
    assert "caption" in stored and "detections" in stored
    assert backfill.plan(_config(prefix="photos/"), backfill.Clients(s3=s3)).skipped == {"has a result": 1}


def test_archived_images_are_counted_not_planned(s3) -> None:  # noqa: F811
    """Glacier Flexible Retrieval and Deep Archive objects were planned: GetObject refuses them
    (InvalidObjectState), so each task failed, and a bucket mostly archived failed the whole job."""
    for key, storage_class in {
        "old/flexible.png": "GLACIER",
        "old/deep.png": "DEEP_ARCHIVE",
        "old/instant.png": "GLACIER_IR",
        "old/restored.png": "GLACIER",
        "old/standard.png": "STANDARD",
    }.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=image_bytes("PNG"), StorageClass=storage_class)

    s3.restore_object(Bucket=BUCKET, Key="old/restored.png", RestoreRequest={"Days": 1})  # done at once in moto
    found = backfill.plan(_config(prefix="old/"), backfill.Clients(s3=s3))
    assert sorted(c.key for c in found.candidates) == ["old/instant.png", "old/restored.png", "old/standard.png"]
    assert found.skipped == {"archived (restore it first)": 2}
    with pytest.raises(Exception, match="InvalidObjectState"):  # why: what each task would have met
        s3.get_object(Bucket=BUCKET, Key="old/deep.png")


def test_local_s_last_line_names_the_images_it_left_without_a_caption(
    s3,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An archived image and one whose result is an error were folded into 'skipped 2' with the results
    and folder markers; the plan line that told them apart had scrolled away above the progress bar."""
    s3.put_object(Bucket=BUCKET, Key="old/deep.png", Body=image_bytes("PNG"), StorageClass="DEEP_ARCHIVE")
    s3.put_object(Bucket=BUCKET, Key="old/fake.png", Body=b"shopping list")
    assert backfill.main(["--bucket", BUCKET, "--prefix", "old/", "--local"]) == 1  # fake.png: bad_image
    s3.put_object(Bucket=BUCKET, Key="old/new.png", Body=image_bytes("PNG"))
    capsys.readouterr()
    assert backfill.main(["--bucket", BUCKET, "--prefix", "old/", "--local"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("done 1, skipped 2, failed 0 in ")
    assert last.endswith("; not captioned: archived (restore it first) 1, has an error result 1"), last


def test_results_inside_the_listed_prefix_are_never_captioned(
    s3,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """OUTPUT_PREFIX under --prefix, and --suffixes '' (every key): the results written by the first run
    are listed with the images, and must be counted as results, never planned as inputs."""
    monkeypatch.setenv("OUTPUT_PREFIX", "photos/results/")
    s3.put_object(Bucket=BUCKET, Key="photos/a.png", Body=image_bytes("PNG"))
    s3.put_object(Bucket=BUCKET, Key="photos/results.png", Body=image_bytes("PNG"))  # beside the folder: an image
    flags = ["--bucket", BUCKET, "--prefix", "photos/", "--suffixes", "", "--local"]
    assert backfill.main(flags) == 0
    assert sorted(_keys(s3, "photos/results/")) == [
        "photos/results/photos/a.png.json",
        "photos/results/photos/results.png.json",
    ]
    capsys.readouterr()
    assert backfill.main(flags) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0] == f"s3://{BUCKET}/photos/: 0 objects to process, 0.0 MiB; skipped: has a result 2, result 2"


def test_the_manifest_is_sse_s3_in_a_bucket_whose_default_is_kms(s3) -> None:  # noqa: F811
    """Batch Operations does not read CSV manifests encrypted with SSE-KMS: in a bucket whose default
    encryption is KMS (common for existing buckets: --report-bucket defaults to --bucket) the manifest
    inherited aws:kms and the job could not start."""
    s3.put_bucket_encryption(
        Bucket=BUCKET,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "alias/x"}}]
        },
    )
    s3.put_object(Bucket=BUCKET, Key="photos/a.png", Body=image_bytes("PNG"))
    control = CapturedControl()
    config = _config(function_arn=FUNCTION_ARN, role_arn=ROLE_ARN)
    assert backfill.run(config, backfill.Clients(s3=s3, s3control=control.client)) == 0
    (manifest_key,) = _keys(s3, "batch/manifests/")
    assert s3.head_object(Bucket=BUCKET, Key=manifest_key)["ServerSideEncryption"] == "AES256"
    assert s3.head_object(Bucket=BUCKET, Key="photos/a.png")["ServerSideEncryption"] == "aws:kms"  # the default


def test_the_job_is_created_in_the_function_s_region(
    s3,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without --stack, the s3control client took --region or the shell's default (us-east-1 here), so a
    function in us-west-2 got its job created in us-east-1, a cross-region job, and the printed
    describe-job command (us-west-2) could not find it."""
    import boto3

    session = boto3.Session()
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", session)
    control = CapturedControl(session)
    s3.put_object(Bucket=BUCKET, Key="photos/a.png", Body=image_bytes("PNG"))
    west = FUNCTION_ARN.replace("us-east-1", "us-west-2")
    assert backfill.run(_config(function_arn=west, role_arn=ROLE_ARN), backfill.Clients("us-east-1", s3=s3)) == 0
    (request,) = control.requests
    assert request.url == "https://123456789012.s3-control.us-west-2.amazonaws.com/v20180820/jobs"
    assert "describe-job --region us-west-2" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flag, value",
    [("report_bucket", "someone-elses-reports"), ("function_arn", FUNCTION_ARN.replace("florence", "other"))],
)
def test_with_the_stack_s_role_another_report_bucket_or_function_is_refused(
    s3,  # noqa: F811
    flag: str,
    value: str,
) -> None:
    """--stack with --report-bucket elsewhere wrote the manifest there and created a job whose role (the
    stack's, allowed only <uploads bucket>/<BatchPrefix>) could not read it: a job that fails in Preparing."""
    s3.create_bucket(Bucket="someone-elses-reports")
    s3.put_object(Bucket=BUCKET, Key="photos/a.png", Body=image_bytes("PNG"))
    _stack()
    control = CapturedControl()
    clients = backfill.Clients(s3=s3, s3control=control.client)
    with pytest.raises(SystemExit, match=r"is not the stack's .* the only one its BatchOperationsRole may use"):
        backfill.run(_config(prefix="photos/", stack="florence", **{flag: value}), clients)
    assert control.requests == [] and not _keys_in(s3, "someone-elses-reports")
    # A role of one's own may be allowed more; a dry run creates nothing.
    assert backfill.run(_config(prefix="photos/", stack="florence", role_arn=ROLE_ARN, **{flag: value}), clients) == 0
    assert backfill.run(_config(prefix="photos/", stack="florence", dry_run=True, **{flag: value}), clients) == 0


def test_an_explicit_batch_prefix_is_kept_or_refused_never_replaced_by_the_stack_s(
    s3,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--stack florence --batch-prefix mine/` wrote the manifest under the stack's `jobs/` instead, saying nothing."""
    s3.put_object(Bucket=BUCKET, Key="photos/a.png", Body=image_bytes("PNG"))
    _stack(batch_prefix="jobs/")
    argv = ["--bucket", BUCKET, "--prefix", "photos/", "--stack", "florence"]
    assert backfill.parse_args(argv)[0].batch_prefix is None  # left out: the stack's
    with pytest.raises(SystemExit) as refused:  # the stack's role may read manifests only under jobs/
        backfill.main([*argv, "--batch-prefix", "mine/"])
    assert str(refused.value.code) == (
        "--batch-prefix mine/ is not the stack's BatchPrefix (jobs/), the only one its BatchOperationsRole may use;"
        " leave it out, or pass --role-arn too"
    )
    assert _keys(s3, "jobs/") == {} and _keys(s3, "mine/") == {}
    control = CapturedControl()
    clients = backfill.Clients(s3=s3, s3control=control.client)
    assert backfill.run(_config(prefix="photos/", stack="florence"), clients) == 0
    assert list(_keys(s3, "jobs/manifests/"))
    [request] = control.requests
    assert ET.fromstring(request.body).findtext(_namespaced("Report/Prefix")) == "jobs/reports"
    own_role = _config(prefix="photos/", stack="florence", batch_prefix="mine/", role_arn=ROLE_ARN, overwrite=True)
    assert backfill.run(own_role, clients) == 0  # a role of one's own: the prefix given is the one used
    assert list(_keys(s3, "mine/manifests/"))
    assert ET.fromstring(control.requests[-1].body).findtext(_namespaced("Report/Prefix")) == "mine/reports"
    assert f"report: s3://{BUCKET}/mine/reports/job-" in capsys.readouterr().out


AWKWARD_KEYS = [
    "k/a b.png",
    "k/a+b.png",
    "k/a%2Bb.png",
    "k/100%.png",
    "k/line\nbreak.png",
    "k/cr\rx.png",
    'k/comma,"quote".png',
    "k/hash#q?.png",
    "k/tab\tx.png",
    "k/ctrl\x01\x7fx.png",  # not XML 1.0: listings must ask S3 for URL-encoded keys (botocore does)
    "k/café.png",  # composed
    "k/cafe\u0301.png",  # decomposed: another key
    "k/\U0001f431.png",
    "k/trailing space .png",
    "k/back\\slash.png",
    "k//double.png",
    "k/./dot.png",
    "k/" + "猫" * 338 + ".png",  # 1,020 bytes: the result key is cut and hashed
    "k/" + "a" * 1014 + ".png",
]


def test_awkward_keys_survive_plan_manifest_task_and_rerun_in_a_versioned_bucket(s3) -> None:  # noqa: F811
    """Every key S3 can hold reaches the function as itself through the CSV manifest (one row each,
    percent-encoded, so no comma, quote or newline splits a row), gets its result, and a rerun plans
    nothing; an overwritten version and a deleted key (delete marker) are not planned twice or at all."""
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    for key in AWKWARD_KEYS:
        s3.put_object(Bucket=BUCKET, Key=key, Body=image_bytes("PNG", (40, 30)))
    s3.put_object(Bucket=BUCKET, Key="k/a b.png", Body=image_bytes("PNG"))  # a second version
    s3.put_object(Bucket=BUCKET, Key="k/deleted.png", Body=image_bytes("PNG"))
    s3.delete_object(Bucket=BUCKET, Key="k/deleted.png")

    found = backfill.plan(_config(prefix="k/"), backfill.Clients(s3=s3))
    assert sorted(c.key for c in found.candidates) == sorted(AWKWARD_KEYS)
    body = backfill.manifest_csv(BUCKET, found.candidates)
    assert body.count(b"\n") == len(AWKWARD_KEYS) and b'"' not in body
    rows = list(csv.reader(io.StringIO(body.decode("ascii"))))
    assert sorted(unquote(key) for _, key in rows) == sorted(AWKWARD_KEYS)

    event = json.loads((REPO_ROOT / "events" / "s3_batch_v2.json").read_text())
    results = []
    for i, (bucket, key) in enumerate(rows):  # one task per invocation, as Batch Operations sends them
        event["tasks"] = [{**copy.deepcopy(event["tasks"][0]), "taskId": str(i), "s3Bucket": bucket, "s3Key": key}]
        results += lambda_handler(copy.deepcopy(event), Context())["results"]
    assert len(results) == len(rows) and [r for r in results if r["resultCode"] != "Succeeded"] == []
    settings = backfill.BackfillConfig(bucket=BUCKET).settings
    for key in AWKWARD_KEYS:
        result = s3.get_object(Bucket=BUCKET, Key=backfill.result_key(BUCKET, key, settings))
        assert json.loads(result["Body"].read())["source"]["key"] == key
    again = backfill.plan(_config(prefix="k/"), backfill.Clients(s3=s3))
    assert not again.candidates and again.skipped == {"has a result": len(AWKWARD_KEYS)}


def test_ctrl_c_while_the_plan_reads_results_stops_it_at_once(s3, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The plan's HEADs run on a thread pool; Ctrl-C must not wait for every queued HEAD to finish."""
    for index in range(40):
        s3.put_object(Bucket=BUCKET, Key=f"many/{index:02d}.png", Body=b"x")
        _result(s3, f"many/{index:02d}.png")
    monkeypatch.setattr(backfill, "HEAD_WORKERS", 2)
    monkeypatch.setattr(backfill, "HEAD_SLICE", 10)
    heads: list[str] = []
    real = s3.head_object

    def interrupted(**kwargs: Any) -> Any:
        heads.append(kwargs["Key"])
        if len(heads) == 3:
            raise KeyboardInterrupt
        return real(**kwargs)

    monkeypatch.setattr(s3, "head_object", interrupted)
    with pytest.raises(KeyboardInterrupt):  # main() turns it into status 130
        backfill.plan(_config(prefix="many/"), backfill.Clients(s3=s3))
    time.sleep(0.5)  # what a worker had started finishes; nothing queued may start
    assert len(heads) <= 10  # the rest of the slice is cancelled, later slices never start


def test_a_rerun_after_the_job_ended_creates_a_new_job_while_a_running_one_is_found_again(
    s3,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The same request has the same ClientRequestToken, and S3 answers a known token with its job. After
    a job over a manifest ended (every task failed before a fix; or --overwrite again after a model
    update), rerunning the command got that ended job back and printed it as the job: nothing ran."""
    s3.put_object(Bucket=BUCKET, Key="photos/a.png", Body=image_bytes("PNG"))
    control = CapturedControl()
    clients = backfill.Clients(s3=s3, s3control=control.client)
    overwrite = {"function_arn": FUNCTION_ARN, "role_arn": ROLE_ARN, "overwrite": True}
    assert backfill.run(_config(**overwrite), clients) == 0
    assert backfill.run(_config(**overwrite), clients) == 0  # while it runs: the same job, no second one
    assert list(control.status) == [CapturedControl.FIRST_JOB]

    control.status[CapturedControl.FIRST_JOB] = "Complete"
    capsys.readouterr()
    assert backfill.run(_config(**overwrite), clients) == 0
    out = capsys.readouterr().out
    assert f"job {CapturedControl.FIRST_JOB} ran this same request before (Complete); creating a new one" in out
    assert "job: job-1  (no confirmation step" in out
    assert list(control.status) == [CapturedControl.FIRST_JOB, "job-1"]

    control.status["job-1"] = "Failed"  # and again: past both ended jobs, to a third
    assert backfill.run(_config(**overwrite), clients) == 0
    assert "job: job-2  (no confirmation step" in capsys.readouterr().out
    assert backfill.run(_config(**overwrite), clients) == 0  # job-2 still runs: found again
    assert "job: job-2  (no confirmation step" in capsys.readouterr().out
    assert len(control.status) == 3


def test_local_reads_an_image_overwritten_while_it_was_analyzed_again(
    s3,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The function writes no result for an image overwritten during its analysis (Batch redrives the task);
    --local counted it 'skipped' and exited 0, leaving the image without a result."""
    s3.put_object(Bucket=BUCKET, Key="photos/a.png", Body=image_bytes("PNG", (50, 40)))
    overwrite_during_analysis(s3, monkeypatch, "photos/a.png", image_bytes("PNG"))
    assert backfill.main(["--bucket", BUCKET, "--local"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("done 1, skipped 0, failed 0")
    stored = json.loads(s3.get_object(Bucket=BUCKET, Key="results/photos/a.png.json")["Body"].read())
    assert stored["source"]["etag"] == s3.head_object(Bucket=BUCKET, Key="photos/a.png")["ETag"].strip('"')
    assert stored["image"]["width"] == 96  # the second upload's


def test_local_fails_an_image_overwritten_on_every_try(
    s3,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s3.put_object(Bucket=BUCKET, Key="photos/a.png", Body=image_bytes("PNG"))
    superseded = ObjectResult("photos/a.png", Disposition.SUPERSEDED)
    monkeypatch.setattr(backfill, "process_object", lambda *args: superseded)
    assert backfill.main(["--bucket", BUCKET, "--local"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert f"failed: photos/a.png: overwritten while it was analyzed {backfill.LOCAL_ATTEMPTS} times" in lines


def test_the_s3_client_has_a_connection_for_each_head_worker(s3) -> None:  # noqa: F811
    """botocore pools 10 connections; the plan's 32 HEAD workers would queue for them (or churn connections)."""
    assert backfill.Clients("us-east-1")("s3").meta.config.max_pool_connections >= backfill.HEAD_WORKERS


def test_a_job_whose_status_cannot_be_read_is_still_reported(s3, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    """Without s3:DescribeJob the job is created all the same: it is printed, and the command succeeds."""
    s3.put_object(Bucket=BUCKET, Key="photos/a.png", Body=image_bytes("PNG"))
    control = CapturedControl()
    control.describe_denied = True
    config = _config(function_arn=FUNCTION_ARN, role_arn=ROLE_ARN)
    assert backfill.run(config, backfill.Clients(s3=s3, s3control=control.client)) == 0
    out = capsys.readouterr().out
    assert f"could not read job {CapturedControl.FIRST_JOB}'s status (An error occurred (AccessDenied)" in out
    assert f"job: {CapturedControl.FIRST_JOB}  (no confirmation step" in out
