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


def predict_batch(model, processor, images: list, task: Task, max_new_tokens: int | None = None,
                  min_new_tokens: int = 0) -> list[Prediction]:
    """Greedy-decode one task for a batch of RGB PIL images.

    A fast-runtime model decodes image by image (batch-1 is what it is built for); a plain
    transformers model runs HF `generate` on the whole batch (the seed recipe's path).
    """
    import torch

    from handler.fast_model import is_fast

    if is_fast(model):
        return [_fast_predict(model, img, task, None, max_new_tokens, min_new_tokens) for img in images]
    inputs = processor(text=[task.value] * len(images), images=images, return_tensors="pt")
    with torch.inference_mode():
        generated = model.generate(
            input_ids=inputs["input_ids"],
            pixel_values=inputs["pixel_values"],
            attention_mask=inputs.get("attention_mask"),
            max_new_tokens=max_new_tokens or MAX_NEW_TOKENS[task],
            min_new_tokens=min_new_tokens or None,
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


def _encode_image(model, image):
    """Vision features for one image, and the size boxes are reported in (before any JPEG draft)."""
    import torch

    from handler.preprocess import draft_decode

    size = image.size
    pixels = model.image_spec.to_pixels(draft_decode(image, model.image_spec.size))
    with torch.inference_mode():
        return model.image_features(pixels), size


def _fast_predict(model, image, task: Task, encoded=None, max_new_tokens: int | None = None,
                  min_new_tokens: int = 0) -> Prediction:
    """One task on one image with the fast runtime; pass `encoded` to reuse an encoded image."""
    import torch

    features, (width, height) = encoded or _encode_image(model, image)
    with torch.inference_mode():
        generation = model.generate(task.value, features, max_new_tokens or MAX_NEW_TOKENS[task], min_new_tokens)
    return parse_output(task, generation.text, width, height)


class Engine:
    """The served model: runs tasks on one image. The API, S3 and direct-invoke paths all call `run`.

    With the fast runtime (`model_build.serving_prep.prepare_for_serving`) the image is encoded by
    the vision tower once per request and shared by every task; with a plain HF model each task runs
    `generate` on its own. `new_tokens` pins the generated length per task (benchmarks only).
    """

    def __init__(self, model, processor=None, new_tokens: dict[Task, int] | None = None) -> None:
        from handler.fast_model import is_fast

        self.model = model
        self.processor = processor
        self.fast = is_fast(model)
        self.new_tokens = new_tokens or {}
        if not self.fast and processor is None:
            raise ValueError("a plain transformers model needs its processor")

    @classmethod
    def from_artifact(cls, loaded) -> "Engine":
        """Build from `handler.artifact.load_artifact`'s result (processor is None for the fast runtime)."""
        return cls(loaded.model, loaded.processor)

    def run(self, image, tasks: list[Task]) -> Analysis:
        import time

        predictions: dict[Task, Prediction] = {}
        timings: dict[str, float] = {}
        encoded = None
        if self.fast and tasks:
            start = time.perf_counter()
            encoded = _encode_image(self.model, image)
            timings["vision"] = round((time.perf_counter() - start) * 1000, 1)
        for task in tasks:
            start = time.perf_counter()
            forced = self.new_tokens.get(task)
            if self.fast:
                predictions[task] = _fast_predict(self.model, image, task, encoded, forced, forced or 0)
            else:
                predictions[task] = _plain_predict(self.model, self.processor, image, task, forced)
            timings[task.api_name] = round((time.perf_counter() - start) * 1000, 1)
        timings["total"] = round(sum(timings.values()), 1)
        return Analysis(predictions, timings)


def _plain_predict(model, processor, image, task: Task, forced: int | None) -> Prediction:
    if forced is None:
        return predict_batch(model, processor, [image], task)[0]
    return predict_batch(model, processor, [image], task, max_new_tokens=forced, min_new_tokens=forced)[0]
