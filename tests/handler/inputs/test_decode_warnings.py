"""Hostile images must not flood the function's log: one request, one JSON line, a few stderr lines at most.

Each request runs through `lambda_handler` in a fresh interpreter with the process's default warning
filters (as on Lambda, where every stdout and stderr line is a CloudWatch line), and its lines are
counted. Before the fix a 62 KB JPEG wrote 9,998 stderr lines and a 720 KB TIFF 119,998.
"""

from __future__ import annotations

import io
import json
import struct
import threading
import warnings
import zlib
from pathlib import Path

import pytest
from PIL import Image

from handler.inputs.decode_warnings import MAX_KEPT, heard_while_decoding
from handler.inputs.images import decode_image
from handler.logs import request_log
from tests.conftest import image_bytes, run_python

MAX_STDERR_LINES = 4
"""libtiff's own error for a directory it refuses is two lines (room for twice that); nothing else may reach stderr."""


def _tiff(entries: list[tuple[int, int, int, bytes]], tail: bytes = b"") -> bytes:
    """A little-endian TIFF with one directory of (tag, type, count, 4-byte value) entries, then `tail`."""
    directory = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHL4s", *e) for e in entries)
    return b"II*\0" + struct.pack("<L", 8) + directory + b"\0\0\0\0" + tail


def _short(value: int) -> bytes:
    return struct.pack("<HH", value, 0)


