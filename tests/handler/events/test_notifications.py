"""S3 upload notifications delivered through SQS, SNS, SNS then SQS, and EventBridge, through `lambda_handler`
against moto's S3 (in-process).

Each shape is built from its committed sample in `events/`, and each was answered `unsupported_event` before:
the upload was never captioned, and an SQS message or async event so answered counted as handled and was gone.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from handler.app import event_kind, lambda_handler
from handler.config import LAMBDA_PAYLOAD_BYTES
from handler.errors import Misconfigured
from handler.events.notifications import MAX_MESSAGE_BYTES
from handler.events.s3 import S3BatchError
from tests.conftest import REPO_ROOT, image_bytes
from tests.handler.events.test_s3 import (  # noqa: F401  (s3: the moto fixture)
    BUCKET,
    KEYS,
    S3_TEST_EVENT,
    s3,
    s3_answers,
    s3_event,
)
from tests.handler.test_app import Context
from tests.handler.test_hostile_corpus import PROPERTY, json_values

EVENTS = REPO_ROOT / "events"
NOTHING = {"written": [], "skipped": [], "rejected": [], "failed": []}
TEST_EVENT = S3_TEST_EVENT


def _sample(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def s3_body(*keys: str, event_name: str = "ObjectCreated:Put") -> str:
    """An S3 notification as S3 writes it into a queue or topic: compact JSON, keys URL-encoded."""
    return json.dumps(s3_event(*keys, event_name=event_name), separators=(",", ":"))


def sqs_event(*bodies: str, queue: str = "florence-uploads") -> dict[str, Any]:
    """`events/sqs_s3_upload.json`'s record once per body, with message ids `m-0`, `m-1`, ..."""
    event = _sample("sqs_s3_upload.json")
    template = event["Records"][0]
    event["Records"] = []
    for index, body in enumerate(bodies):
        record = copy.deepcopy(template)
        record.update(
            messageId=f"m-{index}", body=body, md5OfBody=hashlib.md5(body.encode("utf-8", "surrogatepass")).hexdigest()
        )
        record["eventSourceARN"] = f"arn:aws:sqs:us-east-1:123456789012:{queue}"
        event["Records"].append(record)
    return event


def sns_envelope(message: str, kind: str = "Notification") -> dict[str, Any]:
    """The envelope SNS delivers to a queue without raw delivery (`events/sqs_sns_s3_upload.json`'s body)."""
    envelope = json.loads(_sample("sqs_sns_s3_upload.json")["Records"][0]["body"])
    envelope.update(Type=kind, Message=message)
    return envelope


def sns_event(message: str) -> dict[str, Any]:
    event = _sample("sns_s3_upload.json")
    event["Records"][0]["Sns"]["Message"] = message
    return event


def eventbridge_event(key: str, detail_type: str = "Object Created", version_id: str | None = None) -> dict[str, Any]:
    """`events/eventbridge_object_created.json` for `key`, written as EventBridge does: not URL-encoded."""
    event = _sample("eventbridge_object_created.json")
    event["detail-type"] = detail_type
    event["detail"]["bucket"]["name"] = BUCKET
    event["detail"]["object"]["key"] = key
    if version_id is not None:
        event["detail"]["object"]["version-id"] = version_id
    return event


def _result(client, key: str) -> dict[str, Any]:
    return json.loads(client.get_object(Bucket=BUCKET, Key=f"results/{key}.json")["Body"].read())


def _results(client) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="results/").get("Contents", [])]


def _log_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_the_new_shapes_were_unsupported_events_and_now_have_their_own_kind() -> None:
    assert event_kind(sqs_event(s3_body("a.png"))) == "sqs"
    assert event_kind(sns_event(s3_body("a.png"))) == "sns"
    assert event_kind(eventbridge_event("a.png")) == "eventbridge"


