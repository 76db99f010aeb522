"""The decoder at one position, compiled by TorchScript: the decode loop's inner step.

A decode step is 37 small int8 matmuls plus norms and one-query attention, each a few microseconds of
work. Called from Python, every `quantized::linear_dynamic` call costs about 9 µs more than the same
call inside a TorchScript graph, which was 16% of a Florence-2-base step (`scripting.compiled`). The
same ops on the same packed weights run here, so the logits are bit-identical to running them from
Python (tested).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from handler.florence.runtime.scripting import PackedInt8, as_compiled, compiled


def _plain_decoder_layer_step(
    x: torch.Tensor,
    step: int,
    heads: int,
    packed: list[PackedInt8],
    reduce_range: list[bool],
    norm_params: list[torch.Tensor],
    norm_eps: list[float],
    cache: torch.Tensor,
    mem_k: torch.Tensor,
    mem_v: torch.Tensor,
    mem_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Post-LN BART decoder layer for one position of B sequences: (B, 1, C) -> (B, 1, C).

    `packed` / `reduce_range` hold the six int8 linears in this order: self q/k/v stacked, self out,
    cross q, cross out, fc1, fc2. `norm_eps` holds the three LayerNorms' eps, and `norm_params` their
    weight, bias pairs, in this order: after self attention, after cross attention, after the MLP.

    Writes this position's key/value into `cache` (B, 2, heads, max_len, C/heads) at `step` and attends
    to [0, step]. `mem_mask` (additive, (B, 1, 1, S)) hides the padding of shorter encoder memories.
    With one query position, the (B, 1, C) projections are already (B, heads, 1, C/heads) in memory,
    so attention runs on views, with no transpose or copy.
    """
    batch, width = x.shape[0], x.shape[2]
    head_width = width // heads
    shape = [width]
    qkv = torch.ops.quantized.linear_dynamic(x, packed[0], reduce_range[0]).view(batch, 3, heads, 1, head_width)
    cache.narrow(3, step, 1).copy_(qkv.narrow(1, 1, 2))
    seen = cache.narrow(3, 0, step + 1)
    att = F.scaled_dot_product_attention(qkv.select(1, 0), seen.select(1, 0), seen.select(1, 1))
    out = torch.ops.quantized.linear_dynamic(att.reshape(batch, 1, width), packed[1], reduce_range[1])
    x = F.layer_norm(x + out, shape, norm_params[0], norm_params[1], norm_eps[0])
    query = torch.ops.quantized.linear_dynamic(x, packed[2], reduce_range[2]).view(batch, heads, 1, head_width)
    att = F.scaled_dot_product_attention(query, mem_k, mem_v, attn_mask=mem_mask)
    out = torch.ops.quantized.linear_dynamic(att.reshape(batch, 1, width), packed[3], reduce_range[3])
    x = F.layer_norm(x + out, shape, norm_params[2], norm_params[3], norm_eps[1])
    hidden = F.gelu(torch.ops.quantized.linear_dynamic(x, packed[4], reduce_range[4]))
    out = torch.ops.quantized.linear_dynamic(hidden, packed[5], reduce_range[5])
    return F.layer_norm(x + out, shape, norm_params[4], norm_params[5], norm_eps[2])


def embedding_rows(ids: torch.Tensor, embedding: tuple[torch.Tensor, float, int, float]) -> torch.Tensor:
    """The embeddings of the 2-D `ids`, (B, T, C): only these rows of the int8 table, dequantized, times
    the embedding scale. `embedding` is the int8 table, its scale and zero point, and the embedding scale.

    Prompts are embedded with it from Python once per request; the decode step runs it compiled.
    """
    table, table_scale, table_zero_point, embed_scale = embedding
    rows = table.index_select(0, ids.reshape(-1)).float()
    if table_zero_point != 0:
        rows = rows - table_zero_point
    rows = rows * table_scale
    if embed_scale != 1.0:
        rows = rows * embed_scale
    return rows.view(ids.shape[0], ids.shape[1], table.shape[1])


