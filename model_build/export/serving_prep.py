"""Turning a merged fp32 Florence-2 into the object the server pickles: `prepare_for_serving`.

The int8 weights are those of `quantize_for_serving(model, int8_embedding=True)`: the seed recipe's
int8 linears, plus a token embedding tied to the int8 `lm_head` instead of an fp32 copy (150 MiB at
base size). They are re-wired into `handler.florence.runtime.model.FastFlorence`, a lean
channels-last, static-KV-cache re-implementation with q/k/v stacked, the depthwise convs' residuals
folded into their kernels and tasks decoded as one batch. It is not bit-exact with the plain int8
model; `model_build.export.parity` measures that it is at least as faithful to fp32 as the seed recipe.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from handler.florence.preprocess import ImageSpec
from handler.florence.runtime.int8 import Int8Linear
from handler.florence.runtime.model import DecodeSpec, FastFlorence
from handler.florence.runtime.text import DecoderLayer, EncoderLayer, TextModel, TiedInt8Head
from handler.florence.runtime.vision import (
    ChannelAttention,
    MixingBlock,
    Mlp,
    PatchEmbed,
    Projector,
    VisionTower,
    WindowAttention,
)
from handler.florence.tasks import Task
from model_build.export.quantize import quantize_for_serving


def channels_last(conv: nn.Conv2d) -> nn.Conv2d:
    """The conv with its weight stored channels-last, the layout oneDNN's channels-last kernel reads."""
    conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
    return conv


def in_bfloat16(conv: nn.Conv2d) -> nn.Conv2d:
    """The conv with bfloat16 weights (and bias), which `PatchEmbed` runs on bf16 activations (why: its docstring)."""
    return conv.to(torch.bfloat16)


