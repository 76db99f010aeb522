"""Reading COCO-format data into (image, task, target text) samples and batching them for Florence-2.

Works on real COCO 2017 (`annotations/captions_train2017.json`, `instances_train2017.json`, images in
`train2017/`), on the synthetic set, which uses the same layout, and on what labelling tools (CVAT,
Label Studio, Roboflow, FiftyOne) export in it. Every input rule lives here and docs/build.md lists it:

- a file that cannot be used as a whole (missing, not JSON, no `images` list, an image without an
  id or file name, a duplicate id, an instances file listing one file under two ids, a category name
  the `<OD>` format cannot carry, no sample for a task asked for, and, once the base's tokenizer is
  known, a caption spelling one of its added tokens: `check_targets`) stops the command with a
  `DataError` naming the file and the problem;
- an item that cannot be used is left out and counted, one warning line per reason with the first
  example: annotations on unknown images or categories, boxes that are not 4 finite numbers, have no
  area or lie outside the image, blank captions, image files that are missing, unreadable or of more
  than `DECODE_MAX_PIXELS`, images whose size in the JSON has another shape than the file;
- boxes are clipped to the image; crowd boxes are not trained on (COCO's evaluation ignores them);
- images are decoded as serving decodes them (`handler.inputs.images.decode_image`: EXIF rotation,
  transparency on white, 16-bit greys scaled), and boxes are mapped into that upright picture: the
  JSON's `width`/`height` say which pixel grid the boxes were drawn on (`ImageFrame`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from functools import cache, lru_cache
from pathlib import Path

from handler.florence.preprocess import normalize, squash_resize
from handler.florence.tasks import LOC_BINS, Detection, Task, loc_token, serialize_detections
from handler.inputs.images import EXIF_ORIENTATION, SWAPS_AXES

log = logging.getLogger(__name__)

ImageId = int | str
"""COCO ids are integers; some exporters write strings, which are kept as they are."""


class DataError(ValueError):
    """Input data the build cannot use; the message names the file and the problem, for a one-line error."""


@dataclass(frozen=True)
class Sample:
    image_path: Path
    image_id: ImageId
    width: int
    height: int
    """The upright decoded image's size, which the sample's boxes are in."""
    task: Task
    target: str
    source: Path | None = field(default=None, compare=False)
    """The annotation file the target was read from, and which entry of it, for an error naming them."""
    entry: str = field(default="", compare=False)


class Skipped:
    """Items left out of one file, counted by reason with the first example, logged as one line per reason."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.counts: Counter[str] = Counter()
        self.first: dict[str, str] = {}

    def add(self, reason: str, example: str) -> None:
        self.counts[reason] += 1
        self.first.setdefault(reason, example)

    def log(self) -> None:
        for reason, count in self.counts.items():
            log.warning("%s: skipped %d %s (first: %s)", self.path, count, reason, self.first[reason])


def read_annotation_file(path: Path) -> dict:
    """A COCO annotation file with `images` and `annotations` lists, or a DataError saying what is wrong."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with 'images' and 'annotations', got {type(data).__name__}")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: no '{key}' list")
    if not data["images"]:
        raise DataError(f"{path}: the 'images' list is empty")
    return data


def _coco_id(value: object) -> ImageId | None:
    """An id as COCO tools write it (an integer, or a string), or None; 3.0 counts as 3."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip():
        return value
    return None


def id_order(image_id: ImageId) -> tuple[bool, int | str]:
    """Sort key for ids: integers by value, then strings (a file may mix both)."""
    return (isinstance(image_id, str), image_id)


