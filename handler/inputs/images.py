"""Turning untrusted bytes into an upright RGB image, or a clear 4xx.

Order matters: the byte limit is checked before Pillow sees anything, and the pixel limit is
checked from the header (Pillow parses only the header in `Image.open`) before any pixel is
decoded, so a decompression bomb costs microseconds, not gigabytes.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import cast

from PIL import Image, ImageOps

from handler.errors import BadImage, TooLarge

WHITE = (255, 255, 255)
EXIF_ORIENTATION = 0x0112
"""The EXIF tag that says how the stored pixels are turned to show the picture upright (1-8)."""
SWAPS_AXES = frozenset({5, 6, 7, 8})
"""Orientations that turn the picture by 90 degrees: the upright picture's width is the stored height."""
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})

# Pillow warns (rather than raises) between its limit and twice its limit; a warning would let a
# bomb through, so make it an exception process-wide. Our own, lower limit is checked first anyway.
warnings.simplefilter("error", Image.DecompressionBombWarning)


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


def _open_header(data: bytes, max_pixels: int) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLarge(f"image has too many pixels: {exc}") from exc
    except Image.UnidentifiedImageError as exc:
        raise BadImage("body is not an image in a format this service reads") from exc
    except Exception as exc:  # header parsers raise many types on hostile input
        raise BadImage(f"corrupt image header: {exc}") from exc
    width, height = img.size
    if width <= 0 or height <= 0:
        raise BadImage(f"image has an empty size {width}x{height}")
    if width * height > max_pixels:
        raise TooLarge(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """Flatten to RGB; transparent pixels become white, as a viewer would show them on a page."""
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, WHITE)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # High-bit-depth greys: scale to 8 bits rather than clip everything above 255 to white.
        lo, hi = cast(tuple[float, float], img.getextrema())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        img = img.convert("F").point(lambda v: (v - lo) * scale).convert("L")
    return img.convert("RGB")


def decode_image(data: bytes, max_bytes: int, max_pixels: int, draft_to: int = 0) -> DecodedImage:
    """Decode any Pillow-readable image (first frame of animations) to upright RGB within limits.

    With `draft_to`, a JPEG is decoded by libjpeg at 1/2..1/8 scale while both sides stay
    >= `draft_to`: several times faster for phone photos, and the model resizes to 384 anyway.
    """
    check_byte_limit(len(data), max_bytes)
    if not data:
        raise BadImage("empty body: expected image bytes")
    img = _open_header(data, max_pixels)
    fmt = img.format or "unknown"
    header_width, header_height = img.size
    try:
        if img.tell() != 0:  # only ever seek to the first frame: SPIDER refuses any seek on a single image
            img.seek(0)
        if draft_to and fmt == "JPEG":
            img.draft("RGB", (draft_to, draft_to))
        img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLarge(f"image has too many pixels: {exc}") from exc
    except Exception as exc:  # truncated or corrupt pixel data
        raise BadImage(f"corrupt or truncated image: {exc}") from exc
    original = (header_width, header_height)
    try:
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
        img = ImageOps.exif_transpose(img)
        if orientation in SWAPS_AXES:
            original = (header_height, header_width)
    except Exception:  # a malformed EXIF block should not cost the user the image
        pass
    try:
        rgb = _to_rgb(img)
    except Exception as exc:
        raise BadImage(f"cannot convert {img.mode} image to RGB: {exc}") from exc
    return DecodedImage(rgb, fmt, len(data), original)
