"""Probe: the served process's peak memory for the largest image the service accepts, at Florence-2-base size.

The bench's peak RSS (docs/benchmarks.md) is for a 640 x 480 photo. An upload may be any image up to
MAX_IMAGE_PIXELS, and decoding one is the request's largest allocation: a 40 MP RGBA PNG is 160 MB
of pixels and its RGB composite another 120 MB (`handler.inputs.images` composites by bands of rows and
makes no RGBA copy; both once added 280 MB). `MemorySize`'s floor in template.yaml
must hold that peak, or Lambda kills the runtime mid-request. Each image runs in a fresh process:
load the artifact, /analyze a 640 x 480 photo, then the large image as `handler.service` decodes it
(`/detect?format=png` decodes at full resolution and draws on it). Run by hand (about 2 minutes):

    PYTHONPATH=. python docs/probes/worst_image_memory.py

Figures are in docs/deploy.md (the `MemorySize` row).
"""

from __future__ import annotations

import io
import math
import subprocess
import sys
import tempfile
from pathlib import Path

from handler.config import Settings

SHAPES = {
    "RGBA PNG": ("RGBA", 4),
    "16-bit grey PNG": ("I;16", 1),
    "RGB PNG": ("RGB", 3),
    "RGB JPEG": ("RGB", 3),
}


def peak_mib() -> float:
    """This process's peak resident memory (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return math.nan


def largest_image(shape: str) -> bytes:
    """A MAX_IMAGE_PIXELS image of `shape` (stripes, so it compresses small: the bytes limit is not the point)."""
    import numpy as np
    from PIL import Image

    mode, channels = SHAPES[shape]
    side = math.isqrt(Settings().max_image_pixels)
    dtype = np.uint16 if mode == "I;16" else np.uint8
    pixels = np.zeros((side, side, channels), dtype)
    pixels[::7] = 40_000 if mode == "I;16" else 255
    if mode == "RGBA":
        pixels[..., 3] = 128
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode if mode != "I;16" else None)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG" if "JPEG" in shape else "PNG", compress_level=1)
    return buffer.getvalue()


def serve_once(artifact: str, shape: str) -> None:
    """In this fresh process: the served path on a photo, then on the largest image of `shape`."""
    import numpy as np
    import torch
    from PIL import Image

    from handler.config import MAX_BINARY_BODY_BYTES
    from handler.florence.artifact import load_artifact
    from handler.florence.engine import Engine
    from handler.florence.tasks import Task
    from handler.http.drawing import drawn_png
    from handler.inputs.images import decode_image
    from handler.service import DRAFT_TO

    data = largest_image(shape)
    loaded = load_artifact(artifact)
    torch.set_num_threads(2)
    engine = Engine(loaded.model, loaded.processor)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    engine.run(photo, [Task.CAPTION, Task.DETECT])
    photo_peak = peak_mib()
    settings = Settings()
    decoded = decode_image(data, len(data), settings.max_image_pixels, DRAFT_TO)
    engine.run(decoded.image, [Task.CAPTION, Task.DETECT])
    del decoded
    analyze_peak = peak_mib()
    decoded = decode_image(data, len(data), settings.max_image_pixels, 0)
    analysis = engine.run(decoded.image, [Task.DETECT])
    drawn_png(decoded.image, analysis.predictions[Task.DETECT].detections, MAX_BINARY_BODY_BYTES)
    print(f"| {shape} | {photo_peak:.0f} | {analyze_peak:.0f} | {peak_mib():.0f} |", flush=True)


def main() -> None:
    from handler.florence.tasks import IMAGE_SIZE, Task
    from model_build.bench.baseline import base_model, base_prompt_ids, decoding_processor
    from model_build.export.serving_prep import prepare_for_serving
    from model_build.export.writer import write_artifact

    with tempfile.TemporaryDirectory(prefix="worst-image-") as tmp:
        processor = decoding_processor()
        served = prepare_for_serving(base_model(), processor, prompt_ids=base_prompt_ids())
        write_artifact(served, processor, Path(tmp) / "art", base_id="probe", image_size=IMAGE_SIZE, tasks=list(Task))
        del served
        print(f"MAX_IMAGE_PIXELS {Settings().max_image_pixels:,}; peak RSS (VmHWM, MiB) after each step:")
        print("| image | /analyze of a 640 x 480 photo | then /analyze of it | then /detect?format=png of it |")
        print("|---|---|---|---|")
        for shape in SHAPES:
            subprocess.run([sys.executable, __file__, str(Path(tmp) / "art"), shape], check=True)


if __name__ == "__main__":
    if len(sys.argv) == 3:
        serve_once(sys.argv[1], sys.argv[2])
    else:
        main()
