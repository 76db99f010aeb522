"""A hostile corpus through every entry point: no 5xx, no exception, no hang, one error shape, honest logs.

Over 1,000 distinct inputs: a deterministic mutation corpus (truncations, byte flips, header corruptions,
huge declared sizes, wrong content types) of real images, sent through API Gateway v1 and v2 (raw
body), multipart, JSON base64, direct invokes and S3 records (objects in moto's S3), plus
property-based inputs from hypothesis (garbage JSON, bad base64, odd keys, malformed events, odd field
types), and fixed classes: images in every mode and format Pillow writes, animations, EXIF orientations,
extreme aspect ratios, lying headers, unreadable formats; odd query strings, content types, headers,
multipart bodies, methods, paths and events; million-character fields that errors quote; numbers JSON
allows but floats do not. Every send is checked at once:

- no 5xx, no exception out of `lambda_handler`, no send over HANG_S;
- every error is exactly `{"error": {"code", "message"}}`;
- every synchronous answer is one Lambda can return (6 MB as the runtime serializes it), with no traceback;
- the request log's status equals the one returned (one line per request, one per S3 record).

The table of inputs x entry point x outcome is written to `<tmp>/hostile_corpus.md` and printed
(`pytest -s tests/handler/test_hostile_corpus.py`). Most inputs fail before inference, so the whole
corpus runs in well under a minute.
"""

from __future__ import annotations

import base64
import copy
import gzip
import hashlib
import io
import json
import logging
import math
import random
import signal
import struct
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from handler.app import event_kind, lambda_handler
from handler.config import LAMBDA_PAYLOAD_BYTES
from handler.inputs import s3 as s3io
from handler.logs import logger
from tests.conftest import REPO_ROOT, image_bytes, runtime_posts
from tests.handler.test_app import Context, _multipart, _v1, _v2

BUCKET = "allowed-bucket"
HANG_S = 30.0
"""A send slower than this counts as a hang (the slowest real one, an inference, takes well under 1 s)."""
MIN_DISTINCT_INPUTS = 1000
ENTRY_POINTS = ["apigw-v1", "apigw-v2", "multipart", "json-base64", "direct", "s3-record"]
PROPERTY = settings(
    phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no explain phase: it traces every line, slowly
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass
class Tally:
    """Every send: which family and entry point, what came back; distinct inputs by fingerprint."""

    sends: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    fingerprints: set[str] = field(default_factory=set)

    def record(self, family: str, entry: str, fingerprint: str, outcome: str) -> None:
        self.sends[(family, entry, outcome)] += 1
        self.fingerprints.add(fingerprint)

    def table(self) -> str:
        entries = [e for e in [*ENTRY_POINTS, "apigw-event", "s3-event"] if any(k[1] == e for k in self.sends)]
        families = sorted({k[0] for k in self.sends})
        outcomes = ["2xx", "4xx", "5xx", "exception", "hang"]
        header = f"hostile corpus: {len(self.fingerprints)} distinct inputs, {sum(self.sends.values())} sends"
        by_family = self._grid("inputs", families, entries, lambda key, family, entry: key[:2] == (family, entry))
        by_outcome = self._grid("outcome", outcomes, entries, lambda key, outcome, entry: key[1:] == (entry, outcome))
        return "\n".join([header, "", *by_family, "", *by_outcome]) + "\n"

    def _grid(self, rows_name: str, rows: list[str], entries: list[str], match: Callable[..., bool]) -> list[str]:
        """A markdown table of send counts: one row per `rows` value, one column per entry point."""
        lines = [
            f"| {rows_name} \\ entry point | " + " | ".join(entries) + " | total |",
            "|---" * (len(entries) + 2) + "|",
        ]
        for row in rows:
            cells = [sum(n for key, n in self.sends.items() if match(key, row, entry)) for entry in entries]
            lines.append(f"| {row} | " + " | ".join(str(c) for c in cells) + f" | {sum(cells)} |")
        return lines


TALLY = Tally()


@pytest.fixture(scope="module", autouse=True)
def corpus_report() -> Iterator[None]:
    """Writes and prints the table once every test of the module has sent its inputs."""
    yield
    report = TALLY.table()
    path = Path(tempfile.gettempdir()) / "hostile_corpus.md"
    path.write_text(report)
    print(f"\n{report}(written to {path})")


class LogLines(logging.Handler):
    """Collects the request log's JSON lines, so each send's logged status can be compared."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(record.getMessage()))


@pytest.fixture
def world(serving_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The tiny model, moto's S3 with the allowed bucket, and the request log collected."""
    from moto import mock_aws

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    log = logger()
    lines = LogLines()
    log.addHandler(lines)
    try:
        with mock_aws():
            import boto3

            s3io.s3_client.cache_clear()
            client = boto3.client("s3", region_name="us-east-1")
            client.create_bucket(Bucket=BUCKET)
            yield World(client, lines)
    finally:
        log.removeHandler(lines)
        s3io.s3_client.cache_clear()


@dataclass
class World:
    s3: Any
    log: LogLines
    uploads: int = 0

    def upload(self, body: bytes) -> str:
        self.uploads += 1
        key = f"corpus/{self.uploads}-{hashlib.sha256(body).hexdigest()[:8]}.img"
        self.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        return key


def _fingerprint(entry: str, event: Any, extra: bytes = b"") -> str:
    text = json.dumps(event, sort_keys=True, default=repr, ensure_ascii=True)
    return hashlib.sha256(entry.encode() + text.encode() + extra).hexdigest()


def _error_shape(body: Any) -> None:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str), body


def _returnable(response: Any) -> None:
    """What the Lambda runtime would post, with ASCII escapes (this image) and without (python3.12+ runtimes):
    UTF-8 it can encode, within 6 MB, no traceback."""
    for wire in runtime_posts(response):
        assert len(wire) <= LAMBDA_PAYLOAD_BYTES, f"a {len(wire)}-byte response: {wire[:300]!r}"
        assert b"Traceback (most recent call last)" not in wire, wire[:300]


