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
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from handler.florence.runtime import vision_block
from handler.florence.runtime.int8 import Int8Linear
from handler.florence.runtime.pickling import CachesNotPickled
from handler.florence.runtime.scripting import as_compiled

HIDDEN_CHUNK_ELEMENTS = 1 << 20
"""Largest MLP hidden activation computed at once (4 MB of float32, an eighth of L3).

8 MB bands were as fast, but with the blocks compiled (`vision_block`) a fresh process's peak RSS
after a caption and an `/analyze` rose from 633-638 MiB to 668-681 MiB; with 4 MB bands it was
634-638 MiB, and the tower took 219.3-222.4 ms by min against 222.0-224.9 with 8 MB bands (three
processes, 12 rotating rounds each). The same holds for `ATTENTION_CHUNK_ELEMENTS`."""


def _packed(linear: nn.Module) -> tuple[object, bool]:
    """An `Int8Linear`'s fbgemm-packed weights and its reduce_range flag, as the block functions take them."""
    layer = cast(Int8Linear, linear)
    return layer.packed(), layer.reduce_range


class Mlp(nn.Module):
    """fc1, GELU, fc2; on large feature maps, a band of rows at a time (`vision_block.mlp`).

    At the first DaViT stage the hidden activation is 19 MB; in bands of at most 4 MB, fc1's output
    is still in L3 when GELU reads it, and the peak RSS of a request drops by the difference. Each
    band takes its own dynamic int8 activation scale: never coarser than one for the whole map.
    """

    def __init__(self, fc1: nn.Module, fc2: nn.Module) -> None:
        super().__init__()
        self.fc1, self.fc2 = fc1, fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = cast(Int8Linear, self.fc1).out_features
        return vision_block.mlp(x, *_packed(self.fc1), hidden, *_packed(self.fc2), HIDDEN_CHUNK_ELEMENTS)


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


ATTENTION_CHUNK_ELEMENTS = 1 << 20
"""Most attention weights (windows x heads x tokens x tokens) bf16 window attention holds at once: 4 MB of float32."""


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping window x window patches (`vision_block.window_attention`).

    Where bf16 is native (`native_bfloat16`), the attention is two bf16 matmuls with the softmax in
    float32 (`vision_block.bf16_attention`): for DaViT's 144-token windows of 32-wide heads, torch's
    fused SDPA kernel reaches about 40 GFLOP/s here; oneDNN's bf16 matmuls take 1.50 ms where it takes
    2.26 at stage 3 (the tower: 236.8 -> 228.7 ms by min, one process, alternating). Unlike SDPA they
    hold the attention weights, 21 MB at stage 1 (peak RSS +36 MiB), hence bands of windows
    (`ATTENTION_CHUNK_ELEMENTS`). Elsewhere float32 SDPA.
    """

    def __init__(self, qkv: nn.Module, proj: nn.Module, num_heads: int, window: int, scale: float) -> None:
        super().__init__()
        self.qkv, self.proj = qkv, proj
        self.num_heads, self.window, self.scale = num_heads, window, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return vision_block.window_attention(
            x,
            *_packed(self.qkv),
            *_packed(self.proj),
            self.num_heads,
            self.window,
            self.scale,
            native_bfloat16(),
            ATTENTION_CHUNK_ELEMENTS,
        )


class ChannelAttention(nn.Module):
    """DaViT's grouped channel attention: channels attend to channels, tokens are the feature axis.

    Two float32 matmuls on views of the token-major q/k/v rather than SDPA
    (`vision_block.channel_attention`): the attention is only (channels/group)^2 per group, but each of
    its "heads" is a whole feature map wide, where SDPA's kernel is slow. The tower: 239.1 -> 232.5 ms
    by min (11 alternating rounds, one process).
    """

    def __init__(self, qkv: nn.Module, proj: nn.Module, groups: int) -> None:
        super().__init__()
        self.qkv, self.proj, self.groups = qkv, proj, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return vision_block.channel_attention(x, *_packed(self.qkv), *_packed(self.proj), self.groups)


@dataclass(frozen=True)
class _BlockWeights:
    """A block's weights as `vision_block`'s compiled functions take them, gathered once (never pickled)."""

    conv_weights: list[torch.Tensor]
    conv_biases: list[torch.Tensor | None]
    norm_params: list[torch.Tensor]
    norm_eps: list[float]
    packed: list[object]
    reduce_range: list[bool]
    hidden: int


class MixingBlock(CachesNotPickled, nn.Module):
    """conv-residual, attention-residual, conv-residual, MLP-residual: one DaViT spatial or channel block.

    `conv1` and `conv2` are depthwise 3 x 3 convs that already include their residual (identity folded
    into the centre tap). The block runs as one compiled call (`vision_block.davit_block`) on weights
    gathered once from its modules.
    """

    caches = ("_weights",)

    def __init__(self, conv1, norm1, attn, conv2, norm2, mlp) -> None:
        super().__init__()
        self.conv1, self.norm1, self.attn = conv1, norm1, attn
        self.conv2, self.norm2, self.mlp = conv2, norm2, mlp
        self._weights: _BlockWeights | None = None

    def weights(self) -> _BlockWeights:
        weights = self._weights
        if weights is None:
            convs = [cast(nn.Conv2d, conv) for conv in (self.conv1, self.conv2)]
            for conv in convs:
                depthwise = conv.groups == conv.in_channels == conv.out_channels
                if not depthwise or conv.stride != (1, 1) or conv.padding != (1, 1) or conv.kernel_size != (3, 3):
                    raise ValueError(f"a DaViT block's convs are depthwise 3 x 3, stride 1, padding 1; got {conv}")
            norms = [cast(nn.LayerNorm, norm) for norm in (self.norm1, self.norm2)]
            mlp = cast(Mlp, self.mlp)
            linears = [cast(Int8Linear, m) for m in (self.attn.qkv, self.attn.proj, mlp.fc1, mlp.fc2)]
            weights = _BlockWeights(
                conv_weights=[conv.weight for conv in convs],
                conv_biases=[conv.bias for conv in convs],
                norm_params=[param for norm in norms for param in (norm.weight, norm.bias)],
                norm_eps=[norm.eps for norm in norms],
                packed=[linear.packed() for linear in linears],
                reduce_range=[linear.reduce_range for linear in linears],
                hidden=linears[2].out_features,
            )
            self._weights = weights
        return weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights()
        attn = self.attn
        if isinstance(attn, WindowAttention):
            spatial, heads, window, scale = True, attn.num_heads, attn.window, attn.scale
        else:
            spatial, heads, window, scale = False, cast(ChannelAttention, attn).groups, 0, 1.0
        return vision_block.davit_block(
            x,
            w.conv_weights,
            w.conv_biases,
            w.norm_params,
            w.norm_eps,
            w.packed,
            w.reduce_range,
            w.hidden,
            spatial,
            heads,
            window,
            scale,
            native_bfloat16(),
            HIDDEN_CHUNK_ELEMENTS,
            ATTENTION_CHUNK_ELEMENTS,
        )


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
        stride, padding = cast(list[int], list(conv.stride)), cast(list[int], list(conv.padding))
        return vision_block.conv_channels_last(
            x.to(conv.weight.dtype), conv.weight, conv.bias, stride, padding, conv.groups
        ).float()

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
        with as_compiled():  # the blocks are compiled functions (`vision_block`)
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
