"""Florence-2's DaViT vision tower and image projector, re-implemented for batch-1 CPU serving.

The graph is the one of `transformers`' Florence-2 (same modules, same weights, same maths), with the
activations kept channels-last (B, H, W, C) between modules and every conv run by oneDNN's
channels-last kernel (no NCHW copies; 1.14x on the tower). Each DaViT block's depthwise
conv-plus-residual is one conv whose centre tap carries the identity (`serving_prep.fold_residual`),
which saves an add and a pass over the activations. Float rounding therefore differs slightly from
the reference's; the quality gate (`model_build.export.parity`) measures that this costs nothing.
No `transformers` import: the served artifact unpickles with torch alone.
"""

from __future__ import annotations

import copy
import functools
import platform
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from handler.florence.runtime.int8 import Int8Linear
from handler.florence.runtime.pickling import CachesNotPickled


def _channels_last_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Apply a conv to a (B, H, W, C) tensor; returns (B, H', W', C').

    The permuted view is a channels-last NCHW tensor (no copy), so oneDNN runs its channels-last
    kernel and returns channels-last, which permutes back to a contiguous (B, H', W', C').
    """
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


HIDDEN_CHUNK_ELEMENTS = 2 << 20
"""Largest MLP hidden activation computed at once (8 MB of float32, a quarter of L3)."""


class Mlp(nn.Module):
    """fc1, GELU, fc2; on large feature maps, a band of rows at a time.

    At the first DaViT stage the hidden activation is 19 MB; in bands of at most 8 MB, fc1's output
    is still in L3 when GELU reads it, and the peak RSS of a request drops by the difference. Each
    band takes its own dynamic int8 activation scale: never coarser than one for the whole map.
    """

    def __init__(self, fc1: nn.Module, fc2: nn.Module) -> None:
        super().__init__()
        self.fc1, self.fc2 = fc1, fc2

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        hidden = cast(Int8Linear, self.fc1).out_features
        bands = -(-b * h * w * hidden // HIDDEN_CHUNK_ELEMENTS)
        if bands <= 1 or h < 2:
            return self._forward(x)
        rows = -(-h // bands)
        return torch.cat([self._forward(band) for band in x.split(rows, dim=1)], dim=1)


@functools.cache
def native_bfloat16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where oneDNN's bf16 convs beat fp32.

    Without it they lose: the 512 -> 1024 downsampling conv took 19.0 ms in bf16 against 10.8 ms in
    fp32 with oneDNN limited to AVX512-VNNI, and 28.9 against 10.1 ms limited to AVX2
    (`ONEDNN_MAX_CPU_ISA`, on this Zen 4).
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, check, lambda: False)()) for check in checks)


ATTENTION_CHUNK_ELEMENTS = 2 << 20
"""Most attention weights (windows x heads x tokens x tokens) `_bf16_attention` holds at once: 8 MB of float32."""


def _bf16_attention(qkv: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v for (3, windows, heads, tokens, width) stacked q/k/v: both matmuls in
    bf16, the softmax in float32, a band of windows at a time.

    For DaViT's 144-token windows of 32-wide heads, torch's fused SDPA kernel reaches about 40 GFLOP/s
    here; oneDNN's bf16 matmuls take 1.50 ms where it takes 2.26 at stage 3 (the tower: 236.8 ->
    228.7 ms by min, one process, alternating). Unlike SDPA they hold the attention weights, 21 MB
    at stage 1 (peak RSS +36 MiB), hence the bands. Used only where bf16 is native (`native_bfloat16`).
    """
    heads, tokens = qkv.shape[2], qkv.shape[3]
    band = max(1, ATTENTION_CHUNK_ELEMENTS // (heads * tokens * tokens))
    outputs = []
    for part in qkv.split(band, dim=1):
        q, k, v = part.to(torch.bfloat16).unbind(0)
        weights = torch.matmul(q, k.transpose(-2, -1)).float().mul_(scale).softmax(-1)
        outputs.append(torch.matmul(weights.to(torch.bfloat16), v).float())
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping window x window patches."""

    def __init__(self, qkv: nn.Module, proj: nn.Module, num_heads: int, window: int, scale: float) -> None:
        super().__init__()
        self.qkv, self.proj = qkv, proj
        self.num_heads, self.window, self.scale = num_heads, window, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        win = self.window
        pad_b, pad_r = (win - h % win) % win, (win - w % win) % win
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        windows = x.view(b, hp // win, win, wp // win, win, c).transpose(2, 3).reshape(-1, win * win, c)
        n_win, tokens, _ = windows.shape
        heads = self.num_heads
        qkv = self.qkv(windows).view(n_win, tokens, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        if native_bfloat16():
            out = _bf16_attention(qkv, self.scale)
        else:
            out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.scale)
        out = self.proj(out.transpose(1, 2).reshape(n_win, tokens, c))
        out = out.view(b, hp // win, wp // win, win, win, c).transpose(2, 3).reshape(b, hp, wp, c)
        if pad_b or pad_r:
            out = out[:, :h, :w, :].contiguous()
        return out


class ChannelAttention(nn.Module):
    """DaViT's grouped channel attention: channels attend to channels, tokens are the feature axis.

    Two float32 matmuls on views of the token-major q/k/v rather than SDPA: the attention is only
    (channels/group)^2 per group, but each of its "heads" is a whole feature map wide, where SDPA's
    kernel is slow. The tower: 239.1 -> 232.5 ms by min (11 alternating rounds, one process).
    """

    def __init__(self, qkv: nn.Module, proj: nn.Module, groups: int) -> None:
        super().__init__()
        self.qkv, self.proj, self.groups = qkv, proj, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        n = h * w
        g = self.groups
        q, k, v = self.qkv(x.reshape(b, n, c)).view(b, n, 3, g, c // g).unbind(2)  # each (b, n, g, c/g)
        weights = torch.matmul(q.permute(0, 2, 3, 1), k.transpose(1, 2)).mul_(n**-0.5).softmax(-1)  # (b, g, c/g, c/g)
        out = torch.matmul(v.transpose(1, 2), weights.transpose(-1, -2))  # (b, g, n, c/g)
        return self.proj(out.transpose(1, 2).reshape(b, n, c)).view(b, h, w, c)


class MixingBlock(nn.Module):
    """conv-residual, attention-residual, conv-residual, MLP-residual: one DaViT spatial or channel block.

    `conv1` and `conv2` already include their residual (identity folded into the centre tap).
    """

    def __init__(self, conv1, norm1, attn, conv2, norm2, mlp) -> None:
        super().__init__()
        self.conv1, self.norm1, self.attn = conv1, norm1, attn
        self.conv2, self.norm2, self.mlp = conv2, norm2, mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _channels_last_conv(self.conv1, x)
        x = x + self.attn(self.norm1(x))
        x = _channels_last_conv(self.conv2, x)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(CachesNotPickled, nn.Module):
    """The stem and the stride-2 downsampling convs between DaViT stages.

    `serving_prep` stores these four dense convs in bfloat16 (11.8 MiB less artifact). Where the CPU
    computes bf16 natively they run so: 4.6 ms instead of 10.7 ms for the largest (512 -> 1024
    channels), 11-13 ms less per image in all, at a relative error of 3e-3, a tenth of int8's.
    Elsewhere they run on a float32 copy made at first use and never pickled, so an artifact's bytes
    do not depend on the machine that built it (`native_bfloat16`). Activations stay float32
    between modules.
    """

    caches = ("_float_conv",)
    _float_conv: nn.Conv2d | None

    def __init__(self, conv: nn.Conv2d, norm: nn.LayerNorm, pre_norm: bool) -> None:
        super().__init__()
        self.conv, self.norm, self.pre_norm = conv, norm, pre_norm
        object.__setattr__(self, "_float_conv", None)  # a cache, not a registered submodule

    def _compute_conv(self) -> nn.Conv2d:
        conv = self.conv
        if conv.weight.dtype != torch.bfloat16 or native_bfloat16():
            return conv
        float_conv = self._float_conv
        if float_conv is None:
            float_conv = copy.deepcopy(conv).float()
            object.__setattr__(self, "_float_conv", float_conv)
        return float_conv

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        conv = self._compute_conv()
        return _channels_last_conv(conv, x.to(conv.weight.dtype)).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            return self._conv(self.norm(x))
        return self.norm(self._conv(x))


class VisionTower(nn.Module):
    """DaViT stages followed by Florence-2's projector: pixels (B, 3, H, W) -> image tokens (B, 1+HW/1024, D)."""

    def __init__(self, embeds: list[PatchEmbed], stages: list[list[MixingBlock]], projector: Projector) -> None:
        super().__init__()
        self.embeds = nn.ModuleList(embeds)
        self.stages = nn.ModuleList(nn.ModuleList(blocks) for blocks in stages)
        self.projector = projector

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.permute(0, 2, 3, 1).contiguous()
        for embed, blocks in zip(self.embeds, self.stages, strict=False):
            x = embed(x)
            for block in cast(nn.ModuleList, blocks):
                x = block(x)
        return self.projector(x)


class Projector(nn.Module):
    """2D learned positions, a temporal code, a pooled token, then a linear map into the text width."""

    def __init__(
        self, row: torch.Tensor, column: torch.Tensor, temporal: torch.Tensor, proj: nn.Module, norm: nn.LayerNorm
    ) -> None:
        super().__init__()
        self.row = nn.Parameter(row, requires_grad=False)
        self.column = nn.Parameter(column, requires_grad=False)
        self.temporal = nn.Parameter(temporal, requires_grad=False)
        self.proj, self.norm = proj, norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        position = torch.cat(
            [self.column[:w].unsqueeze(0).expand(h, w, -1), self.row[:h].unsqueeze(1).expand(h, w, -1)], dim=-1
        )
        tokens = (x + position).reshape(b, h * w, c) + self.temporal[:1]
        pooled = tokens.mean(dim=1, keepdim=True)
        return self.norm(self.proj(torch.cat([pooled, tokens], dim=1)))
