"""The one place that knows Florence-2's task vocabulary: prompts, image size and location bins.

Both the build (`model_build`) and the server (`handler`) import these facts, so a model is trained,
fused and served with the same prompts and the same box encoding. Pure Python: no torch import.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

IMAGE_SIZE = 384
"""Serving resolution (square). Florence-2 ships at 768; 384 cuts vision compute about 4x."""

VISION_STRIDE = 32
"""DaViT downsamples by 32, so a 384 image gives a 12x12 grid of visual tokens."""

LOC_BINS = 1000
"""Florence-2 writes coordinates as `<loc_0>`..`<loc_999>` tokens, in thousandths of width/height."""

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def num_image_tokens(image_size: int = IMAGE_SIZE) -> int:
    """Visual tokens the processor must reserve: one per grid cell plus one pooled token (145 at 384)."""
    side = image_size // VISION_STRIDE
    return side * side + 1


class Task(str, Enum):
    """Tasks this service serves, valued by their Florence-2 task token."""

    CAPTION = "<CAPTION>"
    DETECT = "<OD>"

    @property
    def api_name(self) -> str:
        return {Task.CAPTION: "caption", Task.DETECT: "detect"}[self]

    @classmethod
    def from_name(cls, name: str) -> Task:
        """Accept `caption`/`detect` or the raw task token; raise ValueError otherwise."""
        for task in cls:
            if name in (task.api_name, task.value):
                return task
        raise ValueError(f"unknown task {name!r}; expected one of {[t.api_name for t in cls]}")


def tasks_from(value: object, default: Sequence[Task] = ()) -> list[Task]:
    """`"caption,detect"` or `["caption", "detect"]` -> tasks in the given order, without duplicates.

    The one parser of task lists, for the API, direct invokes and the CLI; an empty value means
    `default`. Raises ValueError naming the bad value, which each caller turns into its own error.
    """
    if value is None or value in ("", []):
        return list(default)
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError("tasks must be a comma-separated string or a list of task names")
    tasks: list[Task] = []
    for name in names:
        if not name.strip():  # "caption," or "caption, ,detect": a stray comma names no task
            continue
        task = Task.from_name(name.strip())
        if task not in tasks:
            tasks.append(task)
    if not tasks:
        raise ValueError("tasks must name at least one task")
    return tasks


TASK_PROMPTS: dict[Task, str] = {
    # The exact English prompts Florence-2's processor substitutes for each task token.
    Task.CAPTION: "What does the image describe?",
    Task.DETECT: "Locate the objects with category name in the image.",
}

MAX_NEW_TOKENS: dict[Task, int] = {
    # A caption is a sentence; a detection costs 5 tokens per object (label + 4 locations).
    Task.CAPTION: 40,
    Task.DETECT: 256,
}

NUM_BEAMS = 1
"""Greedy decoding: beams multiply decode cost on CPU for a small gain in caption quality."""


def loc_token(bin_index: int) -> str:
    return f"<loc_{bin_index}>"


def coordinate_to_bin(value: float, extent: float) -> int:
    """Quantize a pixel coordinate into one of LOC_BINS bins, as Florence-2's processor does."""
    if extent <= 0:
        raise ValueError("extent must be positive")
    return int(min(max(value / (extent / LOC_BINS), 0), LOC_BINS - 1))


def bin_to_coordinate(bin_index: int, extent: float) -> float:
    """Centre of a bin in pixels: the inverse of `coordinate_to_bin` up to half a bin."""
    return (bin_index + 0.5) * extent / LOC_BINS


SCORE_DIGITS = 4
"""Scores are kept to 4 decimals from the start, so a `min_score` copied from an answer keeps that box."""


@dataclass(frozen=True)
class Detection:
    """One object, in pixel coordinates of the image it was found in (x0, y0, x1, y1).

    `score` is the model's confidence in [0, 1] (`detection_score`); boxes that come from text rather
    than from a decoder (ground truth, training targets) are certain, hence the default of 1.
    """

    label: str
    box: tuple[float, float, float, float]
    score: float = 1.0

    def as_dict(self) -> dict:
        return {"label": self.label, "box": [round(v, 2) for v in self.box], "score": round(self.score, SCORE_DIGITS)}


def detection_score(token_probabilities: Sequence[float]) -> float:
    """A box's confidence: the arithmetic mean of the probabilities of its label and four `<loc_N>` tokens.

    Not the geometric mean or the minimum: a coordinate's probability is spread over neighbouring bins
    by construction (bin 410 and 411 are both right), so a loc token's probability is small even for a
    good box, and a product or minimum is decided by that spread alone. On the tiny model's val set the
    mean separates right from wrong boxes (AUROC 0.73) where the geometric mean (0.56) and the minimum
    (0.54) barely do (docs/serving.md, "Scores").
    """
    if not token_probabilities:
        raise ValueError("a detection has at least one label token and four location tokens")
    return sum(token_probabilities) / len(token_probabilities)


