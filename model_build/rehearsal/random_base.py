"""A local folder laid out like `florence-community/Florence-2-base`, with random weights.

What the folder holds, as transformers' Florence-2 conversion writes it: `config.json` (Florence-2-base's
sizes from `bench.baseline.base_config`, fp16), `model.safetensors`, `generation_config.json` and the
processor (`processor_config.json` with the CLIP-style image processor at the checkpoint's 768 x 768,
`tokenizer.json`, `tokenizer_config.json`). The conversion adds `<image>` to the tokenizer and resizes
the embeddings to the tokenizer's length padded up to a multiple of 64, so the model has 38 more
embedding and `lm_head` rows than the tokenizer has tokens; this folder keeps that too.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from model_build.rehearsal.tokenizer import BART_BPE_ENTRIES, florence2_tokenizer

CHECKPOINT_IMAGE_SIZE = 768
"""Florence-2-base's own processor size (577 image tokens); the build sets it to the serving size."""

EMBEDDING_ROW_MULTIPLE = 64
"""The conversion's `resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)`."""

PROVENANCE_FILE = "RANDOM_WEIGHTS.json"


@dataclass
class RandomBase:
    """What was written, for the rehearsal's report."""

    path: str
    full_size: bool
    tokenizer_entries: int
    embedding_rows: int
    image_token_id: int
    parameters: int
    weights_bytes: int
    seconds: float = 0.0


def embedding_rows(tokenizer_entries: int) -> int:
    return math.ceil(tokenizer_entries / EMBEDDING_ROW_MULTIPLE) * EMBEDDING_ROW_MULTIPLE


def random_base_config(tokenizer, full_size: bool):
    """Florence-2-base's config (or the tiny one's widths) with the conversion's padded embedding rows."""
    from model_build.base.tiny import tiny_config
    from model_build.bench.baseline import BASE_IMAGE_TOKEN_ID, NATIVE_EMBEDDING_ROWS, base_config

    rows = embedding_rows(len(tokenizer))
    if full_size:
        if (rows, tokenizer.image_token_id) != (NATIVE_EMBEDDING_ROWS, BASE_IMAGE_TOKEN_ID):
            raise ValueError(
                f"a full-size base needs Florence-2's tokenizer layout: {rows} rows and <image> at "
                f"{tokenizer.image_token_id}, not {NATIVE_EMBEDDING_ROWS} and {BASE_IMAGE_TOKEN_ID}"
            )
        config = base_config(rows)
    else:
        config = tiny_config(tokenizer)
        config.text_config.vocab_size = rows
    config.image_token_id = tokenizer.image_token_id
    return config


def write_random_base(
    out_dir: str | Path, *, bpe_entries: int = BART_BPE_ENTRIES, full_size: bool = True, seed: int = 0
) -> RandomBase:
    """Write the folder and return what it holds. `full_size=False` keeps the layout at the tiny model's widths."""
    import time

    import torch
    from transformers import Florence2ForConditionalGeneration

    from model_build.base.tiny import build_processor

    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = florence2_tokenizer(bpe_entries, seed)
    config = random_base_config(tokenizer, full_size)
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(config).eval()
    parameters = sum(p.numel() for p in model.parameters())
    model.to(torch.float16).save_pretrained(out)  # the native port ships fp16 weights
    build_processor(tokenizer, CHECKPOINT_IMAGE_SIZE).save_pretrained(out)
    written = RandomBase(
        path=str(out),
        full_size=full_size,
        tokenizer_entries=len(tokenizer),
        embedding_rows=config.text_config.vocab_size,
        image_token_id=tokenizer.image_token_id,
        parameters=parameters,
        weights_bytes=sum(f.stat().st_size for f in out.glob("*.safetensors")),
        seconds=round(time.perf_counter() - started, 1),
    )
    note = {"made_by": "python -m model_build rehearse", "weights": f"random, seed {seed}", **asdict(written)}
    (out / PROVENANCE_FILE).write_text(json.dumps(note, indent=2))
    return written
