"""The HTTP API in-process: every input kind, every response kind, every error code."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from handler.app import app
from handler.config import settings
from handler.service import runtime_for
from tests.conftest import image_bytes, scene_with_scored_boxes


@pytest.fixture
def client(serving_env: Path) -> TestClient:
    return TestClient(app, raise_server_exceptions=False)


def _assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body


def _raw(client: TestClient, path: str, data: bytes, content_type: str = "image/png"):
    return client.post(path, content=data, headers={"content-type": content_type})


def test_health_answers(client: TestClient) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok" and isinstance(body["load_count"], int)
    head = client.head("/health")  # what uptime monitors send
    assert head.status_code == 200 and head.content == b""


def test_a_compressed_body_is_a_clear_415_not_a_bad_image(client: TestClient, png_bytes: bytes) -> None:
    import gzip

    for encoding in ("gzip", "br", "deflate, gzip"):
        response = client.post(
            "/caption",
            content=gzip.compress(png_bytes),
            headers={"content-type": "image/png", "content-encoding": encoding},
        )
        assert response.status_code == 415 and "uncompressed" in response.json()["error"]["message"], response.text
    plain = client.post(
        "/caption", content=png_bytes, headers={"content-type": "image/png", "content-encoding": "identity"}
    )
    assert plain.status_code == 200 and plain.json()["caption"]


def test_caption_detect_analyze_shapes(client: TestClient, png_bytes: bytes, tiny_artifact: Path) -> None:
    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    caption = _raw(client, "/caption", png_bytes).json()
    assert isinstance(caption["caption"], str) and "detections" not in caption
    assert caption["model_sha"] == manifest["model_sha256"][:12]
    assert caption["image"] == {"width": 96, "height": 64, "format": "PNG", "bytes": len(png_bytes)}
    assert {"decode", "caption", "total"} <= set(caption["timings_ms"])

    detect = _raw(client, "/detect", png_bytes).json()
    assert isinstance(detect["detections"], list) and "caption" not in detect
    for det in detect["detections"]:  # boxes are in the original 96x64 frame, not the 384 model frame
        x0, y0, x1, y1 = det["box"]
        assert 0 <= x0 <= x1 <= 96 and 0 <= y0 <= y1 <= 64 and det["label"]

    both = _raw(client, "/analyze?tasks=caption,detect", png_bytes).json()
    assert both["caption"] == caption["caption"] and both["detections"] == detect["detections"]
    assert {"caption", "detect"} <= set(both["timings_ms"])
    only = _raw(client, "/analyze?tasks=detect", png_bytes).json()
    assert "caption" not in only and only["detections"] == detect["detections"]
    default = _raw(client, "/analyze", png_bytes).json()
    assert default["caption"] == caption["caption"] and default["detections"] == detect["detections"]


def test_every_input_kind_gives_the_same_answer(client: TestClient, jpeg_bytes: bytes) -> None:
    raw = _raw(client, "/analyze", jpeg_bytes, "image/jpeg").json()
    octet = _raw(client, "/analyze", jpeg_bytes, "application/octet-stream").json()
    multipart = client.post("/analyze", files={"file": ("photo.jpg", jpeg_bytes, "image/jpeg")}).json()
    b64 = client.post("/analyze", json={"image_base64": base64.b64encode(jpeg_bytes).decode()}).json()
    data_url = client.post(
        "/analyze", json={"image_base64": "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes).decode()}
    ).json()
    for other in (octet, multipart, b64, data_url):
        assert other["caption"] == raw["caption"] and other["detections"] == raw["detections"]
        assert other["image"] == raw["image"]


def test_detect_png_draws_on_the_original_size(client: TestClient, jpeg_bytes: bytes) -> None:
    response = _raw(client, "/detect?format=png", jpeg_bytes, "image/jpeg")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["x-model-sha"] and json.loads(response.headers["x-timings-ms"])["detect"] >= 0
    img = Image.open(io.BytesIO(response.content))
    assert img.format == "PNG" and img.size == (96, 64)


def test_openapi_docs(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/", "/caption", "/detect", "/analyze", "/health"} <= set(spec["paths"])
    assert (
        set(spec["paths"]["/"]) == {"get"} and "text/html" in spec["paths"]["/"]["get"]["responses"]["200"]["content"]
    )
    assert "score" in spec["components"]["schemas"]["DetectionOut"]["required"]
    detect_parameters = {p["name"] for p in spec["paths"]["/detect"]["post"]["parameters"]}
    assert {"format", "min_score"} <= detect_parameters
    content = spec["paths"]["/caption"]["post"]["requestBody"]["content"]
    assert {"image/*", "multipart/form-data", "application/json"} <= set(content)


# --- errors: one shape, the right code, from real bad input -------------------------------------


def test_400_not_an_image(client: TestClient) -> None:
    _assert_error(_raw(client, "/caption", b"hello, I am text", "image/png"), 400, "bad_image")
    _assert_error(client.post("/caption", files={"file": ("x.png", b"\x89PNG broken", "image/png")}), 400, "bad_image")
    _assert_error(client.post("/detect", json={"image_base64": base64.b64encode(b"GIF89a").decode()}), 400, "bad_image")


def test_400_truncated_jpeg(client: TestClient, jpeg_bytes: bytes) -> None:
    _assert_error(_raw(client, "/detect", jpeg_bytes[: len(jpeg_bytes) // 2], "image/jpeg"), 400, "bad_image")


def test_413_too_many_bytes(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_IMAGE_BYTES", "5000")
    big = image_bytes("BMP", (100, 100))  # 30 kB
    _assert_error(_raw(client, "/caption", big, "image/bmp"), 413, "too_large")
    _assert_error(client.post("/caption", files={"file": ("x.bmp", big, "image/bmp")}), 413, "too_large")
    _assert_error(client.post("/caption", json={"image_base64": base64.b64encode(big).decode()}), 413, "too_large")


def test_413_too_many_pixels(client: TestClient) -> None:
    bomb = image_bytes("PNG", (2500, 2500), mode="L", optimize=True)  # 6.25 MP > 4 MP, a few kB
    _assert_error(_raw(client, "/detect", bomb), 413, "too_large")


def test_415_unsupported_content_type(client: TestClient, png_bytes: bytes) -> None:
    _assert_error(_raw(client, "/caption", png_bytes, "text/plain"), 415, "unsupported_media_type")
    _assert_error(client.post("/caption", content=png_bytes), 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[" * 100_000,
        b"\xff\xfe{}",
        b"[1, 2]",
        b'{"image": "x"}',
        b'{"image_base64": "***"}',
        b'{"image_base64": 5}',
        b'{"s3": "x"}',
    ],
)
def test_422_bad_json(client: TestClient, body: bytes) -> None:
    _assert_error(_raw(client, "/caption", body, "application/json"), 422, "invalid_request")


def test_a_json_body_naming_two_images_is_a_422(client: TestClient, png_bytes: bytes) -> None:
    """It was answered for the inline image alone: a caller who meant the S3 object got another image's caption."""
    body = {"image_base64": base64.b64encode(png_bytes).decode(), "s3": {"bucket": "allowed-bucket", "key": "a.png"}}
    response = client.post("/caption", json=body)
    _assert_error(response, 422, "invalid_request")
    assert "both" in response.json()["error"]["message"]