def _check_http(response: Any, lines: list[dict[str, Any]]) -> str:
    assert isinstance(response, dict) and isinstance(response.get("statusCode"), int), response
    _returnable(response)
    status = response["statusCode"]
    assert status < 500, response
    assert [line["status"] for line in lines] == [status], (status, lines)
    if lines[0].get("method") == "HEAD":  # GET's status and headers, never a body (RFC 9110 9.3.2)
        assert response["body"] == "", response
    elif status >= 400:
        assert response["isBase64Encoded"] is False
        _error_shape(json.loads(response["body"]))
    return "4xx" if status >= 400 else "2xx"


def _check_direct(response: Any, lines: list[dict[str, Any]]) -> str:
    assert isinstance(response, dict), response
    _returnable(response)
    assert len(lines) == 1, lines
    if "error" in response:
        _error_shape(response)
        assert 400 <= lines[0]["status"] < 500 and lines[0]["error"] == response["error"]["code"], (response, lines)
        return "4xx"
    assert lines[0]["status"] == 200 and lines[0]["source"] == "direct" and "model_sha" in response, (response, lines)
    return "2xx"


def _check_s3(response: Any, lines: list[dict[str, Any]], records: int) -> str:
    """Every record is written, skipped or rejected (4xx); none failed, so nothing raised for a retry."""
    assert isinstance(response, dict) and response["failed"] == [], response
    assert len(lines) == records, lines
    rejected = {r["code"] for r in response["rejected"]}
    assert all(isinstance(line["status"], str) or line["status"] < 500 for line in lines), lines
    assert rejected == {line["error"] for line in lines if "error" in line}, (response, lines)
    return "4xx" if response["rejected"] else "2xx"


class Hang(Exception):
    """Raised in the test's own thread by SIGALRM when a send runs past HANG_S."""


def _alarm(signum: int, frame: Any) -> None:
    raise Hang


def send(world: World, family: str, entry: str, event: Any, check: Callable[..., str], extra: bytes = b"") -> str:
    """Invoke `lambda_handler` under a deadline, check the answer, and tally the outcome.

    The handler runs on the main thread, as the Lambda runtime runs it (Mangum keeps its event loop
    there); a timer signal interrupts it if it hangs.
    """
    world.log.lines.clear()
    fingerprint = _fingerprint(entry, event, extra)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_S)
    try:
        response = lambda_handler(event, Context())
    except Hang:
        TALLY.record(family, entry, fingerprint, "hang")
        raise AssertionError(f"hang: {family} via {entry} took over {HANG_S} s") from None
    except Exception as exc:
        TALLY.record(family, entry, fingerprint, "exception")
        raise AssertionError(f"exception out of lambda_handler: {family} via {entry}: {exc!r}") from exc
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    try:
        outcome = check(response, list(world.log.lines))
    except AssertionError:
        status = response.get("statusCode", 0) if isinstance(response, dict) else 0
        TALLY.record(family, entry, fingerprint, "5xx" if isinstance(status, int) and status >= 500 else "exception")
        raise
    TALLY.record(family, entry, fingerprint, outcome)
    return outcome


# ---------------------------------------------------------------- the mutation corpus (deterministic)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_with_header(width: int, height: int, depth: int = 8, colour: int = 2) -> bytes:
    """A PNG whose IHDR declares any size, with valid CRCs, and a tiny IDAT: huge declared sizes."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its SOF0 frame header declaring another size."""
    at = jpeg.index(b"\xff\xc0")
    return jpeg[: at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9 :]


def _bomb() -> bytes:
    """3000x3000 of zeros: a few KB of PNG that would decode to 27 MB (over the 4 MP test limit)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


BASES = {
    "png": image_bytes("PNG", (32, 24)),
    "jpeg": image_bytes("JPEG", (32, 24), quality=85),
    "gif": image_bytes("GIF", (32, 24), mode="P"),
    "bmp": image_bytes("BMP", (16, 12)),
    "webp": image_bytes("WEBP", (32, 24)),
}


def mutation_corpus(seed: int = 12) -> list[tuple[str, bytes, str]]:
    """(family, bytes, content type) for every mutated image, the same on every run."""
    rng = random.Random(seed)
    corpus: list[tuple[str, bytes, str]] = []
    for name, data in BASES.items():
        ctype = f"image/{name}"
        cuts = sorted(
            {0, 1, 2, 8, 16, 33, len(data) // 2, len(data) - 1} | {rng.randrange(len(data)) for _ in range(8)}
        )
        corpus += [("truncation", data[:cut], ctype) for cut in cuts]
        # PNG flips mostly break a CRC; JPEG flips mostly decode, so they cost inference: fewer of them.
        for _ in range(6 if name == "jpeg" else 14):
            flipped = bytearray(data)
            for _ in range(rng.choice([1, 1, 2, 3])):
                at = rng.randrange(min(len(data), 200) if rng.random() < 0.7 else len(data))
                flipped[at] ^= rng.randrange(1, 256)
            corpus.append(("byte flip", bytes(flipped), ctype))
        corpus.append(("header corruption", b"GIF89a" + data[6:], ctype))
        corpus.append(("header corruption", data[:4] + b"\x00" * 16 + data[20:], ctype))
        corpus.append(("wrong content type", data, rng.choice(["text/plain", "application/xml", "text/html"])))
        corpus.append(("wrong content type", data, "image/png; charset=utf-8; boundary=x"))
    for width, height in [(0, 24), (24, 0), (2**31 - 1, 1), (100_000, 100_000), (4001, 1000), (65_535, 65_535)]:
        corpus.append(("huge declared size", _png_with_header(width, height), "image/png"))
    corpus += [
        ("header corruption", _png_with_header(32, 24, depth, colour), "image/png")
        for depth, colour in [(3, 2), (8, 7), (16, 3)]
    ]
    for width, height in [(65_535, 65_535), (0, 0), (3000, 2000)]:
        corpus.append(("huge declared size", _jpeg_with_size(BASES["jpeg"], width, height), "image/jpeg"))
    corpus.append(("huge declared size", _bomb(), "image/png"))
    corpus.append(("random bytes", bytes(rng.randrange(256) for _ in range(300)), "application/octet-stream"))
    corpus.append(("random bytes", b"", "image/png"))
    return corpus


def _http_event(entry: str, data: bytes, ctype: str, path: str, headers: dict[str, str] | None = None) -> dict:
    if entry == "multipart":
        body, multipart_type = _multipart(data)
        return _v2("POST", path, body, {"content-type": multipart_type, **(headers or {})})
    if entry == "json-base64":
        body = json.dumps({"image_base64": base64.b64encode(data).decode()}).encode()
        return _v1("POST", path, body, {"content-type": "application/json", **(headers or {})})
    make = _v1 if entry == "apigw-v1" else _v2
    return make("POST", path, data, {"content-type": ctype, **(headers or {})})


def _s3_event(bucket: str, key: str, quote: bool = True) -> dict:
    template = json.loads((REPO_ROOT / "events" / "s3_put.json").read_text())
    record = template["Records"][0]
    record["s3"]["bucket"].update(name=bucket, arn=f"arn:aws:s3:::{bucket}")
    record["s3"]["object"]["key"] = quote_plus(key, safe="/") if quote else key
    return {"Records": [record]}


NOT_AN_IMAGE = b"%PDF-1.4 not an image"
"""What S3-side tests upload: the record is read, rejected with 400 and its error result written."""
PATHS = ["/caption", "/detect", "/analyze", "/detect?format=png", "/caption/"]


def _decodes(data: bytes) -> bool:
    """Whether the service's own decoder accepts these bytes (then a send costs an inference)."""
    from handler.inputs.images import decode_image

    try:
        decode_image(data, 2_000_000, 4_000_000)
    except Exception:
        return False
    return True


