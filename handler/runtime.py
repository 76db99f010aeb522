"""The process-wide model: loaded once per artifact folder, then shared by every entry point.

Nothing here imports torch until the first request that needs the model, so importing the app
stays fast and `/health` never pays for a load.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from handler.artifact import ArtifactError, LazyArtifact, Manifest
from handler.config import Settings
from handler.errors import ModelUnavailable
from handler.tasks import Task


def make_engine(model: Any, processor: Any) -> Any:
    """The single place that builds the inference engine, so its internals can change freely."""
    from handler.inference import Engine

    return Engine(model, processor)


@dataclass
class RunResult:
    predictions: dict[Task, Any]
    timings_ms: dict[str, float]
    manifest: Manifest


class ModelRuntime:
    """One artifact folder's model and engine; inference is serialized because each call already
    uses every CPU through torch's intra-op threads and the engine may keep per-call state."""

    def __init__(self, artifact_dir: str, torch_threads: int, retry_after_s: float) -> None:
        self.lazy = LazyArtifact(artifact_dir, retry_after_s=retry_after_s)
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
    """The runtime for the configured artifact folder (one per folder, so tests can switch folders)."""
    key = str(settings.artifact_dir)
    with _runtimes_lock:
        runtime = _runtimes.get(key)
        if runtime is None:
            runtime = ModelRuntime(key, settings.torch_threads, settings.artifact_retry_s)
            _runtimes[key] = runtime
        return runtime