def _finite(value: object) -> bool:
    """A JSON number (true/false are not), and not NaN or infinity (Python's json reads those)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: object) -> float | None:
    return float(value) if _finite(value) and value > 0 else None  # type: ignore[operator,arg-type]


Box = tuple[float, float, float, float]

_RAW_TO_UPRIGHT = {
    # Where a point (x, y) of the stored pixel grid, as a fraction of its sides, lands in the upright
    # picture after `ImageOps.exif_transpose` (tests/model_build/test_coco_inputs.py checks each against PIL).
    1: lambda x, y: (x, y),
    2: lambda x, y: (1 - x, y),
    3: lambda x, y: (1 - x, 1 - y),
    4: lambda x, y: (x, 1 - y),
    5: lambda x, y: (y, x),
    6: lambda x, y: (1 - y, x),
    7: lambda x, y: (1 - y, 1 - x),
    8: lambda x, y: (y, 1 - x),
}
_UPRIGHT_TO_RAW = {**_RAW_TO_UPRIGHT, 6: _RAW_TO_UPRIGHT[8], 8: _RAW_TO_UPRIGHT[6]}
SHAPE_TOLERANCE = 0.01
"""JSON and file sizes agree when their aspect ratios differ by at most this fraction (rounding of a resize)."""


def _map_box(box: Box, mapping, from_size: tuple[float, float], to_size: tuple[float, float]) -> Box:
    (fw, fh), (tw, th) = from_size, to_size
    ax, ay = mapping(box[0] / fw, box[1] / fh)
    bx, by = mapping(box[2] / fw, box[3] / fh)
    x0, x1 = sorted((ax * tw, bx * tw))
    y0, y1 = sorted((ay * th, by * th))
    return (x0, y0, x1, y1)


@dataclass(frozen=True)
class ImageFrame:
    """The pixel grid an image's annotations were drawn on, and how it maps onto the upright decoded image.

    Boxes are fractions of the JSON's `width` x `height`, so a file resized after labelling still
    fits. The model sees the image upright (EXIF applied, as serving does). Tools that show images
    upright write the upright size; a tool that ignored EXIF writes the stored grid's size, which for
    a 90-degree orientation has the other shape: then the boxes are rotated like the pixels. When the
    shapes cannot tell (mirror or 180-degree orientations, square images), upright is assumed.
    """

    width: float
    height: float
    upright: tuple[int, int]
    orientation: int = 1
    raw_grid: bool = False

    @property
    def ambiguous(self) -> bool:
        """The JSON size fits both the stored grid and the upright picture (mirror, 180 degrees, square)."""
        stored = (self.upright[1], self.upright[0]) if self.orientation in SWAPS_AXES else self.upright
        size = (self.width, self.height)
        return _same_shape(size, self.upright) and _same_shape(size, stored)

    def to_upright(self, box: Box) -> Box:
        """A box in annotation pixels -> upright decoded image pixels."""
        mapping = _RAW_TO_UPRIGHT[self.orientation if self.raw_grid else 1]
        return _map_box(box, mapping, (self.width, self.height), self.upright)

    def to_annotation(self, box: Box) -> Box:
        """A box predicted on the upright decoded image -> annotation pixels (for scoring against the JSON)."""
        mapping = _UPRIGHT_TO_RAW[self.orientation if self.raw_grid else 1]
        return _map_box(box, mapping, self.upright, (self.width, self.height))


DECODE_MAX_PIXELS = 89_478_485
"""Pillow's own decompression-bomb limit: training reads trusted files, but a 100 MP scan is still a mistake."""


