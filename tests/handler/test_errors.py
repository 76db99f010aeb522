"""The error vocabulary: one shape, and messages bounded so an echo cannot outgrow a Lambda response."""

from __future__ import annotations

from handler.errors import MAX_MESSAGE_CHARS, NotFound, error_body, validation_message


def test_a_message_quoting_any_s3_key_stays_whole() -> None:
    """The longest key S3 holds, every byte escaped by repr (4 characters each), is not cut."""
    key = "\x00" * 1024
    message = NotFound(f"s3://allowed-bucket/{key!r} does not exist").message
    assert message.endswith("does not exist") and key.encode("unicode_escape").decode() in message


def test_a_longer_message_is_cut_and_says_how_much_was_left_out() -> None:
    echoed = "\u0378" * 1_000_000
    body = error_body("invalid_request", f"unknown task {echoed!r}")
    message = body["error"]["message"]
    assert message.startswith("unknown task '\\u0378") and len(message) < MAX_MESSAGE_CHARS + 50
    assert message.endswith(f"({len(repr(echoed)) + len('unknown task ') - MAX_MESSAGE_CHARS} more characters)")
    assert len(NotFound(echoed).message) < MAX_MESSAGE_CHARS + 50  # what batch results and logs carry too


def test_a_validation_message_names_ten_errors_and_counts_the_rest() -> None:
    errors = [{"loc": ("tasks", index), "msg": "Input should be a valid string"} for index in range(1_000_000)]
    message = validation_message(errors)
    assert message.count("Input should be a valid string") == 10
    assert message.startswith("tasks.0: ") and message.endswith("; and 999990 more")
