"""Rendering scored detections onto the image for `POST /detect?format=png`."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont

from handler.florence.tasks import Detection

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except Exception:  # Pillow without FreeType only has the fixed bitmap font
        return ImageFont.load_default()


def draw_detections(image: Image.Image, detections: list[Detection]) -> Image.Image:
    """A copy of `image` with each box outlined and tagged `label score`, colours cycling per label."""
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    scale = max(canvas.width, canvas.height)
    line = max(1, scale // 300)
    font = _font(max(10, scale // 40))
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
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=3)
    return buffer.getvalue()
