"""Rendering scored detections onto the image for `POST /detect?format=png`.

The PNG must fit in a Lambda response (`max_bytes`, after which base64 and the envelope fill the
6 MB). A photo's PNG is often larger than its JPEG, so the drawing is downscaled until it fits,
rather than re-encoded lossy or refused: the caller asked for a PNG, and boxes drawn at a smaller
scale still show what was found. The JSON of `/detect` keeps boxes in original pixels.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from handler.florence.tasks import Detection

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except Exception:  # Pillow without FreeType only has the fixed bitmap font
        return ImageFont.load_default()


def draw_detections(image: Image.Image, detections: list[Detection]) -> Image.Image:
    """A copy of `image` with each box outlined and tagged `label score`, colours cycling per label.

    Lines and text are sized from the image's area (the side of the square with as many pixels), not
    its longer side: a 1x1,000,000 strip would otherwise get a 25,000 px font whose rendered tag is
    itself a decompression bomb.
    """
    canvas = image.convert("RGB")  # always a new image (a copy when already RGB), so `image` stays clean
    draw = ImageDraw.Draw(canvas)
    side = math.isqrt(canvas.width * canvas.height)
    line = max(1, side // 300)
    font = _font(max(10, side // 40))
    colours: dict[str, tuple[int, int, int]] = {}
    for det in detections:
        colour = colours.setdefault(det.label, PALETTE[len(colours) % len(PALETTE)])
        x0, y0, x1, y1 = det.box
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=line)
        tag = f"{det.label} {det.score:.2f}"
        left, top, right, bottom = draw.textbbox((x0, y0), tag, font=font)
        text_y = max(0, y0 - (bottom - top) - 2 * line)
        draw.rectangle((x0, text_y, x0 + (right - left) + 2 * line, text_y + (bottom - top) + 2 * line), fill=colour)
        draw.text((x0 + line, text_y + line - (top - y0)), tag, fill=(255, 255, 255), font=font)
    return canvas


def to_png(image: Image.Image) -> bytes:
    """The pixels alone: Pillow would copy the upload's ICC profile (and a tRNS colour) from `image.info`,
    and a profile can be megabytes that no downscale shrinks, or a CMYK one that no longer describes them."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=3, icc_profile=None, transparency=None)
    return buffer.getvalue()


EXPECTED_PNG_RATIO = 0.5
"""A photo's PNG is about half its raw RGB bytes: where the first attempt starts."""
SHRINK_MARGIN = 0.9
"""Each retry aims 10% under the limit, since PNG size does not fall exactly with pixel count."""
MAX_ATTEMPTS = 3
"""After these, a size whose raw bytes alone fit is used, which always fits (PNG adds ~1 byte a row)."""


@dataclass
class DrawnImage:
    png: bytes
    scale: float
    """Drawn pixels per original pixel (1.0 unless downscaled to fit)."""


def _scaled(detections: list[Detection], scale: float) -> list[Detection]:
    return [
        Detection(d.label, (d.box[0] * scale, d.box[1] * scale, d.box[2] * scale, d.box[3] * scale)) for d in detections
    ]


def _scaled_size(image: Image.Image, scale: float) -> tuple[int, int]:
    """The drawn size at `scale`; neither side goes below one pixel."""
    return max(1, int(image.width * scale)), max(1, int(image.height * scale))


def _raw_png_bytes(size: tuple[int, int]) -> int:
    """RGB bytes plus PNG's one filter byte per row: what a PNG of this size holds before zlib."""
    width, height = size
    return (width * 3 + 1) * height


def _draw_at(image: Image.Image, detections: list[Detection], scale: float) -> bytes:
    if scale < 1.0:
        image = image.resize(_scaled_size(image, scale), Image.Resampling.BILINEAR, reducing_gap=2.0)
        detections = _scaled(detections, scale)
    return to_png(draw_detections(image, detections))


def drawn_png(image: Image.Image, detections: list[Detection], max_bytes: int) -> DrawnImage:
    """The detections drawn on the image as a PNG of at most `max_bytes`, downscaled only if needed."""
    raw_bytes = image.width * image.height * 3
    scale = min(1.0, math.sqrt(max_bytes / (raw_bytes * EXPECTED_PNG_RATIO)))
    for _ in range(MAX_ATTEMPTS):
        png = _draw_at(image, detections, scale)
        if len(png) <= max_bytes:
            return DrawnImage(png, scale)
        scale *= math.sqrt(max_bytes / len(png)) * SHRINK_MARGIN
    # Raw RGB plus one filter byte per row, with 5% to spare for zlib's block headers. A side kept at
    # one pixel does not shrink (a 1xN strip), so the size is checked as drawn, not as scaled.
    budget = max_bytes * 0.95
    while _raw_png_bytes(size := _scaled_size(image, scale)) > budget and size != (1, 1):
        scale *= min(0.99, budget / _raw_png_bytes(size))
    return DrawnImage(_draw_at(image, detections, scale), scale)
