"""The model service every entry point shares: the process-wide model, and image in, JSON-ready results out.

The model is loaded once per artifact folder and shared by HTTP, S3 and direct invokes. Nothing here
imports torch until the first request that needs the model, so importing the app stays fast and
`/health` never pays for a load.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from handler.config import Settings
from handler.errors import InvalidRequest, ModelUnavailable
from handler.florence.artifact import ArtifactError, LazyArtifact, Manifest
from handler.florence.tasks import IMAGE_SIZE, Detection, Task, above_score, tasks_from
from handler.logs import annotate

if TYPE_CHECKING:  # Pillow is imported on the first request, not with the app
    from handler.inputs.images import DecodedImage

ALL_TASKS = [Task.CAPTION, Task.DETECT]


def make_engine(model: Any, processor: Any) -> Any:
    """The single place that builds the inference engine, so its internals can change freely."""
    from handler.florence.engine import Engine

    return Engine(model, processor)


@dataclass
class RunResult:
    predictions: dict[Task, Any]
    timings_ms: dict[str, float]
    manifest: Manifest


class ModelRuntime:
    """One artifact folder's model and engine; inference is serialized because each call already
    uses every CPU through torch's intra-op threads and the engine may keep per-call state."""

    def __init__(self, artifact_dir: str, torch_threads: int, retry_after_s: float, pinned_sha256: str = "") -> None:
        self.lazy = LazyArtifact(artifact_dir, retry_after_s=retry_after_s, pinned_sha256=pinned_sha256)
        self.torch_threads = torch_threads
        self._engine: Any = None
        self._engine_lock = threading.Lock()
        self._run_lock = threading.Lock()

    @property
    def is_loaded(self) -> bool:
        return self._engine is not None

    def _ensure_engine(self) -> tuple[Any, Manifest]:
        if self._engine is None:
            with self._engine_lock:
                if self._engine is None:
                    try:
                        loaded = self.lazy.get()
                    except ArtifactError as exc:
                        raise ModelUnavailable(f"model unavailable: {exc}") from exc
                    import torch

                    torch.set_num_threads(self.torch_threads)
                    self._engine = make_engine(loaded.model, loaded.processor)
        return self._engine, self.lazy.get().manifest

    def manifest(self) -> Manifest:
        return self._ensure_engine()[1]

    def run(self, image: Any, tasks: list[Task]) -> RunResult:
        engine, manifest = self._ensure_engine()
        with self._run_lock:
            analysis = engine.run(image, tasks)
        return RunResult(analysis.predictions, dict(analysis.timings_ms), manifest)

    def health(self) -> dict:
        loaded = self.lazy.loaded
        return {
            "model_loaded": self.is_loaded,
            "load_count": self.lazy.load_count,
            "model_sha": loaded.manifest.short_sha if loaded else None,
            "last_error": self.lazy.last_error,
        }


_runtimes: dict[str, ModelRuntime] = {}
_runtimes_lock = threading.Lock()


def runtime_for(settings: Settings) -> ModelRuntime:
    """The runtime for the configured artifact folder and pin (one per pair, so tests can switch)."""
    key = f"{settings.artifact_dir}#{settings.artifact_sha256}"
    with _runtimes_lock:
        runtime = _runtimes.get(key)
        if runtime is None:
            runtime = ModelRuntime(
                str(settings.artifact_dir), settings.torch_threads, settings.artifact_retry_s, settings.artifact_sha256
            )
            _runtimes[key] = runtime
        return runtime


def parse_tasks(value: object, default: list[Task] = ALL_TASKS) -> list[Task]:
    """Tasks from a request field, or a 400 that names what was wrong."""
    try:
        return tasks_from(value, default)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc


def parse_min_score(value: object, default: float | None = None) -> float | None:
    """`min_score` from a request field (direct invoke, S3 Batch `userArguments`): a number in [0, 1], or a 422.

    None or "" means `default` (None: `analyze` applies the MIN_SCORE setting); numeric strings are
    accepted because `userArguments` values are strings.
    """
    if value is None or value == "":
        return default
    try:
        number = float(value) if isinstance(value, int | float | str) and not isinstance(value, bool) else math.nan
    except (ValueError, OverflowError):  # OverflowError: an integer too large for a float (JSON allows 10**400)
        number = math.nan
    if not 0.0 <= number <= 1.0:
        raise InvalidRequest(f"min_score must be a number from 0 to 1, not {value!r}")
    return number


DRAFT_TO = 2 * IMAGE_SIZE
"""JPEGs decode at reduced scale down to twice the model's input; the final resize does the filtering."""


def decode(data: bytes, settings: Settings, full_resolution: bool = False) -> tuple[DecodedImage, float]:
    from handler.inputs.images import decode_image

    start = time.perf_counter()
    draft_to = 0 if full_resolution else DRAFT_TO
    decoded = decode_image(data, settings.largest_image_bytes, settings.max_image_pixels, draft_to)
    annotate(image=decoded.describe())
    return decoded, round((time.perf_counter() - start) * 1000, 1)


def to_original(detections: list[Detection], scale: tuple[float, float]) -> list[Detection]:
    """Boxes found on a reduced-scale decode, in the original image's pixels."""
    if scale == (1.0, 1.0):
        return list(detections)
    sx, sy = scale
    return [replace(d, box=(d.box[0] * sx, d.box[1] * sy, d.box[2] * sx, d.box[3] * sy)) for d in detections]


@dataclass
class ImageAnalysis:
    """One request's answer: the JSON payload, the decoded image and the boxes in its original pixels."""

    payload: dict[str, Any]
    image: DecodedImage
    detections: list[Detection]


def analyze(
    data: bytes, tasks: list[Task], settings: Settings, full_resolution: bool = False, min_score: float | None = None
) -> ImageAnalysis:
    """Decode and run `tasks` on one image; keep the boxes scored at least `min_score` (None: MIN_SCORE).

    `full_resolution` skips the reduced-scale JPEG decode, for callers that need every pixel
    (drawing boxes on the image).
    """
    annotate(task=",".join(t.api_name for t in tasks), image_bytes=len(data))
    decoded, decode_ms = decode(data, settings, full_resolution)
    result = runtime_for(settings).run(decoded.image, tasks)
    annotate(model_sha=result.manifest.short_sha)
    payload: dict[str, Any] = {}
    detections: list = []
    for task in tasks:
        prediction = result.predictions[task]
        payload.update(prediction.as_dict())
        if task is Task.DETECT:
            floor = settings.min_score if min_score is None else min_score
            detections = to_original(above_score(prediction.detections, floor), decoded.scale)
            payload["detections"] = [d.as_dict() for d in detections]
    timings = {"decode": decode_ms, **result.timings_ms}
    timings["total"] = round(decode_ms + result.timings_ms.get("total", 0.0), 1)
    payload.update(model_sha=result.manifest.short_sha, image=decoded.describe(), timings_ms=timings)
    return ImageAnalysis(payload, decoded, detections)
