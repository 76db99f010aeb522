"""Florence-2's BART encoder-decoder, re-implemented for batch-1 greedy decoding on CPU.

Same weights and maths as `transformers`' BART (post-LayerNorm, learned positions offset by 2, GELU),
minus the generic machinery: the decoder writes keys/values into a cache preallocated for the whole
generation, the cross-attention keys/values are projected once per request, and the token embedding
table is the int8 `lm_head` weight itself (tied weights), so the artifact holds it once.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

POSITION_OFFSET = 2
"""BART's learned position table starts at index 2 (a fairseq leftover)."""


class TiedInt8Head(nn.Module):
    """The tied token embedding and `lm_head` as one int8 matrix (stored once in the artifact).

    Lookups dequantize only the rows they need. Logits run through fbgemm's dynamic int8 GEMM on a
    copy packed from the same matrix on first use; the packed form is never pickled.
    """

    weight_int8: torch.Tensor

    def __init__(self, weight_int8: torch.Tensor, scale: float, zero_point: int) -> None:
        super().__init__()
        self.register_buffer("weight_int8", weight_int8)
        self.scale, self.zero_point = float(scale), int(zero_point)
        self._packed: Any = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_packed"] = None
        return state

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.weight_int8.index_select(0, ids.reshape(-1)).float()
        if self.zero_point:
            rows = rows - self.zero_point
        return (rows * self.scale).view(*ids.shape, -1)

    def packed(self):
        """fbgemm's packed form of the table, built once (a plain attribute, so never pickled)."""
        if self._packed is None:
            from handler.florence.memory import drop_tensor_pages

            qweight = torch._make_per_tensor_quantized_tensor(self.weight_int8, self.scale, self.zero_point)
            # `qweight` is a copy; the table's pages (memory-mapped from the artifact) can leave
            # RSS before packing allocates, and lookups fault back the few rows they read.
            drop_tensor_pages(self.weight_int8)
            self._packed = torch.ops.quantized.linear_prepack(qweight, None)
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # What torch.ao's dynamic int8 `Linear.forward` runs (module version 4: reduce_range).
        return torch.ops.quantized.linear_dynamic(x, self.packed(), reduce_range=True)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, C) -> (B, heads, T, C/heads)."""
    b, t, c = x.shape
    return x.view(b, t, heads, c // heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


class EncoderLayer(nn.Module):
    """Post-LN BART encoder layer; `qkv` is q_proj, k_proj and v_proj stacked into one int8 linear."""

    def __init__(self, qkv, o, norm1, fc1, fc2, norm2, heads: int) -> None:
        super().__init__()
        self.qkv, self.o, self.norm1 = qkv, o, norm1
        self.fc1, self.fc2, self.norm2 = fc1, fc2, norm2
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.heads
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        att = F.scaled_dot_product_attention(_heads(q, h), _heads(k, h), _heads(v, h))
        x = self.norm1(x + self.o(_merge(att)))
        return self.norm2(x + self.fc2(F.gelu(self.fc1(x))))


class DecoderLayer(nn.Module):
    """Post-LN BART decoder layer for one position at a time against a preallocated KV cache."""

    def __init__(self, qkv, o, norm1, cq, ck, cv, co, norm2, fc1, fc2, norm3, heads: int) -> None:
        super().__init__()
        self.qkv, self.o, self.norm1 = qkv, o, norm1
        self.cq, self.ck, self.cv, self.co, self.norm2 = cq, ck, cv, co, norm2
        self.fc1, self.fc2, self.norm3 = fc1, fc2, norm3
        self.heads = heads

    def cross_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _heads(self.ck(memory), self.heads), _heads(self.cv(memory), self.heads)

    def forward(
        self,
        x: torch.Tensor,
        step: int,
        cache_k: torch.Tensor,
        cache_v: torch.Tensor,
        mem_k: torch.Tensor,
        mem_v: torch.Tensor,
    ) -> torch.Tensor:
        """One decoding position: append this token's key/value at `step` and attend to [0, step]."""
        h = self.heads
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        cache_k[:, :, step : step + 1] = _heads(k, h)
        cache_v[:, :, step : step + 1] = _heads(v, h)
        att = F.scaled_dot_product_attention(_heads(q, h), cache_k[:, :, : step + 1], cache_v[:, :, : step + 1])
        x = self.norm1(x + self.o(_merge(att)))
        att = F.scaled_dot_product_attention(_heads(self.cq(x), h), mem_k, mem_v)
        x = self.norm2(x + self.co(_merge(att)))
        return self.norm3(x + self.fc2(F.gelu(self.fc1(x))))


