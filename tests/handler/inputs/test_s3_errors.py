"""S3 failures are classed once: the caller's fault (4xx, not retried), S3's (502/503, retried), or ours.

Faults are injected with botocore's own Stubber on a real client (the error responses S3 sends), and
with a real connection to a closed port; the limits are the transport arithmetic in handler/config.py.
"""

from __future__ import annotations

import socket

import boto3
import pytest
from botocore.config import Config
from botocore.stub import Stubber

from handler.config import ENVELOPE_MARGIN_BYTES, LAMBDA_PAYLOAD_BYTES, MAX_BINARY_BODY_BYTES, Settings
from handler.errors import BadRequest, Forbidden, Misconfigured, NotFound, UpstreamError, UpstreamUnavailable
from handler.inputs import s3 as s3io


def test_inline_limit_is_what_fits_a_synchronous_event_after_base64() -> None:
    assert MAX_BINARY_BODY_BYTES == 4_669_440 == Settings().max_image_bytes
    base64_bytes = 4 * -(-MAX_BINARY_BODY_BYTES // 3)
    assert base64_bytes + ENVELOPE_MARGIN_BYTES <= LAMBDA_PAYLOAD_BYTES
    assert 4 * -(-(MAX_BINARY_BODY_BYTES + 3) // 3) + ENVELOPE_MARGIN_BYTES > LAMBDA_PAYLOAD_BYTES  # tight
    assert Settings().max_s3_image_bytes > Settings().max_image_bytes
    assert Settings.from_env({"MAX_S3_IMAGE_BYTES": "123"}).max_s3_image_bytes == 123


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    real = boto3.client("s3", region_name="us-east-1")
    s3io.s3_client.cache_clear()
    monkeypatch.setattr(s3io, "s3_client", lambda: real)
    return real


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("KeyTooLongError", 400, BadRequest),
        ("InvalidArgument", 400, BadRequest),
        ("400", 400, BadRequest),  # HEAD answers carry no error body, only the status
        ("NoSuchKey", 404, NotFound),
        ("AccessDenied", 403, Forbidden),
        ("SlowDown", 503, UpstreamUnavailable),
        ("InternalError", 500, UpstreamError),
        ("RequestTimeout", 400, UpstreamError),
        ("PreconditionFailed", 412, UpstreamError),
    ],
)
def test_client_errors_are_classed_by_whose_fault_they_are(client, code: str, status: int, expected: type) -> None:
    with Stubber(client) as stub:
        stub.add_client_error("head_object", service_error_code=code, http_status_code=status)
        with pytest.raises(expected) as raised:
            s3io.head("bucket", "key.png")
    callers_fault = expected in (BadRequest, NotFound, Forbidden)
    assert (400 <= raised.value.status < 500) if callers_fault else raised.value.status in (502, 503)


def test_an_unreachable_s3_is_a_502(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    config = Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=1)
    unreachable = boto3.client("s3", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{port}", config=config)
    monkeypatch.setattr(s3io, "s3_client", lambda: unreachable)
    with pytest.raises(UpstreamError, match="S3 unreachable"):
        s3io.fetch("bucket", "key.png", 1000)


def test_a_function_without_credentials_is_misconfigured_naming_it(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """The deployment's fault (no role): a 500 that says so, not an unclassified botocore error."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance metadata to ask here
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # the default session keeps credentials it found before
    s3io.s3_client.cache_clear()
    try:
        with pytest.raises(Misconfigured, match=r"cannot call S3.*credentials") as raised:
            s3io.fetch("bucket", "key.png", 1000)
    finally:
        s3io.s3_client.cache_clear()
    assert raised.value.status == 500


@pytest.mark.parametrize("key", ["\ud800", "a\udfffb", "k" * 1025, "é" * 513, ""])
def test_keys_s3_cannot_hold_are_400_before_any_call(key: str) -> None:
    with pytest.raises(BadRequest):
        s3io.check_key(key)
    s3io.check_key("k" * 1024)
    s3io.check_key("é" * 512)


def test_a_stalled_s3_is_a_502_before_api_gateway_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 that accepts the connection and never answers. With botocore's defaults (60 s reads, 5 tries)
    the request outlived API Gateway's 29 s, and the caller got its 504 instead of our error; now both
    calls of a read (HEAD, GET) fail within it, as a 502 naming S3, on the client the service builds."""
    import threading
    import time

    from handler.config import API_GATEWAY_TIMEOUT_S

    worst_read_s = 2 * s3io.S3_ATTEMPTS * (s3io.S3_CONNECT_TIMEOUT_S + s3io.S3_READ_TIMEOUT_S)
    assert worst_read_s < API_GATEWAY_TIMEOUT_S
    with socket.socket() as silent:  # listens, so connections complete, but never reads or answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        s3io.s3_client.cache_clear()
        outcome: list[BaseException] = []

        def read() -> None:
            try:
                s3io.fetch("bucket", "key.png", 1000)
            except BaseException as exc:  # handed to the test thread
                outcome.append(exc)

        start = time.monotonic()
        worker = threading.Thread(target=read, daemon=True)
        worker.start()
        worker.join(timeout=API_GATEWAY_TIMEOUT_S / 2)
        elapsed = time.monotonic() - start
        s3io.s3_client.cache_clear()
    assert not worker.is_alive(), f"the S3 read still waited after {elapsed:.0f} s"
    assert len(outcome) == 1 and isinstance(outcome[0], UpstreamError), outcome
    assert "S3 unreachable" in str(outcome[0]) and outcome[0].status == 502
