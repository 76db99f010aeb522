"""A random-weight base in `florence-community/Florence-2-base`'s layout, at reduced size: what the rehearsal loads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from handler.florence.tasks import IMAGE_SIZE, num_image_tokens
from model_build.base.loading import load_base, resolve_base
from model_build.bench.baseline import BASE_IMAGE_TOKEN_ID, BASE_VOCAB, NATIVE_EMBEDDING_ROWS, base_config
from model_build.rehearsal.random_base import (
    CHECKPOINT_IMAGE_SIZE,
    RandomBase,
    embedding_rows,
    random_base_config,
    write_random_base,
)
from model_build.rehearsal.tokenizer import BART_BPE_ENTRIES, FLORENCE2_ADDED_TOKENS, training_corpus

SMALL_BPE = 1500


@pytest.fixture(scope="module")
def small_base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RandomBase]:
    folder = tmp_path_factory.mktemp("random-base")
    return folder, write_random_base(folder, bpe_entries=SMALL_BPE, full_size=False)


def test_random_base_loads_as_a_native_florence2_in_fp32(small_base: tuple[Path, RandomBase]) -> None:
    folder, written = small_base
    assert resolve_base(str(folder)) == str(folder)
    # Saved in fp16, as the native port is; the build must still get fp32 (fuse failed on half biases before).
    assert json.loads((folder / "config.json").read_text())["dtype"] == "float16"
    model, processor = load_base(str(folder))
    assert {p.dtype for p in model.parameters()} == {torch.float32}

    tokenizer = processor.tokenizer
    embeddings = model.get_input_embeddings().weight
    assert len(tokenizer) == written.tokenizer_entries == SMALL_BPE + len(FLORENCE2_ADDED_TOKENS) + 1
    rows = embeddings.shape[0]
    assert rows == model.lm_head.weight.shape[0] == model.config.text_config.vocab_size == written.embedding_rows
    assert rows % 64 == 0 and 0 <= rows - len(tokenizer) < 64  # the conversion's padding
    assert model.lm_head.weight.data_ptr() == embeddings.data_ptr()  # tied, as Florence-2's are
    assert tokenizer.image_token_id == len(tokenizer) - 1 == model.config.image_token_id == written.image_token_id
    assert tokenizer.mask_token_id == SMALL_BPE - 1
    ids = tokenizer.convert_tokens_to_ids(["<od>", "<loc_0>", "<loc_999>", "<and>"])
    assert ids == [SMALL_BPE, SMALL_BPE + 4, SMALL_BPE + 1003, SMALL_BPE + 1023]

    saved = json.loads((folder / "processor_config.json").read_text())["image_processor"]
    assert saved["size"] == {"height": CHECKPOINT_IMAGE_SIZE, "width": CHECKPOINT_IMAGE_SIZE}
    assert saved["image_seq_length"] == num_image_tokens(CHECKPOINT_IMAGE_SIZE)
    assert processor.num_image_tokens == num_image_tokens(IMAGE_SIZE)  # the build's size, set at load

    inputs = processor(text=["<OD>"], images=[Image.new("RGB", (64, 48), "red")], return_tensors="pt")
    assert (inputs["input_ids"][0] == tokenizer.image_token_id).sum() == num_image_tokens(IMAGE_SIZE)
    labels = tokenizer(["car<loc_1><loc_2><loc_500><loc_999>"], add_special_tokens=False, return_tensors="pt").input_ids
    output = model(**inputs, labels=labels)
    assert output.logits.shape == (1, labels.shape[1], rows)
    assert torch.isfinite(output.loss)


def test_tokenizer_round_trips_text_and_spreads_ids_over_its_range(small_base: tuple[Path, RandomBase]) -> None:
    from transformers import AutoTokenizer

    folder, _ = small_base
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = [
        "A photo of a red circle and a blue square.",
        "Locate the objects with category name in the image.",
        "Zorbling  façade, naïve — 123 日本 😀\ttabs",
        "car<loc_12><loc_40><loc_500><loc_999>person<loc_0><loc_1><loc_2><loc_3></s>",
    ]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert tokenizer.decode(ids) == text
    with_specials = tokenizer("a cat").input_ids  # BART's post-processor, which Florence2Processor turns off
    assert (with_specials[0], with_specials[-1]) == (tokenizer.bos_token_id, tokenizer.eos_token_id)

    # Learned merges: frequent words are one token; rarer words from across the corpus use ids over the whole range.
    assert [len(tokenizer.tokenize(word)) for word in (" the", " of", " and")] == [1, 1, 1]
    lines = list(training_corpus(SMALL_BPE))
    words = [" " + line.split()[0] for line in lines[:: max(1, len(lines) // 400)]]
    ids = [i for encoded in tokenizer(words, add_special_tokens=False).input_ids for i in encoded]
    assert len(ids) < sum(len(word) for word in words) / 2  # merged, not byte by byte
    assert max(ids) > 0.9 * SMALL_BPE and len(set(ids)) > 0.15 * SMALL_BPE


def test_full_size_layout_is_florence2_bases() -> None:
    assert len(FLORENCE2_ADDED_TOKENS) == len(set(FLORENCE2_ADDED_TOKENS)) == 1024
    assert BART_BPE_ENTRIES + len(FLORENCE2_ADDED_TOKENS) == BASE_IMAGE_TOKEN_ID == BASE_VOCAB - 1
    assert embedding_rows(BASE_VOCAB) == NATIVE_EMBEDDING_ROWS == math.ceil(BASE_VOCAB / 64) * 64

    from transformers import Florence2ForConditionalGeneration

    with torch.device("meta"):  # shapes only, no 0.9 GB allocation
        model = Florence2ForConditionalGeneration(base_config(NATIVE_EMBEDDING_ROWS))
    assert model.lm_head.weight.shape == (NATIVE_EMBEDDING_ROWS, 768)
    assert 231_000_000 < sum(p.numel() for p in model.parameters()) < 232_000_000  # Florence-2-base: 0.23B


def test_full_size_refuses_a_tokenizer_of_another_layout(small_base: tuple[Path, RandomBase]) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(small_base[0])
    with pytest.raises(ValueError, match="Florence-2's tokenizer layout"):
        random_base_config(tokenizer, full_size=True)