def send_images(world: World, corpus: list[tuple[str, bytes, str]]) -> list[str]:
    """Each image that fails to decode goes through all six entry points; one that still decodes
    costs an inference per send, so it goes through one, taking turns (the CI budget). Returns the outcomes."""
    turn, outcomes = 0, []
    for index, (family, data, ctype) in enumerate(corpus):
        path = PATHS[index % len(PATHS)]
        route, _, query = path.partition("?")
        entries = ENTRY_POINTS
        if _decodes(data):
            entries, turn = [ENTRY_POINTS[turn % len(ENTRY_POINTS)]], turn + 1
        for entry in entries:
            if entry == "direct":
                task = ["caption", "detect", "analyze"][index % 3]
                event: Any = {"task": task, "image_base64": base64.b64encode(data).decode()}
                outcomes.append(send(world, family, entry, event, _check_direct))
            elif entry == "s3-record":
                event = _s3_event(BUCKET, world.upload(data))
                outcomes.append(send(world, family, entry, event, lambda r, lines: _check_s3(r, lines, 1), extra=data))
            else:
                event = _http_event(entry, data, ctype, route)
                if query:
                    event["queryStringParameters"] = dict([query.split("=")])
                    event["rawQueryString"] = query
                    event["multiValueQueryStringParameters"] = {
                        k: [v] for k, v in event["queryStringParameters"].items()
                    }
                outcomes.append(send(world, family, entry, event, _check_http))
    return outcomes


def test_mutated_images_through_every_entry_point(world: World) -> None:
    send_images(world, mutation_corpus())


def test_huge_declared_sizes_and_over_limit_bodies(world: World) -> None:
    data = BASES["png"]
    for entry in ["apigw-v1", "apigw-v2", "multipart", "json-base64"]:
        for declared in ["99999999999", "2000001", "-1", "abc", "0", str(2**64)]:
            event = _http_event(entry, data, "image/png", "/caption", {"content-length": declared})
            send(world, "huge declared size", entry, event, _check_http)
        over = _http_event(entry, b"\x89PNG" + b"\x00" * 2_000_000, "image/png", "/caption")
        assert send(world, "huge declared size", entry, over, _check_http) == "4xx"
    huge_b64 = {"task": "caption", "image_base64": "A" * 2_700_000}
    assert send(world, "huge declared size", "direct", huge_b64, _check_direct) == "4xx"
    world.s3.put_object(Bucket=BUCKET, Key="corpus/huge.bin", Body=b"\x00" * 2_000_001)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MAX_S3_IMAGE_BYTES", "2000000")
        assert (
            send(
                world,
                "huge declared size",
                "s3-record",
                _s3_event(BUCKET, "corpus/huge.bin"),
                lambda r, lines: _check_s3(r, lines, 1),
            )
            == "4xx"
        )


# ------------------------------------------------- image classes Pillow opens, or cannot (deterministic)


def _encoded(image: Any, fmt: str, **save: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def _in_mode(mode: str, size: tuple[int, int] = (40, 30)) -> Any:
    """A small picture in `mode`: shapes converted down, or grey levels for the high-bit-depth modes."""
    from PIL import Image, ImageDraw

    if mode in ("I", "I;16", "I;16B", "F"):
        image = Image.new(mode, size, 0)
        image.paste(200.5 if mode == "F" else 60_000, (5, 5, 20, 15))
        return image
    if mode == "LAB":
        return Image.new("LAB", size, (50, 20, -20))
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).rectangle((5, 5, size[0] // 2, size[1] // 2), fill=(200, 30, 30))
    return image.convert(mode)


MODES_BY_FORMAT = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I;16B"],
    "TIFF": ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "I", "I;16", "F"],
    "JPEG": ["L", "RGB", "CMYK"],
    "WEBP": ["L", "RGB", "RGBA"],
    "BMP": ["1", "L", "P", "RGB", "RGBA"],
    "GIF": ["1", "L", "P"],
    "PPM": ["1", "L", "RGB", "I;16"],
    "TGA": ["L", "LA", "P", "RGBA"],
    "ICO": ["RGB", "P"],
    "PCX": ["1", "P", "RGB"],
    "SGI": ["L", "RGBA"],
    "JPEG2000": ["L", "RGBA"],
    "DDS": ["L", "RGBA"],
    "QOI": ["RGBA"],
    "SPIDER": ["F"],
    "XBM": ["1"],
    "MSP": ["1"],
    "PALM": ["1", "P"],
}
EXIF_ORIENTATIONS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 255, 65535]
"""1..8 are defined; the rest are what a broken camera or a hostile file writes."""
EXTREME_SIZES = [(1, 1), (1, 10_000), (10_000, 1), (2, 20_000), (1, 1_000_000)]
"""`/detect?format=png` on these draws on a 1-pixel-wide strip: lines and tags must not be sized by its length."""
UNREADABLE = {
    "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
    "heic": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 100,
    "avif": b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + b"\x00" * 100,
    "pdf": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
    "eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100000 100000\n",
    "html": b"<html><body>not an image</body></html>",
}