def test_422_bad_parameters(client: TestClient, png_bytes: bytes) -> None:
    _assert_error(_raw(client, "/analyze?tasks=caption,segment", png_bytes), 422, "invalid_request")
    _assert_error(_raw(client, "/detect?format=gif", png_bytes), 422, "invalid_request")
    multipart_without_file = client.post("/caption", files={"other": ("x.png", png_bytes, "image/png")})
    _assert_error(multipart_without_file, 422, "invalid_request")
    bad_boundary = _raw(client, "/caption", b"--zz\r\ngarbage", "multipart/form-data; boundary=zz")
    _assert_error(bad_boundary, 422, "invalid_request")


@pytest.mark.parametrize("size", [(96, 64), (800, 600)], ids=["small", "over-1-MB"])
def test_a_file_part_without_a_filename_is_named_as_such(client: TestClient, size: tuple[int, int]) -> None:
    """`curl -F "file=<photo.jpg"` sends no filename: the part is a text field, and the answer was that the
    body had no part named "file" (or, past 1 MB, "Part exceeded maximum size of 1024KB")."""
    photo = image_bytes("BMP", size)
    body = b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\n' + photo + b"\r\n--b--\r\n"
    error = _assert_error(_raw(client, "/caption", body, "multipart/form-data; boundary=b"), 422, "invalid_request")
    assert error["error"]["message"].startswith('the "file" part has no filename'), error


