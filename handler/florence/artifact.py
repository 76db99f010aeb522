"""The served artifact: a folder with `model.pt`, `processor/` and `manifest.json`.

A sha256 next to the file it covers proves integrity, not origin: whoever can write `model.pt` can
rewrite the manifest too. So the pickle is never trusted to run code. It is unpickled with
`torch.load(weights_only=True)` and an explicit allow-list of the classes the served model is made of
(`served_classes`): a pickle that names anything else (`exec`, `os.system`, a foreign module) is refused
before a single call is made. Origin is pinned from outside the artifact: the image digest covers
handler code and artifact together, and an optional ARTIFACT_SHA256 (baked into the image's
environment) must equal the sha256 of `manifest.json`, whose hashes cover `model.pt` and every
processor file. See docs/deploy.md, "Trust model".

Loading is lazy, happens once per process, and is safe under concurrent first requests. torch is
imported here only when a load actually happens; transformers never is.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import mmap
import os
import pickle
import platform
import re
import stat
import sys
import threading
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

FORMAT_VERSION = 7
"""The format `model_build fuse` writes. 7: the stem and downsampling convs are stored in bfloat16
(`runtime.vision.PatchEmbed`); a format-6 runtime, handed such an artifact, would unpickle it and fail
at its first request, so the number changed. 6: int8 linears are `handler.florence.runtime.int8.Int8Linear` (plain tensors, packed after
loading in parallel) instead of `torch.ao`'s dynamic `Linear`. 5: the vision convs run channels-last with the block residuals folded in (no `nchw` flags), and
`/analyze` decodes its tasks as one batch. 4: the manifest covers every processor file
(`processor_sha256`), and `model.pt` must load with weights_only and the allow-list. 3: the runtime's
classes moved to `handler.florence.runtime` (the pickle names class paths). 2: the fast runtime's convs
carry the memory format they must run in. Older artifacts are refused with a rebuild hint rather than
failing inside the unpickler."""
READABLE_FORMATS = (6, FORMAT_VERSION)
"""What this runtime loads: format 6 differs only in float32 convs, which `PatchEmbed` runs as they are."""
MODEL_FILE = "model.pt"
PROCESSOR_DIR = "processor"
MANIFEST_FILE = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20
"""A manifest is about 1 KiB; a larger one is read no further (a huge or endless file costs nothing)."""
MAX_PICKLE_BYTES = 16 << 20
"""`data.pkl` inside `model.pt` (the module tree, prompt ids and the tokenizer JSON: 0.9 MiB at
Florence-2's size, without its BPE merges) is about 1.1 MiB at base size. Unpickling costs time and memory in proportion to it (80 MB of list entries took
32 s and 900 MB), so a larger one is refused before the unpickler starts."""


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
    processor_sha256: dict[str, str] = field(default_factory=dict)
    """sha256 of every file in `processor/`, by bare file name."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def read(cls, artifact_dir: str | Path, pinned_sha256: str = "") -> Manifest:
        """The manifest, refused unless its format is current, its file names stay inside the folder,
        and (when `pinned_sha256` is set) its bytes hash to the pin."""
        path = Path(artifact_dir) / MANIFEST_FILE
        raw = read_small_file(path, MAX_MANIFEST_BYTES)
        if pinned_sha256:
            actual = hashlib.sha256(raw).hexdigest()
            if actual != pinned_sha256:
                raise ArtifactError(
                    f"{MANIFEST_FILE} sha256 {actual[:12]} is not the pinned ARTIFACT_SHA256 {pinned_sha256[:12]};"
                    " this is not the artifact the image was built for"
                )
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # RecursionError: arrays nested thousands deep
            raise ArtifactError(f"{path} is not valid JSON: {str(exc)[:200]}") from exc
        if not isinstance(data, dict):
            raise ArtifactError(f"{path} is not a JSON object")
        version = data.get("format_version")
        if type(version) is not int or version not in READABLE_FORMATS:
            readable = " or ".join(str(v) for v in READABLE_FORMATS)
            raise ArtifactError(
                f"artifact format {version!r} is not one this runtime reads ({readable}); "
                "rebuild it with `python -m model_build fuse`"
            )
        known = set(cls.__dataclass_fields__)
        try:
            manifest = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise ArtifactError(f"manifest is missing fields: {exc}") from exc
        manifest.check_types()
        for name in [manifest.model_file, *manifest.processor_sha256]:
            check_bare_name(name)
        return manifest

    def check_types(self) -> None:
        """Every field has the JSON type `fuse` writes, so a wrong one is named here, not met as a TypeError later."""
        for name, expected in MANIFEST_FIELD_TYPES.items():
            value = getattr(self, name)
            if type(value) not in expected:
                names = " or ".join("null" if kind is type(None) else kind.__name__ for kind in expected)
                raise ArtifactError(f"manifest field {name} is {type(value).__name__} {str(value)[:40]!r}, not {names}")
        for digest in [self.model_sha256, *self.processor_sha256.values()]:
            if type(digest) is not str or not SHA256_HEX.fullmatch(digest):
                raise ArtifactError(f"manifest holds {str(digest)[:80]!r} where a sha256 (64 hex digits) belongs")

    @property
    def short_sha(self) -> str:
        return self.model_sha256[:12]


