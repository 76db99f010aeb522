"""The served artifact's tokenizer leaves out the BPE merges (28 MiB resident at Florence-2's size), and
decodes every id sequence exactly as the full tokenizer does."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from tokenizers import Tokenizer

from model_build.base.loading import load_processor
from model_build.export.serving_prep import decoding_tokenizer_json
from model_build.rehearsal.tokenizer import florence2_tokenizer


@pytest.fixture(scope="module", params=["embedded tiny", "Florence-2 layout, 2,000 BPE entries"])
def full_tokenizer(request: pytest.FixtureRequest) -> Any:
    if request.param == "embedded tiny":
        return load_processor("tiny").tokenizer.backend_tokenizer
    return florence2_tokenizer(2000).backend_tokenizer


def _decoded(tokenizer: Tokenizer, ids: list[int], skip_special_tokens: bool) -> str:
    try:
        return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    except Exception as exc:  # tokenizers' own error type; both must fail alike
        return f"error: {exc}"


def test_the_served_tokenizer_has_no_merges_and_decodes_every_sequence_alike(full_tokenizer: Any) -> None:
    assert json.loads(full_tokenizer.to_str())["model"]["merges"], "the fixture should carry merges"
    served_json = decoding_tokenizer_json(full_tokenizer)
    assert json.loads(served_json)["model"]["merges"] == []
    served = Tokenizer.from_str(served_json)
    full = Tokenizer.from_str(full_tokenizer.to_str())
    size = full.get_vocab_size()
    assert served.get_vocab_size() == size
    rng = random.Random(0)
    special = [i for i in range(size) if full.id_to_token(i) and full.id_to_token(i).startswith("<")]
    for _ in range(400):
        # Any ids, added tokens (task, location, image) often, and now and then ids past the vocabulary.
        ids = [
            rng.choice(special) if roll < 0.3 else size + rng.randrange(5) if roll > 0.98 else rng.randrange(size)
            for roll in (rng.random() for _ in range(rng.randrange(60)))
        ]
        for skip in (False, True):
            assert _decoded(served, ids, skip) == _decoded(full, ids, skip), ids
        pieces = [[i] for i in ids if i < size]
        assert served.decode_batch(pieces, skip_special_tokens=False) == full.decode_batch(
            pieces, skip_special_tokens=False
        )


def test_a_tokenizer_without_bpe_is_left_as_it_is() -> None:
    from tokenizers.models import WordLevel

    word_level = Tokenizer(WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    assert json.loads(decoding_tokenizer_json(word_level)) == json.loads(word_level.to_str())


def test_the_fused_artifact_pickles_the_decoding_tokenizer(tiny_artifact: Any) -> None:
    from handler.florence.artifact import load_artifact

    model = load_artifact(tiny_artifact).model
    spec = json.loads(model.tokenizer_json)
    assert spec["model"]["merges"] == [] and spec["model"]["vocab"]
    assert model.tokenizer.decode([model.decode_spec.eos_id], skip_special_tokens=False) == "</s>"
