"""Florence-2's BART encoder-decoder, re-implemented for batch-1 greedy decoding on CPU.

Same weights and maths as `transformers`' BART (post-LayerNorm, learned positions offset by 2, GELU),
minus the generic machinery: the decoder writes keys/values into a cache preallocated for the whole
generation, the cross-attention keys/values are projected once per request, and the token embedding
table is the int8 `lm_head` weight itself (tied weights), so the artifact holds it once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from handler.florence.runtime.decoder_step import decode_execution, decoder_step, embedding_rows
from handler.florence.runtime.int8 import Int8Linear
from handler.florence.runtime.native.step import NativeDecoder
from handler.florence.runtime.pickling import CachesNotPickled

POSITION_OFFSET = 2
"""BART's learned position table starts at index 2 (a fairseq leftover)."""


class TiedInt8Head(CachesNotPickled, nn.Module):
    """The tied token embedding and `lm_head` as one int8 matrix (stored once in the artifact).

    Embedding lookups (`decoder_step.embedding_rows`) dequantize only the rows they need. Logits run
    through fbgemm's dynamic int8 GEMM on a copy packed from the same matrix at load (`pack_int8_layers`)
    or on first use; the packed form is never pickled.
    """

    weight_int8: torch.Tensor
    caches = ("_packed",)

    def __init__(self, weight_int8: torch.Tensor, scale: float, zero_point: int) -> None:
        super().__init__()
        self.register_buffer("weight_int8", weight_int8)
        self.scale, self.zero_point = float(scale), int(zero_point)
        self._packed: Any = None

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

    reduce_range = True
    """What torch.ao's dynamic int8 `Linear.forward` runs (module version 4: reduce_range)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self.packed(), reduce_range=self.reduce_range)


def chosen_token_probabilities(logits: torch.Tensor, chosen_ids: torch.Tensor) -> torch.Tensor:
    """Softmax probability of each chosen token: `logits` (..., vocab), `chosen_ids` (...).

    The scores' one formula: the greedy loop applies it to each step's logits before dropping them,
    the plain runtime to the logits `generate` returns.
    """
    # One fused softmax pass: 30 µs over a 51,290-entry vocabulary, against 52 µs for the chosen logit
    # minus a log-sum-exp (base size, batch 1), once per decode step.
    return torch.softmax(logits.float(), dim=-1).gather(-1, chosen_ids.unsqueeze(-1)).squeeze(-1)


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


@dataclass(frozen=True)
class _StepWeights:
    """A decoder layer's weights as `decoder_step` takes them, gathered once from the modules (never
    pickled): fbgemm's packed int8 weights and each LayerNorm's parameters, in the orders
    `decoder_step._plain_decoder_layer_step` documents."""

    packed: list[Any]
    reduce_range: list[bool]
    norm_params: list[torch.Tensor]
    norm_eps: list[float]


class DecoderLayer(CachesNotPickled, nn.Module):
    """Post-LN BART decoder layer for one position of B sequences at a time against a preallocated KV cache.

    The modules hold the weights (and pickle them); the step itself is `decoder_step.decoder_step`,
    compiled by TorchScript for all layers at once, on weights gathered once into `_StepWeights`.
    """

    caches = ("_step_weights",)

    def __init__(self, qkv, o, norm1, cq, ck, cv, co, norm2, fc1, fc2, norm3, heads: int) -> None:
        super().__init__()
        self.qkv, self.o, self.norm1 = qkv, o, norm1
        self.cq, self.ck, self.cv, self.co, self.norm2 = cq, ck, cv, co, norm2
        self.fc1, self.fc2, self.norm3 = fc1, fc2, norm3
        self.heads = heads
        self._step_weights: _StepWeights | None = None

    def step_linears(self) -> list[Int8Linear]:
        """The six int8 linears a decode step runs, in the order both steps take them: self q/k/v stacked,
        self out, cross q, cross out, fc1, fc2 (the cross k/v projections run once per request)."""
        return [cast(Int8Linear, m) for m in (self.qkv, self.o, self.cq, self.co, self.fc1, self.fc2)]

    def step_norms(self) -> list[nn.LayerNorm]:
        """The three LayerNorms of a step: after self attention, after cross attention, after the MLP."""
        return [cast(nn.LayerNorm, m) for m in (self.norm1, self.norm2, self.norm3)]

    def step_weights(self) -> _StepWeights:
        weights = self._step_weights
        if weights is None:
            linears, norms = self.step_linears(), self.step_norms()
            weights = _StepWeights(
                packed=[linear.packed() for linear in linears],
                reduce_range=[linear.reduce_range for linear in linears],
                norm_params=[param for norm in norms for param in (norm.weight, norm.bias)],
                norm_eps=[norm.eps for norm in norms],
            )
            self._step_weights = weights
        return weights

    def cross_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the encoder memory, (B, heads, S, C/heads), each head contiguous.

        Every step's cross attention reads them cold (the weights streamed since evicted them). Head
        by head in one block, a step's six cross attentions took 360 µs against 480 µs on the strided
        view of (B, S, C) (base size, 153 memory tokens); the copy is made once per decode.
        """
        return _heads(self.ck(memory), self.heads).contiguous(), _heads(self.cv(memory), self.heads).contiguous()