def _with_orientation(fmt: str, orientation: Any) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encoded(_in_mode("RGB", (60, 20)), fmt, exif=exif.tobytes())


def _lying_png(data: bytes, width: int, height: int) -> bytes:
    """A real PNG whose IHDR (CRC fixed) claims another size than its pixel data holds."""
    at = data.index(b"IHDR")
    header = struct.pack(">II", width, height) + data[at + 12 : at + 17]
    return data[: at - 4] + _png_chunk(b"IHDR", header) + data[at + 21 :]


def _lying_bmp(data: bytes, width: int, height: int) -> bytes:
    """A real BMP whose info header claims another size (a negative height means rows top-down)."""
    return data[:18] + struct.pack("<ii", width, height) + data[26:]


def image_class_corpus() -> list[tuple[str, bytes, str]]:
    """(family, bytes, content type) for each class of image: modes x formats, transparency, animation,
    EXIF orientations, extreme aspect ratios, headers that lie about the size, formats Pillow cannot open."""
    from PIL import Image

    corpus = [
        ("mode x format", _encoded(_in_mode(mode), fmt), "image/x-anything")
        for fmt, modes in MODES_BY_FORMAT.items()
        for mode in modes
    ]
    frames = [Image.new("RGB", (40, 30), colour) for colour in ("red", "blue", "green")]
    big_frame = Image.new("RGB", (3000, 3000))  # over the pixel limit, but not the first frame
    corpus += [
        ("transparency", _encoded(_in_mode("L"), "PNG", transparency=255), "image/png"),
        ("transparency", _encoded(_in_mode("RGB"), "PNG", transparency=(255, 255, 255)), "image/png"),
        ("transparency", _encoded(_in_mode("P"), "GIF", transparency=0), "image/gif"),
        ("progressive JPEG", _encoded(_in_mode("RGB", (800, 600)), "JPEG", progressive=True), "image/jpeg"),
        ("progressive JPEG", _encoded(_in_mode("CMYK", (1600, 1200)), "JPEG", progressive=True), "image/jpeg"),
        ("multi-frame", _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]), "image/gif"),
        ("multi-frame", _encoded(frames[0], "TIFF", save_all=True, append_images=frames[1:]), "image/tiff"),
        ("multi-frame", _encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:]), "image/webp"),
        ("multi-frame", _encoded(frames[0], "PNG", save_all=True, append_images=frames[1:]), "image/apng"),
        (
            "multi-frame",
            _encoded(frames[0], "PNG", save_all=True, append_images=frames[1:], default_image=True),
            "image/png",
        ),
        (
            "multi-frame",
            _encoded(frames[0], "TIFF", save_all=True, append_images=[big_frame], compression="tiff_adobe_deflate"),
            "image/tiff",
        ),
        (
            "multi-frame",
            _encoded(_in_mode("RGBA", (256, 256)), "ICO", sizes=[(16, 16), (32, 32), (256, 256)]),
            "image/x-icon",
        ),
    ]
    corpus += [
        ("EXIF orientation", _with_orientation(fmt, orientation), f"image/{fmt.lower()}")
        for fmt in ("JPEG", "PNG", "WEBP")
        for orientation in EXIF_ORIENTATIONS
    ]
    corpus.append(("EXIF orientation", _with_orientation("JPEG", (6, 6)), "image/jpeg"))
    garbage_exif = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff" + b"\x00" * 20
    corpus.append(("EXIF orientation", _encoded(_in_mode("RGB"), "JPEG", exif=garbage_exif), "image/jpeg"))
    corpus += [
        ("extreme aspect", _encoded(Image.new("RGB", size, "red"), "PNG"), "image/png") for size in EXTREME_SIZES
    ]
    corpus += [
        ("extreme aspect", _encoded(Image.new("RGB", (1, 10_000), "red"), "JPEG"), "image/jpeg"),
        ("extreme aspect", _encoded(Image.new("P", (1, 10_000)), "GIF"), "image/gif"),
        ("extreme aspect", _encoded(Image.new("RGB", (16_383, 1)), "WEBP"), "image/webp"),
    ]
    png, bmp = _encoded(_in_mode("RGB", (16, 12)), "PNG"), _encoded(_in_mode("RGB", (16, 12)), "BMP")
    gif = _encoded(_in_mode("P", (16, 12)), "GIF")
    corpus += [
        ("header lies", _lying_png(png, w, h), "image/png") for w, h in [(8, 6), (16, 13), (2000, 1500), (1, 3_999_999)]
    ]
    corpus += [("header lies", _lying_bmp(bmp, w, h), "image/bmp") for w, h in [(16, -12), (-16, 12), (2000, -1500)]]
    corpus += [
        ("header lies", gif[:6] + struct.pack("<HH", w, h) + gif[10:], "image/gif") for w, h in [(2000, 1500), (1, 1)]
    ]
    corpus += [("header lies", _jpeg_with_size(BASES["jpeg"], w, h), "image/jpeg") for w, h in [(1, 60_000), (8, 6)]]
    corpus += [("unreadable format", data, f"image/{name}") for name, data in UNREADABLE.items()]
    return corpus


