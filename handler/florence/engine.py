"""Running Florence-2 on images: preprocessing, greedy decoding and parsing into captions and boxes.

`model_build` evaluates through these same functions, so the figures it reports are those of the
served path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from handler.florence.tasks import (
    MAX_NEW_TOKENS,
    NUM_BEAMS,
    SCORE_DIGITS,
    Detection,
    Task,
    caption_score,
    clean_caption,
    parse_scored_detections,
)

if TYPE_CHECKING:  # Pillow and torch load with the model, not with the app
    from PIL import Image


@dataclass
class Prediction:
    task: Task
    text: str
    caption: str | None = None
    detections: list[Detection] = field(default_factory=list)
    caption_score: float | None = None

    def as_dict(self) -> dict[str, Any]:
        if self.task is Task.CAPTION:
            if self.caption_score is None:
                return {"caption": self.caption}
            return {"caption": self.caption, "caption_score": round(self.caption_score, SCORE_DIGITS)}
        return {"detections": [d.as_dict() for d in self.detections]}


@dataclass
class GeneratedTokens:
    """One generated sequence as the parsers read it: whole text, and each token with its probability.

    `pieces` and `probabilities` cover the generated tokens (the decoder's start token excluded);
    `label_text(start, end)` decodes pieces start..end-1 together, as the tokenizer would.
    """

    text: str
    pieces: list[str]
    probabilities: list[float]
    label_text: Callable[[int, int], str]


def parse_output(task: Task, tokens: GeneratedTokens, width: int, height: int) -> Prediction:
    """Turn generated tokens into a scored caption or scored boxes in the original image's pixels."""
    if task is Task.CAPTION:
        return Prediction(
            task,
            tokens.text,
            caption=clean_caption(tokens.text),
            caption_score=caption_score(tokens.pieces, tokens.probabilities),
        )
    detections = parse_scored_detections(tokens.pieces, tokens.probabilities, width, height, tokens.label_text)
    return Prediction(task, tokens.text, detections=detections)


def predict_batch(
    model: Any,
    processor: Any,
    images: list[Image.Image],
    task: Task,
    max_new_tokens: int | None = None,
    min_new_tokens: int = 0,
) -> list[Prediction]:
    """Greedy-decode one task for a batch of RGB PIL images.

    A fast-runtime model decodes image by image (batch-1 is what it is built for); a plain
    transformers model runs HF `generate` on the whole batch (the seed recipe's path).
    """
    runtime = runtime_of(model, processor)
    if isinstance(runtime, PlainRuntime):
        return runtime.predict_images(images, task, max_new_tokens, min_new_tokens)
    return [runtime.predict(runtime.encode(image), task, max_new_tokens, min_new_tokens) for image in images]


@dataclass
class Analysis:
    """Results of one or more tasks on one image, with where the time went (milliseconds)."""

    predictions: dict[Task, Prediction]
    timings_ms: dict[str, float]


@dataclass
class EncodedImage:
    """An image as a runtime holds it between tasks: its features (if shared) and the size boxes are reported in."""

    image: Image.Image
    size: tuple[int, int]
    features: Any = None


@dataclass
class TaskResult:
    prediction: Prediction
    ms: float
    """Milliseconds from the start of decoding until this task's answer was complete."""


class Runtime(Protocol):
    """What the engine needs from a model: encode an image once, then decode any task against it."""

    shares_encoding: bool
    """True when `encode` runs the vision tower, so every task of a request reuses its features."""

    def encode(self, image: Image.Image) -> EncodedImage: ...

    def predict(
        self, encoded: EncodedImage, task: Task, max_new_tokens: int | None = None, min_new_tokens: int = 0
    ) -> Prediction: ...

    def predict_tasks(self, encoded: EncodedImage, tasks: list[Task], pinned: dict[Task, int]) -> list[TaskResult]:
        """Every task on one encoded image, in order; `pinned` fixes a task's new-token count (benchmarks)."""
        ...


class FastRuntime:
    """The served int8 runtime (`handler.florence.runtime.FastFlorence`): one vision pass per request."""

    shares_encoding = True

    def __init__(self, model: Any) -> None:
        self.model = model

    def encode(self, image: Image.Image) -> EncodedImage:
        import torch

        from handler.florence.preprocess import draft_decode

        size = image.size  # before any JPEG draft, which changes it
        pixels = self.model.image_spec.to_pixels(draft_decode(image, self.model.image_spec.size))
        with torch.inference_mode():
            return EncodedImage(image, size, self.model.image_features(pixels))

    def predict(
        self, encoded: EncodedImage, task: Task, max_new_tokens: int | None = None, min_new_tokens: int = 0
    ) -> Prediction:
        import torch

        with torch.inference_mode():
            generation = self.model.generate(
                task.value, encoded.features, max_new_tokens or MAX_NEW_TOKENS[task], min_new_tokens
            )
        return self.parse(task, generation, encoded.size)

    def parse(self, task: Task, generation: Any, size: tuple[int, int]) -> Prediction:
        """A scored caption or boxes from a `Generation`: each token's probability (taken in the loop), then the parse."""
        generated = generation.ids[1:]
        tokens = GeneratedTokens(
            generation.text,
            self.model.tokenizer.decode_batch([[i] for i in generated], skip_special_tokens=False),
            generation.probabilities,
            lambda start, end: self.model.decode(generated[start:end]),
        )
        return parse_output(task, tokens, *size)

    def predict_tasks(self, encoded: EncodedImage, tasks: list[Task], pinned: dict[Task, int]) -> list[TaskResult]:
        """All tasks decoded as one batch: each decoder step reads the int8 weights once for all of them."""
        import torch

        from handler.florence.runtime.model import GenerationRequest

        requests = [
            GenerationRequest(task.value, pinned.get(task) or MAX_NEW_TOKENS[task], pinned.get(task, 0))
            for task in tasks
        ]
        with torch.inference_mode():
            generations = self.model.generate_batch(requests, encoded.features)
        return [
            TaskResult(self.parse(task, g, encoded.size), round(g.seconds * 1000, 1))
            for task, g in zip(tasks, generations, strict=True)
        ]


class PlainRuntime:
    """A transformers Florence-2 and its processor (the seed recipe): one HF `generate` per task."""

    shares_encoding = False

    def __init__(self, model: Any, processor: Any) -> None:
        if processor is None:
            raise ValueError("a plain transformers model needs its processor")
        self.model, self.processor = model, processor

    def encode(self, image: Image.Image) -> EncodedImage:
        return EncodedImage(image, image.size)

    def predict(
        self, encoded: EncodedImage, task: Task, max_new_tokens: int | None = None, min_new_tokens: int = 0
    ) -> Prediction:
        return self.predict_images([encoded.image], task, max_new_tokens, min_new_tokens)[0]

    def predict_tasks(self, encoded: EncodedImage, tasks: list[Task], pinned: dict[Task, int]) -> list[TaskResult]:
        """One HF `generate` per task, one after another (the seed recipe has no shared encoding)."""
        results = []
        for task in tasks:
            start = time.perf_counter()
            prediction = self.predict(encoded, task, pinned.get(task), pinned.get(task, 0))
            results.append(TaskResult(prediction, _ms_since(start)))
        return results

    def predict_images(
        self, images: list[Image.Image], task: Task, max_new_tokens: int | None = None, min_new_tokens: int = 0
    ) -> list[Prediction]:
        import torch

        from handler.florence.runtime.text import chosen_token_probabilities

        inputs = self.processor(text=[task.value] * len(images), images=images, return_tensors="pt")
        with torch.inference_mode():
            generated = self.model.generate(
                input_ids=inputs["input_ids"],
                pixel_values=inputs["pixel_values"],
                attention_mask=inputs.get("attention_mask"),
                max_new_tokens=max_new_tokens or MAX_NEW_TOKENS[task],
                min_new_tokens=min_new_tokens or None,
                num_beams=NUM_BEAMS,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
            )
            sequences = generated.sequences
            # logits[t] predicts sequences[:, t + 1]; rows past a sequence's EOS are padding.
            probabilities = chosen_token_probabilities(torch.stack(generated.logits, dim=1), sequences[:, 1:])
        texts = self.processor.batch_decode(sequences, skip_special_tokens=False)
        eos_id = self.processor.tokenizer.eos_token_id
        predictions: list[Prediction] = []
        for index, (row, text, image) in enumerate(zip(sequences.tolist(), texts, images, strict=True)):
            ids = row[1:]
            ids = ids[: ids.index(eos_id) + 1] if eos_id in ids else ids
            tokens = GeneratedTokens(
                text,
                self.processor.batch_decode([[i] for i in ids], skip_special_tokens=False),
                probabilities[index, : len(ids)].tolist(),
                partial(self._decode_span, ids),
            )
            predictions.append(parse_output(task, tokens, image.width, image.height))
        return predictions

    def _decode_span(self, ids: list[int], start: int, end: int) -> str:
        return self.processor.decode(ids[start:end], skip_special_tokens=False)


def runtime_of(model: Any, processor: Any = None) -> Runtime:
    """The runtime that fits `model`: the fast one for a served artifact, else transformers' own."""
    from handler.florence.runtime.model import is_fast

    return FastRuntime(model) if is_fast(model) else PlainRuntime(model, processor)


class Engine:
    """The served model: runs tasks on one image. The API, S3 and direct-invoke paths all call `run`.

    With the fast runtime (`model_build.export.serving_prep.prepare_for_serving`) the image is encoded by
    the vision tower once per request and shared by every task; with a plain HF model each task runs
    `generate` on its own. `new_tokens` pins the generated length per task (benchmarks only).
    """

    def __init__(self, model: Any, processor: Any = None, new_tokens: dict[Task, int] | None = None) -> None:
        self.model = model
        self.processor = processor
        self.runtime = runtime_of(model, processor)
        self.new_tokens = new_tokens or {}

    @classmethod
    def from_artifact(cls, loaded: Any) -> Engine:
        """Build from `handler.florence.artifact.load_artifact`'s result (processor is None for the fast runtime)."""
        return cls(loaded.model, loaded.processor)

    def run(self, image: Image.Image, tasks: list[Task]) -> Analysis:
        """Every task on one image. Timings: `vision` (fast runtime), per task the milliseconds from the
        start of decoding until its answer was complete (tasks decoded as one batch overlap), `total`."""
        timings: dict[str, float] = {}
        start = time.perf_counter()
        encoded = self.runtime.encode(image)
        if self.runtime.shares_encoding:
            timings["vision"] = _ms_since(start)
        results = self.runtime.predict_tasks(encoded, tasks, self.new_tokens)
        for task, result in zip(tasks, results, strict=True):
            timings[task.api_name] = result.ms
        timings["total"] = _ms_since(start)
        return Analysis({task: result.prediction for task, result in zip(tasks, results, strict=True)}, timings)


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)
