"""The served artifact: a folder with `model.pt`, `processor/` and `manifest.json`.

The pickle in `model.pt` is code, so it is only unpickled after its sha256 and the runtime versions
match the manifest. Loading is lazy, happens once per process, and is safe under concurrent first
requests. torch and transformers are imported here only when a load actually happens.
"""

from __future__ import annotations

import hashlib
import json
import platform
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 4
"""4: the vision convs run channels-last with the block residuals folded in (no `nchw` flags).
3: the runtime's classes moved to `handler.florence.runtime` (the pickle names class paths).
2: the fast runtime's convs carry the memory format they must run in. Older pickles are refused with
a rebuild hint rather than failing inside the unpickler."""
MODEL_FILE = "model.pt"
PROCESSOR_DIR = "processor"
MANIFEST_FILE = "manifest.json"


class ArtifactError(RuntimeError):
    """The artifact is missing, corrupt or built for another runtime; the API answers 503."""


@dataclass
class Manifest:
    """What `model_build fuse` promises about `model.pt`, checked before it is unpickled."""

    model_sha256: str
    model_bytes: int
    python: str
    torch: str
    transformers: str
    base_id: str
    image_size: int
    tasks: list[str]
    generation: dict[str, Any]
    adapter_sha256: str | None = None
    parity: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    model_file: str = MODEL_FILE
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def read(cls, artifact_dir: str | Path) -> Manifest:
        path = Path(artifact_dir) / MANIFEST_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ArtifactError(f"no {MANIFEST_FILE} in artifact folder {artifact_dir}") from exc
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"unreadable {path}: {exc}") from exc
        if data.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"artifact format {data.get('format_version')!r} is not the supported {FORMAT_VERSION}; "
                "rebuild it with `python -m model_build fuse`"
            )
        known = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise ArtifactError(f"manifest is missing fields: {exc}") from exc

    @property
    def short_sha(self) -> str:
        return self.model_sha256[:12]


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def runtime_versions() -> dict[str, str]:
    """Versions that must match between build and serve for the pickle to load faithfully."""
    from importlib.metadata import version

    import torch

    # importlib.metadata reads the installed version without importing transformers (~3 s).
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": version("transformers"),
    }


def _major_minor(version: str) -> str:
    return ".".join(version.split("+", maxsplit=1)[0].split(".")[:2])


def verify(artifact_dir: str | Path, manifest: Manifest) -> Path:
    """Refuse an artifact whose pickle or runtime does not match its manifest; return the pickle path."""
    model_path = Path(artifact_dir) / manifest.model_file
    if not model_path.is_file():
        raise ArtifactError(f"model file {model_path} is missing")
    size = model_path.stat().st_size
    if size != manifest.model_bytes:
        raise ArtifactError(f"{model_path.name} is {size} bytes, manifest says {manifest.model_bytes}")
    actual = sha256_file(model_path)
    if actual != manifest.model_sha256:
        raise ArtifactError(
            f"{model_path.name} sha256 {actual[:12]} does not match manifest {manifest.model_sha256[:12]};"
            " refusing to unpickle it"
        )
    running = runtime_versions()
    for name in ("python", "torch", "transformers"):
        built = getattr(manifest, name)
        if _major_minor(built) != _major_minor(running[name]):
            raise ArtifactError(
                f"artifact was built with {name} {built} but this runtime has {running[name]}; rebuild it"
            )
    return model_path


@dataclass
class LoadedArtifact:
    manifest: Manifest
    model: Any
    processor: Any
    load_seconds: float


def load_artifact(artifact_dir: str | Path) -> LoadedArtifact:
    """Verify, then unpickle the model (memory-mapped) and load the processor."""
    import time

    start = time.perf_counter()
    manifest = Manifest.read(artifact_dir)
    model_path = verify(artifact_dir, manifest)

    import torch

    from handler.florence.memory import drop_file_pages, return_freed_heap
    from handler.florence.runtime.model import is_fast

    try:
        model = torch.load(model_path, weights_only=False, mmap=True)
    except Exception as exc:  # a pickle can raise anything; report it as an artifact fault
        raise ArtifactError(f"could not unpickle {model_path.name}: {exc}") from exc
    model.eval()
    # Unpickling repacked the int8 weights; the mapped pickle pages it read are now mostly dead.
    # Pages still in use fault back in from the file, which holds the bytes the sha256 check read.
    drop_file_pages(model_path)
    return_freed_heap()
    processor = None
    if not is_fast(model):  # the fast runtime carries its own preprocessing and tokenizer
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(Path(artifact_dir) / PROCESSOR_DIR)
    return LoadedArtifact(manifest, model, processor, time.perf_counter() - start)


class LazyArtifact:
    """Loads the artifact on first use, once, even when many threads ask at the same moment.

    A failed load is remembered for `retry_after_s`, so a broken or missing artifact costs one
    sha256 pass per window instead of one per request, and a fixed artifact is picked up later.
    """

    def __init__(self, artifact_dir: str | Path, retry_after_s: float = 30.0) -> None:
        self.artifact_dir = Path(artifact_dir)
        self.retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self._loaded: LoadedArtifact | None = None
        self._failure: tuple[ArtifactError, float] | None = None
        self.load_count = 0

    @property
    def is_loaded(self) -> bool:
        return self._loaded is not None

    @property
    def loaded(self) -> LoadedArtifact | None:
        return self._loaded

    @property
    def last_error(self) -> str | None:
        return str(self._failure[0]) if self._failure else None

    def _recent_failure(self) -> ArtifactError | None:
        if self._failure and time.monotonic() - self._failure[1] < self.retry_after_s:
            return self._failure[0]
        return None

    def get(self) -> LoadedArtifact:
        if self._loaded is None:
            with self._lock:
                if self._loaded is None:
                    failure = self._recent_failure()
                    if failure is not None:
                        raise ArtifactError(str(failure))  # fresh object: re-raising one grows its traceback
                    self.load_count += 1
                    try:
                        self._loaded = load_artifact(self.artifact_dir)
                    except Exception as exc:  # anything that stops a load makes the model unavailable
                        error = exc if isinstance(exc, ArtifactError) else ArtifactError(f"artifact load failed: {exc}")
                        self._failure = (error, time.monotonic())
                        if error is exc:
                            raise
                        raise error from exc
                    self._failure = None
        return self._loaded
