"""Box drawing for `/detect?format=png`: boxes land where the detections say, on an unchanged canvas."""

from __future__ import annotations

import io

from PIL import Image

from handler.florence.tasks import Detection
from handler.http.drawing import PALETTE, draw_detections, to_png


def test_boxes_and_labels_are_drawn_in_pixel_coordinates() -> None:
    image = Image.new("RGB", (300, 200), "white")
    detections = [Detection("cat", (50.0, 60.0, 150.0, 180.0)), Detection("dog", (200.0, 20.0, 290.0, 90.0))]
    drawn = draw_detections(image, detections)
    assert drawn.size == image.size and image.getpixel((50, 120)) == (255, 255, 255)  # input untouched
    assert drawn.getpixel((50, 120)) == PALETTE[0]  # left edge of the cat box
    assert drawn.getpixel((245, 90)) == PALETTE[1]  # bottom edge of the dog box, second colour
    assert drawn.getpixel((100, 120)) == (255, 255, 255)  # inside a box stays clear
    label_band = [drawn.getpixel((x, 55)) for x in range(50, 70)]
    assert PALETTE[0] in label_band  # label background above the box
    png = Image.open(io.BytesIO(to_png(drawn)))
    assert png.format == "PNG" and png.size == (300, 200)


def test_no_detections_returns_the_image_itself() -> None:
    image = Image.new("RGB", (40, 30), (10, 20, 30))
    assert list(draw_detections(image, []).getdata()) == list(image.getdata())


def test_a_drawing_too_big_for_a_lambda_response_is_downscaled_to_fit() -> None:
    """Noise does not compress: at full size this PNG is several times the limit; the drawn one fits."""
    import numpy as np

    from handler.http.drawing import drawn_png

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (600, 800, 3), dtype=np.uint8))
    detections = [Detection("cat", (100.0, 100.0, 700.0, 500.0))]
    limit = 400_000
    assert len(to_png(draw_detections(image, detections))) > 3 * limit
    drawn = drawn_png(image, detections, limit)
    assert len(drawn.png) <= limit and 0.2 < drawn.scale < 1.0
    decoded = Image.open(io.BytesIO(drawn.png))
    assert decoded.size == (int(800 * drawn.scale), int(600 * drawn.scale))
    rgb, y = decoded.convert("RGB"), int(300 * drawn.scale)
    # the box's left edge is drawn where the detection is, at the drawn scale
    assert PALETTE[0] in {rgb.getpixel((x, y)) for x in range(int(100 * drawn.scale) - 1, int(100 * drawn.scale) + 2)}


def test_a_drawing_that_fits_is_not_downscaled() -> None:
    from handler.http.drawing import drawn_png

    image = Image.new("RGB", (300, 200), "white")
    drawn = drawn_png(image, [Detection("cat", (50.0, 60.0, 150.0, 180.0))], 400_000)
    assert drawn.scale == 1.0 and Image.open(io.BytesIO(drawn.png)).size == (300, 200)


def test_each_box_is_tagged_with_its_score() -> None:
    image = Image.new("RGB", (300, 200), "white")
    sure = draw_detections(image, [Detection("cat", (50.0, 60.0, 150.0, 180.0), 0.98)])
    unsure = draw_detections(image, [Detection("cat", (50.0, 60.0, 150.0, 180.0), 0.12)])
    band = (50, 0, 150, 60)  # the tag above the box: same label, different score text
    assert sure.crop(band).tobytes() != unsure.crop(band).tobytes()
    assert sure.crop((0, 60, 300, 200)).tobytes() == unsure.crop((0, 60, 300, 200)).tobytes()  # same box


def test_a_long_strip_is_tagged_at_a_size_from_its_area_not_its_length() -> None:
    """A 1x1,000,000 strip once got a 25,000 px font, whose rendered tag was itself a decompression bomb (a 500)."""
    from handler.config import MAX_BINARY_BODY_BYTES
    from handler.http.drawing import drawn_png

    image = Image.new("RGB", (1, 1_000_000), "white")
    drawn = drawn_png(image, [Detection("cat", (0.0, 1000.0, 1.0, 900_000.0), 0.5)], MAX_BINARY_BODY_BYTES)
    decoded = Image.open(io.BytesIO(drawn.png)).convert("RGB")
    assert drawn.scale == 1.0 and decoded.size == (1, 1_000_000)
    assert decoded.getpixel((0, 500_000)) == PALETTE[0]  # the box's edge runs down the strip


def test_a_strip_too_big_to_draw_shrinks_along_its_length_until_it_fits() -> None:
    """Its one-pixel side cannot shrink, so its PNG falls with the scale, not the scale squared: the last
    resort must size what is drawn, not the scale, or the PNG it promises to fit does not."""
    import numpy as np

    from handler.http.drawing import drawn_png

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (2_000_000, 1, 3), dtype=np.uint8))
    limit = 50_000
    drawn = drawn_png(image, [Detection("cat", (0.0, 10.0, 1.0, 1000.0), 0.5)], limit)
    assert len(drawn.png) <= limit
    assert Image.open(io.BytesIO(drawn.png)).size == (1, int(2_000_000 * drawn.scale))


def test_the_uploads_colour_profile_is_not_copied_into_the_drawing() -> None:
    """A JPEG may carry megabytes of ICC profile; copied into the PNG, no downscale could make it fit."""
    import os

    from handler.http.drawing import drawn_png

    image = Image.new("RGB", (300, 200), "white")
    image.info["icc_profile"] = os.urandom(600_000)
    limit = 400_000
    drawn = drawn_png(image, [Detection("cat", (50.0, 60.0, 150.0, 180.0), 0.9)], limit)
    assert len(drawn.png) <= limit and b"iCCP" not in drawn.png
    assert drawn.scale == 1.0 and Image.open(io.BytesIO(drawn.png)).size == (300, 200)