class TextModel(nn.Module):
    """BART encoder + decoder + tied lm_head with a lean greedy loop."""

    def __init__(
        self,
        head: TiedInt8Head,
        embed_scale: float,
        enc_positions: torch.Tensor,
        enc_norm,
        enc_layers: list[EncoderLayer],
        dec_positions: torch.Tensor,
        dec_norm,
        dec_layers: list[DecoderLayer],
    ) -> None:
        super().__init__()
        self.lm_head, self.embed_scale = head, embed_scale
        self.enc_positions = nn.Parameter(enc_positions, requires_grad=False)
        self.enc_norm, self.enc_layers = enc_norm, nn.ModuleList(enc_layers)
        self.dec_positions = nn.Parameter(dec_positions, requires_grad=False)
        self.dec_norm, self.dec_layers = dec_norm, nn.ModuleList(dec_layers)

    def encode(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        length = inputs_embeds.shape[1]
        x = self.enc_norm(inputs_embeds + self.enc_positions[POSITION_OFFSET : POSITION_OFFSET + length])
        for layer in self.enc_layers:
            x = layer(x)
        return x

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        embeds = self.lm_head.lookup(ids)
        return embeds * self.embed_scale if self.embed_scale != 1.0 else embeds

    def greedy(
        self,
        memory: torch.Tensor,
        start_id: int,
        eos_id: int,
        max_new_tokens: int,
        min_new_tokens: int = 0,
        forced_eos: bool = True,
        teacher: list[int] | None = None,
    ) -> tuple[list[int], torch.Tensor]:
        """Greedy decode as HF `generate` does with num_beams=1 (min-new-tokens, forced EOS at the limit).

        Returns the token ids (start token first) and the raw logits of every step. `teacher` (ids
        without the start token) feeds given tokens instead of the argmax, so a parity check can
        compare logits step by step along another decoder's path.
        """
        layers = cast(list[DecoderLayer], list(self.dec_layers))
        first = layers[0]
        heads = first.heads
        width = memory.shape[-1]
        cache_shape = (1, heads, max_new_tokens + 1, width // heads)
        caches = [(memory.new_empty(cache_shape), memory.new_empty(cache_shape)) for _ in layers]
        cross = [layer.cross_kv(memory) for layer in layers]
        ids = [start_id]
        logits_seen = []
        token = torch.tensor([[start_id]])
        for step in range(max_new_tokens):
            x = self.embed_tokens(token) + self.dec_positions[POSITION_OFFSET + step]
            x = self.dec_norm(x)
            for layer, (ck, cv), (mk, mv) in zip(layers, caches, cross, strict=False):
                x = layer(x, step, ck, cv, mk, mv)
            logits = self.lm_head(x)[0, -1]
            logits_seen.append(logits)
            if step < min_new_tokens:
                logits = logits.clone()
                logits[eos_id] = float("-inf")
            if teacher is not None:
                next_id = teacher[step]
            elif forced_eos and step == max_new_tokens - 1:
                next_id = eos_id
            else:
                next_id = int(torch.argmax(logits))
            ids.append(next_id)
            if next_id == eos_id or (teacher is not None and step + 1 == len(teacher)):
                break
            token = torch.tensor([[next_id]])
        return ids, torch.stack(logits_seen)
