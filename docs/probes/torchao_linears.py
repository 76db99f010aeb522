"""Probe: torchao's int8 configs against the served fbgemm int8 linears, in eager mode (no torch.compile).

torchao is not a dependency. Run it against a throwaway install:

    pip download torchao==0.18.0 --no-deps -d /tmp/tao
    pip install --no-deps --target /tmp/tao-lib /tmp/tao/torchao-0.18.0-*.whl
    PYTHONPATH=/tmp/tao-lib python docs/probes/torchao_linears.py

Times Florence-2-base's shapes: the 37 linears of one decoder step at batch 1 (6 layers of q/k/v,
out, cross-q, cross-out, fc1, fc2, then the 51289-row lm_head) and one stage-3 DaViT block's
linears at 576 tokens. Figures are in docs/profile.md.
"""

from __future__ import annotations

import copy
import time
import warnings

import torch
from torch import nn

THREADS = 2


def decoder_step_linears() -> nn.ModuleList:
    layers: list[nn.Module] = []
    for _ in range(6):
        layers += [nn.Linear(768, 2304), *(nn.Linear(768, 768) for _ in range(3)), nn.Linear(768, 3072)]
        layers.append(nn.Linear(3072, 768))
    layers.append(nn.Linear(768, 51289, bias=False))
    return nn.ModuleList(layers).eval()


def stage3_block_linears() -> nn.ModuleList:
    return nn.ModuleList([nn.Linear(512, 1536), nn.Linear(512, 512), nn.Linear(512, 2048), nn.Linear(2048, 512)]).eval()


def run_all(layers: nn.ModuleList, inputs: dict[int, torch.Tensor]) -> None:
    for layer in layers:
        layer(inputs[layer.in_features])


def median_and_min_ms(fn, runs: int = 15) -> tuple[float, float]:
    with torch.inference_mode():
        for _ in range(3):
            fn()
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
    samples.sort()
    return samples[runs // 2] * 1e3, samples[0] * 1e3


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(THREADS)
    import torchao
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

    print(f"torch {torch.__version__}, torchao {torchao.__version__}, {THREADS} threads")
    for name, build, tokens in (
        ("decoder step (batch 1)", decoder_step_linears, 1),
        ("stage-3 block (576 tokens)", stage3_block_linears, 576),
    ):
        fp32 = build()
        inputs = {width: torch.randn(1, tokens, width) for width in {layer.in_features for layer in fp32}}
        variants = {"served: fbgemm dynamic int8": torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32))}
        for label, config in (
            ("torchao Int8DynamicActivationInt8Weight", Int8DynamicActivationInt8WeightConfig()),
            ("torchao Int8WeightOnly", Int8WeightOnlyConfig()),
        ):
            quantized = copy.deepcopy(fp32)
            quantize_(quantized, config)
            variants[label] = quantized
        for label, layers in variants.items():
            median, best = median_and_min_ms(lambda layers=layers, inputs=inputs: run_all(layers, inputs))
            print(f"{name:28s} {label:42s} median {median:7.2f} ms  min {best:7.2f} ms")


if __name__ == "__main__":
    main()