def fold_residual(conv: nn.Conv2d) -> nn.Conv2d:
    """A copy of a same-size depthwise conv that also adds its input: `conv(x) + x` as one conv.

    The identity is a 1 on each channel's centre tap, so the sum is exact in real arithmetic and
    saves the add (and a pass over the activations) in every DaViT block.
    """
    kh, kw = conv.kernel_size
    same = conv.stride == (1, 1) and conv.padding == (kh // 2, kw // 2) and kh % 2 == kw % 2 == 1
    if not (same and conv.groups == conv.in_channels == conv.out_channels):
        raise ValueError(f"cannot fold a residual into {conv}: not a same-size depthwise conv")
    folded = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        padding=conv.padding,
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        folded.weight.copy_(conv.weight)
        folded.weight[:, 0, kh // 2, kw // 2] += 1.0
        if conv.bias is not None:
            folded.bias.copy_(conv.bias)
    return channels_last(folded)


def _vision(q_model, config) -> VisionTower:
    tower = q_model.model.vision_tower
    vc = config.vision_config
    embeds = [PatchEmbed(in_bfloat16(channels_last(e.conv)), e.norm, bool(e.pre_norm)) for e in tower.convs]
    stages = []
    for stage_idx, blocks in enumerate(tower.blocks):
        stage = []
        for block in blocks:
            sp, ch = block.spatial_block, block.channel_block
            wa = sp.window_attn
            stage.append(
                MixingBlock(
                    fold_residual(sp.conv1),
                    sp.norm1,
                    WindowAttention(wa.qkv, wa.proj, vc.num_heads[stage_idx], wa.window_size, wa.scale),
                    fold_residual(sp.conv2),
                    sp.norm2,
                    Mlp(sp.ffn.fc1, sp.ffn.fc2),
                )
            )
            stage.append(
                MixingBlock(
                    fold_residual(ch.conv1),
                    ch.norm1,
                    ChannelAttention(ch.channel_attn.qkv, ch.channel_attn.proj, vc.num_groups[stage_idx]),
                    fold_residual(ch.conv2),
                    ch.norm2,
                    Mlp(ch.ffn.fc1, ch.ffn.fc2),
                )
            )
        stages.append(stage)
    mm = q_model.model.multi_modal_projector
    projector = Projector(
        mm.image_position_embed.row_embeddings.weight.detach().clone(),
        mm.image_position_embed.column_embeddings.weight.detach().clone(),
        mm.visual_temporal_embed.pos_idx_to_embed.detach().clone(),
        mm.image_projection,
        mm.image_proj_norm,
    )
    return VisionTower(embeds, stages, projector)


def stack_int8_linears(linears: list[nn.Module]) -> nn.Module:
    """One dynamic-int8 linear computing several that share an input (q/k/v), bit for bit.

    Each part keeps its own per-tensor weight scale as per-output-channel scales, and dynamic
    quantization derives the activation scale from the shared input, so every output element is
    exactly what the separate linear gives, for one kernel call instead of three.
    """
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    weights = [m.weight() for m in linears]
    if any(w.qscheme() != torch.per_tensor_affine for w in weights):
        raise ValueError("stacking expects per-tensor int8 weights (quantize_dynamic's default)")
    int8 = torch.cat([w.int_repr() for w in weights])
    scales = torch.cat([torch.full((w.shape[0],), w.q_scale(), dtype=torch.double) for w in weights])
    zero_points = torch.cat([torch.full((w.shape[0],), w.q_zero_point(), dtype=torch.long) for w in weights])
    biases = [m.bias() for m in linears]
    bias = None if any(b is None for b in biases) else torch.cat(biases)
    stacked = DynamicLinear(int8.shape[1], int8.shape[0], bias_=bias is not None, dtype=torch.qint8)
    stacked.set_weight_bias(torch._make_per_channel_quantized_tensor(int8, scales, zero_points, 0), bias)
    return stacked


def _qkv(attn) -> nn.Module:
    return stack_int8_linears([attn.q_proj, attn.k_proj, attn.v_proj])


def _text(q_model, config) -> TextModel:
    lm = q_model.model.language_model
    tc = config.text_config
    qweight = q_model.lm_head.weight()  # the seed recipe's int8 lm_head, reused as the embedding table
    head = TiedInt8Head(qweight.int_repr().contiguous(), qweight.q_scale(), qweight.q_zero_point())
    enc_layers = [
        EncoderLayer(
            _qkv(layer.self_attn),
            layer.self_attn.out_proj,
            layer.self_attn_layer_norm,
            layer.fc1,
            layer.fc2,
            layer.final_layer_norm,
            tc.encoder_attention_heads,
        )
        for layer in lm.encoder.layers
    ]
    dec_layers = [
        DecoderLayer(
            _qkv(layer.self_attn),
            layer.self_attn.out_proj,
            layer.self_attn_layer_norm,
            layer.encoder_attn.q_proj,
            layer.encoder_attn.k_proj,
            layer.encoder_attn.v_proj,
            layer.encoder_attn.out_proj,
            layer.encoder_attn_layer_norm,
            layer.fc1,
            layer.fc2,
            layer.final_layer_norm,
            tc.decoder_attention_heads,
        )
        for layer in lm.decoder.layers
    ]
    return TextModel(
        head,
        float(lm.shared.embed_scale),
        lm.encoder.embed_positions.weight.detach().clone(),
        lm.encoder.layernorm_embedding,
        enc_layers,
        lm.decoder.embed_positions.weight.detach().clone(),
        lm.decoder.layernorm_embedding,
        dec_layers,
    )


def _check_supported(model) -> None:
    tc = model.config.text_config
    if tc.activation_function != "gelu" or getattr(tc, "normalize_before", False):
        raise ValueError("fast runtime supports BART with post-LayerNorm and exact GELU only")
    if model.config.vision_config.activation_function != "gelu":
        raise ValueError("fast runtime supports a GELU vision tower only")


def task_prompt_ids(processor, image_size: int) -> dict[str, list[int]]:
    """Encoder input ids per task exactly as the real processor builds them (image slots included)."""
    from PIL import Image

    dummy = Image.new("RGB", (image_size, image_size))
    return {
        task.value: processor(text=task.value, images=dummy, return_tensors="pt")["input_ids"][0].tolist()
        for task in Task
    }


def prepare_for_serving(model: nn.Module, processor, prompt_ids: dict[str, list[int]] | None = None) -> FastFlorence:
    """Merged fp32 Florence-2 + its (384-configured) processor -> the object `write_artifact` pickles.

    `prompt_ids` overrides the processor's tokenization (the benchmark's base-size model has no
    matching tokenizer offline); the fuse step leaves it out.
    """
    _check_supported(model)
    model = model.eval()
    q_model = quantize_for_serving(model, int8_embedding=True)  # copies; the caller's fp32 model is untouched
    config = model.config
    ip = processor.image_processor
    size = int(ip.size["height"])
    gen = model.generation_config
    tokenizer = processor.tokenizer
    decode = DecodeSpec(
        start_id=int(
            gen.decoder_start_token_id
            if gen.decoder_start_token_id is not None
            else config.text_config.decoder_start_token_id
        ),
        eos_id=int(gen.eos_token_id if isinstance(gen.eos_token_id, int) else gen.eos_token_id[0]),
        image_token_id=int(config.image_token_id),
        forced_eos=gen.forced_eos_token_id is not None,
        clean_up_spaces=bool(getattr(tokenizer, "clean_up_tokenization_spaces", False)),
    )
    image = ImageSpec(
        size=size,
        mean=tuple(float(v) for v in ip.image_mean),
        std=tuple(float(v) for v in ip.image_std),
        resample=int(ip.resample),
    )
    fast = FastFlorence(
        _vision(q_model, config),
        _text(q_model, config),
        prompt_ids or task_prompt_ids(processor, size),
        decoding_tokenizer_json(tokenizer.backend_tokenizer),
        image,
        decode,
    )
    to_int8_linears(fast)
    return fast.eval().requires_grad_(False)


def decoding_tokenizer_json(backend_tokenizer: Any) -> str:
    """The tokenizer the server pickles: a BPE model's merges left out, since serving only decodes.

    Prompts are tokenized here, at build time; the runtime only maps generated ids back to text, which
    reads the vocabulary, the added tokens and the decoder, never the merges. Parsed, Florence-2-base's
    50,000 merges were 28 of the tokenizer's 35 MiB in the served process (its peak RSS at load 687 ->
    about 660 MiB, docs/profile.md) and 0.9 of its 2 MiB in the pickle. Decoding is the same, id for id
    (tests/model_build/test_serving_tokenizer.py).
    """
    spec = json.loads(backend_tokenizer.to_str())
    model = spec.get("model")
    if isinstance(model, dict) and model.get("type") == "BPE":
        model["merges"] = []
    return json.dumps(spec, ensure_ascii=False, separators=(",", ":"))


def to_int8_linears(module: nn.Module) -> int:
    """Replace every `torch.ao` dynamic int8 `Linear` inside `module` by the runtime's `Int8Linear` (same maths).

    The served pickle then holds plain tensors that unpickle without packing; the handler packs them
    after loading, in parallel. Returns how many layers were replaced.
    """
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DynamicLinear):
                setattr(parent, name, Int8Linear.from_dynamic(child))
                replaced += 1
    return replaced
