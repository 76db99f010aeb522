"""Turning untrusted bytes into an upright RGB image, or a clear 4xx.

Order matters: the byte limit is checked before Pillow sees anything, and the pixel limit is
checked from the header (Pillow parses only the header in `Image.open`) before any pixel is
decoded, so a decompression bomb costs microseconds, not gigabytes.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from handler.errors import BadImage, TooLarge
from handler.florence.preprocess import JPEG_FORMATS
from handler.inputs.decode_warnings import heard_while_decoding
from handler.logs import annotate

WHITE = (255, 255, 255)
EXIF_ORIENTATION = 0x0112
"""The EXIF tag that says how the stored pixels are turned to show the picture upright (1-8)."""
SWAPS_AXES = frozenset({5, 6, 7, 8})
"""Orientations that turn the picture by 90 degrees: the upright picture's width is the stored height."""
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_HIGH_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_BAND_ROWS = 256
MAX_JPEG_SCANS = 100
"""libjpeg decodes every scan over the whole image: 8,010 near-empty scans in a 540 KB 36 MP JPEG took
35 s, past API Gateway's 29 s. A progressive JPEG has 10 scans (18 for CMYK); 100 cost ~0.5 s at 40 MP,
and are libtiff's own limit for a JPEG inside a TIFF (LIBTIFF_JPEG_MAX_ALLOWED_SCAN_NUMBER)."""
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
"""A JPEG marker: entropy-coded data escapes 0xFF as FF00, and restart markers (FFD0-FFD7) stay inside a scan."""
_JPEG_STANDALONE = frozenset({0x01, 0xD8})
"""Markers without a length field (TEM, SOI); EOI ends the walk."""
TIFF_TILE_WIDTH, TIFF_TILE_LENGTH = 322, 323
REFUSED_FORMATS = frozenset({"BLP", "EPS", "QOI", "FITS", "DDS"})
"""Formats Pillow reads that are never opened: BLP1 (game textures) hands libjpeg a JPEG stream of its
own, whose scans nothing counted (8,000 scans decoded as long as a JPEG's); EPS runs Ghostscript, an
interpreter, on the upload wherever one is installed. QOI, FITS and DDS's bit-mask RGB are decoded by
Pillow in Python, pixel by pixel: a 20 MiB QOI from S3 took 15 s, a 160 KB gzipped FITS expanded to
40 MP in 5.5 s, a 7.6 MiB DDS took 2.8 s (a JPEG of those pixels decodes in milliseconds)."""
HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"})
"""ISO media brands of HEIF/HEIC files (the `ftyp` box that opens them); Pillow reads none of them."""
_BOMBS_RAISE = ("error", None, Image.DecompressionBombWarning, None, 0)
"""The `warnings` filter that makes Pillow's DecompressionBombWarning an exception."""


@dataclass
class DecodedImage:
    """The RGB image the model sees, and the upright size of the original, which boxes are reported in.

    `image` is smaller than `original_size` only when a JPEG was decoded at reduced scale (draft).
    """

    image: Image.Image
    format: str
    num_bytes: int
    original_size: tuple[int, int]

    @property
    def width(self) -> int:
        return self.original_size[0]

    @property
    def height(self) -> int:
        return self.original_size[1]

    @property
    def scale(self) -> tuple[float, float]:
        """Multiply coordinates in `image` by this to get coordinates in the original."""
        return self.width / self.image.width, self.height / self.image.height

    def describe(self) -> dict:
        return {"width": self.width, "height": self.height, "format": self.format, "bytes": self.num_bytes}


def check_byte_limit(num_bytes: int, max_bytes: int) -> None:
    if num_bytes > max_bytes:
        raise TooLarge(f"image is {num_bytes} bytes; the limit is {max_bytes}")


