"""Reading COCO-format data into (image, task, target text) samples and batching them for Florence-2.

Works on real COCO 2017 (`annotations/captions_train2017.json`, `instances_train2017.json`, images in
`train2017/`) and on the synthetic set, which uses the same layout.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from handler.florence.preprocess import normalize, squash_resize
from handler.florence.tasks import Detection, Task, serialize_detections


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
            Sample(
                root / split / img["file_name"],
                img["id"],
                img["width"],
                img["height"],
                Task.CAPTION,
                ann["caption"].strip(),
            )
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
        samples.append(
            Sample(root / split / img["file_name"], image_id, img["width"], img["height"], Task.DETECT, target)
        )
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


RESIZED_CACHE_IMAGES = 2048
"""Resized training images kept in memory (442 KB each at 384): a synthetic set fits whole."""


@lru_cache(maxsize=RESIZED_CACHE_IMAGES)
def _resized(path: Path, size: int):
    import torch

    return torch.from_numpy(squash_resize(open_rgb(path), size))


def target_labels(tokenizer, targets: list[str]):
    """Decoder labels `<s> target </s>`, padded with -100 so padding carries no loss."""
    import torch

    sequences = [
        [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        for text in targets
    ]
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

    def __init__(self, processor) -> None:
        image_processor = processor.image_processor
        self.processor = processor
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
            "labels": target_labels(self.processor.tokenizer, targets),
        }

    def collate(self, samples: list[Sample]) -> dict:
        """A batch of COCO samples read from disk (each image resized once, then cached)."""
        import torch

        pixels = torch.stack([_resized(s.image_path, self.size) for s in samples])
        return self.encode(pixels, [s.task for s in samples], [s.target for s in samples])