def _tags_claiming_most_of_the_file(first_tag: int, count: int, file_bytes: int) -> list[tuple[int, int, int, bytes]]:
    """Tags whose data each claim 60% of the file: from the second on, Pillow warns 'Tag data larger than
    file. Skipping tag N', a distinct text per tag, so Python prints every one."""
    return [(first_tag + k, 7, file_bytes * 6 // 10, b"\0\0\0\0") for k in range(count)]


def jpeg_with_exif_naming_tags(count: int = 5_000) -> bytes:
    """A small JPEG whose EXIF block (one APP1 segment, 60 KB) names `count` unknown tags."""
    exif_bytes = 8 + 2 + 12 * (count + 1) + 4
    exif = _tiff([(0x0112, 3, 1, _short(1)), *_tags_claiming_most_of_the_file(40_000, count, exif_bytes)])
    app1 = b"Exif\0\0" + exif
    jpeg = image_bytes("JPEG", quality=90)
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def tiff_naming_tags(count: int = 60_000, compression: int = 1) -> bytes:
    """An 8x8 grey TIFF whose directory names `count` unknown tags (720 KB); with PackBits, libtiff decodes
    it and refuses a directory that long."""
    side = 8
    pixels = bytes(side * side)
    names = [
        (256, 3, 1, _short(side)),
        (257, 3, 1, _short(side)),
        (258, 3, 1, _short(8)),
        (259, 3, 1, _short(compression)),
        (262, 3, 1, _short(1)),
        (273, 4, 1, b""),  # the strip's offset, filled in below
        (277, 3, 1, _short(1)),
        (278, 3, 1, _short(side)),
        (279, 4, 1, struct.pack("<L", len(pixels))),
    ]
    file_bytes = 8 + 2 + 12 * (len(names) + count) + 4 + len(pixels)
    entries = sorted(names + _tags_claiming_most_of_the_file(1_000, count, file_bytes))
    strip = struct.pack("<L", file_bytes - len(pixels))
    return _tiff([(t, kind, n, strip if t == 273 else value) for t, kind, n, value in entries], pixels)


def jpeg_with_junk_before_markers(count: int = 20_000) -> bytes:
    """A junk byte before each of `count` comment segments: libjpeg warns 'Corrupt JPEG data: extraneous bytes'."""
    jpeg = image_bytes("JPEG", quality=90)
    comment = b"\xff\xfe\x00\x03x"
    return jpeg[:2] + comment + (b"\x00" + comment) * count + jpeg[2:]


def jpeg_with_wrong_restart_markers(blocks: int = 2_000) -> bytes:
    """A restart marker after every block, each renumbered wrong: libjpeg resyncs and warns at each one."""
    buffer = io.BytesIO()
    Image.new("RGB", (8 * blocks, 8), (10, 200, 30)).save(buffer, "JPEG", restart_marker_blocks=1)
    data = bytearray(buffer.getvalue())
    for at in range(data.find(b"\xff\xda"), len(data) - 1):
        if data[at] == 0xFF and 0xD0 <= data[at + 1] <= 0xD7:
            data[at + 1] = 0xD0 + (data[at + 1] - 0xD0 + 3) % 8
    return bytes(data)


def png_with_unknown_chunks(count: int = 20_000) -> bytes:
    png = image_bytes("PNG")
    chunks = b""
    for k in range(count):
        name = b"zz" + bytes([97 + k % 26, 97 + k // 26 % 26])
        chunks += struct.pack(">I", 1) + name + b"x" + struct.pack(">I", zlib.crc32(name + b"x"))
    return png[:33] + chunks + png[33:]


def gif_with_comment_extensions(count: int = 20_000) -> bytes:
    gif = image_bytes("GIF")
    at = gif.find(b"\x2c")  # the image descriptor
    return gif[:at] + b"\x21\xfe\x01x\x00" * count + gif[at:]


HOSTILE = {
    # name: (image, the status it answers, before the fix and after, the decode warnings it makes)
    "jpeg-exif-5000-tags": (jpeg_with_exif_naming_tags(), 200, 4_999),
    "tiff-60000-tags": (tiff_naming_tags(), 200, 59_999),
    "tiff-60000-tags-packbits": (tiff_naming_tags(compression=32773), 400, 59_999),
    "jpeg-junk-before-20000-markers": (jpeg_with_junk_before_markers(), 200, 0),
    "jpeg-2000-wrong-restart-markers": (jpeg_with_wrong_restart_markers(), 200, 0),
    "jpeg-truncated": (image_bytes("JPEG", size=(640, 480))[:1500], 400, 0),
    "png-20000-unknown-chunks": (png_with_unknown_chunks(), 200, 0),
    "gif-20000-comments": (gif_with_comment_extensions(), 200, 0),
}
"""Before the fix, each in a fresh process, the first three wrote 9,998, 119,998 and 120,000 stderr lines
(two of those libtiff's error, which stays); the others none: Pillow discards libjpeg's corrupt-data messages."""

_SEND = """
import base64, json, sys
from pathlib import Path
from handler.app import lambda_handler
from tests.handler.test_app import Context, _v1

folder = Path(sys.argv[1])
for path in sorted(folder.glob("*.img")):
    for stream in (sys.stdout, sys.stderr):
        print("@@", path.stem, file=stream, flush=True)
    event = _v1("POST", "/caption", path.read_bytes(), {"content-type": "application/octet-stream"})
    response = lambda_handler(event, Context(path.stem))
    sys.stdout.flush()
    print("@@", path.stem, "status", response["statusCode"], file=sys.stderr, flush=True)
"""


def _by_request(text: str) -> dict[str, list[str]]:
    """Output lines grouped under the `@@ name` marker printed before each request."""
    groups: dict[str, list[str]] = {}
    name = ""
    for line in text.splitlines():
        if line.startswith("@@ "):
            name = line.split()[1]
            groups.setdefault(name, [])
            if " status " in line:
                groups[name].append(line)
        else:
            groups.setdefault(name, []).append(line)
    return groups


def test_a_hostile_image_writes_one_log_line_and_few_stderr_lines(serving_env: Path, tmp_path: Path) -> None:
    (tmp_path / "0-warm-up.img").write_bytes(image_bytes("PNG"))  # the model loads here, not in a measured request
    for k, (name, (data, _status, _warned)) in enumerate(HOSTILE.items(), start=1):
        (tmp_path / f"{k}-{name}.img").write_bytes(data)
    done = run_python("-c", _SEND, str(tmp_path), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out, err = _by_request(done.stdout), _by_request(done.stderr)
    for k, (name, (_data, status, warned)) in enumerate(HOSTILE.items(), start=1):
        key = f"{k}-{name}"
        assert err[key][-1] == f"@@ {key} status {status}", (key, err[key][-5:])
        stderr_lines = err[key][:-1]
        assert len(stderr_lines) <= MAX_STDERR_LINES, (key, len(stderr_lines), stderr_lines[:4])
        assert not [line for line in stderr_lines if "Warning" in line], (key, stderr_lines)
        assert len(out[key]) == 1, (key, out[key][:4])
        log = json.loads(out[key][0])
        assert log["request_id"] == key and log["status"] == status
        if warned:
            assert log["decode_warnings"]["count"] == warned, (key, log)
            assert len(log["decode_warnings"]["first"]) == MAX_KEPT
            assert log["decode_warnings"]["first"][0].startswith("UserWarning: Tag data larger than file")
        else:
            assert "decode_warnings" not in log, (key, log)


def test_only_the_decoding_threads_warnings_are_taken(recwarn: pytest.WarningsRecorder) -> None:
    def warn_elsewhere() -> None:
        warnings.warn("another thread's warning", UserWarning, stacklevel=1)

    with heard_while_decoding() as heard:
        other = threading.Thread(target=warn_elsewhere)
        other.start()
        other.join()
        warnings.warn("the decode's warning", UserWarning, stacklevel=1)
    warnings.warn("after the decode", UserWarning, stacklevel=1)
    assert heard.summary() == {"count": 1, "first": ["UserWarning: the decode's warning"]}
    shown = [str(w.message) for w in recwarn]
    assert shown == ["another thread's warning", "after the decode"], shown


def test_the_decodes_warnings_are_summarised_in_the_request_log_line(recwarn: pytest.WarningsRecorder) -> None:
    with request_log("noisy", "test") as noisy:
        decode_image(jpeg_with_exif_naming_tags(50), 10**7, 10**7)
    with request_log("quiet", "test") as quiet:
        decode_image(image_bytes("JPEG"), 10**7, 10**7)
    assert noisy["decode_warnings"]["count"] == 49
    assert noisy["decode_warnings"]["first"] == [
        f"UserWarning: Tag data larger than file. Skipping tag {tag}" for tag in (40_001, 40_002, 40_003)
    ]
    assert "decode_warnings" not in quiet
    assert not recwarn.list