def jpeg_scan_count(data: bytes, stop_after: int = MAX_JPEG_SCANS) -> int:
    """Scans (SOS markers) of a JPEG's first image, counted up to `stop_after + 1`; at or under
    `stop_after` it may be an upper bound (every FFDA byte pair in the file, counted in C).

    Past that, segments are walked: skipped by their length, so an EXIF thumbnail's scans are not
    counted, and up to the first EOI, so the second image of an MPO (a phone's gain map) is not either.
    A walk costs ~2 s over 20 MB of empty segments; the bound costs ~10 ms.
    """
    if (upper_bound := data.count(b"\xff\xda")) <= stop_after:
        return upper_bound
    scans, at = 0, 2
    while scans <= stop_after:
        marker = _JPEG_MARKER.search(data, at)
        if marker is None or data[marker.start() + 1] == 0xD9:
            break
        at = marker.start() + 2
        if data[at - 1] in _JPEG_STANDALONE:
            continue
        scans += data[at - 1] == 0xDA
        at += int.from_bytes(data[at : at + 2], "big")
    return scans


def _readable_formats() -> list[str]:
    """Every format Pillow registers, in its own order of trial, less REFUSED_FORMATS."""
    Image.init()
    return [name for name in Image.ID if name not in REFUSED_FORMATS]


