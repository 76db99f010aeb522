"""Child process of `python -m model_build bench`: cold start and peak RSS, measured in a fresh interpreter.

Imports only what the path under test imports, so the figures include `import torch` (and, for the
seed recipe, `import transformers`). Prints one JSON line. Usage:
`python -m model_build.bench.child {served|baseline} ARTIFACT_DIR IMAGE CAPTION_TOKENS DETECT_TOKENS [PROMPTS_JSON]`
"""

from __future__ import annotations

import json
import resource
import sys
import time

START = time.perf_counter()


def _served(artifact_dir: str, image, caption_tokens: int, detect_tokens: int, threads: int) -> dict:
    """Exactly the handler's path: verify + unpickle the artifact, build the Engine, run a caption."""
    marks = {}
    from handler.florence.artifact import load_artifact

    # As the handler does: torch is first imported inside load_artifact, beside the sha256 check.
    loaded = load_artifact(artifact_dir)
    marks["import_torch_s"] = loaded.torch_import_seconds
    marks["artifact_load_s"] = loaded.load_seconds
    import torch

    if threads:  # after the load, where `service.ModelRuntime` sets them
        torch.set_num_threads(threads)
    from handler.florence.engine import Engine
    from handler.florence.tasks import Task

    engine = Engine(
        loaded.model, loaded.processor, new_tokens={Task.CAPTION: caption_tokens, Task.DETECT: detect_tokens}
    )
    engine.run(image, [Task.CAPTION])
    marks["first_caption_s"] = time.perf_counter() - START
    engine.run(image, [Task.CAPTION, Task.DETECT])
    marks["transformers_imported"] = "transformers" in sys.modules
    return marks


def _baseline(artifact_dir: str, image, caption_tokens: int, detect_tokens: int, prompts: dict) -> dict:
    """The seed recipe's handler: torch + transformers, torch.load of the int8 HF model, HF generate."""
    from pathlib import Path

    marks = {}
    import torch

    marks["import_torch_s"] = time.perf_counter() - START
    import transformers  # noqa: F401

    marks["import_transformers_s"] = time.perf_counter() - START
    from transformers import AutoProcessor

    load_start = time.perf_counter()
    model = torch.load(Path(artifact_dir) / "model.pt", weights_only=False).eval()
    processor = AutoProcessor.from_pretrained(Path(artifact_dir) / "processor")
    marks["artifact_load_s"] = time.perf_counter() - load_start
    from model_build.bench.baseline import baseline_generate

    baseline_generate(model, processor, image, prompts["<CAPTION>"], caption_tokens)
    marks["first_caption_s"] = time.perf_counter() - START
    baseline_generate(model, processor, image, prompts["<OD>"], detect_tokens)
    return marks


def peak_rss_mib() -> float:
    """This process's high-water RSS. getrusage's ru_maxrss would do, but Linux carries the parent's
    peak across fork+exec into it (the bench parent holds two models), so read VmHWM, which exec resets."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str]) -> int:
    mode, artifact_dir, image_path, caption_tokens, detect_tokens = argv[:5]
    threads = int(argv[6]) if len(argv) > 6 else 0
    from PIL import Image

    image = Image.open(image_path).convert("RGB")
    if mode == "served":
        marks = _served(artifact_dir, image, int(caption_tokens), int(detect_tokens), threads)
    else:
        import torch

        if threads:
            torch.set_num_threads(threads)
        marks = _baseline(artifact_dir, image, int(caption_tokens), int(detect_tokens), json.loads(argv[5]))
    marks["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(marks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
