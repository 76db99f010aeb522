"""Image decoding: every Pillow format we promise, EXIF rotation, alpha, and the limits."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from handler.errors import BadImage, TooLarge
from handler.inputs.images import decode_image
from tests.conftest import image_bytes

LIMITS = {"max_bytes": 2_000_000, "max_pixels": 4_000_000}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_every_promised_format_decodes_to_rgb(fmt: str) -> None:
    decoded = decode_image(image_bytes(fmt, (80, 50)), **LIMITS)
    assert decoded.image.mode == "RGB"
    assert (decoded.width, decoded.height, decoded.format) == (80, 50, fmt)
    # the drawn rectangle survives decoding: a pixel inside it is red-ish, a corner is white
    r, g, b = decoded.image.getpixel((20, 25))
    assert r > 150 and g < 100 and b < 100
    assert min(decoded.image.getpixel((79, 0))) > 200


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (40, 30), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    decoded = decode_image(buffer.getvalue(), **LIMITS)
    r, _g, b = decoded.image.getpixel((5, 5))
    assert r > 200 and b < 50


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (120, 40), "white")
    img.paste((0, 0, 0), (0, 0, 20, 40))  # black band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    decoded = decode_image(buffer.getvalue(), **LIMITS)
    assert (decoded.width, decoded.height) == (40, 120)
    assert max(decoded.image.getpixel((20, 5))) < 60  # the left band is now at the top


def test_alpha_is_composited_on_white() -> None:
    img = Image.new("RGBA", (30, 30), (0, 0, 0, 0))
    img.paste((0, 0, 255, 255), (0, 0, 10, 10))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    decoded = decode_image(buffer.getvalue(), **LIMITS)
    assert decoded.image.getpixel((20, 20)) == (255, 255, 255)
    assert decoded.image.getpixel((5, 5)) == (0, 0, 255)


def test_palette_transparency_and_16_bit_greys_convert() -> None:
    pal = Image.new("P", (20, 20), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (0, 0, 10, 20))
    buffer = io.BytesIO()
    pal.save(buffer, format="PNG", transparency=0)
    decoded = decode_image(buffer.getvalue(), **LIMITS)
    assert decoded.image.getpixel((15, 5)) == (255, 255, 255)
    assert decoded.image.getpixel((5, 5)) == (255, 0, 0)

    grey = Image.new("I;16", (20, 20), 0)
    grey.paste(60000, (10, 0, 20, 20))
    buffer = io.BytesIO()
    grey.save(buffer, format="PNG")
    decoded = decode_image(buffer.getvalue(), **LIMITS)
    assert decoded.image.getpixel((15, 5))[0] > 240 and decoded.image.getpixel((5, 5))[0] < 15


def _png_header(width: int, height: int) -> bytes:
    """A PNG that only claims a size: Pillow reads it from IHDR without touching pixel data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)  # a start of pixel data; the rest is "missing"
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)


def test_pixel_limit_is_checked_from_the_header() -> None:
    with pytest.raises(TooLarge, match="pixels"):
        decode_image(_png_header(3000, 3000), **LIMITS)  # over our 4 MP limit, under Pillow's


def test_pillow_decompression_bomb_error_becomes_too_large() -> None:
    """Pillow's own checks run at our limit (not its 89 MP default) and their error is our 413."""
    with pytest.raises(TooLarge, match="pixels"):
        decode_image(_png_header(60_000, 60_000), max_bytes=LIMITS["max_bytes"], max_pixels=10**8)


def test_real_compressed_bomb_is_refused_before_decoding() -> None:
    bomb = image_bytes("PNG", (2500, 2500), mode="L", optimize=True)  # 6.25 MP in a few kB
    assert len(bomb) < 50_000
    with pytest.raises(TooLarge):
        decode_image(bomb, **LIMITS)


