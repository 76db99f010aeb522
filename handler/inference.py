"""Running Florence-2 on images: preprocessing, greedy decoding and parsing into captions and boxes.

`model_build` evaluates through these same functions, so the figures it reports are those of the
served path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from handler.tasks import MAX_NEW_TOKENS, NUM_BEAMS, Detection, Task, clean_caption, parse_detections


@dataclass
class Prediction:
    task: Task
    text: str
    caption: str | None = None
    detections: list[Detection] = field(default_factory=list)

    def as_dict(self) -> dict:
        if self.task is Task.CAPTION:
            return {"caption": self.caption}
        return {"detections": [d.as_dict() for d in self.detections]}


def parse_output(task: Task, text: str, width: int, height: int) -> Prediction:
    """Turn generated text into a caption or boxes in the original image's pixel coordinates."""
    if task is Task.CAPTION:
        return Prediction(task, text, caption=clean_caption(text))
    return Prediction(task, text, detections=parse_detections(text, width, height))


def predict_batch(model, processor, images: list, task: Task, max_new_tokens: int | None = None) -> list[Prediction]:
    """Greedy-decode one task for a batch of RGB PIL images (the plain HF `generate` path)."""
    import torch

    inputs = processor(text=[task.value] * len(images), images=images, return_tensors="pt")
    with torch.inference_mode():
        generated = model.generate(
            input_ids=inputs["input_ids"],
            pixel_values=inputs["pixel_values"],
            attention_mask=inputs.get("attention_mask"),
            max_new_tokens=max_new_tokens or MAX_NEW_TOKENS[task],
            num_beams=NUM_BEAMS,
            do_sample=False,
        )
    texts = processor.batch_decode(generated, skip_special_tokens=False)
    return [parse_output(task, text, img.width, img.height) for text, img in zip(texts, images)]


@dataclass
class Analysis:
    """Results of one or more tasks on one image, with where the time went (milliseconds)."""

    predictions: dict[Task, Prediction]
    timings_ms: dict[str, float]


class Engine:
    """The served model: runs tasks on one image. The API, S3 and direct-invoke paths all call `run`."""

    def __init__(self, model, processor) -> None:
        self.model = model
        self.processor = processor

    def run(self, image, tasks: list[Task]) -> Analysis:
        import time

        predictions: dict[Task, Prediction] = {}
        timings: dict[str, float] = {}
        for task in tasks:
            start = time.perf_counter()
            predictions[task] = predict_batch(self.model, self.processor, [image], task)[0]
            timings[task.api_name] = round((time.perf_counter() - start) * 1000, 1)
        timings["total"] = round(sum(timings.values()), 1)
        return Analysis(predictions, timings)
