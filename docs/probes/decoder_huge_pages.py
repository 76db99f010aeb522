"""Probe: does a decode step get faster with the decoder's packed weights in 2 MB pages?

A base-size step streams 89 MB of int8 weights (36 decoder linears and `lm_head`): about 22,000
4 KB pages, more than the CPU's TLBs hold, so every step walks page tables. This packs those weights
one after another, each in its own mapping (fbgemm allocates through glibc; a 128 KB mmap threshold
sends every packed buffer to mmap), then asks the kernel to back the new ranges with huge pages
(`MADV_COLLAPSE`, Linux 6.1+), and times steps the way the bench's step row does: runs of 8 after
a pause. Random Florence-2-base weights, 2 threads. Run each mode in fresh processes, alternating:

    for mode in plain huge plain huge; do PYTHONPATH=. python docs/probes/decoder_huge_pages.py $mode; done

Figures and the decision are in docs/profile.md (section 3, sessions 16-17).
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import sys
import time
from typing import Any

import torch

from handler.florence.memory import mappings, return_freed_heap, reuse_freed_heap
from handler.florence.runtime.decoder_step import decode_execution
from handler.florence.runtime.int8 import Int8Linear, pack_int8_layers
from model_build.bench.baseline import base_model, base_prompt_ids, decoding_processor
from model_build.export.serving_prep import prepare_for_serving

HUGE_PAGE = 2 << 20
MADV_COLLAPSE = 25
M_MMAP_THRESHOLD = -3
STEPS_IN_A_RUN, RUNS, PAUSE_S = 8, 25, 0.05
CACHED_TOKENS, MEMORY_TOKENS = 20, 153


def quantized_weight(layer: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The quantized tensor (a copy) and bias that `linear_prepack` takes, as the runtime builds them."""
    if isinstance(layer, Int8Linear):
        if layer.weight_scale.numel() == 1:
            scale, zero_point = float(layer.weight_scale), int(layer.weight_zero_point)
            return torch._make_per_tensor_quantized_tensor(layer.weight_int8, scale, zero_point), layer.bias
        return (
            torch._make_per_channel_quantized_tensor(layer.weight_int8, layer.weight_scale, layer.weight_zero_point, 0),
            layer.bias,
        )
    return torch._make_per_tensor_quantized_tensor(layer.weight_int8, layer.scale, layer.zero_point), None


def new_ranges(before: list[tuple[int, int]], after: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Address ranges mapped in `after` but not in `before`."""
    found = []
    for start, end in after:
        cursor = start
        for old_start, old_end in sorted(before):
            if old_end <= cursor or old_start >= end:
                continue
            if old_start > cursor:
                found.append((cursor, old_start))
            cursor = max(cursor, old_end)
        if cursor < end:
            found.append((cursor, end))
    return found


def pack_decoder_in_huge_pages(text: Any) -> None:
    """Pack the decoder's linears and `lm_head` into fresh mappings and collapse those into 2 MB pages."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    layers = [m for layer in text.dec_layers for m in layer.step_linears()]
    layers.append(text.lm_head)
    libc.mallopt(M_MMAP_THRESHOLD, 128 << 10)
    weights = [quantized_weight(layer) for layer in layers]  # the copies first, so their mappings are older
    before = [(m.start, m.end) for m in mappings()]
    for layer, (weight, bias) in zip(layers, weights, strict=True):
        layer._packed = torch.ops.quantized.linear_prepack(weight, bias)
    after = [(m.start, m.end) for m in mappings()]
    del weights
    gc.collect()
    start, collapsed = time.perf_counter(), 0
    ranges = new_ranges(before, after)
    for low, high in ranges:
        first, last = -(-low // HUGE_PAGE) * HUGE_PAGE, high // HUGE_PAGE * HUGE_PAGE
        if last > first and libc.madvise(first, last - first, MADV_COLLAPSE) == 0:
            collapsed += last - first
    print(
        f"new ranges {sum(h - lo for lo, h in ranges) / 2**20:.1f} MiB, collapsed {collapsed / 2**20:.1f} MiB"
        f" in {time.perf_counter() - start:.3f} s"
    )


def memory_mib() -> dict[str, int]:
    """Resident, peak and huge-page memory of this process, MiB."""
    found: dict[str, int] = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmRSS", "VmHWM")):
                found[line.split(":")[0]] = int(line.split()[1]) // 1024
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("AnonHugePages"):
                found["AnonHugePages"] = int(line.split()[1]) // 1024
    return found


def main(mode: str) -> None:
    torch.set_num_threads(2)
    model = base_model()
    fast = prepare_for_serving(model, decoding_processor(), prompt_ids=base_prompt_ids())
    del model
    gc.collect()
    text = fast.text
    if mode == "huge":
        pack_decoder_in_huge_pages(text)
    pack_int8_layers(fast)
    text.lm_head.packed()
    return_freed_heap()
    reuse_freed_heap()
    print(mode, "loaded", memory_mib())
    token = torch.tensor([[7]])
    with torch.inference_mode():
        memory = text.encode(torch.randn(1, MEMORY_TOKENS, text.dec_positions.shape[-1]))
        cross = [layer.cross_kv(memory) for layer in text.dec_layers]
    caches = text.self_attention_caches(1, CACHED_TOKENS + STEPS_IN_A_RUN)
    for cache in caches:
        cache.normal_()
    by_position: list[list[float]] = [[] for _ in range(STEPS_IN_A_RUN)]
    for run in range(RUNS + 3):
        time.sleep(PAUSE_S)
        with torch.inference_mode(), decode_execution():
            for position in range(STEPS_IN_A_RUN):
                start = time.perf_counter()
                text.step_logits(token, CACHED_TOKENS + position, caches, cross)
                if run >= 3:  # warm-up runs
                    by_position[position].append((time.perf_counter() - start) * 1000)
    per_run = [statistics.fmean(run) for run in zip(*by_position, strict=True)]
    print(
        f"{mode} step in a run of {STEPS_IN_A_RUN}: min {min(per_run):.2f} ms, median {statistics.median(per_run):.2f} ms"
    )
    print(mode, "median by position (ms)", [round(statistics.median(p), 2) for p in by_position], memory_mib())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "plain")
