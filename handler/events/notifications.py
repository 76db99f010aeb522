"""S3 upload notifications that arrive wrapped: through an SQS queue, an SNS topic (to the function, or to a
queue), or EventBridge.

Each wrapper is opened down to the S3 notification (or EventBridge event) inside, and every object it names
gets exactly the work of a direct S3 event (`handler.events.s3.process_notices`): the same result keys,
skipping rules, version and ETag checks. Only the way a failure is retried differs:

- SNS and EventBridge invoke the function asynchronously, as S3 does: after every object ran, the invocation
  raises `S3BatchError` when any failed for a reason a retry may fix, and Lambda retries or dead-letters it.
- SQS is polled by an event source mapping, which reads a partial batch response: the answer lists the
  messages to deliver again, `{"batchItemFailures": [{"itemIdentifier": <messageId>}]}`, and SQS deletes the
  rest. The mapping needs `FunctionResponseTypes: [ReportBatchItemFailures]`; without it Lambda ignores the
  list and deletes every message of a batch that returned.

A message that can never be processed (not JSON, over MAX_MESSAGE_BYTES, not an S3 notification) is dropped:
it gets a log line with status 400 and its reason, and is not listed, as a malformed record of a direct S3
event is rejected and not retried. Listing it would only deliver it again until the queue's redrive policy,
where one is set, moved it to a dead-letter queue; without one, until the queue's retention ran out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from handler.config import Settings
from handler.errors import BadRequest, printable, shape_of
from handler.events.s3 import (
    MAX_RECORDS,
    PAST_MAX_RECORDS,
    TEST_EVENT,
    UPLOAD_DETAIL_TYPES,
    ObjectNotice,
    Outcome,
    S3BatchError,
    is_s3_event,
    is_test_event,
    notices_in,
    process_notice,
    process_notices,
    raise_if_failed,
    records_from,
)
from handler.logs import annotate, request_log

SQS, SNS, EVENTBRIDGE = "sqs", "sns", "eventbridge"
KINDS = (SQS, SNS, EVENTBRIDGE)
"""The event kinds (and log `source`s) this module answers."""
EVENTBRIDGE_SOURCE = "aws.s3"
"""EventBridge's `source` for S3's own events."""

MAX_MESSAGE_BYTES = 1_048_576
"""SQS's largest message (1 MiB; SNS's is 256 KiB). An S3 notification is a few KB; a body over this was not
sent by S3, and is refused before it is parsed."""
MAX_MESSAGE_ID_CHARS = 128
"""An SQS message id is a 36-character UUID. Lambda fails the whole batch when a listed id is not one of its
messages', so only a printable ASCII string up to this length is ever listed."""


@dataclass(frozen=True)
class Notification:
    """What one message holds: the objects it names, or, when it names none, which event it was instead."""

    notices: list[ObjectNotice | BadRequest] = field(default_factory=list)
    event_name: str | None = None


def is_eventbridge_event(event: Any) -> bool:
    return isinstance(event, dict) and event.get("source") == EVENTBRIDGE_SOURCE and "detail-type" in event


def wrapped_kind(event: Any) -> str | None:
    """`sqs`, `sns` or `eventbridge` for an event of that shape, else None (the shape alone decides: what each
    message holds is checked message by message, so one bad message never refuses the batch)."""
    if records_from(event, "eventSource", "aws:sqs"):
        return SQS
    if records_from(event, "EventSource", "aws:sns"):
        return SNS
    if is_eventbridge_event(event):
        return EVENTBRIDGE
    return None


def _json(text: Any, what: str) -> Any:
    """`text` parsed, or a 400: never a RecursionError (`[[[...`) nor a long parse of a body S3 never sent."""
    if not isinstance(text, str):
        raise BadRequest(f"{what} must be a string of JSON, not {type(text).__name__}")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_MESSAGE_BYTES:
        raise BadRequest(f"{what} is {size} bytes; an S3 notification is never over {MAX_MESSAGE_BYTES}")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: not JSON, or an integer of over 4,300 digits
        raise BadRequest(f"{what} is not JSON: {exc}") from exc


def _eventbridge_notice(event: dict[str, Any]) -> ObjectNotice:
    """EventBridge's S3 event; unlike a notification record's, its `detail.object.key` is not URL-encoded."""
    try:
        detail = event["detail"]
        bucket, key = detail["bucket"]["name"], detail["object"]["key"]
        version_id = detail["object"].get("version-id")
    except (KeyError, TypeError, AttributeError) as exc:
        raise BadRequest(
            f"EventBridge S3 event without detail.bucket.name and detail.object.key: missing {exc}"
        ) from exc
    name = event.get("detail-type")
    return ObjectNotice.checked(bucket, key, version_id, name, name in UPLOAD_DETAIL_TYPES, "EventBridge S3 event")


def _is_sns_envelope(payload: Any) -> bool:
    return isinstance(payload, dict) and isinstance(payload.get("Type"), str) and "TopicArn" in payload


def _sns_notification(envelope: Any) -> Notification:
    """An SNS envelope (a Lambda record's `Sns`, or an SQS body without raw delivery): its `Message` opened.

    Only `Notification`s carry a message to act on; a `SubscriptionConfirmation` that reaches a queue is
    answered with nothing to do.
    """
    if not _is_sns_envelope(envelope):
        raise BadRequest(f"SNS message without Type and TopicArn: {shape_of(envelope)}")
    if envelope["Type"] != "Notification":
        return Notification(event_name=f"SNS {printable(envelope['Type'][:100])}")
    return _notification(_json(envelope.get("Message"), "SNS Message"), through_sns=True)