def _plain_decoder_input(
    ids: torch.Tensor,
    embedding: tuple[torch.Tensor, float, int, float],
    positions: torch.Tensor,
    position: int,
    norm: tuple[torch.Tensor, torch.Tensor, float],
) -> torch.Tensor:
    """The decoder's input at one position: the embeddings of the (B, 1) `ids` (`embedding_rows`) plus
    row `position` of the learned `positions` table, layer-normed: (B, 1, C). `norm` is the LayerNorm's
    weight, bias and eps.

    The same ops as embedding the tokens, adding the position and the LayerNorm called one by one
    from Python, in the same order (so the same values); compiled, they took a fraction of the 150 µs
    those five calls cost at the start of each step.
    """
    norm_weight, norm_bias, norm_eps = norm
    x = embedding_rows(ids, embedding) + positions.select(0, position)
    return F.layer_norm(x, [x.shape[2]], norm_weight, norm_bias, norm_eps)


def _plain_decoder_step(
    tokens: torch.Tensor,
    step: int,
    heads: int,
    embedding: tuple[torch.Tensor, float, int, float],
    positions: torch.Tensor,
    position: int,
    norm: tuple[torch.Tensor, torch.Tensor, float],
    layer_packed: list[list[PackedInt8]],
    layer_reduce_range: list[list[bool]],
    layer_norm_params: list[list[torch.Tensor]],
    layer_norm_eps: list[list[float]],
    caches: list[torch.Tensor],
    cross: list[tuple[torch.Tensor, torch.Tensor]],
    mem_mask: torch.Tensor | None,
    head: PackedInt8,
    head_reduce_range: bool,
) -> torch.Tensor:
    """(B, vocab) logits for the (B, 1) `tokens` at decoder position `step`: the input
    (`_plain_decoder_input`, row `position` of `positions`), every layer (`_plain_decoder_layer_step`,
    with the `layer_*` lists per layer, one self-attention cache and one cross key/value pair each),
    then the tied `lm_head` (`head`, packed from `table`).

    One compiled call per step instead of eight (the input, six layers, `lm_head`): a 60-token
    base-size decode 205.6-210.2 -> 179.7-180.7 ms by min, 223.7-235.2 -> 214.9-226.3 by median
    (two processes, 16 alternating rounds each); the same logits bit for bit.
    """
    x = _plain_decoder_input(tokens, embedding, positions, position, norm)
    for layer in range(len(caches)):
        mem_k, mem_v = cross[layer]
        x = _plain_decoder_layer_step(
            x,
            step,
            heads,
            layer_packed[layer],
            layer_reduce_range[layer],
            layer_norm_params[layer],
            layer_norm_eps[layer],
            caches[layer],
            mem_k,
            mem_v,
            mem_mask,
        )
    return torch.ops.quantized.linear_dynamic(x, head, head_reduce_range).view(tokens.shape[0], -1)


decoder_step = compiled(_plain_decoder_step)


@contextlib.contextmanager
def decode_execution() -> Iterator[None]:
    """Where `decoder_step` runs: as compiled (`scripting.as_compiled`), oneDNN's eltwise kernels off.

    With oneDNN enabled, `F.gelu` on a float tensor goes through a oneDNN eltwise primitive: 7.4 µs
    for the 3,072 values of one decode position against 3.2 µs for torch's own vectorized kernel, and
    20-24 µs inside a step, six times a step. That switch is process-wide, so it is restored on exit;
    `service.Service` runs one request at a time. Nothing else in the step uses oneDNN (the int8
    linears are fbgemm's).
    """
    onednn = bool(torch.backends.mkldnn.enabled)
    # torch's stubs type the module attribute as its descriptor (ContextProp); at run time it is a bool.
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]
    try:
        with as_compiled():
            yield
    finally:
        torch.backends.mkldnn.enabled = onednn  # type: ignore[assignment]
