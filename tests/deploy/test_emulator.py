"""The handler under the real AWS Lambda Runtime Interface Emulator, started the way the image starts it.

The emulator binary ships inside the aws-sam-cli wheel and runs natively, so no Docker is needed.
Environment, entry point and command are read from `Dockerfile.lambda` itself, with its paths mapped
onto a temporary root: `/var/task` holds only a copy of `handler/` (as in the image), `/opt/artifact`
is the tiny artifact, `/tmp` a scratch folder. S3 is a `moto_server` on 127.0.0.1.

The emulator's REPORT lines (Init Duration on the cold request, Duration on each) are printed (see
them with `-s`) and written to `lambda-reports.txt` in the pytest temp folder.
"""

from __future__ import annotations

import base64
import json
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO_ROOT, image_bytes, photo_jpeg

ROOT = REPO_ROOT
EVENTS = ROOT / "events"
DOCKERFILE = ROOT / "Dockerfile.lambda"
INVOKE_PATH = "/2015-03-31/functions/function/invocations"
BUCKET = "uploads-bucket"
OUTPUT_PREFIX = "results/"

pytestmark = pytest.mark.slow


def rie_binary() -> Path | None:
    """The emulator bundled with aws-sam-cli for this CPU, if sam is installed."""
    try:
        import samcli
    except ImportError:
        return None
    arch = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine())
    path = Path(samcli.__file__).parent / "local" / "rapid" / f"aws-lambda-rie-{arch}"
    return path if arch and path.is_file() else None


# --- reading the image definition ----------------------------------------------------------------


@dataclass
class ImageSpec:
    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    workdir: str


def _instructions(text: str) -> list[tuple[str, str]]:
    """Dockerfile instructions as (KEYWORD, arguments) with continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for raw_line in joined.splitlines():
        line = raw_line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def read_image_spec(dockerfile: Path = DOCKERFILE) -> ImageSpec:
    """ENV, ENTRYPOINT, CMD and WORKDIR of the final stage, with ${VAR} references expanded
    (build args at their defaults, as a build without --build-arg has them)."""
    steps = _instructions(dockerfile.read_text())
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    env: dict[str, str] = {}
    args: dict[str, str] = {}
    spec = ImageSpec(env, [], [], "/")
    for keyword, rest in steps[last_from + 1 :]:
        known = {**args, **env}
        expand = lambda value, known=known: re.sub(
            r"\$\{(\w+)\}", lambda m: known.get(m.group(1), f"<{m.group(1)}>"), value
        )
        if keyword == "ARG":
            name, _, default = shlex.split(rest)[0].partition("=")
            args[name] = default
        elif keyword == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = expand(value)
        elif keyword == "ENTRYPOINT":
            spec.entrypoint = json.loads(rest)
        elif keyword == "CMD":
            spec.cmd = json.loads(rest)
        elif keyword == "WORKDIR":
            spec.workdir = expand(rest)
    return spec


# --- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before listening")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {seconds}s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


REPORT = re.compile(r"^REPORT RequestId: (?P<id>\S+)\t(?P<fields>.*)$", re.MULTILINE)
INIT_REPORT = re.compile(r"INIT REPORT\(durationMs: (?P<ms>[\d.]+)\)")


@dataclass
class Report:
    line: str
    duration_ms: float
    init_ms: float | None

    @classmethod
    def parse(cls, line: str) -> Report:
        fields = dict(part.split(": ", 1) for part in line.split("\t")[1:] if ": " in part)
        number = lambda key: float(fields[key].split()[0])
        return cls(line, number("Duration"), number("Init Duration") if "Init Duration" in fields else None)


@dataclass
class Invocation:
    payload: Any
    raw: bytes
    report: Report


class Emulator:
    """The RIE running `python -m awslambdaric handler.app.lambda_handler`, invoked over HTTP."""

    def __init__(self, port: int, process: subprocess.Popen, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}{INVOKE_PATH}"
        self.process = process
        self.log = log
        self.reports: list[Report] = []

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def _next_report(self, seconds: float = 10.0) -> Report:
        """The emulator writes REPORT after the response; wait for the one this invoke produced."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            lines = [m.group(0) for m in REPORT.finditer(self.text())]
            if len(lines) > len(self.reports):
                return Report.parse(lines[len(self.reports)])
            time.sleep(0.05)
        raise TimeoutError(f"no REPORT line after invoke #{len(self.reports) + 1}:\n{self.text()[-3000:]}")

    def invoke(self, event: Any, *, raw: bytes | None = None, timeout: float = 120.0) -> Invocation:
        data = raw if raw is not None else json.dumps(event).encode()
        request = urllib.request.Request(self.url, data=data, method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        report = self._next_report()
        self.reports.append(report)
        print(report.line)
        return Invocation(json.loads(body), body, report)


def _lambda_env(spec: ImageSpec, task_root: Path, artifact: Path, tmp: Path, s3_endpoint: str) -> dict[str, str]:
    """The image's ENV with its paths mapped to this test's folders, plus what Lambda itself sets."""
    mapping = {"/var/task": str(task_root), "/opt/artifact": str(artifact), "/tmp": str(tmp)}

    pattern = re.compile(r"(?<![\w/])(" + "|".join(map(re.escape, mapping)) + r")(?=/|:|$)")

    def remap(value: str) -> str:
        return pattern.sub(lambda m: mapping[m.group(1)], value)  # one pass: mapped paths stay mapped

    env = {key: remap(value) for key, value in spec.env.items()}
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    env.update(
        LANG="C.UTF-8",
        TZ=":UTC",
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_LAMBDA_FUNCTION_NAME="florence",
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE="3008",
        AWS_LAMBDA_FUNCTION_TIMEOUT="120",  # the emulator's cold start includes the model load
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_ENDPOINT_URL_S3=s3_endpoint,
        OUTPUT_PREFIX=OUTPUT_PREFIX,
        ALLOWED_BUCKETS=BUCKET,
        TORCH_THREADS="1",
    )
    return env


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))}