def test_image_classes_through_every_entry_point(world: World) -> None:
    """An extreme aspect ratio is also drawn (`/detect?format=png`), where a 1xN strip once got an N/40 px font."""
    corpus = image_class_corpus()
    send_images(world, corpus)
    for family, data, ctype in corpus:
        if family == "extreme aspect":
            event = _v2("POST", "/detect", data, {"content-type": ctype}, {"format": "png"})
            assert send(world, family, "apigw-v2", event, _check_http) == "2xx"


def decode_cost_corpus() -> list[tuple[str, bytes, str]]:
    """Small files whose decode costs far more than their pixel count says: time (a JPEG's scans) or
    memory (a TIFF's tile, an ICO's embedded PNG, both allocated before the image's size is known)."""
    from tests.handler.inputs.test_images import _progressive_jpeg_with_scans, _tiff_with_tile

    inner = _encoded(_in_mode("L", (2100, 2100)), "PNG")  # 4.4 MP: over the test limit of 4 MP
    ico = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(inner), 22) + inner
    return [
        ("decode cost", _progressive_jpeg_with_scans(1000), "image/jpeg"),
        ("decode cost", _tiff_with_tile(1, 1, 4096), "image/tiff"),
        ("decode cost", ico, "image/x-icon"),
    ]


def test_inputs_whose_decode_costs_more_than_their_pixels_are_refused_at_every_door(world: World) -> None:
    """A 540 KB JPEG of 8,010 scans decoded for 35 s (past API Gateway's 29 s); a 146-byte TIFF with one
    16384x16384 tile took 790 MB. Each was inside the byte and pixel limits; each is now a 413 everywhere."""
    outcomes = send_images(world, decode_cost_corpus())
    assert outcomes == ["4xx"] * len(ENTRY_POINTS) * 3, outcomes


def test_a_profile_no_downscale_can_shrink_stays_out_of_the_drawing(world: World) -> None:
    """A 64x48 JPEG carrying a 5 MB ICC profile, read from S3 (20 MiB limit): the profile was copied into
    the drawn PNG, which no downscale could bring under what Lambda returns (a 500 response_too_large)."""
    from PIL import Image

    profile = random.Random(3).randbytes(5_000_000)
    key = world.upload(_encoded(Image.new("RGB", (64, 48), "red"), "JPEG", icc_profile=profile))
    body = json.dumps({"s3": {"bucket": BUCKET, "key": key}})
    event = _v2("POST", "/detect", body, {"content-type": "application/json"}, {"format": "png"})
    assert send(world, "metadata", "json-base64", event, _check_http) == "2xx"


# ------------------------------------------- request shapes: query, headers, multipart, methods, events


def _multipart_raw(*parts: bytes, boundary: str = "b") -> tuple[bytes, str]:
    """A hand-written multipart body, for shapes httpx will not produce."""
    body = (
        b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts)
        + b"--"
        + boundary.encode()
        + b"--\r\n"
    )
    return body, f"multipart/form-data; boundary={boundary}"


def _file_part(name: bytes = b"file", extra: bytes = b"", data: bytes = b"") -> bytes:
    return b'Content-Disposition: form-data; name="' + name + b'"; filename="a.png"\r\n' + extra + b"\r\n" + data


QUERY_VALUES = {
    "format": ["png", "PNG", "jpeg", "", "png\x00", "ｐｎｇ", "x" * 9000],
    "min_score": ["nan", "inf", "-inf", "1e400", "1e-400", "-0", "0x1", " 0.5 ", "１", "", "9" * 5000, "true"],
    "tasks": [
        "",
        ",",
        "caption,caption",
        "CAPTION",
        "<OD>",
        " caption ",
        "caption,",
        "x" * 9000,
        "é" * 3000,
        "caption," * 2000,
    ],
    "unknown": ["1"],
}
REPEATED_QUERIES = [{"format": ["png", "json"]}, {"min_score": ["0.5", "2"]}, {"tasks": ["bogus", "caption"]}]
RAW_QUERIES = [
    "format=%ZZ",
    "format=%00",
    "format=png&format",
    "&&&",
    "=",
    "min_score=%F0%9F%98%80",
    "tasks=%ED%A0%80",
    "a=" + "%" * 3000,
]
CONTENT_TYPES = [
    "image/png; charset=utf-8",
    "IMAGE/PNG",
    " image/png ",
    "image/",
    "image",
    "application/json; charset=utf-16",
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "multipart/form-data; boundary=",
    'multipart/form-data; boundary=""',
    "multipart/form-data; boundary=" + "b" * 5000,
    "multipart/mixed; boundary=x",
    "",
    ";",
    "*/*",
    "image/svg+xml",
    "application/vnd.api+json",
    "\x00",
    "é/é",
]
HEADERS = [
    {"content-encoding": "gzip"},
    {"transfer-encoding": "chunked"},
    {"transfer-encoding": "chunked", "content-length": "10"},
    {"content-length": "1"},
    {"content-length": "1e3"},
    {"expect": "100-continue"},
    {"host": "x" * 5000},
    {"x-forwarded-proto": "gopher"},
    {"x-forwarded-port": "abc"},
    {"cookie": "a=b; " * 500},
    {"": "empty name"},
    {"x-é": "é"},
]


