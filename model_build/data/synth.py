"""Synthetic COCO: coloured shapes on varied backgrounds, written in the COCO 2017 folder layout.

    out/
      train2017/000000000001.jpg ...        val2017/...
      annotations/captions_train2017.json   annotations/instances_train2017.json
      annotations/captions_base_train2017.json   (our extra: the terse style the tiny base learns)

Every image has two caption styles: the terse "base" style ("red circle, blue square") that the embedded
base model is pretrained on, and a sentence-like "COCO" style ("A photo of a red circle and a blue
square.") in the standard captions file, which LoRA fine-tuning must teach. Output is a pure function
of the seed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from model_build.outputs import refusal, replaceable_folder
from model_build.settings import SEED_BOUNDS, UsageError, setting

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 20),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
    "beige": (225, 205, 170),
}
MAX_OBJECTS = 2
SYNTH_MARKER = "annotations/captions_base_*.json"
"""Our extra caption file: it tells a synthetic dataset, which may be written over, from a user's."""
SYNTHETIC = "a synthetic dataset"
check_synth_out = replaceable_folder(SYNTH_MARKER, SYNTHETIC)
"""`check` for a folder synthetic data is written into: new, empty or synthetic, never a user's dataset."""


def check_data_or_synth_out(path: Path) -> None:
    """`check` for a `--data` that is read when it holds a val2017 split and synthesized into otherwise."""
    if not (path / "annotations" / "instances_val2017.json").is_file():
        check_synth_out(path)


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels

    @property
    def phrase(self) -> str:
        return f"{self.color} {self.shape}"


def base_caption(objects: list[ShapeObject]) -> str:
    """Terse style the tiny base model learns: objects left to right."""
    return ", ".join(obj.phrase for obj in objects)


def coco_caption(objects: list[ShapeObject]) -> str:
    """Sentence style that fine-tuning must teach."""
    phrases = [f"a {obj.phrase}" for obj in objects]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"A photo of {listed}."


def caption_corpus() -> list[str]:
    """Every word the synthetic captions and `<OD>` labels use, for training the offline tokenizer.

    `<OD>` writes a label straight after a `<loc_N>` token, with no space before it, so the bare
    category names are in the corpus too: each then is one token, as in Florence-2's own tokenizer,
    instead of two or three byte-pair pieces the decoder would have to learn to chain.
    """
    words = list(COLORS) + list(SHAPES) + list(BACKGROUNDS)
    phrases = [f"A photo of a {c} {s}, a {c} {s} and a {c} {s}." for c in COLORS for s in SHAPES]
    return phrases + [" ".join(words)] * 4 + list(SHAPES) * 8


def _background(rng: random.Random, width: int, height: int) -> Image.Image:
    """A neutral background with a gradient and noise, so the model cannot key on flat colour alone."""
    base = BACKGROUNDS[rng.choice(list(BACKGROUNDS))]
    shift = rng.randint(-25, 25)
    top = tuple(max(0, min(255, c + shift)) for c in base)
    bottom = tuple(max(0, min(255, c - shift)) for c in base)
    gradient = Image.linear_gradient("L").resize((width, height))
    image = Image.composite(Image.new("RGB", (width, height), bottom), Image.new("RGB", (width, height), top), gradient)
    # Seeded Gaussian noise around mid-gray (PIL's effect_noise draws from C's unseeded rand()).
    sigma = rng.uniform(4, 14)
    field = np.random.default_rng(rng.getrandbits(32)).normal(128.0, sigma, (height, width))
    noise = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8), "L").convert("RGB")
    return Image.blend(image, noise, 0.08)


SIZE_RANGE = (0.3, 0.55)
"""Object side as a fraction of the image's short side."""
EASY_SIZE_RANGE = (0.5, 0.8)


def _place(
    rng: random.Random,
    width: int,
    height: int,
    placed: list[tuple[int, int, int, int]],
    size_range: tuple[float, float],
):
    short = min(width, height)
    for _ in range(50):
        size = rng.randint(int(short * size_range[0]), int(short * size_range[1]))
        x0 = rng.randint(0, width - size)
        y0 = rng.randint(0, height - size)
        box = (x0, y0, x0 + size, y0 + size)
        if all(box[2] + 4 <= b[0] or b[2] + 4 <= box[0] or box[3] + 4 <= b[1] or b[3] + 4 <= box[1] for b in placed):
            return box
    return None