def above_score(detections: Sequence[Detection], min_score: float) -> list[Detection]:
    """The detections scored at least `min_score` (0 keeps all), in generation order."""
    return [det for det in detections if det.score >= min_score]


def serialize_detections(detections: list[Detection], width: float, height: float) -> str:
    """Write boxes the way Florence-2 generates them: `label<loc_x0><loc_y0><loc_x1><loc_y1>...`."""
    parts = []
    for det in detections:
        x0, y0, x1, y1 = det.box
        bins = (
            coordinate_to_bin(x0, width),
            coordinate_to_bin(y0, height),
            coordinate_to_bin(x1, width),
            coordinate_to_bin(y1, height),
        )
        parts.append(det.label + "".join(loc_token(b) for b in bins))
    return "".join(parts)


_DETECTION_PATTERN = re.compile(r"([^<>]+?)((?:<loc_\d+>){4})")
_LOC_PATTERN = re.compile(r"<loc_(\d+)>")
_SPECIAL_PATTERN = re.compile(r"</?s>|<pad>")


_MARKUP_PATTERN = re.compile(r"<[^<>]*>")
"""A token that is markup (`</s>`, `<pad>`, a task token), never part of a label."""


def _box(bins: Sequence[int], width: float, height: float) -> tuple[float, float, float, float]:
    bins = [min(b, LOC_BINS - 1) for b in bins]
    x0, x1 = sorted((bin_to_coordinate(bins[0], width), bin_to_coordinate(bins[2], width)))
    y0, y1 = sorted((bin_to_coordinate(bins[1], height), bin_to_coordinate(bins[3], height)))
    return (x0, y0, x1, y1)


def parse_detections(text: str, width: float, height: float) -> list[Detection]:
    """Read `label<loc>x4` runs of text (training targets, reference output) into pixel boxes; malformed runs are skipped."""
    text = _SPECIAL_PATTERN.sub("", text)
    detections = []
    for match in _DETECTION_PATTERN.finditer(text):
        label = match.group(1).strip()
        bins = [int(b) for b in _LOC_PATTERN.findall(match.group(2))]
        if label:
            detections.append(Detection(label=label, box=_box(bins, width, height)))
    return detections


def parse_scored_detections(
    pieces: Sequence[str],
    probabilities: Sequence[float],
    width: float,
    height: float,
    label_text: Callable[[int, int], str] | None = None,
) -> list[Detection]:
    """Read generated tokens into scored pixel boxes: the token-level twin of `parse_detections`.

    `pieces[i]` is token i's own text (`<loc_12>`, `</s>`, or part of a label) and `probabilities[i]`
    the probability the decoder gave it. A detection is a run of label tokens followed by exactly four
    `<loc_N>` tokens, as in the text form; its score is `detection_score` of those tokens.
    `label_text(start, end)` decodes tokens start..end-1 together (byte-level BPE may split a character
    over two tokens); by default the pieces are joined.
    """
    if len(pieces) != len(probabilities):
        raise ValueError(f"{len(pieces)} tokens but {len(probabilities)} probabilities")
    detections = []
    label_start: int | None = None
    index = 0
    while index < len(pieces):
        piece = pieces[index]
        if _MARKUP_PATTERN.fullmatch(piece) is None:
            label_start = index if label_start is None else label_start
            index += 1
            continue
        locs = [_LOC_PATTERN.fullmatch(p) for p in pieces[index : index + 4]]
        if label_start is not None and len(locs) == 4 and all(locs):
            text = label_text(label_start, index) if label_text else "".join(pieces[label_start:index])
            if text.strip():
                score = round(detection_score(probabilities[label_start : index + 4]), SCORE_DIGITS)
                bins = [int(loc.group(1)) for loc in locs if loc]
                detections.append(Detection(text.strip(), _box(bins, width, height), score))
            index += 4
        else:
            index += 1
        label_start = None
    return detections


def clean_caption(text: str) -> str:
    """Strip special tokens and stray location tokens from a generated caption."""
    text = _SPECIAL_PATTERN.sub("", text)
    text = _LOC_PATTERN.sub("", text)
    return " ".join(text.split())


def caption_score(pieces: Sequence[str], probabilities: Sequence[float]) -> float | None:
    """A caption's confidence: the mean probability of its word tokens (markup left out); None if it has none."""
    words = [p for piece, p in zip(pieces, probabilities, strict=True) if _MARKUP_PATTERN.fullmatch(piece) is None]
    return sum(words) / len(words) if words else None
