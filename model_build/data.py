"""Reading COCO-format data into (image, task, target text) samples and batching them for Florence-2.

Works on real COCO 2017 (`annotations/captions_train2017.json`, `instances_train2017.json`, images in
`train2017/`) and on the synthetic set, which uses the same layout.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from handler.tasks import Detection, Task, serialize_detections


@dataclass(frozen=True)
class Sample:
    image_path: Path
    image_id: int
    width: int
    height: int
    task: Task
    target: str


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    return json.loads(path.read_text())


def caption_samples(root: Path, split: str, style: str = "") -> list[Sample]:
    """One sample per (image, caption). `style="base"` reads our synthetic `captions_base_*` file."""
    name = f"captions_{style + '_' if style else ''}{split}.json"
    data = _read_json(root / "annotations" / name)
    images = {img["id"]: img for img in data["images"]}
    samples = []
    for ann in sorted(data["annotations"], key=lambda a: (a["image_id"], a["id"])):
        img = images[ann["image_id"]]
        samples.append(
            Sample(root / split / img["file_name"], img["id"], img["width"], img["height"], Task.CAPTION,
                   ann["caption"].strip())
        )
    return samples


def detections_by_image(root: Path, split: str) -> tuple[dict[int, dict], dict[int, list[Detection]]]:
    """Ground-truth boxes per image (xyxy pixels, sorted left to right), and the image records."""
    data = _read_json(root / "annotations" / f"instances_{split}.json")
    names = {c["id"]: c["name"] for c in data["categories"]}
    images = {img["id"]: img for img in data["images"]}
    boxes: dict[int, list[Detection]] = defaultdict(list)
    for ann in data["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        x, y, w, h = ann["bbox"]
        boxes[ann["image_id"]].append(Detection(names[ann["category_id"]], (x, y, x + w, y + h)))
    for dets in boxes.values():
        dets.sort(key=lambda d: (d.box[0], d.box[1]))
    return images, boxes


def detection_samples(root: Path, split: str) -> list[Sample]:
    """One `<OD>` sample per image with at least one box, the target in Florence-2's loc-token form."""
    images, boxes = detections_by_image(root, split)
    samples = []
    for image_id in sorted(boxes):
        img = images[image_id]
        target = serialize_detections(boxes[image_id], img["width"], img["height"])
        samples.append(Sample(root / split / img["file_name"], image_id, img["width"], img["height"], Task.DETECT, target))
    return samples


def load_samples(root: str | Path, split: str, tasks: list[Task], caption_style: str = "") -> list[Sample]:
    root = Path(root)
    samples: list[Sample] = []
    if Task.CAPTION in tasks:
        samples += caption_samples(root, split, caption_style)
    if Task.DETECT in tasks:
        samples += detection_samples(root, split)
    if not samples:
        raise ValueError(f"no samples for tasks {[t.api_name for t in tasks]} in {root}/{split}")
    return samples


def open_rgb(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def collate(samples: list[Sample], processor) -> dict:
    """Processor inputs for the prompts and images, plus labels `<s> target </s>` padded with -100."""
    import torch

    tokenizer = processor.tokenizer
    inputs = processor(
        text=[s.task.value for s in samples], images=[open_rgb(s.image_path) for s in samples], return_tensors="pt",
        padding=True,
    )
    sequences = [
        [tokenizer.bos_token_id] + tokenizer(s.target, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        for s in samples
    ]
    width = max(len(seq) for seq in sequences)
    labels = torch.full((len(sequences), width), -100, dtype=torch.long)
    for row, seq in enumerate(sequences):
        labels[row, : len(seq)] = torch.tensor(seq)
    inputs["labels"] = labels
    return dict(inputs)