def _draw(draw: ImageDraw.ImageDraw, obj: ShapeObject) -> None:
    x0, y0, x1, y1 = obj.box
    fill = COLORS[obj.color]
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=fill)


def make_image(
    rng: random.Random, max_objects: int = MAX_OBJECTS, size_range: tuple[float, float] = SIZE_RANGE
) -> tuple[Image.Image, list[ShapeObject]]:
    """One scene: 1..max_objects non-overlapping shapes, sorted left to right."""
    width, height = rng.randint(320, 512), rng.randint(256, 448)
    image = (
        _background(rng, width, height)
        if max_objects > 1
        else Image.new("RGB", (width, height), BACKGROUNDS[rng.choice(list(BACKGROUNDS))])
    )
    draw = ImageDraw.Draw(image)
    objects: list[ShapeObject] = []
    for _ in range(rng.randint(1, max_objects)):
        box = _place(rng, width, height, [o.box for o in objects], size_range)
        if box is not None:
            objects.append(ShapeObject(rng.choice(SHAPES), rng.choice(list(COLORS)), box))
    objects.sort(key=lambda o: (o.box[0], o.box[1]))
    for obj in objects:
        _draw(draw, obj)
    return image.filter(ImageFilter.GaussianBlur(0.6)), objects


CATEGORIES = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES)]
_CATEGORY_ID = {c["name"]: c["id"] for c in CATEGORIES}


def write_split(root: Path, split: str, count: int, seed: int, first_id: int) -> None:
    """Write `count` images and their COCO caption/instance files for one split (over a synthetic one only)."""
    reason = refusal(root, SYNTH_MARKER, SYNTHETIC)
    if reason:
        raise UsageError(reason)
    rng = random.Random(f"{seed}-{split}")
    image_dir = root / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, captions, base_captions, instances = [], [], [], []
    for offset in range(count):
        image_id = first_id + offset
        image, objects = make_image(rng)
        file_name = f"{image_id:012d}.jpg"
        image.save(image_dir / file_name, quality=92)
        images.append({"id": image_id, "file_name": file_name, "width": image.width, "height": image.height})
        captions.append({"id": image_id, "image_id": image_id, "caption": coco_caption(objects)})
        base_captions.append({"id": image_id, "image_id": image_id, "caption": base_caption(objects)})
        for obj in objects:
            x0, y0, x1, y1 = obj.box
            instances.append(
                {
                    "id": len(instances) + 1 + first_id * 10,
                    "image_id": image_id,
                    "category_id": _CATEGORY_ID[obj.shape],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    info = {"description": f"synthetic shapes, seed {seed}", "version": "1.0"}
    annotations = root / "annotations"
    annotations.mkdir(parents=True, exist_ok=True)
    files = {
        f"captions_{split}.json": {"info": info, "images": images, "annotations": captions},
        f"captions_base_{split}.json": {"info": info, "images": images, "annotations": base_captions},
        f"instances_{split}.json": {
            "info": info,
            "images": images,
            "annotations": instances,
            "categories": CATEGORIES,
        },
    }
    for name, payload in files.items():
        (annotations / name).write_text(json.dumps(payload))


@dataclass
class SynthConfig:
    """`python -m model_build synth`: the synthetic dataset's size and seed."""

    out_dir: Path = setting(
        Path("data/synth"), help="dataset folder: new, empty or synthetic", flag="--out", check=check_synth_out
    )
    train: int = setting(1000, help="train2017 images", minimum=1)
    val: int = setting(100, help="val2017 images", minimum=1)
    seed: int = setting(0, help="random seed; same seed, same bytes", **SEED_BOUNDS)


VAL_FIRST_ID = 1_000_000


def write_val_split(root: str | Path, count: int = SynthConfig.val, seed: int = SynthConfig.seed) -> Path:
    """The held-out `val2017` split alone; byte-identical to the one `synthesize` writes with the same seed."""
    write_split(Path(root), "val2017", count, seed, first_id=VAL_FIRST_ID)
    return Path(root)


def synthesize(
    out_dir: str | Path, train: int = SynthConfig.train, val: int = SynthConfig.val, seed: int = SynthConfig.seed
) -> Path:
    """Write a train2017/val2017 synthetic COCO dataset under `out_dir` and return its path."""
    root = Path(out_dir)
    write_split(root, "train2017", train, seed, first_id=1)
    return write_val_split(root, val, seed)
