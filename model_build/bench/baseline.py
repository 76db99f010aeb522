"""What every bench stage shares: the models under test, the seed recipe's generate, timing and the machine.

The seed recipe is the baseline every figure is a ratio against: merged model, int8 `quantize_dynamic`,
384 x 384, greedy HF `generate`, one call per task. Kept apart from the runner so the profiler and the
cold-start child can use it without importing the runner (no cycle).
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from handler.florence.tasks import IMAGE_SIZE, Task, num_image_tokens

BASE_IMAGE_TOKEN_ID = 51289
BASE_VOCAB = 51290
"""Florence-2's 51289 text tokens plus `<image>`, the placeholder the processor fills with image features."""
NATIVE_EMBEDDING_ROWS = 51328
"""`florence-community/Florence-2-base`'s embedding and `lm_head` rows: transformers' conversion resized them
to `BASE_VOCAB` padded up to a multiple of 64, so 38 rows belong to no token."""

# Fixed ids with the real processor's lengths: `<s>` + prompt words + `</s>` after the 145 image slots.
BASE_TEXT_IDS = {
    Task.CAPTION.value: [0, 2264, 473, 5, 2274, 6190, 116, 2],
    Task.DETECT.value: [0, 574, 22486, 5, 8720, 19, 4120, 766, 11, 5, 2274, 4, 2],
}


def base_config(vocab_size: int = BASE_VOCAB):
    """Florence-2-base's architecture as a `Florence2Config` (BART 6+6 layers of 768, DaViT 128..1024).

    `vocab_size` is the embedding's row count: the bench uses the tokenizer's 51290, the native checkpoint
    has `NATIVE_EMBEDDING_ROWS`.
    """
    from transformers import BartConfig, Florence2Config, Florence2VisionConfig

    text = BartConfig(
        vocab_size=vocab_size,
        d_model=768,
        encoder_layers=6,
        decoder_layers=6,
        encoder_attention_heads=12,
        decoder_attention_heads=12,
        encoder_ffn_dim=3072,
        decoder_ffn_dim=3072,
        max_position_embeddings=1024,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=2,
        dropout=0.0,
        attention_dropout=0.0,
        scale_embedding=False,
    )
    vision = Florence2VisionConfig(
        embed_dim=[128, 256, 512, 1024],
        depths=[1, 1, 9, 1],
        num_heads=[4, 8, 16, 32],
        num_groups=[4, 8, 16, 32],
        window_size=12,
        projection_dim=768,
        drop_path_rate=0.0,
    )
    return Florence2Config(vision_config=vision, text_config=text, image_token_id=BASE_IMAGE_TOKEN_ID)


def base_model(seed: int = 0):
    """Florence-2-base's architecture (231.4M parameters) with random weights."""
    import torch
    from transformers import Florence2ForConditionalGeneration

    torch.manual_seed(seed)
    return Florence2ForConditionalGeneration(base_config()).eval()


def base_prompt_ids(image_size: int = IMAGE_SIZE) -> dict[str, list[int]]:
    slots = [BASE_IMAGE_TOKEN_ID] * num_image_tokens(image_size)
    return {task: slots + ids for task, ids in BASE_TEXT_IDS.items()}


def tiny_model_and_processor():
    """The embedded trained tiny model if present, else a fresh tiny one (quick mode: code paths, not speed)."""
    from model_build.base.loading import BaseModelError, load_base
    from model_build.base.tiny import build_processor, build_tokenizer, new_tiny_model

    try:
        return load_base("tiny")
    except BaseModelError:
        tokenizer = build_tokenizer(["a cat on a mat", "two dogs in a park"])
        return new_tiny_model(tokenizer).eval(), build_processor(tokenizer)


def decoding_processor() -> Any:
    """The processor paired with `base_model`: its tiny tokenizer only decodes; prompts are `base_prompt_ids`,
    fixed at the real processor's lengths, so no 51k-entry tokenizer is needed offline."""
    from model_build.base.tiny import build_processor, build_tokenizer

    return build_processor(build_tokenizer(["a cat on a mat"]))


def random_images(count: int) -> list:
    """The bench's inputs: 480x640 random RGB images (the first is the one every timing uses)."""
    import numpy as np
    from PIL import Image

    return [
        Image.fromarray((np.random.RandomState(index).rand(480, 640, 3) * 255).astype("uint8"))
        for index in range(count)
    ]


def baseline_generate(model, processor, image, prompt_ids: list[int], new_tokens: int) -> str:
    """The seed recipe for one task: preprocess, HF greedy `generate` (pinned length), decode."""
    import torch

    pixel_values = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    input_ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            num_beams=1,
            do_sample=False,
        )
    return processor.batch_decode(out, skip_special_tokens=False)[0]


def time_call(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def hardware() -> dict[str, Any]:
    model_name = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model_name = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = [f for f in ("avx512_vnni", "avx512f", "avx_vnni", "avx2") if f" {f}" in flags]
    return {
        "cpu": model_name,
        "cpus_available": len(os.sched_getaffinity(0)),
        "isa": isa,
        "python": platform.python_version(),
    }