MULTIPART_NAMES = [b"image", b"\xff\xfe"]
"""File parts under a name other than `file`."""
JSON_BODIES = [
    "NaN",
    "1e999",
    "9" * 4301,
    "null",
    '"str"',
    '{"image_base64": NaN}',
    '{"s3": {"bucket": Infinity, "key": null}}',
    '{"s3": "bucket/key"}',
    "[" * 100_000 + "]" * 100_000,
]
METHODS = ["GET", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE", "TRACE", "FOO", "get", ""]
ROUTES = ["/", "/health", "/caption", "/detect", "/analyze", "/docs", "/openapi.json"]
ODD_PATHS = [
    "//caption",
    "/caption%2F",
    "/%63aption",
    "/cap%00tion",
    "/caption/../caption",
    "/CAPTION",
    "/caption;x=1",
    "/é",
    "/\ud800",
    "/" + "a" * 100_000,
    "/caption/" + "/" * 5000,
    "",
    "caption",
    "*",
    "/\x00",
    "/caption\r\nX: y",
]
V1_CHANGES: list[dict[str, Any]] = [
    {"headers": None},
    {"multiValueHeaders": None},
    {"headers": None, "multiValueHeaders": None},
    {"headers": None, "multiValueHeaders": {"content-type": ["image/png", "application/json"]}},
    {"headers": None, "multiValueHeaders": {"content-type": []}},
    {"multiValueQueryStringParameters": {"format": []}},
]
V2_CHANGES: list[dict[str, Any]] = [
    {"cookies": ["a=b", "c", "", "=", "é=é"]},
    {"cookies": ["x" * 100_000]},
    {"version": "1.0"},
    {"headers": {"Content-Type": "image/png", "content-type": "application/json"}},
    {"rawQueryString": None},
]
MINIMAL_EVENTS: list[dict[str, Any]] = [
    {"requestContext": {}, "httpMethod": "POST"},
    {"requestContext": {"http": {}}},
    {"requestContext": {"http": {"method": "GET"}}, "rawPath": "/health"},
    {"requestContext": {"httpMethod": "GET"}, "httpMethod": "GET", "path": "/health"},
    {"requestContext": {"elb": {"targetGroupArn": "arn"}}, "httpMethod": "POST", "path": "/caption", "body": ""},
]
BOTH = [("apigw-v1", _v1), ("apigw-v2", _v2)]
Shape = tuple[str, str, dict]
"""(family, entry point, API Gateway event)."""


def _with_query(path: str, query: dict[str, str]) -> list[Shape]:
    """The test PNG posted to `path?query` through v1 and v2."""
    headers = {"content-type": "image/png"}
    return [("query parameter", entry, make("POST", path, BASES["png"], headers, query)) for entry, make in BOTH]


def query_shapes() -> list[Shape]:
    """Odd values of every parameter, repeated keys, and raw query strings that do not percent-decode."""
    shapes = [
        shape for name, values in QUERY_VALUES.items() for v in values for shape in _with_query("/detect", {name: v})
    ]
    for repeated in REPEATED_QUERIES:  # v1 lists every value; v2 has only the raw string
        (_, _, v1), (_, _, v2) = _with_query("/analyze", {k: v[-1] for k, v in repeated.items()})
        v1["multiValueQueryStringParameters"] = repeated
        v2["rawQueryString"] = "&".join(f"{k}={v}" for k, values in repeated.items() for v in values)
        shapes += [("query parameter", "apigw-v1", v1), ("query parameter", "apigw-v2", v2)]
    for raw in RAW_QUERIES:
        event = _v2("POST", "/detect", BASES["png"], {"content-type": "image/png"})
        event["rawQueryString"] = raw
        shapes.append(("query parameter", "apigw-v2", event))
    return shapes


def body_shapes() -> list[Shape]:
    """Content types, headers, multipart bodies, base64 flags and JSON bodies."""
    png = BASES["png"]
    json_png = json.dumps({"image_base64": base64.b64encode(png).decode()}).encode()
    sends = [
        ("content type", "/caption", body, {"content-type": ctype})
        for ctype in CONTENT_TYPES
        for body in (png, json_png, b"")
    ]
    sends += [
        ("header", "/analyze", body, {"content-type": "image/png", **headers})
        for headers in HEADERS
        for body in (png, gzip.compress(png))
    ]
    multipart = [
        _multipart_raw(_file_part(data=png), _file_part(data=png)),
        _multipart_raw(_file_part(data=png), _file_part(b"other", data=png)),
        _multipart_raw(b'Content-Disposition: form-data; name="file"\r\n\r\nnot a file'),
        _multipart_raw(b'Content-Disposition: form-data; name="file"\r\n\r\n' + png),
        _multipart_raw(_file_part(data=b"")),
        *[_multipart_raw(_file_part(name, data=png)) for name in MULTIPART_NAMES],
        _multipart_raw(_file_part(extra=b"Content-Transfer-Encoding: base64\r\n", data=base64.b64encode(png))),
        _multipart_raw(b"Content-Type: image/png\r\n\r\n" + png),
        _multipart_raw(b"X-A: b\r\n" * 5000 + _file_part(data=png)),
        _multipart_raw(_file_part(data=png), boundary="b b"),
        (_multipart_raw(_file_part(data=png))[0], "multipart/form-data; boundary=zzz"),
        (_multipart_raw(_file_part(data=png))[0][:-8], "multipart/form-data; boundary=b"),
        _multipart_raw(
            *[b'Content-Disposition: form-data; name="f%d"\r\n\r\nx' % i for i in range(100)], _file_part(data=png)
        ),
    ]
    sends += [("multipart shape", "/analyze", body, {"content-type": ctype}) for body, ctype in multipart]
    shapes = [
        (family, entry, make("POST", path, body, headers))
        for family, path, body, headers in sends
        for entry, make in BOTH
    ]
    for body, encoded in [
        ("!!!notbase64", True),
        ("aGk", True),
        ("===", True),
        (png.decode("latin-1"), False),
        ("\ud800", False),
    ]:
        for entry, make in BOTH:
            event = make("POST", "/caption", b"", {"content-type": "image/png"})
            event.update(body=body, isBase64Encoded=encoded)
            shapes.append(("base64 flag", entry, event))
    json_bodies = [*JSON_BODIES, "\ufeff" + json_png.decode(), json_png.decode() + " trailing"]
    json_bodies.append('{"image_base64": "a", "image_base64": ' + json.dumps(base64.b64encode(png).decode()) + "}")
    shapes += [
        ("JSON body", "apigw-v2", _v2("POST", "/caption", body, {"content-type": "application/json"}))
        for body in json_bodies
    ]
    return shapes


def route_shapes() -> list[Shape]:
    """Every method on every route, and odd paths (`path` in v1, `rawPath` in v2)."""
    png, headers = BASES["png"], {"content-type": "image/png"}
    shapes = [
        ("method", entry, make(method, path, png, headers))
        for method in METHODS
        for path in ROUTES
        for entry, make in BOTH
    ]
    for path in ODD_PATHS:
        for entry, make in BOTH:
            event = make("POST", "/caption", png, headers)
            event["rawPath" if entry == "apigw-v2" else "path"] = path
            shapes.append(("path", entry, event))
    return shapes


def event_shapes() -> list[Shape]:
    """API Gateway events with fields missing, null or doubled, and the smallest events that still look like HTTP."""
    v1 = _v1("POST", "/caption", BASES["png"], {"content-type": "image/png"})
    v2 = _v2("POST", "/caption", BASES["png"], {"content-type": "image/png"})
    events = [{**copy.deepcopy(v1), **changes} for changes in V1_CHANGES]
    events += [{**copy.deepcopy(v2), **changes} for changes in V2_CHANGES]
    return [("event fields", "apigw-event", event) for event in [*events, *MINIMAL_EVENTS]]


def test_request_shapes_through_api_gateway(world: World) -> None:
    for family, entry, event in [*query_shapes(), *body_shapes(), *route_shapes(), *event_shapes()]:
        send(world, family, entry, event, _check_http)


# ------------------------------------------- values that errors quote, and numbers JSON allows but floats do not

ECHO_CHARACTERS = ["\\", "'\"", "\u0378", "\ue000", "\U0010fffe"]
"""What repr and JSON escaping grow: 1 byte in, 2 bytes out (`\\`); 2 bytes of UTF-8 in, 8 bytes out (U+0378)."""


def test_quoted_values_cannot_grow_a_response_past_lambdas_limit(world: World) -> None:
    """An error message quotes the task, min_score, bucket or unknown keys it refuses: a field of a
    million characters that repr escapes once made a 10 MB answer, which Lambda would have refused."""
    png = base64.b64encode(BASES["png"]).decode()
    for char in ECHO_CHARACTERS:
        text = char * (1_000_000 // len(char))
        for event in [
            {"task": "analyze", "tasks": text, "image_base64": png},
            {"task": "analyze", "tasks": [text], "image_base64": png},
            {"task": "detect", "min_score": text, "image_base64": png},
            {"task": "caption", "s3": {"bucket": text, "key": "k"}},
            {"task": text, "image_base64": png},
        ]:
            assert send(world, "quoted value", "direct", event, _check_direct) == "4xx"
        unknown_event = {text: 1}  # not an event this function serves: its keys are listed in the error
        assert send(world, "quoted value", "direct", unknown_event, _check_direct) == "4xx"
        body = json.dumps({"s3": {"bucket": text, "key": "k"}}, ensure_ascii=False)
        event = _v2("POST", "/caption", body, {"content-type": "application/json"})
        assert send(world, "quoted value", "json-base64", event, _check_http) == "4xx"
    # a million list items that are all wrong: one line each once made a 56 MB message
    event = {"task": "analyze", "tasks": [1] * 1_000_000, "image_base64": png}
    assert send(world, "quoted value", "direct", event, _check_direct) == "4xx"


@pytest.mark.parametrize(
    "value",
    [10**400, -(10**400), 2**64, math.nan, math.inf, -math.inf, -0.0, 5e-324, True, "1e400"],
    ids=[
        "int-1e400",
        "int-minus-1e400",
        "2**64",
        "nan",
        "inf",
        "minus-inf",
        "minus-zero",
        "denormal",
        "true",
        "string-1e400",
    ],
)
def test_numbers_json_allows_in_every_numeric_field(world: World, value: Any) -> None:
    """The runtime's JSON parser gives Python ints of any size and NaN/Infinity; float(10**400) raises."""
    png = base64.b64encode(BASES["png"]).decode()
    for event in [
        {"task": "detect", "min_score": value, "image_base64": png},
        {"task": "analyze", "tasks": value, "image_base64": png},
        {"task": value, "image_base64": png},
        {"task": "caption", "image_base64": value},
        {"task": "caption", "s3": {"bucket": BUCKET, "key": value}},
    ]:
        send(world, "odd number", "direct", event, _check_direct)
    query = _v2("POST", "/detect", BASES["png"], {"content-type": "image/png"}, {"min_score": str(value)})
    send(world, "odd number", "apigw-v2", query, _check_http)


# ---------------------------------------------------------------- property-based inputs (hypothesis)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
odd_keys = st.one_of(
    st.text(min_size=1, max_size=40),
    st.sampled_from(["\ud800", "a\udfffb", "\x00", "../../etc/passwd", "a" * 1025, "é" * 513, " ", "%", "+", "/"]),
    st.integers(1000, 1100).map(lambda n: "k" * n),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),
)
bad_base64 = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=30).map(lambda b: base64.b64encode(b).decode()[:-1]),
    st.binary(max_size=30).map(lambda b: "data:image/png;base64," + base64.b64encode(b).decode() + "!"),
    st.sampled_from(["====", "data:,", "data:image/png;base64,", "\u00e9\u00e9\u00e9\u00e9", "aGk"]),
)


