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


def test_each_box_is_tagged_with_its_score() -> None:
    image = Image.new("RGB", (300, 200), "white")
    sure = draw_detections(image, [Detection("cat", (50.0, 60.0, 150.0, 180.0), 0.98)])
    unsure = draw_detections(image, [Detection("cat", (50.0, 60.0, 150.0, 180.0), 0.12)])
    band = (50, 0, 150, 60)  # the tag above the box: same label, different score text
    assert sure.crop(band).tobytes() != unsure.crop(band).tobytes()
    assert sure.crop((0, 60, 300, 200)).tobytes() == unsure.crop((0, 60, 300, 200)).tobytes()  # same box