def test_byte_limit() -> None:
    with pytest.raises(TooLarge, match="bytes"):
        decode_image(image_bytes("BMP", (200, 200)), max_bytes=1000, max_pixels=LIMITS["max_pixels"])


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"GIF89a\x01\x00"],
    ids=["empty", "text", "png-garbage", "gif-stub"],
)
def test_garbage_is_bad_image(data: bytes) -> None:
    with pytest.raises(BadImage):
        decode_image(data, **LIMITS)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_images_are_bad_image(fmt: str) -> None:
    data = image_bytes(fmt, (64, 64))
    with pytest.raises(BadImage):
        decode_image(data[: len(data) * 2 // 3], **LIMITS)


def test_large_jpeg_decodes_at_reduced_scale_but_reports_the_original_size() -> None:
    data = image_bytes("JPEG", (2000, 1600), quality=85)
    full = decode_image(data, **LIMITS)
    drafted = decode_image(data, **LIMITS, draft_to=768)
    assert full.image.size == (2000, 1600) and full.scale == (1.0, 1.0)
    assert drafted.image.size == (1000, 800) and (drafted.width, drafted.height) == (2000, 1600)
    assert drafted.scale == (2.0, 2.0)
    assert decode_image(image_bytes("PNG", (2000, 1600)), **LIMITS, draft_to=768).image.size == (2000, 1600)


def test_a_phone_mpo_decodes_at_reduced_scale_like_a_jpeg() -> None:
    """Phones save HDR photos as a JPEG with a gain map appended, which Pillow names MPO: it was decoded
    at full size (12 MP for a 12 MP photo) while a plain JPEG of the same pixels took a quarter of it."""
    photo, gain_map = Image.new("RGB", (2000, 1600), (200, 30, 30)), Image.new("RGB", (500, 400), "blue")
    buffer = io.BytesIO()
    photo.save(buffer, "MPO", save_all=True, append_images=[gain_map])
    drafted = decode_image(buffer.getvalue(), **LIMITS, draft_to=768)
    assert drafted.format == "MPO" and (drafted.width, drafted.height) == (2000, 1600)
    assert drafted.image.size == (1000, 800) and drafted.image.getpixel((5, 5))[2] < 60  # the photo, not the map


def test_reduced_scale_decode_respects_exif_rotation() -> None:
    img = Image.new("RGB", (2000, 1600), "white")
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", exif=exif.tobytes())
    drafted = decode_image(buffer.getvalue(), **LIMITS, draft_to=768)
    assert (drafted.width, drafted.height) == (1600, 2000) and drafted.image.size == (800, 1000)


def test_boxes_from_a_reduced_decode_map_back_to_original_pixels() -> None:
    from handler.florence.tasks import Detection
    from handler.service import to_original

    boxes = to_original([Detection("cat", (10.0, 20.0, 30.0, 40.0))], (2.0, 4.0))
    assert boxes == [Detection("cat", (20.0, 80.0, 60.0, 160.0))]


def test_normalize_gives_the_processors_floats_for_every_uint8_value() -> None:
    """The processor rescales in float64 and rounds once; `normalize` must land on the same floats."""
    import numpy as np
    import torch

    from handler.florence.preprocess import normalize

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    values = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, :, None, None], (1, 256, 1, 3)).copy()
    rescaled = (values.astype(np.float64) * (1 / 255)).astype(np.float32)
    expected = (rescaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    assert torch.equal(normalize(torch.from_numpy(values), mean, std), torch.from_numpy(expected).permute(0, 3, 1, 2))


def test_a_single_image_format_that_refuses_seek_decodes() -> None:
    """SPIDER raises on any seek in a one-image file; decoding once sought frame 0 anyway and answered 400."""
    img = Image.new("F", (20, 30), 0.0)
    img.paste(900.5, (10, 0, 20, 30))
    buffer = io.BytesIO()
    img.save(buffer, format="SPIDER")
    decoded = decode_image(buffer.getvalue(), **LIMITS)
    assert (decoded.width, decoded.height, decoded.format) == (20, 30, "SPIDER")
    assert decoded.image.getpixel((15, 5))[0] > 240 and decoded.image.getpixel((5, 5))[0] < 15


def _progressive_jpeg_with_scans(extra_scans: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A real progressive JPEG whose AC scans are repeated: libjpeg decodes each one over the whole image."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 50, 200)).save(buffer, format="JPEG", progressive=True)
    data = buffer.getvalue()
    first = data.index(b"\xff\xda")
    scans = [b"\xff\xda" + scan for scan in data[first + 2 : -2].split(b"\xff\xda")]
    return data[:first] + b"".join(scans) + b"".join(scans[1:]) * (extra_scans // (len(scans) - 1)) + b"\xff\xd9"


def test_a_jpeg_with_too_many_scans_is_refused_before_decoding() -> None:
    """Each scan costs a pass over every block: 8,010 near-empty scans in a 540 KB 6000x6000 JPEG decoded
    for 35 s (API Gateway gives up at 29 s); the pixel limit alone let it through."""
    from handler.inputs.images import MAX_JPEG_SCANS, jpeg_scan_count

    normal = _progressive_jpeg_with_scans(0)
    assert jpeg_scan_count(normal) == 10 and decode_image(normal, **LIMITS).image.size == (64, 48)
    bomb = _progressive_jpeg_with_scans(2 * MAX_JPEG_SCANS)
    with pytest.raises(TooLarge, match="scans"):
        decode_image(bomb, **LIMITS)


def test_scans_of_an_exif_thumbnail_or_a_second_mpo_image_are_not_counted() -> None:
    """A thumbnail inside APP1 and the gain map a phone appends after the first image's EOI are not its scans."""
    from handler.inputs.images import MAX_JPEG_SCANS, jpeg_scan_count

    thumbnail = _progressive_jpeg_with_scans(2 * MAX_JPEG_SCANS, (8, 8))
    assert jpeg_scan_count(thumbnail) > MAX_JPEG_SCANS
    photo = image_bytes("JPEG", (64, 48))
    app1 = b"Exif\x00\x00" + thumbnail[:60_000]
    with_thumbnail = photo[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + photo[2:]
    assert jpeg_scan_count(with_thumbnail) == 1
    assert jpeg_scan_count(photo + thumbnail) == 1
    assert decode_image(photo + thumbnail, **LIMITS).image.size == (64, 48)


def _tiff_with_tile(width: int, height: int, tile: int) -> bytes:
    """A deflate-compressed RGB TIFF of `width` x `height` stored as one `tile` x `tile` tile (black up to 16x16)."""
    data = zlib.compress(bytes(min(tile, 16) ** 2 * 3))
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 8), (262, 3, 2), (277, 3, 3)]
    entries += [(322, 4, tile), (323, 4, tile), (324, 4, 8 + 2 + 12 * 10 + 4), (325, 4, len(data))]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        ifd += struct.pack("<HHIHH" if kind == 3 else "<HHII", tag, kind, 1, value, *((0,) if kind == 3 else ()))
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00" * 4 + data


def test_a_tiff_tile_over_the_pixel_limit_is_refused_before_libtiff_allocates_it() -> None:
    """libtiff allocates and zeroes a whole tile: a 1x1 TIFF with a 16384x16384 RGB tile took 790 MB
    (the model leaves Lambda about 1.1 GB), and answered 400 only after."""
    with pytest.raises(TooLarge, match="tile"):
        decode_image(_tiff_with_tile(1, 1, 4096), **LIMITS)
    assert decode_image(_tiff_with_tile(1, 1, 16), **LIMITS).image.size == (1, 1)


def test_no_pixel_buffer_over_the_limit_is_allocated_inside_a_container(monkeypatch: pytest.MonkeyPatch) -> None:
    """An ICO's directory says 16x16 and Pillow decodes its embedded PNG while opening it, checked only
    against Pillow's own 89 MP: a 186 KB ICO had the process decode 64 MP to answer 413."""
    sizes: list[tuple[int, int]] = []
    new = Image.core.new

    def spy(mode: str, size: tuple[int, int], *args: object) -> object:
        sizes.append(size)
        return new(mode, size, *args)

    inner = io.BytesIO()
    Image.new("L", (2100, 2100)).save(inner, format="PNG")
    directory = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(inner.getvalue()), 22)
    monkeypatch.setattr(Image.core, "new", spy)
    with pytest.raises(TooLarge, match="pixels"):
        decode_image(directory + inner.getvalue(), **LIMITS)
    assert all(w * h <= LIMITS["max_pixels"] for w, h in sizes), sizes


def test_a_photoshop_file_decodes_its_composite() -> None:
    """Pillow numbers a PSD's composite image frame 1 and refuses a seek to 0: every PSD was a 400 that
    called it 'corrupt or truncated image: attempt to seek outside sequence'."""
    width, height = 40, 30
    header = b"8BPS" + struct.pack(">H", 1) + bytes(6) + struct.pack(">HIIHH", 3, height, width, 8, 3)
    planes = bytes([200]) * (width * height) + bytes([30]) * (width * height) * 2  # red, raw, channel by channel
    psd = header + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + planes
    decoded = decode_image(psd, **LIMITS)
    assert (decoded.width, decoded.height, decoded.format) == (40, 30, "PSD")
    assert decoded.image.getpixel((5, 5)) == (200, 30, 30)


def test_a_blizzard_texture_is_not_read_so_its_jpeg_cannot_bypass_the_scan_count() -> None:
    """BLP1 hands libjpeg a JPEG of its own (header and first mipmap): 8,000 scans in one decoded for as
    long as they would in a JPEG, which the scan count never saw."""
    from handler.inputs.images import MAX_JPEG_SCANS

    jpeg = _progressive_jpeg_with_scans(2 * MAX_JPEG_SCANS)
    header = b"BLP1" + struct.pack("<iIIIii", 0, 0, 64, 48, 0, 0)  # JPEG compression, no alpha, 64x48
    mipmaps = struct.pack("<16I", 28 + 128 + 4 + len(jpeg), *[0] * 15) + struct.pack("<16I", *[0] * 16)
    with pytest.raises(BadImage, match="not an image in a format this service reads"):
        decode_image(header + mipmaps + struct.pack("<I", len(jpeg)) + jpeg, **LIMITS)


def _qoi(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buffer, "QOI")
    return buffer.getvalue()


def _fits(size: tuple[int, int]) -> bytes:
    cards = ["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    2"]
    cards += [f"NAXIS1  = {size[0]:>20}", f"NAXIS2  = {size[1]:>20}", "END"]
    header = "".join(card.ljust(80) for card in cards).ljust(2880).encode("ascii")
    return header + bytes(size[0] * size[1]).ljust(2880, b"\0")


def _bitmask_dds(size: tuple[int, int]) -> bytes:
    width, height = size
    header = bytearray(124)
    struct.pack_into("<7I", header, 0, 124, 0x1 | 0x2 | 0x4 | 0x1000, height, width, width * 2, 0, 0)
    struct.pack_into("<8I", header, 72, 32, 0x40, 0, 16, 0xF800, 0x07E0, 0x001F, 0)  # RGB565 bit masks
    struct.pack_into("<I", header, 104, 0x1000)
    return b"DDS " + bytes(header) + bytes(width * height * 2)


@pytest.mark.parametrize(
    ("fmt", "make"), [("QOI", _qoi), ("FITS", _fits), ("DDS", _bitmask_dds)], ids=["qoi", "fits", "dds"]
)
def test_formats_decoded_pixel_by_pixel_in_python_are_not_read(fmt: str, make) -> None:
    """Pillow decodes QOI, FITS and bit-mask DDS in Python, pixel by pixel: a 20 MiB QOI from S3 took
    15 s before inference. Each sample is one Pillow reads, so the refusal is ours, not a parse error."""
    data = make((64, 48))
    opened = Image.open(io.BytesIO(data))
    assert opened.format == fmt and opened.size == (64, 48)
    with pytest.raises(BadImage, match="not an image in a format this service reads"):
        decode_image(data, **LIMITS)


def test_eps_never_runs_ghostscript(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow renders EPS by running Ghostscript, a PostScript interpreter, on the file: wherever `gs`
    is installed (a developer's machine serving uvicorn), an upload ran it."""
    from PIL import EpsImagePlugin

    canary = tmp_path / "ran"
    gs = tmp_path / "gs"
    gs.write_text(f"#!/bin/sh\ntouch {canary}\nexit 1\n")
    gs.chmod(0o755)
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", str(gs))
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 20 10\n0 0 moveto 20 10 lineto stroke\n%%EOF\n"
    with pytest.raises(BadImage, match="not an image in a format this service reads"):
        decode_image(eps, **LIMITS)
    assert not canary.exists()


def test_a_16_bit_grey_with_a_transparent_value_keeps_its_picture() -> None:
    """Pillow's RGBA conversion clips 16-bit greys at 255: with a tRNS value every opaque pixel became
    white, 20,000 and 40,000 alike, and the model saw a blank page."""
    grey = Image.new("I;16", (30, 10), 1000)  # 1000 is the transparent value
    grey.paste(20000, (10, 0, 20, 10))
    grey.paste(40000, (20, 0, 30, 10))
    buffer = io.BytesIO()
    grey.save(buffer, format="PNG", transparency=1000)
    decoded = decode_image(buffer.getvalue(), **LIMITS)
    transparent, darker, lighter = (decoded.image.getpixel((x, 5)) for x in (5, 15, 25))
    assert transparent == (255, 255, 255)
    assert darker == (0, 0, 0) and lighter == (255, 255, 255)


def test_a_float_image_with_nan_or_inf_keeps_its_picture() -> None:
    """One NaN or inf made the float range infinite, the scale 0 and every pixel black. Finite values
    are scaled over their own range; values that are not numbers show white, as transparent ones do."""
    import numpy as np

    values = np.full((10, 40), np.nan, dtype=np.float32)
    values[:, 10:20], values[:, 20:30], values[:, 30:] = 1.5, 3.0, np.inf
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="TIFF")
    decoded = decode_image(buffer.getvalue(), **LIMITS)
    pixels = [decoded.image.getpixel((x, 5)) for x in (5, 15, 25, 35)]
    assert pixels == [(255, 255, 255), (0, 0, 0), (255, 255, 255), (255, 255, 255)]


def test_a_heic_photo_is_named_as_such() -> None:
    """An iPhone saves HEIC by default; its upload was 'not an image in a format this service reads'."""
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(100)
    with pytest.raises(BadImage, match=r"HEIF image .*'heic'.*send JPEG, PNG or WebP"):
        decode_image(heic, **LIMITS)


def test_banded_compositing_matches_the_whole_image_composite() -> None:
    """Transparency and high-bit greys are flattened by bands of rows (for memory); across band edges the
    pixels are those of compositing the whole image at once."""
    import numpy as np

    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (700, 90, 4), dtype=np.uint8), "RGBA")
    expected = Image.new("RGB", rgba.size, (255, 255, 255))
    expected.paste(rgba, mask=rgba.getchannel("A"))
    buffer = io.BytesIO()
    rgba.save(buffer, format="PNG")
    assert decode_image(buffer.getvalue(), **LIMITS).image.tobytes() == expected.tobytes()

    values = rng.integers(100, 60000, (700, 90), dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    scaled = (values.astype(np.float32) - values.min()) * np.float32(255.0 / (values.max() - values.min()))
    decoded = np.asarray(decode_image(buffer.getvalue(), **LIMITS).image)
    assert np.array_equal(decoded[..., 0], scaled.astype(np.uint8)) and (decoded[..., 0] == decoded[..., 2]).all()


_DECODE_PEAK = """
import sys
from pathlib import Path
from handler.inputs.images import decode_image

def hwm_mib():
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024

data = Path(sys.argv[1]).read_bytes()
before = hwm_mib()
decoded = decode_image(data, len(data), 50_000_000)
print(hwm_mib() - before)
"""


@pytest.mark.parametrize(
    ("mode", "bytes_per_pixel"),
    [("RGB", 3), ("RGBA", 4 + 3), ("I;16", 2 + 2 + 1 + 3)],
    ids=["rgb", "rgba", "grey16"],
)
def test_decoding_holds_the_pixels_once_not_in_copies(tmp_path, mode: str, bytes_per_pixel: int) -> None:
    """The largest upload's decode is a request's peak memory. Whole-image copies (EXIF transpose's and
    convert's copies, an RGBA's alpha and RGB for pasting, a float32 grey) made a 40 MP PNG's decode
    peak at 9-12.5 bytes a pixel: 500 MiB for RGBA, which with the ~650 MiB model passed 1 GB. Now
    it holds the decoded pixels and the RGB result (16-bit grey: its array and an 8-bit band)."""
    import subprocess
    import sys

    import numpy as np

    from tests.conftest import REPO_ROOT

    height, width = 3000, 4000
    stripes = np.zeros((height, width, 4), np.uint8)
    stripes[::7] = 200
    if mode == "I;16":
        image = Image.fromarray(stripes[..., 0].astype(np.uint16) * 300)
    else:
        image = Image.fromarray(stripes[..., : len(mode)], mode)
    path = tmp_path / "large.png"
    image.save(path, compress_level=1)
    del stripes, image
    child = subprocess.run(
        [sys.executable, "-c", _DECODE_PEAK, str(path)],
        cwd=REPO_ROOT,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    peak_mib = float(child.stdout)
    bound_mib = 1.15 * bytes_per_pixel * height * width / 2**20 + 16
    assert peak_mib <= bound_mib, f"{mode}: decoding {height * width / 1e6:.0f} MP peaked {peak_mib:.0f} MiB"
