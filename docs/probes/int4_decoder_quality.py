"""Probe: would 4-bit decoder weights pass the quality rule? Simulated, at Florence-2-base size, random weights.

The six linears of every decoder layer become group-32 asymmetric 4-bit weights (dequantized) with bf16
activations, which is what `torch._weight_int4pack_mm_for_cpu` computes; `lm_head` stays int8. Then
the base-size teacher-forced rule of `model_build.export.quality` runs on both. Run by hand:

    PYTHONPATH=. python docs/probes/int4_decoder_quality.py

Figures are in docs/profile.md (section 3).
"""

from __future__ import annotations

import warnings

import torch

GROUP = 32


def int4_dequantized(weight: torch.Tensor, group: int = GROUP) -> torch.Tensor:
    rows, cols = weight.shape
    groups = weight.float().view(rows, cols // group, group)
    low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    scale = (high - low).clamp(min=1e-8) / 15
    return (((groups - low) / scale).round().clamp(0, 15) * scale + low).view(rows, cols)


class Int4Linear:
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.weight, self.bias = int4_dequantized(weight.detach()).bfloat16(), bias.detach()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x.bfloat16(), self.weight).float() + self.bias


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    from handler.florence.runtime import decoder_step, text
    from handler.florence.tasks import Task
    from model_build.bench.baseline import base_model, base_prompt_ids, decoding_processor, random_images
    from model_build.export.quality import teacher_forced_fidelity
    from model_build.export.quantize import quantize_for_serving
    from model_build.export.serving_prep import prepare_for_serving

    model, processor, prompts = base_model(), decoding_processor(), base_prompt_ids()
    baseline = quantize_for_serving(model)
    served = prepare_for_serving(model, processor, prompt_ids=prompts)
    images, tokens = random_images(4), {Task.CAPTION: 20, Task.DETECT: 60}

    def report(label: str) -> None:
        result = teacher_forced_fidelity(model, baseline, served, processor, images, prompts, tokens)
        for row in result.rows:
            print(f"{label:22s} {row.task:8s} {row.path:9s} top-1 {row.top1_agreement:.4f}  KL {row.mean_kl:.2e}")

    report("served int8")
    # The compiled step cannot call Python layers: run the same step as plain Python, with the int8 op
    # answering for the 4-bit layers it is handed (lm_head keeps the real op).
    int8_linear = torch.ops.quantized.linear_dynamic

    def linear(x: torch.Tensor, packed: object, reduce_range: bool) -> torch.Tensor:
        return packed(x) if isinstance(packed, Int4Linear) else int8_linear(x, packed, reduce_range)

    torch.ops.quantized.linear_dynamic = linear
    text.decoder_layer_step = decoder_step._plain_decoder_layer_step
    for layer, source in zip(served.text.dec_layers, model.model.language_model.decoder.layers, strict=True):
        own, cross = source.self_attn, source.encoder_attn
        weights = layer.step_weights()
        layer._step_weights = text._StepWeights(
            packed=[
                Int4Linear(
                    torch.cat([own.q_proj.weight, own.k_proj.weight, own.v_proj.weight]),
                    torch.cat([own.q_proj.bias, own.k_proj.bias, own.v_proj.bias]),
                ),
                Int4Linear(own.out_proj.weight, own.out_proj.bias),
                Int4Linear(cross.q_proj.weight, cross.q_proj.bias),
                Int4Linear(cross.out_proj.weight, cross.out_proj.bias),
                Int4Linear(source.fc1.weight, source.fc1.bias),
                Int4Linear(source.fc2.weight, source.fc2.bias),
            ],
            reduce_range=weights.reduce_range,
            norm_params=weights.norm_params,
            norm_eps=weights.norm_eps,
        )
    report("4-bit decoder layers")


if __name__ == "__main__":
    main()
