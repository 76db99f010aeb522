"""One DaViT block as one TorchScript call: the vision tower's inner loop.

A Florence-2-base tower is 24 blocks of about 35 ops each (convs, LayerNorms, int8 linears, window or
channel attention, GELU and the views between them). Called op by op from Python they cost the tower
about 10 ms: 230.5-233.5 ms by min against 219.3-222.4 ms compiled (three processes, 12 rotating
rounds each, quiet phase; 1-5 ms in the host's slow phases). The functions here take a block's tensors
and fbgemm's packed weights and run the same ops in the same order as the modules of `vision.py` did,
so the features are bit-identical (tested); `vision.MixingBlock` calls the compiled block, and its
parts call the same helpers.

Activations are channels-last (B, H, W, C) throughout; see `vision.py` for why each piece is shaped so.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from handler.florence.runtime.scripting import PackedInt8, compiled


def conv_channels_last(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    groups: int,
) -> torch.Tensor:
    """A conv on a (B, H, W, C) tensor; returns (B, H', W', C').

    The permuted view is a channels-last NCHW tensor (no copy), so oneDNN runs its channels-last
    kernel and returns channels-last, which permutes back to a contiguous (B, H', W', C').
    """
    return F.conv2d(x.permute(0, 3, 1, 2), weight, bias, stride, padding, [1, 1], groups).permute(0, 2, 3, 1)


def mlp(
    x: torch.Tensor,
    fc1: PackedInt8,
    fc1_reduce_range: bool,
    hidden: int,
    fc2: PackedInt8,
    fc2_reduce_range: bool,
    chunk_elements: int,
) -> torch.Tensor:
    """fc1, GELU, fc2 over (B, H, W, C); a band of rows at a time where the hidden activation would
    exceed `chunk_elements` (`vision.Mlp` says why)."""
    batch, height, width = x.shape[0], x.shape[1], x.shape[2]
    bands = -(-batch * height * width * hidden // chunk_elements)
    if bands <= 1 or height < 2:
        hidden_x = F.gelu(torch.ops.quantized.linear_dynamic(x, fc1, fc1_reduce_range))
        return torch.ops.quantized.linear_dynamic(hidden_x, fc2, fc2_reduce_range)
    outputs: list[torch.Tensor] = []
    for band in x.split(-(-height // bands), dim=1):
        hidden_band = F.gelu(torch.ops.quantized.linear_dynamic(band, fc1, fc1_reduce_range))
        outputs.append(torch.ops.quantized.linear_dynamic(hidden_band, fc2, fc2_reduce_range))
    return torch.cat(outputs, dim=1)


def bf16_attention(qkv: torch.Tensor, scale: float, chunk_elements: int) -> torch.Tensor:
    """softmax(q k^T * scale) v for (3, windows, heads, tokens, width) stacked q/k/v: both matmuls in
    bf16, the softmax in float32, a band of windows at a time (`vision.WindowAttention` says why)."""
    heads, tokens = qkv.shape[2], qkv.shape[3]
    band = max(1, chunk_elements // (heads * tokens * tokens))
    outputs: list[torch.Tensor] = []
    for part in qkv.split(band, dim=1):
        q_k_v = part.to(torch.bfloat16).unbind(0)
        weights = torch.matmul(q_k_v[0], q_k_v[1].transpose(-2, -1)).float().mul_(scale).softmax(-1)
        outputs.append(torch.matmul(weights.to(torch.bfloat16), q_k_v[2]).float())
    if len(outputs) == 1:
        return outputs[0]
    return torch.cat(outputs)


def window_attention(
    x: torch.Tensor,
    qkv: PackedInt8,
    qkv_reduce_range: bool,
    proj: PackedInt8,
    proj_reduce_range: bool,
    heads: int,
    window: int,
    scale: float,
    bfloat16: bool,
    chunk_elements: int,
) -> torch.Tensor:
    """Multi-head self-attention inside non-overlapping window x window patches of (B, H, W, C)."""
    batch, height, width, channels = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    pad_bottom, pad_right = (window - height % window) % window, (window - width % window) % window
    if pad_bottom > 0 or pad_right > 0:
        x = F.pad(x, [0, 0, 0, pad_right, 0, pad_bottom])
    padded_h, padded_w = height + pad_bottom, width + pad_right
    windows = x.view(batch, padded_h // window, window, padded_w // window, window, channels)
    windows = windows.transpose(2, 3).reshape(-1, window * window, channels)
    count, tokens = windows.shape[0], windows.shape[1]
    stacked = torch.ops.quantized.linear_dynamic(windows, qkv, qkv_reduce_range)
    stacked = stacked.view(count, tokens, 3, heads, channels // heads).permute(2, 0, 3, 1, 4)
    if bfloat16:
        out = bf16_attention(stacked, scale, chunk_elements)
    else:
        out = F.scaled_dot_product_attention(stacked[0], stacked[1], stacked[2], scale=scale)
    out = torch.ops.quantized.linear_dynamic(
        out.transpose(1, 2).reshape(count, tokens, channels), proj, proj_reduce_range
    )
    out = out.view(batch, padded_h // window, padded_w // window, window, window, channels)
    out = out.transpose(2, 3).reshape(batch, padded_h, padded_w, channels)
    if pad_bottom > 0 or pad_right > 0:
        out = out[:, :height, :width, :].contiguous()
    return out


def channel_attention(
    x: torch.Tensor,
    qkv: PackedInt8,
    qkv_reduce_range: bool,
    proj: PackedInt8,
    proj_reduce_range: bool,
    groups: int,
) -> torch.Tensor:
    """DaViT's grouped channel attention over (B, H, W, C): channels attend to channels, tokens are the
    feature axis; two float32 matmuls on views of the token-major q/k/v (`vision.ChannelAttention`)."""
    batch, height, width, channels = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    tokens = height * width
    stacked = torch.ops.quantized.linear_dynamic(x.reshape(batch, tokens, channels), qkv, qkv_reduce_range)
    q_k_v = stacked.view(batch, tokens, 3, groups, channels // groups).unbind(2)  # each (b, n, g, c/g)
    weights = torch.matmul(q_k_v[0].permute(0, 2, 3, 1), q_k_v[1].transpose(1, 2))
    weights = weights.mul_(float(tokens) ** -0.5).softmax(-1)  # (b, g, c/g, c/g)
    out = torch.matmul(q_k_v[2].transpose(1, 2), weights.transpose(-1, -2))  # (b, g, n, c/g)
    out = torch.ops.quantized.linear_dynamic(
        out.transpose(1, 2).reshape(batch, tokens, channels), proj, proj_reduce_range
    )
    return out.view(batch, height, width, channels)


def _plain_block(
    x: torch.Tensor,
    conv_weights: list[torch.Tensor],
    conv_biases: list[torch.Tensor | None],
    norm_params: list[torch.Tensor],
    norm_eps: list[float],
    packed: list[PackedInt8],
    reduce_range: list[bool],
    hidden: int,
    spatial: bool,
    heads: int,
    window: int,
    scale: float,
    bfloat16: bool,
    hidden_chunk: int,
    attention_chunk: int,
) -> torch.Tensor:
    """conv-residual, attention-residual, conv-residual, MLP-residual over (B, H, W, C): a DaViT spatial
    block (window attention) where `spatial`, else a channel block (`heads` groups; `window`, `scale`,
    `bfloat16` and `attention_chunk` unused).

    The two depthwise convs carry their residual in the centre tap. `norm_params` holds the two
    LayerNorms' weight, bias pairs; `packed` / `reduce_range` the linears qkv, proj, fc1, fc2.
    """
    channels = [x.shape[3]]
    x = conv_channels_last(x, conv_weights[0], conv_biases[0], [1, 1], [1, 1], x.shape[3])
    normed = F.layer_norm(x, channels, norm_params[0], norm_params[1], norm_eps[0])
    if spatial:
        attended = window_attention(
            normed,
            packed[0],
            reduce_range[0],
            packed[1],
            reduce_range[1],
            heads,
            window,
            scale,
            bfloat16,
            attention_chunk,
        )
    else:
        attended = channel_attention(normed, packed[0], reduce_range[0], packed[1], reduce_range[1], heads)
    x = x + attended
    x = conv_channels_last(x, conv_weights[1], conv_biases[1], [1, 1], [1, 1], x.shape[3])
    normed = F.layer_norm(x, channels, norm_params[2], norm_params[3], norm_eps[1])
    return x + mlp(normed, packed[2], reduce_range[2], hidden, packed[3], reduce_range[3], hidden_chunk)


davit_block = compiled(_plain_block)
