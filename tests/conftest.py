"""Shared fixtures: one tiny int8 artifact per test session, built the way `model_build` builds it."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def cli_failure(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """(exit status, stderr) of `python -m model_build ARGV` in process, which must exit without a traceback."""
    from model_build.cli import main

    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return status, err


def run_python(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`python ARGS` in a fresh interpreter at the repo root, importing this checkout (not an installed copy)."""
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        timeout=timeout,
        check=False,
    )


RUNTIME_EXECUTION_ENVS = (None, "AWS_Lambda_python3.12")
"""awslambdaric escapes its answers to ASCII unless AWS_EXECUTION_ENV names a python3.12+ runtime: this image sets
none (6 bytes per accented letter, 12 per emoji), AWS's own python3.12+ base images post UTF-8."""


def runtime_posts(answer: Any) -> list[bytes]:
    """The bytes awslambdaric would post for `answer`, once per RUNTIME_EXECUTION_ENVS, made by its own `to_json` and
    `.encode("utf-8")`. A lone surrogate fails that encode and a post over 6 MB is refused: either way the runtime
    process exits (tests/deploy/test_emulator.py sees it)."""
    from awslambdaric.lambda_runtime_marshaller import to_json

    saved = os.environ.pop("AWS_EXECUTION_ENV", None)
    try:
        posts = []
        for execution_env in RUNTIME_EXECUTION_ENVS:
            if execution_env is not None:
                os.environ["AWS_EXECUTION_ENV"] = execution_env
            posts.append(to_json(answer).encode("utf-8"))
        return posts
    finally:
        os.environ.pop("AWS_EXECUTION_ENV", None)
        if saved is not None:
            os.environ["AWS_EXECUTION_ENV"] = saved


def _build_tiny_artifact(out: Path) -> Path:
    """`model_build fuse --base tiny`: int8, the fast runtime, and the parity gate on synthetic val images."""
    from model_build.data.synth import synthesize
    from model_build.export.fuse import FuseConfig, fuse

    data = synthesize(out.parent / "synth", train=2, val=6, seed=7)
    # The serving tests need a real artifact, not a quality verdict: the gate's thresholds are exercised
    # in tests/model_build/test_pipeline.py and measured on 20+ images by the real build.
    fuse(
        FuseConfig(out_dir=out, base="tiny", data_dir=data, parity_images=6, min_caption_agreement=0.0, min_box_iou=0.0)
    )
    return out


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real served artifact (model.pt + processor + manifest) from the embedded tiny Florence-2."""
    return _build_tiny_artifact(tmp_path_factory.mktemp("artifact") / "tiny")


@pytest.fixture
def serving_env(tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the service at the tiny artifact with test-sized limits."""
    monkeypatch.setenv("ARTIFACT_DIR", str(tiny_artifact))
    monkeypatch.setenv("TORCH_THREADS", "1")
    monkeypatch.setenv("ALLOWED_BUCKETS", "allowed-bucket")
    monkeypatch.setenv("MAX_IMAGE_BYTES", str(2_000_000))
    monkeypatch.setenv("MAX_IMAGE_PIXELS", str(4_000_000))
    return tiny_artifact


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (96, 64), mode: str = "RGB", **save) -> bytes:
    """A small real image with some structure, encoded in `fmt`."""
    from PIL import Image, ImageDraw

    img = Image.new(mode, size, "white" if mode != "RGBA" else (255, 255, 255, 0))
    draw = ImageDraw.Draw(img)
    w, h = size
    fill = (200, 30, 30) if mode in ("RGB", "P") else (200, 30, 30, 255) if mode == "RGBA" else 80
    draw.rectangle((w // 8, h // 6, w // 2, h * 5 // 6), fill=fill)
    draw.ellipse((w // 2, h // 4, w * 7 // 8, h * 3 // 4), fill=fill)
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def photo_jpeg(size: tuple[int, int] = (4000, 3000), noise: float = 10.0, quality: int = 80, seed: int = 3) -> bytes:
    """A photo-like JPEG: smooth gradients, shapes and sensor-like noise, so PNG cannot squeeze it much."""
    import numpy as np
    from PIL import Image, ImageDraw

    width, height = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 200, y / height * 180, (x + y) / (width + height) * 220], axis=-1)
    img = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(40):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(width // 20, width // 4)), int(rng.integers(height // 20, height // 4))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x0 + w, y0 + h), fill=colour)
    pixels = np.asarray(img, dtype=np.float32) + rng.normal(0, noise, (height, width, 3)).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def png_bytes() -> bytes:
    return image_bytes("PNG")


@pytest.fixture(scope="session")
def jpeg_bytes() -> bytes:
    return image_bytes("JPEG", quality=90)


os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def scene_with_scored_boxes(analyze: Callable[[bytes], dict], attempts: int = 40) -> tuple[bytes, dict]:
    """A synthetic scene (PNG) on which the model finds boxes with scores at least 0.01 apart, and its answer.

    `analyze` posts PNG bytes to the service and returns the JSON answer; the scenes are seeded, so a
    run is repeatable, but which scene qualifies is the model's call, not hard-coded here.
    """
    import random

    from model_build.data.synth import make_image

    rng = random.Random(5)
    for _ in range(attempts):
        image, _objects = make_image(rng)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        answer = analyze(buffer.getvalue())
        scores = [d["score"] for d in answer["detections"]]
        if len(scores) >= 2 and max(scores) - min(scores) >= 0.01:  # a 0.01-step slider can tell them apart
            return buffer.getvalue(), answer
    raise AssertionError(f"no synthetic scene in {attempts} gave boxes with scores 0.01 or more apart")