MANIFEST_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "model_sha256": (str,),
    "model_bytes": (int,),
    "python": (str,),
    "torch": (str,),
    "transformers": (str,),
    "base_id": (str,),
    "image_size": (int,),
    "tasks": (list,),
    "generation": (dict,),
    "adapter_sha256": (str, type(None)),
    "parity": (dict,),
    "format_version": (int,),
    "model_file": (str,),
    "processor_sha256": (dict,),
    "extra": (dict,),
}
"""The JSON type of each manifest field (exact: `true` is not an int)."""
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def regular_file(path: Path) -> os.stat_result:
    """The file's status, unless it is missing, a link, or not a plain file (a FIFO would block the
    reader forever, /dev/zero never ends, a link reads outside the folder)."""
    try:
        status = path.lstat()
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path.name} is missing from the artifact folder {path.parent}") from exc
    except OSError as exc:
        raise ArtifactError(f"unreadable {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(status.st_mode):
        kind = "a link" if stat.S_ISLNK(status.st_mode) else "a folder" if stat.S_ISDIR(status.st_mode) else "special"
        raise ArtifactError(f"{path} is {kind}, not a plain file; an artifact holds regular files only")
    return status


def read_small_file(path: Path, limit: int) -> bytes:
    """The bytes of a plain file of at most `limit` bytes, or ArtifactError (checked on the open handle)."""
    regular_file(path)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as exc:  # swapped for a link or a FIFO since the check
        raise ArtifactError(f"unreadable {path}: {exc.strerror or exc}") from exc
    with open(descriptor, "rb") as handle:
        status = os.fstat(handle.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise ArtifactError(f"{path} is not a plain file; an artifact holds regular files only")
        if status.st_size > limit:
            raise ArtifactError(f"{path} is {status.st_size} bytes; more than {limit} is no file fuse writes")
        try:
            return handle.read(limit + 1)[:limit]
        except OSError as exc:
            raise ArtifactError(f"unreadable {path}: {exc.strerror or exc}") from exc


def check_bare_name(name: object) -> None:
    """A manifest names files inside the artifact folder only: no path, no `..`, nothing absolute."""
    bare = (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and PurePosixPath(name).name == name
        and PureWindowsPath(name).name == name
        and "\0" not in name
    )
    if not bare:
        raise ArtifactError(f"manifest names {name!r}; artifact files must be bare names inside the folder")


def sha256_file(path: str | Path) -> str:
    """The file's sha256 in one `update` over a read-only mapping.

    hashlib releases the GIL for the whole call, so `load_artifact` can import torch on another
    thread meanwhile. Read in 1 MiB chunks instead, the hash re-took the GIL 234 times for a
    Florence-2-base `model.pt` and, beside an import holding it, took 0.63-0.70 s instead of 0.23 s;
    in 32 MiB chunks (a copy of each) the first caption came 10-250 ms later (three alternating cold
    starts). A file truncated while mapped would kill the process with SIGBUS, but `load_model` maps
    the same file for the model's whole life: the artifact must not change under a running process
    either way (the image is read-only on Lambda).
    """
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return hashlib.sha256().hexdigest()
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return hashlib.sha256(mapped).hexdigest()


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


def processor_hashes(processor_dir: Path) -> dict[str, str]:
    """sha256 of every file in the processor folder, by name (what the manifest records).

    The folder and its files must be plain: not links, FIFOs or devices (ArtifactError)."""
    try:
        status = processor_dir.lstat()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ArtifactError(f"unreadable {processor_dir}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(status.st_mode):
        raise ArtifactError(f"{processor_dir} is not a folder (a link or a file); an artifact holds regular files only")
    try:
        paths = sorted(processor_dir.iterdir())
    except OSError as exc:
        raise ArtifactError(f"unreadable {processor_dir}: {exc.strerror or exc}") from exc
    for path in paths:
        regular_file(path)
    return {path.name: sha256_file(path) for path in paths}


def verify(artifact_dir: str | Path, manifest: Manifest) -> Path:
    """Refuse an artifact whose files or runtime do not match its manifest; return the pickle path."""
    processor_dir = Path(artifact_dir) / PROCESSOR_DIR
    on_disk = processor_hashes(processor_dir)
    if set(on_disk) != set(manifest.processor_sha256):
        raise ArtifactError(
            f"{PROCESSOR_DIR}/ holds {sorted(on_disk)} but the manifest covers {sorted(manifest.processor_sha256)}"
        )
    for name, digest in on_disk.items():
        if digest != manifest.processor_sha256[name]:
            raise ArtifactError(f"{PROCESSOR_DIR}/{name} does not match its sha256 in the manifest")
    model_path = Path(artifact_dir) / manifest.model_file
    size = regular_file(model_path).st_size
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


def served_classes() -> list[Any]:
    """Everything the served model's pickle may name beyond torch's own weights-only defaults.

    The classes the fast runtime is built from (its int8 linear layer included), the torch modules
    inside it, and `set`. None of them runs code from pickled data: they are rebuilt with `__new__` and their state.
    A runtime class added to the model must be added here; `write_artifact` loads every artifact it
    writes through this list, so a missing entry fails the build, not the deploy.
    """
    import builtins

    import torch

    from handler.florence.preprocess import ImageSpec
    from handler.florence.runtime import int8, model, text, vision

    return [
        *(model.FastFlorence, model.DecodeSpec, ImageSpec),
        *(text.TextModel, text.EncoderLayer, text.DecoderLayer, text.TiedInt8Head),
        *(vision.VisionTower, vision.PatchEmbed, vision.MixingBlock, vision.WindowAttention),
        *(vision.ChannelAttention, vision.Mlp, vision.Projector),
        *(torch.nn.ModuleList, torch.nn.Conv2d, torch.nn.LayerNorm),
        int8.Int8Linear,
        builtins.set,
    ]


def _refusal(exc: Exception) -> str:
    """The unpickler's reason in one line, without torch's advice to retry with weights_only=False."""
    text = str(exc)
    marker = "WeightsUnpickler error: "
    if marker in text:
        text = text.split(marker, 1)[1]
    found = re.search(r"Unsupported global: GLOBAL (\S+) was not an allowed global", text) or re.search(
        r"unsupported GLOBAL (\S+) whose module \S+ is blocked", text
    )
    if found:
        return f"it names {found.group(1)}, which is not on the allow-list"
    # torch's preamble advises re-running with weights_only off; that advice is not passed on.
    lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line]
    if not lines:
        return type(exc).__name__
    if isinstance(exc, pickle.UnpicklingError):
        return lines[0][:300]
    return f"{type(exc).__name__}: {lines[0][:300]}"  # KeyError '7' says little without its type


def check_archive(model_path: Path) -> None:
    """Refuse a `model.pt` that is not laid out as `torch.save` writes it, before torch reads a byte of it.

    Only the zip's central directory is read. torch.save stores every member uncompressed under one
    folder; a deflated member (a zip bomb: 600 MB of pickle from 600 KB took the process to 1.9 GB),
    a duplicate name (which copy is read depends on the reader), a path out of the folder, or a
    pickle over MAX_PICKLE_BYTES is refused.
    """
    try:
        with zipfile.ZipFile(model_path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ArtifactError(f"{model_path.name} is not a torch.save archive: {exc}") from exc
    names = [member.filename for member in members]
    folder = names[0].split("/", 1)[0] if names else ""
    if len(set(names)) != len(names):
        raise ArtifactError(f"{model_path.name} holds two members of the same name")
    for member in members:
        parts = member.filename.split("/")
        if len(parts) < 2 or parts[0] != folder or "" in parts or ".." in parts or "\\" in member.filename:
            raise ArtifactError(f"{model_path.name} holds {member.filename[:100]!r}, outside its folder {folder!r}")
        if member.compress_type != zipfile.ZIP_STORED or member.compress_size != member.file_size:
            raise ArtifactError(f"{model_path.name} holds a compressed member {member.filename[:100]!r}")
    pickled = {member.filename: member.file_size for member in members}.get(f"{folder}/data.pkl")
    if pickled is None:
        raise ArtifactError(f"{model_path.name} holds no {folder}/data.pkl")
    if pickled > MAX_PICKLE_BYTES:
        raise ArtifactError(
            f"{model_path.name}'s pickle is {pickled} bytes; more than {MAX_PICKLE_BYTES} is no model we build"
        )


def load_model(model_path: Path) -> Any:
    """Unpickle the served model with the allow-list only (memory-mapped); ArtifactError otherwise."""
    import torch

    from handler.florence.model_check import MalformedModel, check_served_model
    from handler.florence.runtime.model import is_fast

    check_archive(model_path)
    try:
        with torch.serialization.safe_globals(served_classes()):
            model = torch.load(model_path, weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        raise ArtifactError(
            f"refused to load {model_path.name}: it is not a model this service trusts ({_refusal(exc)}). "
            "The artifact is forged or was built by another version; rebuild it with `python -m model_build fuse`"
        ) from exc
    except Exception as exc:  # corrupt zip, truncated storage, a bad __setstate__ argument
        raise ArtifactError(f"could not load {model_path.name}: {_refusal(exc)}") from exc
    if not is_fast(model):
        raise ArtifactError(f"{model_path.name} holds a {type(model).__name__}, not the served fast runtime")
    try:
        check_served_model(model)
    except MalformedModel as exc:
        raise ArtifactError(f"{model_path.name} is not a model this runtime can serve: {exc}") from exc
    except Exception as exc:  # state odd enough to break the walk itself (an attribute of the wrong kind)
        raise ArtifactError(f"{model_path.name} is not a model this runtime can serve: {_refusal(exc)}") from exc
    return model


@dataclass
class LoadedArtifact:
    manifest: Manifest
    model: Any
    processor: Any
    """Always None when serving: the fast runtime carries its own preprocessing and tokenizer."""
    load_seconds: float
    """From the call until the model was ready, the `import torch` it overlaps included."""
    torch_import_seconds: float = 0.0
    """How long torch took to import beside the sha256 check (0 when it was already imported)."""


class _BackgroundImport:
    """Imports a module on a second thread (the sha256 check leaves the second CPU idle); `wait()` joins it."""

    def __init__(self, name: str) -> None:
        self.name, self.seconds = name, 0.0
        self._thread: threading.Thread | None = None
        if name not in sys.modules:
            self._thread = threading.Thread(target=self._run, name=f"import-{name}", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        start = time.perf_counter()
        # A failing import fails again, with its traceback, where the caller's thread needs the module.
        with contextlib.suppress(Exception):
            importlib.import_module(self.name)
        self.seconds = time.perf_counter() - start

    def wait(self) -> float:
        if self._thread is not None:
            self._thread.join()
        return self.seconds


def load_artifact(artifact_dir: str | Path, pinned_sha256: str = "") -> LoadedArtifact:
    """Verify every file against the (pinned) manifest, then load the model without running its code.

    `import torch` (about 1 s, mostly one core) runs on a second thread while the sha256 of
    `model.pt` (0.15 s at base size) runs on this one: process start to loaded model 0.11-0.13 s
    shorter. Nothing of the artifact is read by the import.
    """
    start = time.perf_counter()
    torch_import = _BackgroundImport("torch")
    try:
        manifest = Manifest.read(artifact_dir, pinned_sha256)
        model_path = verify(artifact_dir, manifest)
    finally:  # also on a refusal: a process that exits next must not do so mid-import
        torch_import_seconds = torch_import.wait()

    from handler.florence.memory import drop_file_pages, return_freed_heap, reuse_freed_heap
    from handler.florence.runtime.int8 import pack_int8_layers

    model = load_model(model_path)
    model.eval()
    # The C decoder step packs its own copies of the decoder's int8 weights; fbgemm packs the rest.
    model.text.native_decoder(mapped_from=model_path)
    pack_int8_layers(model, mapped_from=model_path, skip=model.text.natively_packed())
    # Packing copied the int8 weights; the mapped pickle pages it read are now mostly dead.
    # Pages still in use fault back in from the file, which holds the bytes the sha256 check read.
    drop_file_pages(model_path)
    return_freed_heap()
    reuse_freed_heap()
    return LoadedArtifact(manifest, model, None, time.perf_counter() - start, torch_import_seconds)


class LazyArtifact:
    """Loads the artifact on first use, once, even when many threads ask at the same moment.

    A failed load is remembered for `retry_after_s`, so a broken or missing artifact costs one
    sha256 pass per window instead of one per request, and a fixed artifact is picked up later.
    """

    def __init__(self, artifact_dir: str | Path, retry_after_s: float = 30.0, pinned_sha256: str = "") -> None:
        self.artifact_dir = Path(artifact_dir)
        self.retry_after_s = retry_after_s
        self.pinned_sha256 = pinned_sha256
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
                        self._loaded = load_artifact(self.artifact_dir, self.pinned_sha256)
                    except Exception as exc:  # anything that stops a load makes the model unavailable
                        error = exc if isinstance(exc, ArtifactError) else ArtifactError(f"artifact load failed: {exc}")
                        self._failure = (error, time.monotonic())
                        if error is exc:
                            raise
                        raise error from exc
                    self._failure = None
        return self._loaded
