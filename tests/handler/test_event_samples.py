"""Every committed `events/*.json`, sent as it is to `lambda_handler`, gets the answer docs/deploy.md promises.

docs/deploy.md hands these files to `sam local invoke -e`; a sample the handler refuses would be the first
thing a new user runs. S3 samples run against moto, with a real image at the key the event names.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pytest

from handler.app import lambda_handler
from tests.conftest import REPO_ROOT, image_bytes
from tests.handler.events.test_s3 import s3  # noqa: F401  (the moto fixture)
from tests.handler.test_app import Context

SAMPLES = sorted((REPO_ROOT / "events").glob("*.json"))
EMBEDDED_IMAGE = {"width": 160, "height": 120, "format": "PNG"}
"""The PNG the hand-made HTTP and direct samples carry."""


def _http_body(response: dict[str, Any], status: int) -> dict[str, Any]:
    assert response["statusCode"] == status and response["isBase64Encoded"] is False, response
    return json.loads(response["body"])


def _not_found(response: dict[str, Any]) -> None:  # generate-event's sample path: deploy.md says a 404 JSON
    assert _http_body(response, 404)["error"]["code"] == "not_found"


def _answer_with(*fields: str) -> Callable[[dict[str, Any]], None]:
    def check(response: dict[str, Any]) -> None:
        body = _http_body(response, 200) if "statusCode" in response else response
        assert set(fields) <= set(body) and body["image"].items() >= EMBEDDED_IMAGE.items(), response

    return check


def _written(response: dict[str, Any]) -> None:
    assert len(response["written"]) == 1 and not (response["skipped"] or response["rejected"] or response["failed"])


def _no_failed_messages(response: dict[str, Any]) -> None:  # SQS's partial batch response
    assert response == {"batchItemFailures": []}, response


def _succeeded(response: dict[str, Any]) -> None:
    assert [r["resultCode"] for r in response["results"]] == ["Succeeded"], response
    assert response["results"][0]["resultString"].startswith("written: s3://")


EXPECTED: dict[str, Callable[[dict[str, Any]], None]] = {
    "apigw_v1.json": _not_found,
    "apigw_v2.json": _not_found,
    "caption_apigw_v1.json": _answer_with("caption", "caption_score"),
    "detect_apigw_v2.json": _answer_with("detections"),
    "direct_analyze.json": _answer_with("caption", "detections"),
    "s3_put.json": _written,
    "s3_upload.json": _written,
    "s3_batch_v1.json": _succeeded,
    "s3_batch_v2.json": _succeeded,
    "sqs_s3_upload.json": _no_failed_messages,
    "sqs_sns_s3_upload.json": _no_failed_messages,
    "sns_s3_upload.json": _written,
    "eventbridge_object_created.json": _written,
}


def _unwrapped(event: dict[str, Any]) -> dict[str, Any]:
    """The S3 notification or EventBridge event inside an SQS body and an SNS envelope, as AWS nests them."""
    record = (event.get("Records") or [{}])[0]
    if "body" in record:  # SQS
        return _unwrapped(json.loads(record["body"]))
    if "Sns" in record or event.get("Type") == "Notification":  # SNS to Lambda, or SNS to SQS
        return _unwrapped(json.loads(record.get("Sns", event)["Message"]))
    return event


def _objects_named(event: dict[str, Any]) -> list[tuple[str, str]]:
    """(bucket, key) of every object an S3, Batch Operations or wrapped sample names, keys decoded as the handler
    does: a notification's and a Batch task's arrive URL-encoded, EventBridge's as stored."""
    event = _unwrapped(event)
    if event.get("source") == "aws.s3":
        return [(event["detail"]["bucket"]["name"], event["detail"]["object"]["key"])]
    named = [(r["s3"]["bucket"]["name"], r["s3"]["object"]["key"]) for r in event.get("Records", [])]
    for task in event.get("tasks", []):
        named.append((task.get("s3Bucket") or task["s3BucketArn"].rsplit(":", 1)[-1], task["s3Key"]))
    return [(bucket, unquote_plus(key)) for bucket, key in named]


def test_every_sample_has_an_expected_answer() -> None:
    assert {sample.name for sample in SAMPLES} == set(EXPECTED)


@pytest.mark.parametrize("sample", SAMPLES, ids=[sample.name for sample in SAMPLES])
def test_each_sample_is_answered_as_documented(
    sample: Path,
    s3,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    event = json.loads(sample.read_text())
    buckets = set()
    for bucket, key in _objects_named(event):
        if bucket not in buckets:
            s3.create_bucket(Bucket=bucket)
            buckets.add(bucket)
        s3.put_object(Bucket=bucket, Key=key, Body=image_bytes("JPEG", (80, 60)))
    monkeypatch.setenv("ALLOWED_BUCKETS", ",".join(sorted(buckets)) or "allowed-bucket")
    EXPECTED[sample.name](lambda_handler(event, Context()))
    for bucket, key in _objects_named(event):  # every door writes the one result document
        assert (
            json.loads(s3.get_object(Bucket=bucket, Key=f"results/{key}.json")["Body"].read())["source"]["key"] == key
        )