@PROPERTY
@given(body=st.one_of(json_values.map(json.dumps), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_garbage_json_bodies(world: World, body: str) -> None:
    for entry, make in [("apigw-v1", _v1), ("apigw-v2", _v2)]:
        event = make("POST", "/analyze", body.encode("utf-8", "surrogatepass"), {"content-type": "application/json"})
        send(world, "garbage JSON", entry, event, _check_http)


@PROPERTY
@given(value=bad_base64, route=st.sampled_from(["/caption", "/detect"]))
def test_bad_base64(world: World, value: str, route: str) -> None:
    body = json.dumps({"image_base64": value}).encode()
    send(
        world, "bad base64", "json-base64", _v2("POST", route, body, {"content-type": "application/json"}), _check_http
    )
    send(world, "bad base64", "direct", {"task": "caption", "image_base64": value}, _check_direct)


@PROPERTY
@given(key=odd_keys)
def test_odd_keys(world: World, key: str) -> None:
    body = json.dumps({"s3": {"bucket": BUCKET, "key": key}}).encode()
    send(
        world,
        "odd key",
        "json-base64",
        _v1("POST", "/caption", body, {"content-type": "application/json"}),
        _check_http,
    )
    send(world, "odd key", "direct", {"task": "detect", "s3": {"bucket": BUCKET, "key": key}}, _check_direct)
    try:
        s3io.check_key(key)
    except Exception:  # a key S3 cannot hold: the record is rejected before any S3 call
        event = _s3_event(BUCKET, key, quote=False)
    else:  # a key S3 holds: upload under it, so the record is read and its result written (not an
        # image, so no inference: the key's round trip through S3 is what is tested)
        world.s3.put_object(Bucket=BUCKET, Key=key, Body=NOT_AN_IMAGE)
        event = _s3_event(BUCKET, key)
    send(world, "odd key", "s3-record", event, lambda r, lines: _check_s3(r, lines, 1))


direct_invokes = st.fixed_dictionaries(
    {"task": st.one_of(st.sampled_from(["caption", "detect", "analyze"]), json_values)},
    optional={
        "tasks": json_values,
        "image_base64": st.one_of(json_values, st.just(base64.b64encode(BASES["png"]).decode())),
        "s3": st.one_of(json_values, st.fixed_dictionaries({"bucket": json_values, "key": json_values})),
    },
)


@PROPERTY
@given(event=direct_invokes)
def test_odd_field_types_in_direct_invokes(world: World, event: dict) -> None:
    send(world, "odd field type", "direct", event, _check_direct)


@PROPERTY
@given(payload=st.dictionaries(st.sampled_from(["image_base64", "s3", "tasks"]), json_values, min_size=1))
def test_odd_field_types_in_json_bodies(world: World, payload: dict) -> None:
    body = json.dumps(payload).encode()
    event = _v2("POST", "/analyze", body, {"content-type": "application/json"})
    send(world, "odd field type", "json-base64", event, _check_http)


def _mutate(event: Any, path: list[str], value: Any) -> Any:
    """A copy of `event` with the value at `path` replaced (or removed when `value` is the Ellipsis)."""
    copy = json.loads(json.dumps(event))
    target = copy
    for part in path[:-1]:
        if not isinstance(target, dict) or not isinstance(target.get(part), dict):
            return copy
        target = target[part]
    if value is Ellipsis:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value
    return copy


V1_PATHS = [
    ["httpMethod"],
    ["path"],
    ["headers"],
    ["multiValueHeaders"],
    ["body"],
    ["isBase64Encoded"],
    ["queryStringParameters"],
    ["requestContext"],
    ["requestContext", "httpMethod"],
    ["headers", "content-type"],
]
V2_PATHS = [
    ["rawPath"],
    ["rawQueryString"],
    ["headers"],
    ["cookies"],
    ["body"],
    ["isBase64Encoded"],
    ["requestContext", "http"],
    ["requestContext", "http", "method"],
    ["requestContext", "http", "path"],
    ["headers", "content-type"],
    ["version"],
]
S3_PATHS = [
    ["s3"],
    ["s3", "bucket"],
    ["s3", "bucket", "name"],
    ["s3", "object"],
    ["s3", "object", "key"],
    ["s3", "object", "size"],
    ["eventName"],
]


@PROPERTY
@given(
    version=st.sampled_from(["v1", "v2"]),
    index=st.integers(0, 10),
    value=st.one_of(st.just(Ellipsis), json_values),
)
def test_malformed_api_gateway_events(world: World, version: str, index: int, value: Any) -> None:
    make, paths = (_v1, V1_PATHS) if version == "v1" else (_v2, V2_PATHS)
    event = make("POST", "/caption", BASES["png"], {"content-type": "image/png"})
    event = _mutate(event, paths[index % len(paths)], value)
    # An event mutated out of the API Gateway shape (no requestContext) is answered as an unknown event.
    check = _check_http if event_kind(event) == "http" else _check_direct
    send(world, "malformed event", "apigw-event", event, check)


@PROPERTY
@given(index=st.integers(0, 6), value=st.one_of(st.just(Ellipsis), json_values))
def test_malformed_s3_records(world: World, index: int, value: Any) -> None:
    key = world.upload(NOT_AN_IMAGE)
    event = _s3_event(BUCKET, key)
    event["Records"][0] = _mutate(event["Records"][0], S3_PATHS[index], value)
    _make_real(world, event["Records"][0])
    send(world, "malformed event", "s3-event", event, lambda r, lines: _check_s3(r, lines, 1))


def _make_real(world: World, record: Any) -> None:
    """Create the bucket and object a mutated record still names well, so only malformation is tested.

    A well-formed record for an object that does not exist is a retryable fault (the invocation raises
    so Lambda retries), which is S3 behaviour tested in tests/handler/events, not a malformed event.
    """
    from urllib.parse import unquote_plus

    location = record.get("s3") if isinstance(record, dict) else None
    bucket = location.get("bucket") if isinstance(location, dict) else None
    obj = location.get("object") if isinstance(location, dict) else None
    name = bucket.get("name") if isinstance(bucket, dict) else None
    key = obj.get("key") if isinstance(obj, dict) else None
    if not isinstance(name, str) or not s3io.BUCKET_NAME.fullmatch(name) or not isinstance(key, str) or not key:
        return
    try:
        s3io.check_key(unquote_plus(key))
    except Exception:
        return
    if name != BUCKET:
        world.s3.create_bucket(Bucket=name)
    world.s3.put_object(Bucket=name, Key=unquote_plus(key), Body=NOT_AN_IMAGE)


def test_the_corpus_is_large_and_clean() -> None:
    """Runs last: the module's sends add up to the promised corpus, with no bad outcome anywhere."""
    bad = {k: n for k, n in TALLY.sends.items() if k[2] in ("5xx", "exception", "hang")}
    assert not bad, bad
    assert len(TALLY.fingerprints) >= MIN_DISTINCT_INPUTS, TALLY.table()
    entries = {entry for _, entry, _ in TALLY.sends}
    assert set(ENTRY_POINTS) <= entries, entries