def test_404_and_405_from_routing(client: TestClient) -> None:
    _assert_error(client.get("/nowhere"), 404, "not_found")
    _assert_error(client.get("/caption"), 405, "method_not_allowed")


def test_403_bucket_not_allowed(client: TestClient) -> None:
    response = client.post("/caption", json={"s3": {"bucket": "someone-elses", "key": "a.png"}})
    _assert_error(response, 403, "forbidden")


def _broken_copy(tiny_artifact: Path, tmp_path: Path) -> Path:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_artifact, broken)
    model = broken / "model.pt"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    return broken


def test_503_when_the_artifact_is_corrupt_and_the_failure_is_cached(
    client: TestClient, png_bytes: bytes, tiny_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARTIFACT_DIR", str(_broken_copy(tiny_artifact, tmp_path)))
    body = _assert_error(_raw(client, "/caption", png_bytes), 503, "model_unavailable")
    assert "sha256" in body["error"]["message"]
    _assert_error(_raw(client, "/detect", png_bytes), 503, "model_unavailable")
    runtime = runtime_for(settings())
    assert runtime.lazy.load_count == 1  # the second request did not re-hash the file
    health = client.get("/health").json()
    assert health["model_loaded"] is False and "sha256" in health["last_error"]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("transformers", "4.0.0", ["transformers 4.0.0"]),
        # Format 1 predates the conv memory formats; format 2 names the old flat class paths.
        ("format_version", 1, ["format 1", "model_build fuse"]),
        ("format_version", 2, ["format 2", "model_build fuse"]),
        # Format 3 had no processor hashes and was loaded with weights_only=False.
        ("format_version", 3, ["format 3", "model_build fuse"]),
        # Format 4 ran the vision convs in the bit-exact formats and decoded tasks one by one.
        ("format_version", 4, ["format 4", "model_build fuse"]),
        # Format 5 pickled torch.ao's dynamic int8 Linear, repacked inside unpickling one layer at a time.
        ("format_version", 5, ["format 5", "model_build fuse"]),
        # A newer format than this runtime knows, and values that are not a format number at all.
        ("format_version", 8, ["format 8", "6 or 7", "model_build fuse"]),
        ("format_version", "7", ["format '7'", "model_build fuse"]),
        ("format_version", True, ["format True", "model_build fuse"]),
    ],
)
def test_503_when_built_for_another_runtime_or_format(
    client: TestClient,
    png_bytes: bytes,
    tiny_artifact: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    field: str,
    value: object,
    expected: list[str],
) -> None:
    other = tmp_path / "other"
    shutil.copytree(tiny_artifact, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest[field] = value
    (other / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("ARTIFACT_DIR", str(other))
    message = _assert_error(_raw(client, "/caption", png_bytes), 503, "model_unavailable")["error"]["message"]
    assert all(part in message for part in expected), message


def test_format_6_artifacts_still_load(
    client: TestClient, png_bytes: bytes, tiny_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Format 7 only stores the downsampling convs in bf16; this runtime runs float32 ones as they are."""
    from handler.florence.artifact import FORMAT_VERSION, READABLE_FORMATS

    assert json.loads((tiny_artifact / "manifest.json").read_text())["format_version"] == FORMAT_VERSION == 7
    assert READABLE_FORMATS == (6, 7)
    older = tmp_path / "older"
    shutil.copytree(tiny_artifact, older)
    manifest = json.loads((older / "manifest.json").read_text())
    manifest["format_version"] = 6
    (older / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("ARTIFACT_DIR", str(older))
    response = _raw(client, "/caption", png_bytes)
    assert response.status_code == 200, response.text
    assert response.json()["caption"]


def test_failed_load_is_retried_after_the_window(
    client: TestClient, png_bytes: bytes, tiny_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "later"
    monkeypatch.setenv("ARTIFACT_DIR", str(missing))
    monkeypatch.setenv("ARTIFACT_RETRY_S", "0")
    _assert_error(_raw(client, "/caption", png_bytes), 503, "model_unavailable")
    shutil.copytree(tiny_artifact, missing)  # the artifact appears (e.g. a fixed mount)
    assert _raw(client, "/caption", png_bytes).status_code == 200
    assert runtime_for(settings()).lazy.load_count == 2


def test_unhandled_fault_is_a_bare_json_500() -> None:
    from handler.http.api import RequestLogMiddleware

    async def broken(scope, receive, send):
        raise RuntimeError("secret internal detail")

    response = TestClient(RequestLogMiddleware(broken), raise_server_exceptions=False).get("/")
    body = _assert_error(response, 500, "internal_error")
    assert "secret" not in response.text and "Traceback" not in response.text
    assert body["error"]["message"] == "internal server error"


def test_one_json_log_line_per_request(client: TestClient, png_bytes: bytes, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    _raw(client, "/caption", png_bytes)
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
    assert len(lines) == 1
    line = lines[0]
    assert line["task"] == "caption" and line["status"] == 200 and line["path"] == "/caption"
    assert line["image"]["width"] == 96 and line["model_sha"] and line["latency_ms"] > 0 and line["request_id"]


def _encode(img: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (image_bytes("PNG", (1, 1)), (1, 1)),
        (image_bytes("PNG", (1, 1500)), (1, 1500)),
        (_encode(Image.new("CMYK", (30, 20), (0, 50, 100, 0)), "JPEG"), (30, 20)),
        (_encode(Image.new("F", (20, 30), 3.5), "TIFF"), (20, 30)),
        (_encode(Image.new("RGB", (32, 32), "red"), "ICO"), (32, 32)),
    ],
    ids=["1x1", "1x1500", "cmyk-jpeg", "float-tiff", "ico"],
)
def test_odd_but_valid_images_are_served(client: TestClient, data: bytes, size: tuple[int, int]) -> None:
    response = _raw(client, "/analyze", data, "image/x-anything")
    assert response.status_code == 200, response.text
    assert (response.json()["image"]["width"], response.json()["image"]["height"]) == size


def test_large_jpeg_boxes_and_png_are_in_the_original_frame(client: TestClient) -> None:
    data = image_bytes("JPEG", (1800, 1200), quality=80)
    body = _raw(client, "/analyze", data, "image/jpeg").json()
    assert (body["image"]["width"], body["image"]["height"]) == (1800, 1200)
    for det in body["detections"]:
        x0, y0, x1, y1 = det["box"]
        assert 0 <= x0 <= x1 <= 1800 and 0 <= y0 <= y1 <= 1200
    png = _raw(client, "/detect?format=png", data, "image/jpeg")
    assert Image.open(io.BytesIO(png.content)).size == (1800, 1200)


@pytest.mark.parametrize("path", ["/caption/", "/detect//", "/analyze/?tasks=caption"])
def test_trailing_slash_answers_without_a_redirect(client: TestClient, png_bytes: bytes, path: str) -> None:
    response = client.post(path, content=png_bytes, headers={"content-type": "image/png"}, follow_redirects=False)
    assert response.status_code == 200 and "location" not in response.headers, response.text
    _assert_error(client.post("/nowhere/", content=png_bytes, follow_redirects=False), 404, "not_found")


def test_a_response_lambda_could_not_return_is_a_logged_500(capsys: pytest.CaptureFixture) -> None:
    """The last guard: a body over the limit never reaches the runtime's post, and the log says 500."""
    from handler.config import MAX_BINARY_BODY_BYTES
    from handler.http.api import RequestLogMiddleware

    async def oversized(scope, receive, send):
        body = b"x" * (MAX_BINARY_BODY_BYTES + 1)
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]}
        )
        await send({"type": "http.response.body", "body": body})

    response = TestClient(RequestLogMiddleware(oversized)).get("/big")
    _assert_error(response, 500, "response_too_large")
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert logged[-1]["status"] == 500 and logged[-1]["error"] == "response_too_large"


