"""The served model object: everything `Engine` needs, pickled by `model_build fuse`, loadable with torch alone.

`FastFlorence` bundles the int8 vision tower, the int8 BART encoder-decoder, the prompt token ids
(tokenized at build time by the real processor, so serving needs no tokenizer to encode), the
tokenizer JSON for decoding, and the image preprocessing spec. Unpickling it imports torch and
`tokenizers`, never `transformers`; that is most of the cold-start saving.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from handler.florence.preprocess import ImageSpec
from handler.florence.runtime.pickling import CachesNotPickled
from handler.florence.runtime.text import DecodeRequest, TextModel
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
    """Token ids, start token first."""
    text: str
    probabilities: list[float]
    """Softmax probability of each of `ids[1:]` under its step's raw logits (what scores are made of)."""
    logits: torch.Tensor | None = None
    """(steps, vocab): the raw logits of every generated step, in the order of `ids[1:]`; only if asked for."""
    seconds: float = 0.0
    """Decode wall time until this answer was complete (text encoder included)."""


@dataclass(frozen=True)
class GenerationRequest:
    """One task of a batched `FastFlorence.generate_batch` call."""

    prompt: str
    max_new_tokens: int
    min_new_tokens: int = 0


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


class FastFlorence(CachesNotPickled, nn.Module):
    runtime = RUNTIME_NAME
    caches = ("_tokenizer",)

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

    def generate(
        self,
        prompt: str,
        features: torch.Tensor,
        max_new_tokens: int,
        min_new_tokens: int = 0,
        keep_logits: bool = False,
    ) -> Generation:
        """Greedy-decode one prompt against one image's features."""
        request = GenerationRequest(prompt, max_new_tokens, min_new_tokens)
        (generation,) = self.generate_batch([request], features, keep_logits)
        return generation

    def generate_batch(
        self, requests: list[GenerationRequest], features: torch.Tensor, keep_logits: bool = False
    ) -> list[Generation]:
        """Greedy-decode several prompts against one image's features as one batch (one weight read per step).

        Each prompt goes through the text encoder on its own (prompts differ in length); the decoder
        steps run all unfinished prompts together. Answers come back in request order.
        """
        started = time.perf_counter()
        decode_requests = [
            DecodeRequest(self.text.encode(self.encoder_inputs(r.prompt, features)), r.max_new_tokens, r.min_new_tokens)
            for r in requests
        ]
        encoded_s = time.perf_counter() - started
        spec = self.decode_spec
        decoded = self.text.greedy_batch(decode_requests, spec.start_id, spec.eos_id, spec.forced_eos, keep_logits)
        return [
            Generation(d.ids, self.decode(d.ids), d.probabilities, d.logits, encoded_s + d.seconds) for d in decoded
        ]

    def decode(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        if self.decode_spec.clean_up_spaces:
            for before, after in _CLEANUP:
                text = text.replace(before, after)
        return text


def is_fast(model) -> bool:
    return getattr(model, "runtime", None) == RUNTIME_NAME
