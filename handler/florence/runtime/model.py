"""The served model object: everything `Engine` needs, pickled by `model_build fuse`, loadable with torch alone.

`FastFlorence` bundles the int8 vision tower, the int8 BART encoder-decoder, the prompt token ids
(tokenized at build time by the real processor, so serving needs no tokenizer to encode), the
tokenizer JSON for decoding, and the image preprocessing spec. Unpickling it imports torch and
`tokenizers`, never `transformers`; that is most of the cold-start saving.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from handler.florence.preprocess import ImageSpec
from handler.florence.runtime.text import TextModel
from handler.florence.runtime.vision import VisionTower

RUNTIME_NAME = "fast-florence2"


@dataclass(frozen=True)
class DecodeSpec:
    start_id: int
    eos_id: int
    image_token_id: int
    forced_eos: bool
    clean_up_spaces: bool


@dataclass
class Generation:
    ids: list[int]
    text: str
    logits: torch.Tensor


# What `PreTrainedTokenizerBase.clean_up_tokenization` does, for tokenizers that ask for it.
_CLEANUP = [
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
]


class FastFlorence(nn.Module):
    runtime = RUNTIME_NAME

    def __init__(
        self,
        vision: VisionTower,
        text: TextModel,
        prompt_ids: dict[str, list[int]],
        tokenizer_json: str,
        image: ImageSpec,
        decode: DecodeSpec,
    ) -> None:
        super().__init__()
        self.vision, self.text = vision, text
        self.prompt_ids = prompt_ids
        self.tokenizer_json = tokenizer_json
        self.image_spec = image
        self.decode_spec = decode
        self._tokenizer: Any = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_tokenizer"] = None
        return state

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_str(self.tokenizer_json)
        return self._tokenizer

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision(pixel_values)

    def encoder_inputs(self, prompt: str, features: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings with the image-token slots filled by the image features, in order."""
        ids = torch.tensor([self.prompt_ids[prompt]])
        embeds = self.text.embed_tokens(ids)
        slots = (ids[0] == self.decode_spec.image_token_id).nonzero().flatten()
        embeds[0, slots] = features[0].to(embeds.dtype)
        return embeds

    def generate(self, prompt: str, features: torch.Tensor, max_new_tokens: int, min_new_tokens: int = 0) -> Generation:
        memory = self.text.encode(self.encoder_inputs(prompt, features))
        spec = self.decode_spec
        ids, logits = self.text.greedy(
            memory, spec.start_id, spec.eos_id, max_new_tokens, min_new_tokens, forced_eos=spec.forced_eos
        )
        return Generation(ids, self.decode(ids), logits)

    def decode(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        if self.decode_spec.clean_up_spaces:
            for before, after in _CLEANUP:
                text = text.replace(before, after)
        return text


def is_fast(model) -> bool:
    return getattr(model, "runtime", None) == RUNTIME_NAME
