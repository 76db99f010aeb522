"""CORS_ALLOW_ORIGINS through the app: no headers unless set, then on answers and errors alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from handler.app import app
from handler.config import SettingError, Settings

APP_ORIGIN = "https://app.example.com"
PREFLIGHT = {
    "origin": APP_ORIGIN,
    "access-control-request-method": "POST",
    "access-control-request-headers": "content-type,x-api-key",
}


@pytest.fixture
def client(serving_env: Path) -> TestClient:
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def cors(serving_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ALLOW_ORIGINS", f"https://other.example.org, {APP_ORIGIN}")


def _cors_headers(response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


def test_no_cors_headers_by_default(client: TestClient, png_bytes: bytes) -> None:
    ok = client.post("/caption", content=png_bytes, headers={"content-type": "image/png", "origin": APP_ORIGIN})
    assert ok.status_code == 200 and _cors_headers(ok) == {}
    preflight = client.options("/caption", headers=PREFLIGHT)  # today's answer: OPTIONS is not a route
    assert preflight.status_code == 405 and preflight.json()["error"]["code"] == "method_not_allowed"
    assert _cors_headers(preflight) == {}


def test_an_allowed_origin_reads_answers_and_errors(cors: None, client: TestClient, png_bytes: bytes) -> None:
    ok = client.post("/caption", content=png_bytes, headers={"content-type": "image/png", "origin": APP_ORIGIN})
    assert ok.status_code == 200 and ok.json()["caption"]
    assert ok.headers["access-control-allow-origin"] == APP_ORIGIN and "Origin" in ok.headers["vary"]
    bad = client.post("/detect", content=b"not an image", headers={"content-type": "image/png", "origin": APP_ORIGIN})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_image"
    assert bad.headers["access-control-allow-origin"] == APP_ORIGIN
    missing = client.get("/missing", headers={"origin": APP_ORIGIN})
    assert missing.status_code == 404 and missing.headers["access-control-allow-origin"] == APP_ORIGIN


def test_the_drawn_pngs_headers_are_exposed(cors: None, client: TestClient, png_bytes: bytes) -> None:
    drawn = client.post(
        "/detect?format=png", content=png_bytes, headers={"content-type": "image/png", "origin": APP_ORIGIN}
    )
    assert drawn.status_code == 200 and drawn.headers["access-control-allow-origin"] == APP_ORIGIN
    exposed = {h.strip().lower() for h in drawn.headers["access-control-expose-headers"].split(",")}
    assert {"x-model-sha", "x-detections", "x-drawn-scale", "x-timings-ms"} <= exposed
    assert exposed >= {name.lower() for name in drawn.headers if name.lower().startswith("x-")}


def test_preflight_allows_the_apis_methods_and_headers(cors: None, client: TestClient) -> None:
    sigv4 = {**PREFLIGHT, "access-control-request-headers": "authorization,content-type,x-amz-date"}
    for path, asked in (("/caption", PREFLIGHT), ("/detect", PREFLIGHT), ("/analyze", sigv4), ("/analyze/", sigv4)):
        preflight = client.options(path, headers=asked)
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == APP_ORIGIN
        assert {"GET", "POST", "OPTIONS"} <= {
            m.strip() for m in preflight.headers["access-control-allow-methods"].split(",")
        }
        allowed = {h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")}
        assert {"content-type", "x-api-key", "authorization", "x-amz-date", "x-amz-security-token"} <= allowed


def test_a_disallowed_origin_gets_no_cors_headers(cors: None, client: TestClient, png_bytes: bytes) -> None:
    other = "https://evil.example.net"
    answer = client.post("/caption", content=png_bytes, headers={"content-type": "image/png", "origin": other})
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers
    preflight = client.options("/caption", headers={**PREFLIGHT, "origin": other})
    assert preflight.status_code == 400 and "access-control-allow-origin" not in preflight.headers
    assert preflight.json()["error"] == {"code": "cors_refused", "message": "Disallowed CORS origin"}
    method = client.options("/caption", headers={**PREFLIGHT, "access-control-request-method": "DELETE"})
    assert method.status_code == 400 and method.json()["error"]["code"] == "cors_refused"


def test_any_origin(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ALLOW_ORIGINS", "*")
    health = client.get("/health", headers={"origin": "https://anyone.example"})
    assert health.status_code == 200 and health.headers["access-control-allow-origin"] == "*"
    preflight = client.options("/analyze", headers={**PREFLIGHT, "origin": "https://anyone.example"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "*"


def test_a_malformed_setting_answers_misconfigured(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ALLOW_ORIGINS", f"{APP_ORIGIN}/")
    answer = client.get("/health", headers={"origin": APP_ORIGIN})
    assert answer.status_code == 500 and answer.json()["error"]["code"] == "misconfigured"
    assert "CORS_ALLOW_ORIGINS" in answer.json()["error"]["message"]


@pytest.mark.parametrize(
    "value",
    ["https://app.example.com/", "app.example.com", "https://app.example.com/path", "*, https://a.example", "ftp://x"],
)
def test_origins_that_no_browser_sends_are_refused(value: str) -> None:
    with pytest.raises(SettingError, match="CORS_ALLOW_ORIGINS"):
        Settings.from_env({"CORS_ALLOW_ORIGINS": value})


def test_origins_parse_as_browsers_write_them() -> None:
    assert Settings.from_env({}).cors_allow_origins == ()
    assert Settings.from_env({"CORS_ALLOW_ORIGINS": " "}).cors_allow_origins == ()
    assert Settings.from_env({"CORS_ALLOW_ORIGINS": " * "}).cors_allow_origins == ("*",)
    given = "https://App.Example.com, http://localhost:5173,http://[::1]:8080,https://app.example.com"
    assert Settings.from_env({"CORS_ALLOW_ORIGINS": given}).cors_allow_origins == (
        "https://app.example.com",
        "http://localhost:5173",
        "http://[::1]:8080",
    )


def test_each_preflight_writes_one_log_line(cors: None, client: TestClient, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    client.options("/caption", headers=PREFLIGHT)
    client.options("/caption", headers={**PREFLIGHT, "origin": "https://evil.example.net"})
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(line["method"], line["path"], line["status"], line.get("error")) for line in lines] == [
        ("OPTIONS", "/caption", 200, None),
        ("OPTIONS", "/caption", 400, "cors_refused"),
    ]
    assert lines[1]["origin"] == "https://evil.example.net" and all(line["request_id"] for line in lines)