@dataclass
class Stack:
    emulator: Emulator
    s3: Any
    task_root: Path
    artifact: Path
    tmp: Path
    before: dict[str, dict[str, int]]
    cold: Invocation


@pytest.fixture(scope="module")
def stack(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    rie = rie_binary()
    if rie is None:
        pytest.skip("aws-sam-cli (which bundles aws-lambda-rie) is not installed for this CPU")
    base = tmp_path_factory.mktemp("lambda")
    task_root, lambda_tmp = base / "var-task", base / "tmp"
    shutil.copytree(ROOT / "handler", task_root / "handler", ignore=shutil.ignore_patterns("__pycache__"))
    lambda_tmp.mkdir()
    spec = read_image_spec()

    s3_port = free_port()
    moto_log = (base / "moto.log").open("wb")
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
        stdout=moto_log,
        stderr=subprocess.STDOUT,
    )
    rie_process = None
    try:
        wait_for_port(s3_port, moto)
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{s3_port}",
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        s3.create_bucket(Bucket=BUCKET)

        port = free_port()
        env = _lambda_env(spec, task_root, tiny_artifact, lambda_tmp, f"http://127.0.0.1:{s3_port}")
        entry = [sys.executable if arg == "python" else arg for arg in spec.entrypoint]
        log = base / "rie.log"
        rie_process = subprocess.Popen(
            [str(rie), "--runtime-interface-emulator-address", f"127.0.0.1:{port}", *entry, *spec.cmd],
            cwd=env["LAMBDA_TASK_ROOT"],
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        wait_for_port(port, rie_process)
        emulator = Emulator(port, rie_process, log)
        before = {"task_root": _tree(task_root), "artifact": _tree(tiny_artifact)}
        cold = emulator.invoke(api_v1("POST", "/caption", image_bytes("JPEG", quality=90), "image/jpeg"))
        yield Stack(emulator, s3, task_root, tiny_artifact, lambda_tmp, before, cold)
    finally:
        for process in (rie_process, moto):
            if process is not None:
                stop(process)
        moto_log.close()
    lines = [r.line for r in emulator.reports]
    init = INIT_REPORT.search(emulator.text())
    if init:
        lines.append(f"(emulator INIT REPORT durationMs: {init.group('ms')})")
    report_file = tmp_path_factory.getbasetemp() / "lambda-reports.txt"
    report_file.write_text("\n".join(lines) + "\n")
    print(f"\nemulator REPORT lines ({report_file}):\n" + "\n".join(lines))


# --- events --------------------------------------------------------------------------------------


def api_v1(method: str, path: str, body: bytes, content_type: str, query: dict[str, str] | None = None) -> dict:
    """The `sam local generate-event apigateway aws-proxy` template carrying a binary body."""
    event = json.loads((EVENTS / "apigw_v1.json").read_text())
    headers = {**event["headers"], "content-type": content_type}
    event.update(
        httpMethod=method,
        path=path,
        resource=path,
        headers=headers,
        multiValueHeaders={k: [v] for k, v in headers.items()},
        body=base64.b64encode(body).decode(),
        isBase64Encoded=True,
        queryStringParameters=query,
        multiValueQueryStringParameters={k: [v] for k, v in (query or {}).items()} or None,
    )
    event["requestContext"].update(httpMethod=method, path=path)
    return event


def api_v2(method: str, path: str, body: bytes, content_type: str, query: dict[str, str] | None = None) -> dict:
    """The `sam local generate-event apigateway http-api-proxy` template carrying a binary body."""
    event = json.loads((EVENTS / "apigw_v2.json").read_text())
    event.update(
        rawPath=path,
        rawQueryString="&".join(f"{k}={v}" for k, v in (query or {}).items()),
        queryStringParameters=query,
        headers={**event["headers"], "content-type": content_type},
        body=base64.b64encode(body).decode(),
        isBase64Encoded=True,
    )
    event["requestContext"]["http"].update(method=method, path=path)
    return event


def s3_put(bucket: str, key: str, size: int) -> dict:
    event = json.loads((EVENTS / "s3_put.json").read_text())
    record = event["Records"][0]
    record["s3"]["bucket"].update(name=bucket, arn=f"arn:aws:s3:::{bucket}")
    record["s3"]["object"].update(key=key, size=size)
    return event


def json_body(response: dict) -> dict:
    assert response["isBase64Encoded"] is False, response
    return json.loads(response["body"])


# --- tests ---------------------------------------------------------------------------------------


def test_cold_invoke_reports_init_and_answers_api_gateway_v1(stack: Stack) -> None:
    response = stack.cold.payload
    assert response["statusCode"] == 200, response
    body = json_body(response)
    assert isinstance(body["caption"], str) and body["image"]["format"] == "JPEG"
    report = stack.cold.report
    assert report.init_ms is not None, report.line
    assert report.duration_ms > 0
    init = INIT_REPORT.search(stack.emulator.text())
    assert init and float(init.group("ms")) > 0, "emulator printed no INIT REPORT for the cold start"


def test_warm_api_gateway_v2_detect_png_and_multipart(stack: Stack) -> None:
    png = image_bytes("PNG", size=(120, 80))
    detect = stack.emulator.invoke(api_v2("POST", "/detect", png, "image/png", {"format": "png"}))
    response = detect.payload
    assert response["statusCode"] == 200 and response["isBase64Encoded"] is True, response
    drawn = base64.b64decode(response["body"])
    assert drawn.startswith(b"\x89PNG\r\n\x1a\n")
    assert detect.report.init_ms is None, f"warm invoke re-initialised: {detect.report.line}"

    jpeg = image_bytes("JPEG", quality=90)
    request = httpx.Request("POST", "http://x/", files={"file": ("photo.jpg", jpeg, "image/jpeg")})
    multi = stack.emulator.invoke(api_v2("POST", "/analyze", request.read(), request.headers["content-type"]))
    body = json_body(multi.payload)
    assert multi.payload["statusCode"] == 200 and body["image"]["bytes"] == len(jpeg)
    assert isinstance(body["caption"], str) and isinstance(body["detections"], list)
    assert multi.report.init_ms is None


def test_demo_page_ships_in_the_image_and_answers_through_api_gateway(stack: Stack) -> None:
    response = stack.emulator.invoke(api_v1("GET", "/", b"", "text/html")).payload
    assert response["statusCode"] == 200 and response["headers"]["content-type"].startswith("text/html"), response
    html = base64.b64decode(response["body"]).decode() if response["isBase64Encoded"] else response["body"]
    assert 'fetch(apiUrl("analyze' in html  # the page from handler/http/static/, copied as the image copies it


def test_s3_put_event_writes_result_under_output_prefix(stack: Stack) -> None:
    key = "uploads/holiday photo.jpg"
    data = image_bytes("JPEG", size=(80, 60), quality=90)
    stack.s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    event = s3_put(BUCKET, key.replace(" ", "+"), len(data))  # S3 events carry URL-encoded keys
    result = stack.emulator.invoke(event)
    assert result.payload["written"] == [f"s3://{BUCKET}/{OUTPUT_PREFIX}{key}.json"], result.payload
    stored = json.loads(stack.s3.get_object(Bucket=BUCKET, Key=f"{OUTPUT_PREFIX}{key}.json")["Body"].read())
    assert stored["source"]["key"] == key and isinstance(stored["caption"], str)
    assert result.report.init_ms is None

    again = stack.emulator.invoke(s3_put(BUCKET, f"{OUTPUT_PREFIX}{key}.json", 10))
    assert again.payload["written"] == [] and again.payload["skipped"][0]["reason"] == "under OUTPUT_PREFIX"


def test_s3_event_for_missing_object_fails_the_invocation_for_retry(stack: Stack) -> None:
    failed = stack.emulator.invoke(s3_put(BUCKET, "uploads/never-uploaded.jpg", 10))
    assert failed.payload["errorType"] == "S3BatchError", failed.payload
    assert "1 of 1 records failed" in failed.payload["errorMessage"]

    # The same key removed, and S3's check when a notification is configured: answered, nothing to retry.
    removed = s3_put(BUCKET, "uploads/never-uploaded.jpg", 0)
    removed["Records"][0]["eventName"] = "ObjectRemoved:Delete"
    skipped = stack.emulator.invoke(removed).payload
    assert skipped["skipped"] == [{"key": "uploads/never-uploaded.jpg", "reason": "not an upload event"}], skipped
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2026-12-01T02:30:00.000Z", "Bucket": BUCKET}
    assert stack.emulator.invoke(test_event).payload == {"written": [], "skipped": [], "rejected": [], "failed": []}


def test_s3_notifications_through_sqs_and_eventbridge(stack: Stack) -> None:
    """SQS gets its partial batch response through the real runtime: only the message whose object is missing
    is listed, not the written one nor the unreadable one; EventBridge's key is used as stored."""
    key = "uploads/queued photo+1.jpg"
    stack.s3.put_object(Bucket=BUCKET, Key=key, Body=image_bytes("JPEG", size=(80, 60), quality=90))
    event = json.loads((EVENTS / "sqs_s3_upload.json").read_text())
    template = event["Records"][0]
    bodies = [s3_put(BUCKET, key.replace("+", "%2B").replace(" ", "+"), 10), s3_put(BUCKET, "uploads/gone.jpg", 10)]
    event["Records"] = [
        {**template, "messageId": f"m-{index}", "body": body if isinstance(body, str) else json.dumps(body)}
        for index, body in enumerate([*bodies, "[" * 100_000])
    ]
    queued = stack.emulator.invoke(event)
    assert queued.payload == {"batchItemFailures": [{"itemIdentifier": "m-1"}]}, queued.payload
    stored = json.loads(stack.s3.get_object(Bucket=BUCKET, Key=f"{OUTPUT_PREFIX}{key}.json")["Body"].read())
    assert stored["source"]["key"] == key

    bridged = json.loads((EVENTS / "eventbridge_object_created.json").read_text())
    bridged["detail"]["bucket"]["name"] = BUCKET
    bridged["detail"]["object"]["key"] = key
    answer = stack.emulator.invoke(bridged).payload
    assert answer["skipped"] == [{"key": key, "reason": "result exists for this ETag"}], answer
    assert queued.report.init_ms is None and stack.emulator.process.poll() is None


def test_malformed_events_get_clean_errors_and_the_runtime_survives(stack: Stack) -> None:
    unknown = stack.emulator.invoke({"hello": "world"})
    assert unknown.payload["error"]["code"] == "unsupported_event", unknown.payload

    broken_http = stack.emulator.invoke({"requestContext": {"http": {}}, "body": "x"})
    assert broken_http.payload["statusCode"] == 400
    assert json.loads(broken_http.payload["body"])["error"]["code"] == "bad_event"

    not_image = stack.emulator.invoke(api_v1("POST", "/caption", b"definitely not an image", "image/png"))
    assert not_image.payload["statusCode"] == 400
    assert json_body(not_image.payload)["error"]["code"] == "bad_image"

    not_json = stack.emulator.invoke(None, raw=b'{"task": "caption", ')
    assert not_json.payload["errorType"] == "Runtime.UnmarshalError" and not_json.payload["stackTrace"] == []

    for invocation in (unknown, broken_http, not_image, not_json):
        assert invocation.report.init_ms is None, "a bad event restarted the runtime"
    health = stack.emulator.invoke(api_v2("GET", "/health", b"", "application/json"))
    assert health.payload["statusCode"] == 200 and stack.emulator.process.poll() is None


LAMBDA_RESPONSE_LIMIT = 6_291_456


def test_every_route_on_a_12_mp_photo_fits_a_lambda_response_and_the_runtime_stays_warm(stack: Stack) -> None:
    """The drawn PNG of a 12 MP photo is far over 6 MB at full size; every response must still fit,
    the runtime must deliver it, and the next request must be served by the same warm process."""
    from handler.config import MAX_BINARY_BODY_BYTES

    photo = photo_jpeg((4000, 3000), noise=14, quality=85)
    assert len(photo) <= MAX_BINARY_BODY_BYTES  # an inline upload the default limit accepts
    sizes: dict[str, int] = {}
    for name, event in {
        "v1 POST /caption": api_v1("POST", "/caption", photo, "image/jpeg"),
        "v1 POST /detect": api_v1("POST", "/detect", photo, "image/jpeg"),
        "v1 POST /analyze": api_v1("POST", "/analyze", photo, "image/jpeg"),
        "v1 POST /detect?format=png": api_v1("POST", "/detect", photo, "image/jpeg", {"format": "png"}),
        "v2 POST /detect/?format=png": api_v2("POST", "/detect/", photo, "image/jpeg", {"format": "png"}),
    }.items():
        invocation = stack.emulator.invoke(event)
        response = invocation.payload
        assert response["statusCode"] == 200, (name, str(response)[:500])
        assert invocation.report.init_ms is None, f"{name} ran on a restarted runtime: {invocation.report.line}"
        sizes[name] = len(invocation.raw)
        if "png" in name:
            drawn = base64.b64decode(response["body"])
            assert drawn.startswith(b"\x89PNG") and len(drawn) <= MAX_BINARY_BODY_BYTES
            assert 0 < float(response["headers"]["x-drawn-scale"]) < 1.0  # downscaled to fit
    pid = stack.emulator.process.pid
    after = stack.emulator.invoke(api_v2("GET", "/health", b"", "application/json"))
    assert after.payload["statusCode"] == 200 and after.report.init_ms is None, after.report.line
    assert json_body(after.payload)["load_count"] == 1 and stack.emulator.process.poll() is None
    assert stack.emulator.process.pid == pid
    print(f"\n12 MP photo ({len(photo)} bytes JPEG): response bytes by route: {json.dumps(sizes)}")
    print(f"largest response: {max(sizes.values())} bytes (limit {LAMBDA_RESPONSE_LIMIT}); next: {after.report.line}")
    assert max(sizes.values()) <= LAMBDA_RESPONSE_LIMIT


def test_s3_batch_operations_events_of_both_schemas(stack: Stack) -> None:
    from tests.handler.events.test_batch import AWKWARD, GOOD, MISSING, NOT_IMAGE, batch_event

    stack.s3.put_object(Bucket=BUCKET, Key=GOOD, Body=image_bytes("PNG"))
    stack.s3.put_object(Bucket=BUCKET, Key=NOT_IMAGE, Body=b"shopping list")
    stack.s3.put_object(Bucket=BUCKET, Key=AWKWARD, Body=image_bytes("JPEG", (80, 60), quality=90))
    under_output = f"{OUTPUT_PREFIX}{GOOD}.json"
    keys = [GOOD, MISSING, NOT_IMAGE, AWKWARD, under_output]
    v2 = stack.emulator.invoke(batch_event("2.0", keys, bucket=BUCKET))
    print("schema 2.0 response:", json.dumps(v2.payload, ensure_ascii=False, indent=2))
    assert v2.payload["invocationSchemaVersion"] == "2.0" and v2.payload["treatMissingKeysAs"] == "PermanentFailure"
    codes = [r["resultCode"] for r in v2.payload["results"]]
    assert codes == ["Succeeded", "PermanentFailure", "PermanentFailure", "Succeeded", "Succeeded"], v2.payload
    for key in (GOOD, AWKWARD):
        stored = json.loads(stack.s3.get_object(Bucket=BUCKET, Key=f"{OUTPUT_PREFIX}{key}.json")["Body"].read())
        assert stored["source"]["key"] == key and isinstance(stored["caption"], str)
    assert v2.report.init_ms is None

    v1 = stack.emulator.invoke(batch_event("1.0", keys, bucket=BUCKET))
    strings = [r["resultString"] for r in v1.payload["results"]]
    assert strings[0].startswith("already present:") and strings[3].startswith("already present:"), v1.payload
    assert [r["resultCode"] for r in v1.payload["results"]] == codes


def test_hostile_non_http_events_get_answers_the_runtime_can_post_and_it_lives_on(stack: Stack) -> None:
    """What the runtime client refuses before our handler runs (50,000 nested `[`, a 100,000-digit integer, NaN)
    is its own Runtime.UnmarshalError; the rest is answered in the documented shapes. A Batch event of 100,000
    tasks was answered with 21 MB: the runtime could not post it and exited, and the next invoke started cold."""
    from handler.events.batch import MAX_TASKS
    from tests.handler.events.test_batch import MISSING, batch_event

    for raw in (b"[" * 50_000, b'{"task": "caption", "min_score": ' + b"9" * 100_000 + b"}", b'{"min_score": NaN}'):
        refused = stack.emulator.invoke(None, raw=raw).payload
        assert refused["errorType"] == "Runtime.UnmarshalError" and refused["stackTrace"] == [], refused
    for event in ([1, 2], "caption", 3, True, None, {}):
        assert stack.emulator.invoke(event).payload["error"]["code"] == "unsupported_event"

    surrogate = batch_event("2.0", [MISSING], bucket=BUCKET)
    surrogate["tasks"][0]["taskId"] = "\ud800"
    answer = stack.emulator.invoke(surrogate).payload
    assert [(r["taskId"], r["resultCode"]) for r in answer["results"]] == [("\\ud800", "PermanentFailure")], answer

    many = batch_event("2.0", [MISSING], bucket=BUCKET)
    many["tasks"] = [{"taskId": "é" * 10}] * 100_000  # each malformed: no key, a PermanentFailure
    wire = json.dumps(many, ensure_ascii=False).encode()  # 3.6 MB: with ASCII escapes it would not be an event
    assert len(wire) <= LAMBDA_RESPONSE_LIMIT
    posted = stack.emulator.invoke(None, raw=wire)
    assert len(posted.raw) <= LAMBDA_RESPONSE_LIMIT and len(posted.payload["results"]) == MAX_TASKS

    health = stack.emulator.invoke(api_v2("GET", "/health", b"", "application/json"))
    assert json_body(health.payload)["load_count"] == 1, "the runtime restarted and loaded the model again"
    assert stack.emulator.process.poll() is None


def test_a_10000_message_sqs_batch_of_hostile_bodies_standard_and_fifo(stack: Stack) -> None:
    """Lambda's largest SQS batch, through the runtime: a lone surrogate, an SNS Message encoded twice and plain
    garbage are dropped (logged); a notification padded with 1,000,000 spaces is read, and its missing object is
    listed for retry. On a FIFO queue every message after it is held back and listed too (9,998 ids)."""
    from tests.handler.events.test_notifications import sns_envelope

    template = json.loads((EVENTS / "sqs_s3_upload.json").read_text())["Records"][0]
    padded = " " * 1_000_000 + json.dumps(s3_put(BUCKET, "uploads/never-queued.jpg", 10))
    twice = json.dumps(sns_envelope(json.dumps(json.dumps(s3_put(BUCKET, "uploads/never-queued.jpg", 10)))))
    bodies = ["\ud800", padded, twice] + ["x"] * 9_997
    for queue, listed in (("florence-uploads", 1), ("florence-uploads.fifo", 9_999)):
        records = [
            {
                "messageId": f"m-{index}",
                "body": body,
                "eventSource": "aws:sqs",
                "eventSourceARN": f"{template['eventSourceARN'].rsplit(':', 1)[0]}:{queue}",
            }
            for index, body in enumerate(bodies)
        ]
        answered = stack.emulator.invoke({"Records": records})
        assert answered.payload == {"batchItemFailures": [{"itemIdentifier": f"m-{i}"} for i in range(1, 1 + listed)]}
        assert answered.report.duration_ms < 29_000 and len(answered.raw) <= LAMBDA_RESPONSE_LIMIT
        print(f"SQS {queue}: 10,000 messages in {answered.report.duration_ms:.0f} ms, {len(answered.raw)} bytes back")


def test_nothing_is_written_outside_tmp(stack: Stack) -> None:
    assert _tree(stack.task_root) == stack.before["task_root"], "the function wrote next to its code"
    assert _tree(stack.artifact) == stack.before["artifact"], "the function wrote into the artifact"