def _notification(payload: Any, through_sns: bool = False) -> Notification:
    """The objects an S3 notification, S3's test event, an EventBridge S3 event, or an SNS envelope of one
    (not within another) names; a 400 for anything else."""
    if is_test_event(payload):  # S3 sends it when a notification is configured, wrapped like any other
        return Notification(event_name=TEST_EVENT)
    if is_s3_event(payload):
        return Notification(notices_in(payload["Records"]))
    if is_eventbridge_event(payload):
        return Notification([_eventbridge_notice(payload)])
    if not through_sns and _is_sns_envelope(payload):
        return _sns_notification(payload)
    raise BadRequest(f"not an S3 notification, S3 test event or EventBridge S3 event: {shape_of(payload)}")


def _open(what: str, message: Any) -> Notification | BadRequest:
    try:
        if what == SQS:
            return _notification(_json(message, "SQS message body"))
        if what == SNS:
            return _sns_notification(message)
        return Notification([_eventbridge_notice(message)])
    except BadRequest as exc:
        return exc


def _process_message(
    kind: str,
    message: Any,
    request_id: str,
    label: str,
    settings: Settings,
    outcome: Outcome,
    opened: Notification | BadRequest | None = None,
    **fields: Any,
) -> None:
    """One message's objects, each with its own log line; a message that names none gets one line of its own."""
    opened = _open(kind, message) if opened is None else opened
    if isinstance(opened, Notification) and opened.notices:
        process_notices(opened.notices, request_id, kind, settings, outcome, prefix=f"{label}.", **fields)
        return
    with request_log(f"{request_id}#{label}", kind, settings.log_level):
        annotate(**fields)
        if isinstance(opened, BadRequest):
            process_notice(opened, settings, outcome)
        else:
            annotate(status="skipped", event_name=opened.event_name)


def _message_id(value: Any) -> str | None:
    ok = isinstance(value, str) and 0 < len(value) <= MAX_MESSAGE_ID_CHARS and value.isascii() and value.isprintable()
    return value if ok else None


def _is_fifo(record: dict[str, Any]) -> bool:
    arn = record.get("eventSourceARN")
    return isinstance(arn, str) and arn.endswith(".fifo")


def batch_item_failures(message_ids: list[str]) -> dict[str, list[dict[str, str]]]:
    """The partial batch response Lambda reads from an SQS-triggered function: the messages to deliver again."""
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in message_ids]}


def handle_sqs(event: dict[str, Any], request_id: str, settings: Settings) -> dict[str, list[dict[str, str]]]:
    """A partial batch response: the messages with an object a retry may fix, listed by `messageId`.

    A FIFO queue keeps its order only when nothing after a failed message is deleted, so from the first
    failure on every message is returned unprocessed. A message that failed without an id that can be
    listed fails the whole batch (raises): Lambda would read a bad id as that anyway, and silently.
    """
    failures: list[str] = []
    unlisted: list[int] = []
    holding = False
    for index, record in enumerate(event["Records"]):
        message_id = _message_id(record.get("messageId"))
        attributes = record.get("attributes")
        count = attributes.get("ApproximateReceiveCount") if isinstance(attributes, dict) else None
        fields: dict[str, Any] = {"message_id": message_id, "receive_count": count if isinstance(count, str) else None}
        outcome = Outcome()
        if holding:
            with request_log(f"{request_id}#{index}", SQS, settings.log_level):
                annotate(**fields, status="deferred", reason="an earlier message of this FIFO batch failed")
            outcome.failed.append({"record": str(index)})
        else:
            _process_message(SQS, record.get("body"), request_id, str(index), settings, outcome, **fields)
        if outcome.failed:
            if message_id is None:
                unlisted.append(index)
            else:
                failures.append(message_id)
            holding = holding or _is_fifo(record)
    if unlisted:
        raise S3BatchError(f"messages {unlisted[:10]} failed and have no messageId to list: the batch is retried")
    return batch_item_failures(failures)


def handle_async(kind: str, event: dict[str, Any], request_id: str, settings: Settings) -> dict[str, Any]:
    """SNS records or one EventBridge event: the S3 event's summary, raising as it does when a retry may help."""
    outcome = Outcome()
    messages = [record.get("Sns") for record in event["Records"]] if kind == SNS else [event]
    for index, message in enumerate(messages):
        message_id = message.get("MessageId" if kind == SNS else "id") if isinstance(message, dict) else None
        fields = {"message_id": printable(message_id[:100]) if isinstance(message_id, str) else None}
        unread = BadRequest(PAST_MAX_RECORDS) if index >= MAX_RECORDS else None  # SNS sends one record
        _process_message(kind, message, request_id, str(index), settings, outcome, opened=unread, **fields)
    raise_if_failed(outcome, len(messages))
    return outcome.summary()


def handle(kind: str, event: dict[str, Any], request_id: str, settings: Settings) -> dict[str, Any]:
    """Answer an event `wrapped_kind` named."""
    if kind == SQS:
        return handle_sqs(event, request_id, settings)
    return handle_async(kind, event, request_id, settings)