# --- scores, min_score and the demo page ---------------------------------------------------------


def test_every_box_and_caption_carries_a_score_and_min_score_filters_boxes(client: TestClient) -> None:
    png, answer = scene_with_scored_boxes(lambda body: _raw(client, "/analyze", body).json())
    assert 0.0 <= answer["caption_score"] <= 1.0
    scores = [d["score"] for d in answer["detections"]]
    assert all(0.0 <= score <= 1.0 for score in scores)
    floor = (min(scores) + max(scores)) / 2
    kept = [d for d in answer["detections"] if d["score"] >= floor]
    assert 0 < len(kept) < len(scores)
    assert _raw(client, f"/analyze?min_score={floor}", png).json()["detections"] == kept
    # /detect decodes its task alone and /analyze both as one batch, whose shared activation scale can
    # move a score in the fourth decimal: /detect is checked against its own full answer.
    alone = _raw(client, "/detect", png).json()["detections"]
    assert [(d["label"], d["box"]) for d in alone] == [(d["label"], d["box"]) for d in answer["detections"]]
    assert all(abs(a["score"] - b["score"]) < 0.01 for a, b in zip(alone, answer["detections"], strict=True))
    kept_alone = [d for d in alone if d["score"] >= floor]
    assert _raw(client, f"/detect?min_score={floor}", png).json()["detections"] == kept_alone
    lowest = min(d["score"] for d in alone)
    assert _raw(client, f"/detect?min_score={lowest}", png).json()["detections"] == alone
    drawn = _raw(client, f"/detect?format=png&min_score={floor}", png)
    assert drawn.headers["x-detections"] == str(len(kept_alone))


def test_min_score_setting_is_the_default_floor(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, png_bytes: bytes
) -> None:
    # /detect's own answer: /analyze decodes both tasks as one batch, which can move a score's fourth decimal
    png, answer = scene_with_scored_boxes(lambda body: _raw(client, "/detect", body).json())
    top = max(d["score"] for d in answer["detections"])
    monkeypatch.setenv("MIN_SCORE", str(top))
    assert [d["score"] for d in _raw(client, "/detect", png).json()["detections"]] == [top]
    assert len(_raw(client, "/detect?min_score=0", png).json()["detections"]) == len(answer["detections"])


@pytest.mark.parametrize("value", ["1.5", "-0.1", "high", "nan"])
def test_422_bad_min_score(client: TestClient, png_bytes: bytes, value: str) -> None:
    _assert_error(_raw(client, f"/detect?min_score={value}", png_bytes), 422, "invalid_request")


def test_demo_page_is_served_at_the_root_and_other_methods_keep_the_error_shape(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert 'fetch(apiUrl("analyze' in html and "x-api-key" in html  # relative URL, optional API key
    assert "http://" not in html and "https://" not in html  # self-contained: nothing loaded from elsewhere
    _assert_error(client.post("/", content=b"x"), 405, "method_not_allowed")
