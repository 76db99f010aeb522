"""Turning a merged fp32 Florence-2 into the object the server pickles: `prepare_for_serving`.

The int8 weights are exactly those of `quantize_for_serving(model, int8_embedding=True)`: the seed
recipe's int8 linears, plus a token embedding tied to the int8 `lm_head` instead of an fp32 copy
(150 MiB at base size). They are re-wired into `handler.florence.runtime.model.FastFlorence`, a lean
channels-last, static-KV-cache re-implementation that computes bit for bit what that plain int8
model computes through `transformers` (tests/handler/florence/test_runtime_parity.py).
"""

from __future__ import annotations

import torch
from torch import nn

from handler.florence.preprocess import ImageSpec
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


def conv_formats(tower: nn.Module, image_size: int) -> dict[nn.Module, bool]:
    """Which of the reference tower's convs run the NCHW kernel (True) rather than channels-last.

    Read off one forward pass at the serving size: the reference's reshapes leave some conv inputs
    NCHW-contiguous and others channels-last, and the kernel, hence the float rounding, follows.
    """
    formats: dict[nn.Module, bool] = {}

    def record(module, _inputs, output) -> None:
        formats[module] = output.is_contiguous()

    convs = [m for m in tower.modules() if isinstance(m, nn.Conv2d)]
    hooks = [conv.register_forward_hook(record) for conv in convs]
    try:
        with torch.inference_mode():
            tower(torch.zeros(1, 3, image_size, image_size))
    finally:
        for hook in hooks:
            hook.remove()
    return formats


def _vision(q_model, config, image_size: int) -> VisionTower:
    tower = q_model.model.vision_tower
    vc = config.vision_config
    nchw = conv_formats(tower, image_size)
    embeds = [PatchEmbed(e.conv, e.norm, bool(e.pre_norm), nchw[e.conv]) for e in tower.convs]
    stages = []
    for stage_idx, blocks in enumerate(tower.blocks):
        stage = []
        for block in blocks:
            sp, ch = block.spatial_block, block.channel_block
            wa = sp.window_attn
            stage.append(
                MixingBlock(
                    sp.conv1,
                    sp.norm1,
                    WindowAttention(wa.qkv, wa.proj, vc.num_heads[stage_idx], wa.window_size, wa.scale),
                    sp.conv2,
                    sp.norm2,
                    Mlp(sp.ffn.fc1, sp.ffn.fc2),
                    (nchw[sp.conv1], nchw[sp.conv2]),
                )
            )
            stage.append(
                MixingBlock(
                    ch.conv1,
                    ch.norm1,
                    ChannelAttention(ch.channel_attn.qkv, ch.channel_attn.proj, vc.num_groups[stage_idx]),
                    ch.conv2,
                    ch.norm2,
                    Mlp(ch.ffn.fc1, ch.ffn.fc2),
                    (nchw[ch.conv1], nchw[ch.conv2]),
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
        _vision(q_model, config, size),
        _text(q_model, config),
        prompt_ids or task_prompt_ids(processor, size),
        tokenizer.backend_tokenizer.to_str(),
        image,
        decode,
    )
    return fast.eval().requires_grad_(False)
