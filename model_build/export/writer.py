"""Writing the served artifact folder: `model.pt`, `processor/` and `manifest.json`.

The manifest format and its checks live in `handler.florence.artifact`, so the writer and the loader cannot
drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from handler.florence.artifact import (
    MANIFEST_FILE,
    MODEL_FILE,
    PROCESSOR_DIR,
    Manifest,
    load_model,
    processor_hashes,
    runtime_versions,
    sha256_file,
)
from handler.florence.runtime.model import is_fast
from handler.florence.tasks import MAX_NEW_TOKENS, NUM_BEAMS, Task
from model_build.outputs import replaceable_folder, write_folder

ARTIFACT = "an artifact"
check_artifact_out = replaceable_folder(MANIFEST_FILE, ARTIFACT)
"""`check` for an artifact's `--out`: what `write_artifact` may replace, refused at the flag before any work."""


def generation_defaults() -> dict[str, Any]:
    return {
        "num_beams": NUM_BEAMS,
        "do_sample": False,
        "max_new_tokens": {t.api_name: n for t, n in MAX_NEW_TOKENS.items()},
    }


def write_artifact(
    model: torch.nn.Module,
    processor,
    out_dir: str | Path,
    *,
    base_id: str,
    image_size: int,
    tasks: list[Task],
    adapter_sha256: str | None = None,
    parity: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Manifest:
    """Pickle the finished model, save the processor and write a manifest that pins both.

    A served (fast runtime) model is loaded back the way the handler loads it (weights_only, the
    allow-list), so a model holding a class the handler would refuse fails here, at build time. The
    bench also writes the seed recipe's transformers model, which is timed but never served.

    `out_dir` is replaced whole only once the new artifact is complete (`model_build.outputs`), and only
    if it is new, empty or an artifact: an interrupted or refused build leaves it as it was.
    """

    def write(out: Path) -> Manifest:
        return _write(model, processor, out, base_id, image_size, tasks, adapter_sha256, parity, extra)

    return write_folder(Path(out_dir), write, marker=MANIFEST_FILE, what=ARTIFACT)


def _write(
    model: torch.nn.Module,
    processor,
    out: Path,
    base_id: str,
    image_size: int,
    tasks: list[Task],
    adapter_sha256: str | None,
    parity: dict[str, Any] | None,
    extra: dict[str, Any] | None,
) -> Manifest:
    model_path = out / MODEL_FILE
    torch.save(model, model_path)
    if is_fast(model):
        load_model(model_path)
    processor.save_pretrained(out / PROCESSOR_DIR)
    manifest = Manifest(
        model_sha256=sha256_file(model_path),
        model_bytes=model_path.stat().st_size,
        base_id=base_id,
        image_size=image_size,
        tasks=[t.api_name for t in tasks],
        generation=generation_defaults(),
        adapter_sha256=adapter_sha256,
        parity=parity or {},
        extra=extra or {},
        processor_sha256=processor_hashes(out / PROCESSOR_DIR),
        **runtime_versions(),
    )
    (out / MANIFEST_FILE).write_text(manifest.to_json())
    return manifest