def _same_shape(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return abs(a[0] * b[1] - a[1] * b[0]) <= SHAPE_TOLERANCE * a[0] * b[1]


@cache
def _probe(path: Path) -> tuple[tuple[int, int], int]:
    """(stored size, EXIF orientation) from the file's header, without decoding pixels."""
    from PIL import Image

    with Image.open(path) as image:
        try:
            orientation = int(image.getexif().get(EXIF_ORIENTATION, 1))
        except Exception:  # a malformed EXIF block: serving then leaves the image as stored
            orientation = 1
        return image.size, orientation if orientation in _RAW_TO_UPRIGHT else 1


def image_frame(path: Path, width: float | None, height: float | None) -> ImageFrame | str:
    """The frame of an image listed with this JSON size, or why it cannot be used (a skip reason)."""
    if not path.is_file():
        return "images whose file is missing"
    try:
        stored, orientation = _probe(path)
    except Exception:
        return "images whose file is not a readable image"
    if stored[0] * stored[1] > DECODE_MAX_PIXELS:  # found now, not when a batch reads it hours into training
        return f"images of more than {DECODE_MAX_PIXELS} pixels"
    upright = (stored[1], stored[0]) if orientation in SWAPS_AXES else stored
    if width is None or height is None:
        return ImageFrame(upright[0], upright[1], upright, orientation)
    if _same_shape((width, height), upright):
        return ImageFrame(width, height, upright, orientation)
    if orientation in SWAPS_AXES and _same_shape((width, height), stored):
        return ImageFrame(width, height, upright, orientation, raw_grid=True)
    return "images whose width/height in the JSON have another shape than the file"


@dataclass
class ImageRecord:
    """An image of a split that can be used: its id, file, frame and the JSON record it came from."""

    id: ImageId
    path: Path
    frame: ImageFrame
    json: dict = field(repr=False)


def _on_disk(folder: Path, file_name: str) -> Path:
    """The file `file_name` names under `folder` (a subfolder stays under it; an absolute path is kept).

    Tools write the name as their platform spells it: a Windows export separates folders with
    backslashes, and macOS keeps accented names decomposed (NFD) where the JSON has them composed
    (NFC), or the other way round; either made the image "missing" on the other system.
    """
    names = [file_name] + ([file_name.replace("\\", "/")] if "\\" in file_name else [])
    for name in list(names):
        names += [unicodedata.normalize(form, name) for form in ("NFC", "NFD")]
    for name in dict.fromkeys(names):
        if (folder / name).exists():
            return folder / name
    return folder / file_name


def _is_crowd(value: object) -> bool:
    """COCO's `iscrowd` is 0 or 1; exports also write it as a bool or as the text "0"/"1", and the text
    "0" is truthy: every such box was a crowd region, left out of training and scoring."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value) if isinstance(value, int | float) else False


def usable_images(root: Path, split: str, path: Path, data: dict) -> dict[ImageId, ImageRecord]:
    """The usable images of an annotation file, by id; unusable files are skipped and counted."""
    skipped = Skipped(path)
    records: dict[ImageId, ImageRecord] = {}
    seen: set[ImageId] = set()
    for index, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            raise DataError(f"{path}: images[{index}] is not an object")
        image_id = _coco_id(img.get("id"))
        if image_id is None:
            raise DataError(f"{path}: images[{index}] has no usable 'id' (an integer or string): {img.get('id')!r}")
        if image_id in seen:
            raise DataError(f"{path}: image id {image_id!r} is listed twice")
        seen.add(image_id)
        file_name = img.get("file_name")
        if not isinstance(file_name, str) or not file_name.strip():
            raise DataError(f"{path}: image {image_id!r} has no 'file_name'")
        image_path = _on_disk(root / split, file_name)
        frame = image_frame(image_path, _positive(img.get("width")), _positive(img.get("height")))
        if isinstance(frame, str):
            skipped.add(frame, str(image_path))
            continue
        records[image_id] = ImageRecord(image_id, image_path, frame, img)
    skipped.log()
    if not records:
        hint = "" if (root / split).is_dir() else f"; there is no folder {root / split}"
        raise DataError(f"{path}: none of its {len(data['images'])} images can be read{hint}")
    return _settle_ambiguous_frames(path, records)


def _settle_ambiguous_frames(path: Path, records: dict[ImageId, ImageRecord]) -> dict[ImageId, ImageRecord]:
    """Decide the frame of EXIF-oriented images whose shape cannot tell, from the file's other images.

    A file is written by one tool, which either honoured EXIF or did not. Its 90-degree-rotated,
    non-square images show which: if all of those that tell were labelled on the stored grid, so were
    the mirrored, 180-degree and square ones; otherwise upright is kept (the default of `image_frame`).
    """
    ambiguous = [r for r in records.values() if r.frame.orientation != 1 and r.frame.ambiguous]
    telling = [
        r.frame.raw_grid for r in records.values() if r.frame.orientation in SWAPS_AXES and not r.frame.ambiguous
    ]
    if not ambiguous:
        return records
    raw = bool(telling) and all(telling)
    log.warning(
        "%s: %d images have an EXIF orientation whose boxes could be on either grid; taken as drawn on the %s "
        "(%d rotated images tell)",
        path,
        len(ambiguous),
        "stored grid, like the rotated ones" if raw else "upright picture",
        len(telling),
    )
    if raw:
        for record in ambiguous:
            record.frame = replace(record.frame, raw_grid=True)
    return records


def _category_names(path: Path, data: dict) -> dict[ImageId, str]:
    """Category id -> label as `<OD>` writes it (whitespace collapsed); names must survive the loc-token format."""
    categories = data.get("categories")
    if not isinstance(categories, list) or not categories:
        raise DataError(f"{path}: no 'categories' list")
    names: dict[ImageId, str] = {}
    for index, category in enumerate(categories):
        category_id = _coco_id(category.get("id")) if isinstance(category, dict) else None
        if category_id is None:
            raise DataError(f"{path}: categories[{index}] has no usable 'id'")
        if category_id in names:
            raise DataError(f"{path}: category id {category_id!r} is listed twice")
        raw = category.get("name")
        name = " ".join(raw.split()) if isinstance(raw, str) else ""
        if not name:
            raise DataError(f"{path}: category {category_id!r} has no name")
        if "<" in name or ">" in name:
            raise DataError(
                f"{path}: category {category_id!r} is named {raw!r}; '<' and '>' delimit Florence-2's "
                "task and <loc_N> tokens, so rename it"
            )
        names[category_id] = name
    return names


def _box_xywh(value: object) -> tuple[float, float, float, float] | None:
    if not isinstance(value, list | tuple) or len(value) != 4:
        return None
    if not all(_finite(v) for v in value):
        return None
    x, y, w, h = (float(v) for v in value)
    return x, y, w, h


def _segmentation_box(segmentation: object) -> tuple[float, float, float, float] | None:
    """x, y, w, h around a polygon list or an RLE mask, for exports that give a region but no `bbox`."""
    if isinstance(segmentation, list) and segmentation:
        points = [v for polygon in segmentation if isinstance(polygon, list) for v in polygon]
        if len(points) < 4 or len(points) % 2 or not all(_finite(v) for v in points):
            return None
        xs, ys = points[0::2], points[1::2]
        return min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        from pycocotools import mask

        try:
            height, width = (int(v) for v in segmentation["size"])
            counts = segmentation["counts"]
            rle = (
                mask.frPyObjects(segmentation, height, width)
                if isinstance(counts, list)
                else {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
            )
            x, y, w, h = (float(v) for v in mask.toBbox(rle))
        except Exception:  # a malformed mask is skipped like a malformed bbox
            return None
        return (x, y, w, h) if w > 0 and h > 0 else None
    return None


@dataclass
class Instances:
    """A split's instances file, checked: usable images, category names and boxes clipped to their image.

    Annotations keep COCO's form (`bbox` as x, y, w, h in annotation pixels) so pycocotools can score
    against exactly what training saw; categories sharing a name are merged into the first one's id.
    """

    path: Path
    images: dict[ImageId, ImageRecord]
    categories: dict[ImageId, str]
    annotations: list[dict]

    def coco_dataset(self) -> tuple[dict, dict[ImageId, int]]:
        """The cleaned file as a COCO dataset dict for pycocotools, and each image id's number in it.

        Images and categories are numbered 1..N in id order: pycocotools sorts ids, which fails on a file
        mixing integer and string ids.
        """
        number = {image_id: n for n, image_id in enumerate(sorted(self.images, key=id_order), start=1)}
        merged = {name: category_id for category_id, name in reversed(self.categories.items())}
        category = {category_id: n for n, category_id in enumerate(sorted(merged.values(), key=id_order), start=1)}
        dataset = {
            "images": [
                {"id": number[i], "width": r.frame.width, "height": r.frame.height, "file_name": str(r.path)}
                for i, r in self.images.items()
            ],
            "categories": [{"id": category[category_id], "name": name} for name, category_id in merged.items()],
            "annotations": [
                {**ann, "image_id": number[ann["image_id"]], "category_id": category[ann["category_id"]]}
                for ann in self.annotations
            ],
        }
        return dataset, number


def read_instances(root: str | Path, split: str) -> Instances:
    root = Path(root)
    path = root / "annotations" / f"instances_{split}.json"
    data = read_annotation_file(path)
    names = _category_names(path, data)
    first_id = {name: category_id for category_id, name in reversed(names.items())}
    images = usable_images(root, split, path, data)
    listed: dict[Path, ImageId] = {}
    for image in images.values():
        first = listed.setdefault(Path(os.path.normpath(image.path)), image.id)
        if first != image.id:  # each id would get part of the picture's boxes as its whole <OD> answer
            raise DataError(
                f"{path}: images {first!r} and {image.id!r} are both {image.path}: training would learn two "
                "partial box lists for one picture, and eval would count each one's boxes as missed on the other; "
                "list it once, with all its boxes"
            )
    skipped = Skipped(path)
    annotations: list[dict] = []
    clipped = from_segmentation = 0
    for index, ann in enumerate(data["annotations"]):
        where = f"annotations[{index}]"
        if not isinstance(ann, dict):
            skipped.add("annotations that are not objects", where)
            continue
        record = images.get(_coco_id(ann.get("image_id")))  # type: ignore[arg-type]
        if record is None:
            skipped.add("annotations whose image_id is not a usable image", f"{where} image_id {ann.get('image_id')!r}")
            continue
        category_id = _coco_id(ann.get("category_id"))
        if category_id not in names:
            skipped.add("annotations with an unknown category_id", f"{where} category_id {ann.get('category_id')!r}")
            continue
        box = _box_xywh(ann.get("bbox"))
        if box is None and ann.get("bbox") is None:
            box = _segmentation_box(ann.get("segmentation"))
            from_segmentation += box is not None
        if box is None:
            skipped.add(
                "annotations without a 'bbox' of 4 finite numbers or a readable segmentation",
                f"{where} bbox {ann.get('bbox')!r}",
            )
            continue
        x, y, w, h = box
        if w <= 0 or h <= 0:
            skipped.add("boxes with zero or negative width or height", f"{where} bbox {ann.get('bbox')!r}")
            continue
        frame = record.frame
        x0, y0 = max(x, 0.0), max(y, 0.0)
        x1, y1 = min(x + w, frame.width), min(y + h, frame.height)
        if x1 <= x0 or y1 <= y0:
            skipped.add("boxes entirely outside their image", f"{where} bbox {ann.get('bbox')!r}")
            continue
        clipped += (x0, y0, x1, y1) != (x, y, x + w, y + h)
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": record.id,
                "category_id": first_id[names[category_id]],  # type: ignore[index]
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": (x1 - x0) * (y1 - y0),
                "iscrowd": 1 if _is_crowd(ann.get("iscrowd")) else 0,
            }
        )
    skipped.log()
    if clipped:
        log.info("%s: clipped %d boxes to their image", path, clipped)
    if from_segmentation:
        log.info("%s: %d boxes without 'bbox' were taken around their segmentation", path, from_segmentation)
    return Instances(path, images, names, annotations)


def detections_by_image(
    root: str | Path, split: str
) -> tuple[dict[ImageId, ImageRecord], dict[ImageId, list[Detection]]]:
    """Ground-truth boxes per image in upright decoded pixels (crowd boxes left out, sorted left to right)."""
    instances = read_instances(root, split)
    boxes: dict[ImageId, list[Detection]] = defaultdict(list)
    for ann in instances.annotations:
        if ann["iscrowd"]:
            continue
        record = instances.images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        upright = record.frame.to_upright((x, y, x + w, y + h))
        boxes[ann["image_id"]].append(Detection(instances.categories[ann["category_id"]], upright))
    for dets in boxes.values():
        dets.sort(key=lambda d: (d.box[0], d.box[1]))
    return instances.images, boxes


def detection_samples(root: str | Path, split: str) -> list[Sample]:
    """One `<OD>` sample per image with at least one box, the target in Florence-2's loc-token form.

    Images without boxes are not trained on: an empty `<OD>` target would teach the model to stop early.
    """
    images, boxes = detections_by_image(root, split)
    path = _task_file(Path(root), split, Task.DETECT)
    samples = []
    for image_id in sorted(boxes, key=id_order):
        record = images[image_id]
        width, height = record.frame.upright
        target = serialize_detections(boxes[image_id], width, height)
        samples.append(
            Sample(record.path, image_id, width, height, Task.DETECT, target, path, f"image id {image_id!r}")
        )
    return samples


def captions_file(root: str | Path, split: str, style: str = "") -> Path:
    return Path(root) / "annotations" / f"captions_{style + '_' if style else ''}{split}.json"


def read_captions(root: str | Path, split: str, style: str = "") -> tuple[dict[ImageId, ImageRecord], dict]:
    """(usable images, image id -> its captions with whitespace collapsed); blank captions are skipped."""
    _path, images, captions = _captions_with_entries(root, split, style)
    return images, {image_id: [text for text, _entry in texts] for image_id, texts in captions.items()}


def _captions_with_entries(
    root: str | Path, split: str, style: str = ""
) -> tuple[Path, dict[ImageId, ImageRecord], dict[ImageId, list[tuple[str, str]]]]:
    """`read_captions`, each caption with the entry it came from (`annotation id 7`), and the file read."""
    path = captions_file(root, split, style)
    data = read_annotation_file(path)
    images = usable_images(Path(root), split, path, data)
    skipped = Skipped(path)
    captions: dict[ImageId, list[tuple[str, str]]] = defaultdict(list)
    for index, ann in enumerate(data["annotations"]):
        where = f"annotations[{index}]"
        image_id = _coco_id(ann.get("image_id")) if isinstance(ann, dict) else None
        if image_id not in images:
            skipped.add("captions whose image_id is not a usable image", where)
            continue
        caption = ann.get("caption")
        text = " ".join(caption.split()) if isinstance(caption, str) else ""
        if not text:
            skipped.add("captions that are missing, blank or not text", where)
            continue
        entry = f"annotation id {ann['id']!r}" if "id" in ann else where
        captions[image_id].append((text, entry))  # type: ignore[index]
    skipped.log()
    return path, images, dict(captions)


def caption_samples(root: str | Path, split: str, style: str = "") -> list[Sample]:
    """One sample per (image, caption). `style="base"` reads our synthetic `captions_base_*` file."""
    path, images, captions = _captions_with_entries(root, split, style)
    samples = []
    for image_id in sorted(captions, key=id_order):
        record = images[image_id]
        width, height = record.frame.upright
        samples += [
            Sample(record.path, image_id, width, height, Task.CAPTION, text, path, entry)
            for text, entry in captions[image_id]
        ]
    return samples


def _task_file(root: Path, split: str, task: Task, caption_style: str = "") -> Path:
    return (
        captions_file(root, split, caption_style)
        if task is Task.CAPTION
        else root / "annotations" / f"instances_{split}.json"
    )


def task_files(root: str | Path, split: str, tasks: list[Task] | tuple[Task, ...], caption_style: str = "") -> None:
    """Stop before any work when a task's annotation file is missing, saying how to leave that task out."""
    root = Path(root)
    files = {task: _task_file(root, split, task, caption_style) for task in Task}
    for task in tasks:
        if not files[task].is_file():
            others = [t.api_name for t in tasks if t is not task and files[t].is_file()]
            hint = f"; to use the data without it, pass --tasks {','.join(others)}" if others else ""
            raise DataError(f"{files[task]}: file not found (needed for {task.api_name}){hint}")


def load_samples(root: str | Path, split: str, tasks: list[Task], caption_style: str = "") -> list[Sample]:
    """Every task's samples; a task asked for that has none stops here, since training the others alone would
    make the model forget it (caption-only fine-tuning erased `<OD>`, docs/build.md)."""
    root = Path(root)
    task_files(root, split, tasks, caption_style)
    by_task: dict[Task, list[Sample]] = {}
    if Task.CAPTION in tasks:
        by_task[Task.CAPTION] = caption_samples(root, split, caption_style)
    if Task.DETECT in tasks:
        by_task[Task.DETECT] = detection_samples(root, split)
    for task, samples in by_task.items():
        if not samples:
            others = [t.api_name for t in by_task if by_task[t]]
            hint = f"; to train without it, pass --tasks {','.join(others)}" if others else ""
            what = "a box to train on (crowd regions are not)" if task is Task.DETECT else "a caption"
            raise DataError(
                f"{_task_file(root, split, task, caption_style)}: no usable {task.api_name} samples: no image has "
                f"{what}; the warnings above count what was skipped{hint}"
            )
    return [sample for samples in by_task.values() for sample in samples]


_LOC_RUN = re.compile(r"(?:<loc_\d+>)+")
"""The box coordinates of an `<OD>` target, which are meant as tokens; the labels between them are text."""


def check_targets(samples: list[Sample], tokenizer) -> None:
    """A DataError when a target's text spells one of the tokenizer's added tokens (`</s>`, `<loc_5>`, `<OD>`).

    The tokenizer reads such text as the token itself, so the model would learn to end a caption there or
    write box coordinates inside it; splitting them (`split_special_tokens`) covers `</s>` and `<pad>` but not
    `<loc_N>` or task tokens, and the served caption drops `</s>`, `<pad>` and `<loc_N>` text anyway. So such
    data is neither trained nor served as written: it is refused, counted, naming the first entry.
    """
    added = tokenizer.get_added_vocab()
    if not added:
        return
    spelled = re.compile("|".join(re.escape(token) for token in sorted(added, key=len, reverse=True)))
    added_ids = set(added.values())
    found: dict[tuple[Path | None, Task], list[tuple[Sample, list[str]]]] = defaultdict(list)
    for sample in samples:
        texts = [sample.target] if sample.task is Task.CAPTION else _LOC_RUN.split(sample.target)
        for text in texts:
            if not spelled.search(text):  # cheap: most texts hold no '<'; the tokenizer confirms the rest
                continue
            ids = tokenizer(text, add_special_tokens=False).input_ids
            tokens = sorted({tokenizer.convert_ids_to_tokens(i) for i in ids if i in added_ids})
            if tokens:
                found[sample.source, sample.task].append((sample, tokens))
                break
    for (source, task), hits in found.items():
        first, tokens = hits[0]
        kinds = "captions" if task is Task.CAPTION else "<OD> targets (category names)"
        every = sorted({token for _, tokens in hits for token in tokens})
        raise DataError(
            f"{source}: {len(hits)} {kinds} contain the tokenizer's special tokens as text "
            f"({', '.join(every[:5])}{', ...' if len(every) > 5 else ''}; first: {first.entry}, {first.target!r}), "
            "which training would read as the tokens themselves (</s> ends a caption, <loc_N> is a box "
            "coordinate); rewrite or remove them"
        )


def open_rgb(path: Path):
    """An image file decoded exactly as serving decodes an upload: upright (EXIF), transparency on white, RGB."""
    from handler.errors import ServiceError
    from handler.inputs.images import decode_image

    try:
        data = Path(path).read_bytes()
        return decode_image(data, max_bytes=len(data), max_pixels=DECODE_MAX_PIXELS).image
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except ServiceError as exc:
        raise DataError(f"{path}: {exc.message}") from None


RESIZED_CACHE_IMAGES = 2048
"""Resized training images kept in memory (442 KB each at 384): a synthetic set fits whole."""


@lru_cache(maxsize=RESIZED_CACHE_IMAGES)
def _resized(path: Path, size: int):
    import torch

    return torch.from_numpy(squash_resize(open_rgb(path), size))


def _fit(ids: list[int], room: int, loc_ids: frozenset[int]) -> list[int]:
    """The first `room` target tokens; a cut `<OD>` target ends after its last whole box, not inside one."""
    if len(ids) <= room:
        return ids
    cut = ids[:room]
    locs = [i for i, token in enumerate(cut) if token in loc_ids]
    if not locs:
        return cut
    whole = len(locs) // 4 * 4
    return cut[: locs[whole - 1] + 1] if whole else []


@cache
def _warn_cut(room: int) -> None:
    """Once per run, not once per batch: a long caption is read again every epoch."""
    log.warning("training targets longer than %d tokens are cut to fit the decoder", room)


def target_labels(tokenizer, targets: list[str], max_tokens: int | None = None, loc_ids: frozenset[int] = frozenset()):
    """Decoder labels `<s> target </s>`, padded with -100 so padding carries no loss.

    With `max_tokens` (the decoder's positions), a longer target is cut to fit, `<OD>` ones at a box
    boundary (`loc_ids` are the `<loc_N>` token ids); past its positions the decoder cannot run at all.
    """
    import torch

    room = None if max_tokens is None else max_tokens - 2
    sequences = []
    for text in targets:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        if room is not None and len(ids) > room:
            _warn_cut(room)
            ids = _fit(ids, room, loc_ids)
        sequences.append([tokenizer.bos_token_id, *ids, tokenizer.eos_token_id])
    labels = torch.full((len(sequences), max(len(seq) for seq in sequences)), -100, dtype=torch.long)
    for row, seq in enumerate(sequences):
        labels[row, : len(seq)] = torch.tensor(seq)
    return labels


class InputEncoder:
    """Training inputs exactly as `Florence2Processor` builds them, from images already resized to its size.

    The processor decodes, resizes and normalises every image on every call, which was half a
    fine-tuning step on 2 cores. Training reads each image many times, so images are resized once
    (uint8) and only normalised per batch, and a task's prompt ids, the same for every image, are
    computed once. `tests/model_build/pretrain/test_pretrain.py` checks the pixels equal the processor's.
    """

    def __init__(self, processor, max_target_tokens: int | None = None) -> None:
        """`max_target_tokens`: the decoder's positions (`text_config.max_position_embeddings`); longer targets are cut."""
        image_processor = processor.image_processor
        self.processor = processor
        self.max_target_tokens = max_target_tokens
        tokenizer = processor.tokenizer
        self._loc_ids = frozenset(tokenizer.convert_tokens_to_ids([loc_token(i) for i in range(LOC_BINS)]))
        self.size = int(image_processor.size["height"])
        self._mean, self._std = tuple(image_processor.image_mean), tuple(image_processor.image_std)
        self._prompts: dict[Task, object] = {}

    def prompt_ids(self, task: Task):
        """Image placeholder tokens + the task's expanded prompt, as the processor writes them."""
        if task not in self._prompts:
            from PIL import Image

            blank = Image.new("RGB", (self.size, self.size))
            self._prompts[task] = self.processor(text=[task.value], images=[blank], return_tensors="pt")["input_ids"][0]
        return self._prompts[task]

    def encode(self, pixels, tasks: list[Task], targets: list[str]) -> dict:
        """(B, size, size, 3) uint8 pixels + tasks + target texts -> model inputs with labels."""
        import torch

        prompts = [self.prompt_ids(task) for task in tasks]
        width = max(len(ids) for ids in prompts)
        input_ids = torch.full((len(prompts), width), self.processor.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": normalize(pixels, self._mean, self._std),
            "labels": target_labels(self.processor.tokenizer, targets, self.max_target_tokens, self._loc_ids),
        }

    def collate(self, samples: list[Sample]) -> dict:
        """A batch of COCO samples read from disk (each image resized once, then cached)."""
        import torch

        pixels = torch.stack([_resized(s.image_path, self.size) for s in samples])
        return self.encode(pixels, [s.task for s in samples], [s.target for s in samples])