def _open_header(data: bytes, max_pixels: int) -> Image.Image:
    # Pillow's own checks (an ICO's embedded PNG, a TIFF's tile, a GIF frame) decode up to this before
    # ours sees a size: at its default (89 MP) a 186 KB ICO made the process decode 64 MP to refuse it.
    Image.MAX_IMAGE_PIXELS = max_pixels
    # Past that limit Pillow only warns (it raises at twice it). Checked on every call, not set once at
    # import: a `catch_warnings` block around the import (pytest's collection is one) drops a filter set
    # then. Added only when missing: adding one resets the registries that print each warning once.
    if not warnings.filters or warnings.filters[0] != _BOMBS_RAISE:
        warnings.simplefilter("error", Image.DecompressionBombWarning)
    try:
        img = Image.open(io.BytesIO(data), formats=_readable_formats())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLarge(f"image has more pixels than the limit of {max_pixels}") from exc
    except Image.UnidentifiedImageError as exc:
        if data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS:  # what an iPhone saves by default
            brand = data[8:12].decode("ascii")
            raise BadImage(
                f"body is a HEIF image (brand {brand!r}), which this service does not read; send JPEG, PNG or WebP"
            ) from exc
        raise BadImage("body is not an image in a format this service reads") from exc
    except Exception as exc:  # header parsers raise many types on hostile input
        raise BadImage(f"corrupt image header: {exc}") from exc
    width, height = img.size
    if width <= 0 or height <= 0:
        raise BadImage(f"image has an empty size {width}x{height}")
    if width * height > max_pixels:
        raise TooLarge(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    tags = getattr(img, "tag_v2", {}) if img.format == "TIFF" else {}
    tile_width, tile_length = tags.get(TIFF_TILE_WIDTH), tags.get(TIFF_TILE_LENGTH)
    if isinstance(tile_width, int) and isinstance(tile_length, int) and tile_width * tile_length > max_pixels:
        # libtiff allocates, and zeroes, a whole tile: a 1x1 TIFF of 146 bytes with one 16384x16384 RGB
        # tile took 790 MB, enough with the model to have Lambda kill the runtime.
        raise TooLarge(f"TIFF tile is {tile_width}x{tile_length} pixels; the limit is {max_pixels}")
    return img


def _high_bit_grey(img: Image.Image) -> Image.Image:
    """A 16/32-bit or float grey image scaled to 8 bits over the range of its shown pixels, on white.

    Pillow's conversions clip at 255, so a 16-bit grey PNG with a tRNS colour became all white, and
    one NaN or inf in a float TIFF made the scale 0 and the picture all black. Pixels that are the
    transparent value or not finite are shown as transparent pixels are: white.
    """
    import numpy as np

    values = np.asarray(img)
    hidden = ~np.isfinite(values) if values.dtype.kind == "f" else None
    transparent = img.info.get("transparency")
    if isinstance(transparent, int | float) and not isinstance(transparent, bool):
        hidden = values == transparent if hidden is None else hidden | (values == transparent)
    if hidden is not None and not hidden.any():
        hidden = None
    picked = values if hidden is None else values[~hidden]
    if picked.size == 0:
        return Image.new("RGB", img.size, WHITE)
    lo, hi = float(picked.min()), float(picked.max())
    del picked
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    grey = np.empty(values.shape, np.uint8)
    # By bands of rows: a whole float32 copy was 160 MB more at the request's peak for a 40 MP upload.
    for top in range(0, values.shape[0], _BAND_ROWS):
        with np.errstate(invalid="ignore", over="ignore"):  # inf - lo, inf * 0: pixels the mask hides
            band = np.subtract(values[top : top + _BAND_ROWS], lo, dtype=np.float32)
            band *= np.float32(scale)
        np.nan_to_num(band, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        np.clip(band, 0.0, 255.0, out=band)
        grey[top : top + _BAND_ROWS] = band
    del values
    rgb = Image.fromarray(grey, "L").convert("RGB")
    if hidden is None:
        return rgb
    flat = Image.new("RGB", img.size, WHITE)
    flat.paste(rgb, mask=Image.fromarray(~hidden))
    return flat


def _to_rgb(img: Image.Image) -> Image.Image:
    """Flatten to RGB; transparent pixels become white, as a viewer would show them on a page."""
    if img.mode in _HIGH_BIT_MODES:
        return _high_bit_grey(img)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        # Composited by bands of rows, and convert() skipped when it would copy: whole-image copies (the
        # RGBA, its alpha, its RGB for paste) were 320 MB more at a 40 MP upload, the request's peak.
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, WHITE)
        for top in range(0, rgba.height, _BAND_ROWS):
            band = rgba.crop((0, top, rgba.width, min(top + _BAND_ROWS, rgba.height)))
            flat.paste(band, (0, top), band)
        return flat
    return img if img.mode == "RGB" else img.convert("RGB")


def decode_image(data: bytes, max_bytes: int, max_pixels: int, draft_to: int = 0) -> DecodedImage:
    """Decode any Pillow-readable image (first frame of animations) to upright RGB within limits.

    With `draft_to`, a JPEG (or MPO) is decoded by libjpeg at 1/2..1/8 scale while both sides stay
    >= `draft_to`: several times faster for phone photos, and the model resizes to 384 anyway.
    Pillow's warnings go to the request's log line as `decode_warnings`, not to stderr (a hostile TIFF
    directory makes one per tag).
    """
    with heard_while_decoding() as heard:
        try:
            return _decode(data, max_bytes, max_pixels, draft_to)
        finally:
            annotate(decode_warnings=heard.summary())


def _decode(data: bytes, max_bytes: int, max_pixels: int, draft_to: int) -> DecodedImage:
    check_byte_limit(len(data), max_bytes)
    if not data:
        raise BadImage("empty body: expected image bytes")
    img = _open_header(data, max_pixels)
    fmt = img.format or "unknown"
    header_width, header_height = img.size
    if fmt in JPEG_FORMATS and (scans := jpeg_scan_count(data)) > MAX_JPEG_SCANS:
        raise TooLarge(f"JPEG has more than {MAX_JPEG_SCANS} scans ({scans} read); a progressive JPEG has about 10")
    try:  # never seek: `Image.open` shows the first frame, and a PSD numbers its composite 1 and refuses 0
        if draft_to and fmt in JPEG_FORMATS:
            img.draft("RGB", (draft_to, draft_to))
        img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLarge(f"image has more pixels than the limit of {max_pixels}") from exc
    except Exception as exc:  # truncated or corrupt pixel data
        raise BadImage(f"corrupt or truncated image: {exc}") from exc
    original = (header_width, header_height)
    try:
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
        ImageOps.exif_transpose(img, in_place=True)  # not a returned copy: 120 MB more at 40 MP, unrotated too
        if orientation in SWAPS_AXES:
            original = (header_height, header_width)
    except Exception:  # a malformed EXIF block should not cost the user the image
        pass
    try:
        rgb = _to_rgb(img)
    except Exception as exc:
        raise BadImage(f"cannot convert {img.mode} image to RGB: {exc}") from exc
    return DecodedImage(rgb, fmt, len(data), original)