def test_s3_notifications_through_sqs_write_results_and_list_only_the_failed_message(
    s3,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A partial batch response: the message whose object is missing (retried, as for a direct S3 event) is
    listed; the others are written, each with the very document a direct S3 event writes."""
    for key in KEYS:
        s3.put_object(Bucket=BUCKET, Key=key, Body=image_bytes("JPEG" if key.endswith("jpg") else "PNG"))
    event = sqs_event(s3_body(KEYS[0]), s3_body("gone.png"), s3_body(KEYS[1], KEYS[2]))
    capsys.readouterr()
    assert lambda_handler(event, Context()) == {"batchItemFailures": [{"itemIdentifier": "m-1"}]}
    lines = _log_lines(capsys)
    assert [(line["request_id"], line["source"], line["message_id"]) for line in lines] == [
        ("req-123#0.0", "sqs", "m-0"),
        ("req-123#1.0", "sqs", "m-1"),
        ("req-123#2.0", "sqs", "m-2"),
        ("req-123#2.1", "sqs", "m-2"),
    ]
    assert [line["status"] for line in lines] == [200, 404, 200, 200] and lines[0]["receive_count"] == "1"
    for key in KEYS:
        etag = s3.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"')
        assert _result(s3, key)["source"] == {"bucket": BUCKET, "key": key, "etag": etag}
    direct = _result(s3, KEYS[0])
    s3.delete_object(Bucket=BUCKET, Key=f"results/{KEYS[0]}.json")
    assert len(lambda_handler(s3_event(KEYS[0]), Context())["written"]) == 1
    assert {k: v for k, v in _result(s3, KEYS[0]).items() if k != "timings_ms"} == {
        k: v for k, v in direct.items() if k != "timings_ms"
    }

    # Redelivered (SQS delivers at least once): the result for this ETag answers it, nothing is recomputed.
    written = s3.head_object(Bucket=BUCKET, Key=f"results/{KEYS[1]}.json")["LastModified"]
    capsys.readouterr()
    assert lambda_handler(sqs_event(s3_body(KEYS[1])), Context()) == {"batchItemFailures": []}
    assert [line["status"] for line in _log_lines(capsys)] == ["skipped"]
    assert s3.head_object(Bucket=BUCKET, Key=f"results/{KEYS[1]}.json")["LastModified"] == written


def test_sqs_skips_what_a_direct_s3_event_skips(s3) -> None:  # noqa: F811
    """The same rules, from the same place: results, folder markers and removals are left alone, not listed."""
    s3.put_object(Bucket=BUCKET, Key="results/x.png.json", Body=b"{}")
    event = sqs_event(
        s3_body("results/x.png.json"), s3_body("uploads/album/"), s3_body("gone.png", event_name="ObjectRemoved:Delete")
    )
    assert lambda_handler(event, Context()) == {"batchItemFailures": []}
    assert _results(s3) == ["results/x.png.json"]


@pytest.mark.parametrize("code, status", [("SlowDown", 503), ("AccessDenied", 403), ("KMS.DisabledException", 400)])
def test_s3_faults_through_sqs_are_listed_and_leave_no_error_result(s3, code: str, status: int) -> None:  # noqa: F811
    """What a direct S3 event retries (`tests/handler/events/test_s3.py`, S3_FAULTS) is listed for SQS to deliver again."""
    s3.put_object(Bucket=BUCKET, Key="sealed.png", Body=image_bytes("PNG"))
    with s3_answers("GetObject", status, code):
        assert lambda_handler(sqs_event(s3_body("sealed.png")), Context()) == {
            "batchItemFailures": [{"itemIdentifier": "m-0"}]
        }
    assert _results(s3) == []
    assert lambda_handler(sqs_event(s3_body("sealed.png")), Context()) == {"batchItemFailures": []}
    assert _result(s3, "sealed.png")["image"]["width"] == 96


def test_sns_to_lambda_answers_as_an_s3_event_does(s3) -> None:  # noqa: F811
    """SNS invokes asynchronously, like S3: a summary, and a raise (Lambda's retry, then the DLQ) for a retryable failure."""
    key = KEYS[2]
    s3.put_object(Bucket=BUCKET, Key=key, Body=image_bytes("PNG"))
    summary = lambda_handler(sns_event(s3_body(key)), Context())
    assert summary == {**NOTHING, "written": [f"s3://{BUCKET}/results/{key}.json"]}
    assert _result(s3, key)["source"]["key"] == key
    again = lambda_handler(sns_event(s3_body(key)), Context())
    assert again["skipped"] == [{"key": key, "reason": "result exists for this ETag"}]
    with pytest.raises(S3BatchError, match="1 of 1 records failed"):
        lambda_handler(sns_event(s3_body("gone.png")), Context())


def test_sns_to_sqs_without_raw_delivery_opens_both_envelopes(s3) -> None:  # noqa: F811
    key = KEYS[1]
    s3.put_object(Bucket=BUCKET, Key=key, Body=image_bytes("JPEG"))
    event = sqs_event(json.dumps(sns_envelope(s3_body(key)), indent=2), json.dumps(sns_envelope(s3_body("gone.png"))))
    assert lambda_handler(event, Context()) == {"batchItemFailures": [{"itemIdentifier": "m-1"}]}
    assert _result(s3, key)["source"]["key"] == key


def test_eventbridge_keys_are_not_url_decoded_and_versions_are_checked(s3) -> None:  # noqa: F811
    """`detail.object.key` arrives as stored: decoding it as a notification's key read `a+b=c.jpg` as `a b=c.jpg`."""
    key = KEYS[1]  # "a+b=c.jpg"
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    old = s3.put_object(Bucket=BUCKET, Key=key, Body=image_bytes("PNG", (50, 40)))["VersionId"]
    current = s3.put_object(Bucket=BUCKET, Key=key, Body=image_bytes("JPEG"))["VersionId"]

    summary = lambda_handler(eventbridge_event(key, version_id=current), Context())
    assert summary == {**NOTHING, "written": [f"s3://{BUCKET}/results/{key}.json"]}
    assert _result(s3, key)["source"] == {
        "bucket": BUCKET,
        "key": key,
        "etag": s3.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"'),
        "version_id": current,
    }
    late = lambda_handler(eventbridge_event(key, version_id=old), Context())
    assert late["skipped"] == [{"key": key, "reason": "not the current version"}]
    again = lambda_handler(eventbridge_event(key, version_id=current), Context())
    assert again["skipped"] == [{"key": key, "reason": "result exists for this ETag"}]
    deleted = lambda_handler(eventbridge_event(key, detail_type="Object Deleted"), Context())
    assert deleted["skipped"] == [{"key": key, "reason": "not an upload event"}]
    with pytest.raises(S3BatchError):
        lambda_handler(eventbridge_event("gone.png"), Context())


def test_eventbridge_through_sqs(s3) -> None:  # noqa: F811
    s3.put_object(Bucket=BUCKET, Key=KEYS[0], Body=image_bytes("PNG"))
    event = sqs_event(json.dumps(eventbridge_event(KEYS[0])))
    assert lambda_handler(event, Context()) == {"batchItemFailures": []}
    assert _result(s3, KEYS[0])["source"]["key"] == KEYS[0]


def test_the_s3_test_event_is_answered_however_it_is_wrapped(s3, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    """S3 sends it when a notification is configured, to the queue or topic too. Direct, it was already answered;
    wrapped, it was an unsupported event: an error body, and for SQS an answer that deleted the message anyway."""
    test_event = json.dumps(TEST_EVENT)
    capsys.readouterr()
    assert lambda_handler(TEST_EVENT, Context()) == NOTHING
    assert lambda_handler(sns_event(test_event), Context()) == NOTHING
    event = sqs_event(test_event, json.dumps(sns_envelope(test_event)))
    assert lambda_handler(event, Context()) == {"batchItemFailures": []}
    lines = _log_lines(capsys)
    assert [(line["source"], line["status"], line["event_name"]) for line in lines] == [
        ("s3", "skipped", "s3:TestEvent"),
        ("sns", "skipped", "s3:TestEvent"),
        ("sqs", "skipped", "s3:TestEvent"),
        ("sqs", "skipped", "s3:TestEvent"),
    ]
    assert _results(s3) == []


MALFORMED_BODIES = {
    "not JSON": "shopping list",
    "empty": "",
    "over the limit": json.dumps({"pad": "x" * MAX_MESSAGE_BYTES}),
    "nested 100,000 deep": "[" * 100_000,
    "an integer of 5,000 digits": "1" * 5000,
    "a lone surrogate": '{"Records": "\ud800"}',
    "a list": "[]",
    "an object of nothing known": '{"hello": 1}',
    "S3 records without s3": '{"Records": [{"eventSource": "aws:s3"}]}',
    "S3 record with a list for a key": json.dumps(
        {"Records": [{"eventSource": "aws:s3", "s3": {"bucket": {"name": BUCKET}, "object": {"key": ["a"]}}}]}
    ),
    "SNS envelope, Message not JSON": json.dumps(sns_envelope("hello")),
    "SNS envelope, Message not a string": json.dumps({**sns_envelope(""), "Message": {"Records": []}}),
    "SNS inside SNS": json.dumps(sns_envelope(json.dumps(sns_envelope(s3_body("a.png"))))),
    "EventBridge without detail": json.dumps({"source": "aws.s3", "detail-type": "Object Created"}),
    "EventBridge key not a string": json.dumps(
        {
            "source": "aws.s3",
            "detail-type": "Object Created",
            "detail": {"bucket": {"name": BUCKET}, "object": {"key": 7}},
        }
    ),
}


def test_malformed_messages_are_dropped_with_a_log_line_and_never_fail_the_batch(
    s3,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    """None can ever be processed: each is logged (400 and why) and left off the failures, so SQS deletes it
    rather than delivering it again until a redrive policy, if any, moves it. The good message still runs."""
    s3.put_object(Bucket=BUCKET, Key="good.png", Body=image_bytes("PNG"))
    event = sqs_event(*MALFORMED_BODIES.values(), s3_body("good.png"))
    event["Records"].append({**event["Records"][0], "messageId": "m-null", "body": None})
    event["Records"].append({**event["Records"][0], "messageId": "m-dict", "body": {"Records": []}})
    capsys.readouterr()
    response = lambda_handler(event, Context())
    assert response == {"batchItemFailures": []}
    assert len(json.dumps(response, ensure_ascii=False).encode()) < LAMBDA_PAYLOAD_BYTES
    lines = {line["message_id"]: line for line in _log_lines(capsys)}
    assert lines.pop(f"m-{len(MALFORMED_BODIES)}")["status"] == 200 and _results(s3) == ["results/good.png.json"]
    assert len(lines) == len(MALFORMED_BODIES) + 2
    for line in lines.values():
        assert line["status"] == 400 and line["error"] == "bad_request" and line["reason"], line
    names = {name: lines[f"m-{index}"] for index, name in enumerate(MALFORMED_BODIES)}
    assert "is not JSON" in names["not JSON"]["reason"] and "over" in names["over the limit"]["reason"]
    assert "is not JSON: maximum recursion depth" in names["nested 100,000 deep"]["reason"]


def test_malformed_sns_and_eventbridge_events_are_rejected_not_retried(s3) -> None:  # noqa: F811
    for event in (sns_event("not json"), {"source": "aws.s3", "detail-type": "Object Created", "detail": "x"}):
        summary = lambda_handler(event, Context())
        assert summary["rejected"][0]["code"] == "bad_request" and not summary["failed"] and not summary["written"]
    event = sns_event(s3_body("a.png"))
    del event["Records"][0]["Sns"]["TopicArn"]
    assert lambda_handler(event, Context())["rejected"][0]["code"] == "bad_request"


def test_an_sns_answer_stays_inside_what_lambda_can_return(s3) -> None:  # noqa: F811
    """SNS sends one record; a hand-written event of 60,000 malformed ones (1.7 MB) was answered with 5.9 MB,
    about 98 bytes a record, so a larger one outgrew what Lambda returns. It is cut as a direct S3 event's is."""
    summary = lambda_handler({"Records": [{"EventSource": "aws:sns"}] * 20_000}, Context())
    assert len(json.dumps(summary, ensure_ascii=False).encode()) < LAMBDA_PAYLOAD_BYTES // 4
    assert len(summary["rejected"]) + summary["omitted"] == 20_000


def test_an_sns_subscription_confirmation_in_the_queue_is_nothing_to_do(s3, capsys) -> None:  # noqa: F811
    event = sqs_event(json.dumps(sns_envelope("You have chosen to subscribe", kind="SubscriptionConfirmation")))
    capsys.readouterr()
    assert lambda_handler(event, Context()) == {"batchItemFailures": []}
    (line,) = _log_lines(capsys)
    assert line["status"] == "skipped" and line["event_name"] == "SNS SubscriptionConfirmation"


def test_a_fifo_batch_returns_every_message_after_the_first_failure(s3) -> None:  # noqa: F811
    """Lambda's rule for FIFO queues: nothing after a failed message may be deleted, or the group's order breaks."""
    s3.put_object(Bucket=BUCKET, Key="good.png", Body=image_bytes("PNG"))
    bodies = (s3_body("good.png"), s3_body("gone.png"), s3_body("good.png"))
    response = lambda_handler(sqs_event(*bodies, queue="florence-uploads.fifo"), Context())
    assert response == {"batchItemFailures": [{"itemIdentifier": "m-1"}, {"itemIdentifier": "m-2"}]}
    response = lambda_handler(sqs_event(*bodies), Context())  # a standard queue: only the failed one
    assert response == {"batchItemFailures": [{"itemIdentifier": "m-1"}]}


def test_a_failed_message_without_an_id_to_list_fails_the_whole_batch(s3) -> None:  # noqa: F811
    """Lambda reads an id it did not send as a failed batch anyway; raising says so in the function's errors."""
    s3.put_object(Bucket=BUCKET, Key="good.png", Body=image_bytes("PNG"))
    event = sqs_event(s3_body("good.png"), s3_body("gone.png"))
    event["Records"][1]["messageId"] = "\ud800"
    with pytest.raises(S3BatchError, match=r"messages \[1\] failed and have no messageId"):
        lambda_handler(event, Context())
    assert _results(s3) == ["results/good.png.json"]


def test_a_setting_that_does_not_parse_fails_wrapped_events_for_a_retry(s3, monkeypatch) -> None:  # noqa: F811
    """As for direct S3 events: raising retries the batch (SQS) or the event (SNS, EventBridge) once it is fixed."""
    monkeypatch.setenv("MIN_SCORE", "2")
    for event in (sqs_event(s3_body("a.png")), sns_event(s3_body("a.png")), eventbridge_event("a.png")):
        with pytest.raises(Misconfigured, match="MIN_SCORE"):
            lambda_handler(event, Context())


S3_PATHS: list[list[Any]] = [
    ["Records"],
    ["Records", 0],
    ["Records", 0, "eventSource"],
    ["Records", 0, "eventName"],
    ["Records", 0, "s3"],
    ["Records", 0, "s3", "bucket", "name"],
    ["Records", 0, "s3", "object"],
    ["Records", 0, "s3", "object", "key"],
    ["Records", 0, "s3", "object", "versionId"],
    ["Event"],
]
ENVELOPE_PATHS: list[list[Any]] = [["Type"], ["TopicArn"], ["Message"]]
SQS_PATHS: list[list[Any]] = [
    ["Records", 0, "body"],
    ["Records", 0, "messageId"],
    ["Records", 0, "attributes"],
    ["Records", 0, "eventSourceARN"],
    ["Records", 0, "eventSource"],
]
EVENTBRIDGE_PATHS: list[list[Any]] = [
    ["source"],
    ["detail-type"],
    ["detail"],
    ["detail", "bucket", "name"],
    ["detail", "object"],
    ["detail", "object", "key"],
    ["detail", "object", "version-id"],
]
MUTATIONS = [
    *[(shape, "s3", path) for shape in ("sqs", "sns", "sqs+sns") for path in S3_PATHS],
    *[(shape, "envelope", path) for shape in ("sns", "sqs+sns") for path in ENVELOPE_PATHS],
    *[(shape, "sqs", path) for shape in ("sqs", "sqs+sns", "sqs+eventbridge") for path in SQS_PATHS],
    *[(shape, "eventbridge", path) for shape in ("eventbridge", "sqs+eventbridge") for path in EVENTBRIDGE_PATHS],
]
"""(shape, the layer mutated, the path in that layer): every field a wrapped S3 notification is read from."""


def _holds(target: Any, part: Any) -> bool:
    if isinstance(target, dict):
        return isinstance(part, str)
    return isinstance(target, list) and isinstance(part, int) and part < len(target)


def _mutated(value: Any, path: list[Any], new: Any) -> Any:
    """A copy of `value` with `path` set to `new` (removed for the Ellipsis); a path that no longer leads anywhere
    leaves it as it was."""
    copied = json.loads(json.dumps(value))
    target = copied
    for part in path[:-1]:
        if not (_holds(target, part) and (isinstance(target, list) or part in target)):
            return copied
        target = target[part]
    if not _holds(target, path[-1]):
        return copied
    if new is Ellipsis:
        target.pop(path[-1]) if isinstance(target, list) else target.pop(path[-1], None)
    else:
        target[path[-1]] = new
    return copied


def _wrapped(shape: str, layer: str, path: list[Any], new: Any, key: str) -> dict[str, Any]:
    def at(name: str, value: Any) -> Any:
        return _mutated(value, path, new) if name == layer else value

    if shape.endswith("eventbridge"):
        inner = json.dumps(at("eventbridge", eventbridge_event(key)))
    else:
        inner = json.dumps(at("s3", s3_event(key)))
        if "sns" in shape:
            envelope = at("envelope", sns_envelope(inner))
            if shape == "sns":
                event = sns_event(inner)
                event["Records"][0]["Sns"] = envelope
                return event
            inner = json.dumps(envelope)
    if shape == "eventbridge":
        return json.loads(inner)
    return at("sqs", sqs_event(inner))


@PROPERTY
@given(mutation=st.sampled_from(MUTATIONS), new=st.one_of(st.just(Ellipsis), json_values))
def test_wrapped_notifications_with_any_field_changed_are_answered(
    s3,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    mutation: tuple[str, str, list[Any]],
    new: Any,
) -> None:
    """Whatever a field becomes: an answer Lambda can return, or `S3BatchError` (a retry may fix it), never
    another exception; SQS lists only its own message; every log line has a status, a malformed one its reason."""
    key = "uploads/notes.png"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"not an image: rejected quickly, with an error result")
    s3.delete_object(Bucket=BUCKET, Key=f"results/{key}.json")  # each example from the same start
    event = _wrapped(*mutation, new, key)
    capsys.readouterr()
    try:
        response = lambda_handler(event, Context())
    except S3BatchError:
        response = None
    lines = _log_lines(capsys)
    assert all("status" in line for line in lines), lines
    assert all("reason" in line for line in lines if line.get("error") == "bad_request"), lines
    if response is None:
        return
    assert len(json.dumps(response, ensure_ascii=False).encode()) <= LAMBDA_PAYLOAD_BYTES
    if "batchItemFailures" in response:
        assert set(response) == {"batchItemFailures"} and response["batchItemFailures"] in (
            [],
            [{"itemIdentifier": "m-0"}],
        )
    elif "error" in response:  # changed out of every shape this function serves
        assert response["error"]["code"] == "unsupported_event" and event_kind(event) == "unknown", response
    else:
        assert set(response) == set(NOTHING) and response["failed"] == [], response


def test_sns_records_past_max_records_are_rejected_unread(s3, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """SNS delivers one record per invocation; a hand-written event of 2,000, each naming a missing object, made
    2,000 S3 calls one after another (each retry again). Only the first MAX_RECORDS are read."""
    from handler.events.s3 import MAX_RECORDS
    from handler.inputs import s3 as s3io

    heads: list[str] = []
    head = s3io.head
    monkeypatch.setattr(s3io, "head", lambda bucket, key, *rest: heads.append(key) or head(bucket, key, *rest))
    event = sns_event(s3_body("gone/0.png"))
    event["Records"] = [
        {**event["Records"][0], "Sns": {**event["Records"][0]["Sns"], "Message": s3_body(f"gone/{index}.png")}}
        for index in range(2_000)
    ]
    with pytest.raises(S3BatchError, match=f"^{MAX_RECORDS} of 2000 records failed"):
        lambda_handler(event, Context())
    assert heads == [f"gone/{index}.png" for index in range(MAX_RECORDS)]