@dataclass
class DecodeRequest:
    """One sequence of a batched greedy decode: its encoder output and length limits."""

    memory: torch.Tensor
    """(1, S, D) encoder output for this sequence's prompt."""
    max_new_tokens: int
    min_new_tokens: int = 0
    teacher: list[int] | None = None
    """Ids (without the start token) fed instead of the argmax, so a parity check can compare logits
    step by step along another decoder's path."""


@dataclass
class Decoded:
    ids: list[int]
    """Token ids, start token first."""
    probabilities: list[float]
    """Softmax probability of each id after the start token under its step's raw logits (the scores' input)."""
    logits: torch.Tensor | None
    """(steps, vocab) raw logits of every step, before any EOS suppression; None unless asked for."""
    seconds: float
    """Wall time from the start of the decode until this sequence finished."""


def _padding_mask(lengths: list[int]) -> torch.Tensor | None:
    """The additive (B, 1, 1, S) mask hiding the padding of memories shorter than the longest (None for one)."""
    if len(lengths) == 1:
        return None
    mask = torch.zeros(len(lengths), 1, 1, max(lengths))
    for row, length in enumerate(lengths):
        mask[row, :, :, length:] = float("-inf")
    return mask


def _batched_cross_kv(layer: DecoderLayer, memories: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """`layer.cross_kv` of each (1, S_i, D) memory on its own, padded to the longest and stacked: (B, heads, S, C/heads).

    One int8 call over the padded batch would quantize every row's memory with one activation scale
    (and the padding), so a task's answer would depend on the task decoded beside it. Projected one
    by one, `/analyze`'s rows are what each task gives alone.
    """
    if len(memories) == 1:
        return layer.cross_kv(memories[0])
    longest = max(m.shape[1] for m in memories)
    pairs = [layer.cross_kv(m) for m in memories]
    keys = torch.cat([F.pad(k, (0, 0, 0, longest - k.shape[2])) for k, _ in pairs])
    values = torch.cat([F.pad(v, (0, 0, 0, longest - v.shape[2])) for _, v in pairs])
    return keys, values


def _memory_lengths(mem_mask: torch.Tensor | None, batch: int, length: int) -> list[int]:
    """Each row's real memory length from `_padding_mask` (padding is at the end)."""
    if mem_mask is None:
        return [length] * batch
    return [int(n) for n in torch.isfinite(mem_mask.reshape(batch, -1)).sum(-1).tolist()]


def _keep_rows(
    keep: list[int],
    caches: list[torch.Tensor],
    cross: list[tuple[torch.Tensor, torch.Tensor]],
    mem_mask: torch.Tensor | None,
) -> tuple[list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor | None]:
    """The decode state of the batch rows `keep` (ascending) after others finished.

    Rows are the outermost dimension, so a run of consecutive rows is a contiguous view: `/analyze`'s
    `<OD>` row goes on alone without copying its 10 MB of keys and values. Other selections are copied.
    A mask that no longer hides anything (the rows left have the longest memory) is dropped: SDPA
    with a mask took 0.04-0.08 ms more per step.
    """
    if keep == list(range(keep[0], keep[-1] + 1)):
        start, length = keep[0], len(keep)
        caches = [cache.narrow(0, start, length) for cache in caches]
        cross = [(mk.narrow(0, start, length), mv.narrow(0, start, length)) for mk, mv in cross]
        mem_mask = None if mem_mask is None else mem_mask.narrow(0, start, length)
    else:
        rows = torch.tensor(keep)
        caches = [cache.index_select(0, rows) for cache in caches]
        cross = [(mk.index_select(0, rows), mv.index_select(0, rows)) for mk, mv in cross]
        mem_mask = None if mem_mask is None else mem_mask.index_select(0, rows)
    if mem_mask is not None and not bool(torch.isinf(mem_mask).any()):
        mem_mask = None
    return caches, cross, mem_mask


@dataclass(frozen=True)
class _DecodeWeights:
    """Every decoder layer's `_StepWeights` as the per-layer lists `decoder_step` takes, and the packed
    `lm_head`, gathered once (never pickled)."""

    heads: int
    packed: list[list[Any]]
    reduce_range: list[list[bool]]
    norm_params: list[list[torch.Tensor]]
    norm_eps: list[list[float]]
    head: Any


class TextModel(CachesNotPickled, nn.Module):
    """BART encoder + decoder + tied lm_head with a lean greedy loop.

    The decoder step runs in C (`native.step.NativeDecoder`) where that extension is built and the CPU
    has AVX2, else as the TorchScript step (`decoder_step.decoder_step`) on fbgemm's kernels.
    """

    caches = ("_decode_weights", "_native", "_native_tried")

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
        self._decode_weights: _DecodeWeights | None = None
        self._native: NativeDecoder | None = None
        self._native_tried: bool | None = None

    def native_decoder(self, mapped_from: str | Path | None = None) -> NativeDecoder | None:
        """The C decoder step, packed on first call (None where it is not built or not usable here).

        `artifact.load_artifact` calls it before fbgemm packs the other layers, with the artifact's
        file, so the decoder's int8 weights are packed once, for the C step only.
        """
        if not self._native_tried:
            self._native_tried = True
            self._native = NativeDecoder.build(self, self.decoder_layers(), POSITION_OFFSET, mapped_from)
        return self._native

    def use_native_decoder(self, enabled: bool) -> None:
        """Choose the decoder step: the C one (packed on first use) or the TorchScript one (parity checks, A/B)."""
        if enabled:
            self._native_tried = bool(self._native_tried and self._native is not None)
        else:
            self._native, self._native_tried = None, True

    def natively_packed(self) -> list[nn.Module]:
        """The int8 modules the C step serves from its own packed copies (fbgemm need not pack them)."""
        if self._native is None:
            return []
        return [*(m for layer in self.decoder_layers() for m in layer.step_linears()), self.lm_head]

    def encode(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        length = inputs_embeds.shape[1]
        x = self.enc_norm(inputs_embeds + self.enc_positions[POSITION_OFFSET : POSITION_OFFSET + length])
        for layer in self.enc_layers:
            x = layer(x)
        return x

    def embedding(self) -> tuple[torch.Tensor, float, int, float]:
        """The tied int8 table, its scale and zero point, and the embedding scale, as `embedding_rows` takes them."""
        head = self.lm_head
        return head.weight_int8, head.scale, head.zero_point, self.embed_scale

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return embedding_rows(ids, self.embedding())

    def decoder_layers(self) -> list[DecoderLayer]:
        return cast(list[DecoderLayer], list(self.dec_layers))

    def self_attention_caches(self, batch: int, length: int) -> list[torch.Tensor]:
        """One preallocated (batch, 2, heads, length, head width) key/value buffer per decoder layer."""
        layers = self.decoder_layers()
        heads, width = layers[0].heads, self.dec_positions.shape[-1]
        return [torch.empty(batch, 2, heads, length, width // heads) for _ in layers]

    def step_logits(
        self,
        tokens: torch.Tensor,
        step: int,
        caches: list[torch.Tensor],
        cross: list[tuple[torch.Tensor, torch.Tensor]],
        mem_mask: torch.Tensor | None = None,
        memory_lengths: list[int] | None = None,
    ) -> torch.Tensor:
        """(B, vocab) logits for the (B, 1) `tokens` at position `step`, writing their keys/values into `caches`.

        `mem_mask` hides the padding of shorter encoder memories (`_padding_mask`); `memory_lengths`
        says the same as each row's real length, which the C step takes (derived from the mask if not given).

        Runs inside `decode_execution()`, which the caller enters once for a whole decode: entered and
        left around every step, it cost 56 µs of a 4.4 ms base-size step.
        """
        native = self.native_decoder()
        if native is not None:
            if memory_lengths is None:
                memory_lengths = _memory_lengths(mem_mask, cross[0][0].shape[0], cross[0][0].shape[2])
            return native.step_logits(tokens, step, caches, cross, memory_lengths, torch.get_num_threads())
        norm, weights = cast(nn.LayerNorm, self.dec_norm), self.decode_weights()
        return decoder_step(
            tokens,
            step,
            weights.heads,
            self.embedding(),
            self.dec_positions,
            POSITION_OFFSET + step,
            (norm.weight, norm.bias, norm.eps),
            weights.packed,
            weights.reduce_range,
            weights.norm_params,
            weights.norm_eps,
            caches,
            cross,
            mem_mask,
            weights.head,
            self.lm_head.reduce_range,
        )

    def decode_weights(self) -> _DecodeWeights:
        weights = self._decode_weights
        if weights is None:
            layers = [layer.step_weights() for layer in self.decoder_layers()]
            weights = _DecodeWeights(
                heads=self.decoder_layers()[0].heads,
                packed=[layer.packed for layer in layers],
                reduce_range=[layer.reduce_range for layer in layers],
                norm_params=[layer.norm_params for layer in layers],
                norm_eps=[layer.norm_eps for layer in layers],
                head=self.lm_head.packed(),
            )
            self._decode_weights = weights
        return weights

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
        """Greedy decode one sequence; see `greedy_batch`. Returns the ids (start token first) and logits."""
        request = DecodeRequest(memory, max_new_tokens, min_new_tokens, teacher)
        (decoded,) = self.greedy_batch([request], start_id, eos_id, forced_eos, keep_logits=True)
        return decoded.ids, cast(torch.Tensor, decoded.logits)

    def greedy_batch(
        self,
        requests: list[DecodeRequest],
        start_id: int,
        eos_id: int,
        forced_eos: bool = True,
        keep_logits: bool = False,
    ) -> list[Decoded]:
        """Greedy decode as HF `generate` does with num_beams=1 (min-new-tokens, forced EOS at the limit),
        for several sequences at once.

        Every step runs the decoder on all unfinished sequences as one batch, so each int8 weight
        (49.5 MB of decoder layers and 39 MB of `lm_head` at base size) is read from memory once per
        step for all of them; a finished sequence leaves the batch. Dynamic int8 quantization takes one
        activation scale per linear call, so a sequence decoded beside another may round differently
        from the same sequence decoded alone (the quality gate measures the served path as run).

        Each step's logits are reduced to the chosen token's probability and dropped, unless
        `keep_logits` (parity checks): kept, a 256-token `<OD>` would hold 52 MB of logits.
        """
        started = time.perf_counter()
        memory_lengths = [r.memory.shape[1] for r in requests]
        mem_mask = _padding_mask(memory_lengths)
        longest = max(r.max_new_tokens for r in requests)
        caches = self.self_attention_caches(len(requests), longest + 1)
        cross = [_batched_cross_kv(layer, [r.memory for r in requests]) for layer in self.decoder_layers()]
        active = list(range(len(requests)))  # request index of each batch row
        ids = [[start_id] for _ in requests]
        logits_seen: list[list[torch.Tensor]] = [[] for _ in requests]
        probabilities: list[list[float]] = [[] for _ in requests]
        done: list[Decoded | None] = [None] * len(requests)
        tokens = torch.full((len(requests), 1), start_id, dtype=torch.long)
        with decode_execution():
            for step in range(longest):
                step_logits = self.step_logits(tokens, step, caches, cross, mem_mask, memory_lengths)
                # numpy's argmax is vectorized (4 µs over 51,290 logits), torch's CPU argmax is not (44 µs);
                # both return the first index of the maximum.
                best = step_logits.numpy().argmax(-1).tolist()
                chosen = []
                for row, index in enumerate(active):
                    request = requests[index]
                    if request.teacher is not None:
                        next_id = request.teacher[step]
                    elif forced_eos and step == request.max_new_tokens - 1:
                        next_id = eos_id
                    elif step < request.min_new_tokens and best[row] == eos_id:
                        suppressed = step_logits[row].clone()
                        suppressed[eos_id] = float("-inf")
                        next_id = int(torch.argmax(suppressed))
                    else:
                        next_id = best[row]
                    chosen.append(next_id)
                chosen_ids = torch.tensor(chosen)
                # Row by row: torch's softmax over two or more rows runs as an OpenMP region, whose worker
                # thread then spins for milliseconds against the C step's threads (a batch-of-two step
                # took 4-8 ms instead of 2.2); over one row it runs on this thread alone.
                chosen_probabilities = [
                    float(chosen_token_probabilities(step_logits[row], chosen_ids[row])) for row in range(len(chosen))
                ]
                finished, next_ids = [], []
                for row, index in enumerate(active):
                    request, next_id = requests[index], chosen[row]
                    ids[index].append(next_id)
                    probabilities[index].append(chosen_probabilities[row])
                    if keep_logits:
                        logits_seen[index].append(step_logits[row])
                    end = next_id == eos_id or step + 1 == request.max_new_tokens
                    if end or (request.teacher is not None and step + 1 == len(request.teacher)):
                        finished.append(row)
                        logits = torch.stack(logits_seen[index]) if keep_logits else None
                        seconds = time.perf_counter() - started
                        done[index] = Decoded(ids[index], probabilities[index], logits, seconds)
                    else:
                        next_ids.append(next_id)
                if not finished:
                    tokens = chosen_ids.view(-1, 1)  # every row goes on: the ids just chosen are the next input
                    continue
                keep = [row for row in range(len(active)) if row not in finished]
                if not keep:
                    break
                active = [active[row] for row in keep]
                memory_lengths = [memory_lengths[row] for row in keep]
                caches, cross, mem_mask = _keep_rows(keep, caches, cross, mem_mask)
                tokens = torch.tensor(next_ids, dtype=torch.long).view(-1, 1)
        return [d for d in done if d is not None]
