"""The peer row and the decode floor: ONNX Runtime int8 on the same modules, and this machine's streaming bandwidth.

ONNX Runtime is what users reach for to run Florence-2 fast on CPU, so the bench runs it beside the
seed recipe and the served runtime on the same two units of work:

- the vision tower + projector (384 x 384);
- one decoder step with `lm_head`: 20 cached tokens, the caption prompt's encoder memory, the
  cross-attention keys/values precomputed on every path. It is timed twice: per step over a run of
  `STEP_RUN` consecutive steps (what a decode does; this is the figure the targets compare), and alone
  after the pause. Alone, every path first wakes its sleeping threads and finds its weights evicted
  by the others: in session 12 ORT's lone step read 5.3 to 11.6 ms across runs of an unchanged tree.

The ORT models are exported from the same fp32 weights with `torch.onnx.export(dynamo=True)` and
quantized by `onnxruntime.quantization.quantize_dynamic` (QInt8 weights, MatMul ops only). The tied
`lm_head` is stored pre-transposed as a constant MatMul operand, else the quantizer skips it. The three
paths are timed in interleaved rounds with a pause between calls (ORT and torch slow each other down
when called back to back). Only the bench imports onnx/onnxruntime (the `dev` extra).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CACHED_TOKENS = 20
PAUSE_S = 0.1
STEP_RUN = 8
"""Consecutive decoder steps per timed sample of the step row."""


@dataclass
class PeerRow:
    """Median seconds of one unit of work on the three paths, over interleaved rounds."""

    name: str
    baseline_s: float
    served_s: float
    ort_s: float | None
    rounds: int


@dataclass
class StreamingFloor:
    """How fast this machine streams memory, and what that means for one decode step."""

    bandwidth_gb_s: float
    buffer_mib: int
    bytes_per_token: int
    """int8 weights one served decode step reads: decoder layers (self/cross attention, MLP) and `lm_head`."""
    floor_ms: float


def streaming_bandwidth(buffer_mib: int = 512, repeats: int = 7) -> float:
    """GB/s of a timed reduction over a buffer far larger than the last-level cache (best of `repeats`)."""
    import torch

    buffer = torch.ones(buffer_mib * 2**20 // 4)
    buffer.sum()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - start)
    return buffer.numel() * 4 / best / 1e9


def decode_bytes_per_token(fast: Any) -> int:
    """Bytes of int8 weights read per decode step (the cross-attention K/V projections run once per request)."""
    per_step = 0
    for layer in fast.text.dec_layers:
        for linear in layer.step_linears():
            per_step += linear.weight_int8.numel()
    return per_step + fast.text.lm_head.weight_int8.numel()


def streaming_floor(fast: Any) -> StreamingFloor:
    bandwidth = streaming_bandwidth()
    per_token = decode_bytes_per_token(fast)
    return StreamingFloor(round(bandwidth, 1), 512, per_token, per_token / (bandwidth * 1e9) * 1000)


def _decoder_step_module(model: Any):
    """One BART decoder step + tied lm_head in plain torch ops, from the fp32 HF weights (exportable)."""
    import torch
    from torch import nn

    lm = model.model.language_model
    decoder = lm.decoder
    heads = model.config.text_config.decoder_attention_heads

    class DecoderStep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = decoder.layers
            self.norm = decoder.layernorm_embedding
            self.position = nn.Parameter(decoder.embed_positions.weight[2 + CACHED_TOKENS].detach().clone())
            # Pre-transposed, so the exported graph has MatMul(x, constant) and the quantizer takes it.
            self.head_t = nn.Parameter(model.lm_head.weight.detach().t().contiguous())

        def forward(self, embed, self_k, self_v, cross_k, cross_v):
            x = self.norm(embed + self.position)
            b, _, width = x.shape
            new_k, new_v = [], []
            for i, layer in enumerate(self.layers):
                sa = layer.self_attn
                q = sa.q_proj(x).view(b, 1, heads, -1).transpose(1, 2)
                k = torch.cat([self_k[i], sa.k_proj(x).view(b, 1, heads, -1).transpose(1, 2)], dim=2)
                v = torch.cat([self_v[i], sa.v_proj(x).view(b, 1, heads, -1).transpose(1, 2)], dim=2)
                new_k.append(k)
                new_v.append(v)
                att = torch.softmax(q @ k.transpose(-1, -2) * sa.scaling, -1) @ v
                x = layer.self_attn_layer_norm(x + sa.out_proj(att.transpose(1, 2).reshape(b, 1, width)))
                ca = layer.encoder_attn
                q = ca.q_proj(x).view(b, 1, heads, -1).transpose(1, 2)
                att = torch.softmax(q @ cross_k[i].transpose(-1, -2) * ca.scaling, -1) @ cross_v[i]
                x = layer.encoder_attn_layer_norm(x + ca.out_proj(att.transpose(1, 2).reshape(b, 1, width)))
                x = layer.final_layer_norm(x + layer.fc2(torch.nn.functional.gelu(layer.fc1(x))))
            return x @ self.head_t, torch.stack(new_k), torch.stack(new_v)

    return DecoderStep().eval()


def _vision_module(model: Any):
    from torch import nn

    class Vision(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model.model

        def forward(self, pixel_values):
            return self.inner.get_image_features(pixel_values).pooler_output

    return Vision().eval()


def _ort_session(module: Any, inputs: tuple, path: Path, threads: int):
    """Export with the dynamo exporter, quantize MatMul weights to QInt8, open a session on `threads` threads."""
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_path, int8_path = path.with_suffix(".fp32.onnx"), path.with_suffix(".int8.onnx")
    with torch.no_grad():
        torch.onnx.export(module, inputs, str(fp32_path), dynamo=True, external_data=True)
    quantize_dynamic(
        str(fp32_path),
        str(int8_path),
        op_types_to_quantize=["MatMul"],
        weight_type=QuantType.QInt8,
        use_external_data_format=True,
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(int8_path), options, providers=["CPUExecutionProvider"])


def _interleaved(
    fns: dict[str, Callable[[], object]], rounds: int, prepare: Callable[[], None] | None, run: int = 1
) -> dict:
    """Median seconds per call of each path: in each round every path, after a pause, makes `run`
    consecutive calls, timed together."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        if prepare is not None:
            prepare()
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            if prepare is not None:
                prepare()
            time.sleep(PAUSE_S)
            start = time.perf_counter()
            for _ in range(run):
                fn()
            samples[name].append((time.perf_counter() - start) / run)
    return {name: statistics.median(values) for name, values in samples.items()}


def peer_rows(
    model: Any,
    baseline: Any,
    fast: Any,
    pixel_values: Any,
    prompt: str,
    threads: int,
    rounds: int,
    workdir: Path,
    with_ort: bool = True,
) -> tuple[list[PeerRow], dict[str, Any]]:
    """Time the vision tower and one decoder step on baseline, served and (if installed) ORT int8, interleaved.

    Returns the rows and a few ORT facts (model sizes, cosine of its image features to fp32's, or why it is missing).
    """
    import torch

    from handler.florence.runtime.decoder_step import decode_execution

    info: dict[str, Any] = {}
    heads = model.config.text_config.decoder_attention_heads
    width = model.config.text_config.d_model
    layers = model.config.text_config.decoder_layers
    torch.manual_seed(0)
    with torch.inference_mode():
        features = fast.image_features(pixel_values)
        memory = fast.text.encode(fast.encoder_inputs(prompt, features))
        enc_len = memory.shape[1]
        self_k = torch.randn(layers, 1, heads, CACHED_TOKENS, width // heads)
        self_v = torch.randn(layers, 1, heads, CACHED_TOKENS, width // heads)
        dec_layers = list(fast.text.dec_layers)
        cross = [layer.cross_kv(memory) for layer in dec_layers]
        cross_k = torch.stack([k for k, _ in cross])
        cross_v = torch.stack([v for _, v in cross])
        token = torch.tensor([[7]])
        embed = fast.text.embed_tokens(token)

    # served: the runtime's own step at position 20 against a preallocated cache holding 20 tokens.
    caches = fast.text.self_attention_caches(1, CACHED_TOKENS + 41)
    for cache, keys, values in zip(caches, self_k, self_v, strict=True):
        cache[:, 0, :, :CACHED_TOKENS] = keys
        cache[:, 1, :, :CACHED_TOKENS] = values

    def served_step() -> None:
        with torch.inference_mode(), decode_execution():
            fast.text.step_logits(token, CACHED_TOKENS, caches, cross)

    # baseline: HF's decoder with a 20-token cache (cross K/V already cached), then its int8 lm_head.
    baseline_decoder = baseline.model.language_model.decoder
    with torch.inference_mode():
        warm = baseline_decoder(
            input_ids=torch.full((1, CACHED_TOKENS), 7), encoder_hidden_states=memory, use_cache=True
        )
    baseline_cache = warm.past_key_values
    fresh: dict[str, Any] = {}

    def baseline_prepare() -> None:
        fresh["cache"] = copy.deepcopy(baseline_cache)

    def baseline_step() -> None:
        with torch.inference_mode():
            out = baseline_decoder(
                input_ids=token, encoder_hidden_states=memory, past_key_values=fresh["cache"], use_cache=True
            )
            baseline.lm_head(out.last_hidden_state)

    vision_fns: dict[str, Callable[[], object]] = {
        "baseline": lambda: baseline.model.get_image_features(pixel_values),
        "served": lambda: fast.image_features(pixel_values),
    }
    step_fns: dict[str, Callable[[], object]] = {"baseline": baseline_step, "served": served_step}
    if with_ort:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            with_ort = False
            info["ort_missing"] = str(exc)
    if with_ort:
        import numpy as np

        workdir.mkdir(parents=True, exist_ok=True)
        vision_session = _ort_session(_vision_module(model), (pixel_values,), workdir / "vision", threads)
        step_inputs = (embed, self_k, self_v, cross_k, cross_v)
        step_session = _ort_session(_decoder_step_module(model), step_inputs, workdir / "step", threads)
        vision_feed = {vision_session.get_inputs()[0].name: pixel_values.numpy()}
        step_feed = {i.name: t.numpy() for i, t in zip(step_session.get_inputs(), step_inputs, strict=True)}
        vision_fns["ort"] = lambda: vision_session.run(None, vision_feed)
        step_fns["ort"] = lambda: step_session.run(None, step_feed)
        with torch.inference_mode():
            reference = model.model.get_image_features(pixel_values).pooler_output.flatten()
        cosine = torch.nn.functional.cosine_similarity
        ort_features = torch.from_numpy(np.asarray(vision_session.run(None, vision_feed)[0])).flatten()
        info["vision_cosine_to_fp32"] = {
            "ort": cosine(reference, ort_features, dim=0).item(),
            "baseline": cosine(
                reference, baseline.model.get_image_features(pixel_values).pooler_output.flatten(), dim=0
            ).item(),
            "served": cosine(reference, features.flatten(), dim=0).item(),
        }
        info["ort_int8_mib"] = {
            name: sum(p.stat().st_size for p in workdir.glob(f"{name}.int8.onnx*")) / 2**20
            for name in ("vision", "step")
        }
    with torch.inference_mode():
        vision = _interleaved(vision_fns, rounds, None)
        step = _interleaved(step_fns, rounds, baseline_prepare, run=STEP_RUN)
        lone_step = _interleaved(step_fns, rounds, baseline_prepare)
    step_name = f"decoder step + lm_head ({CACHED_TOKENS} cached, {enc_len} encoder tokens)"
    rows = [
        PeerRow("vision tower + projector", vision["baseline"], vision["served"], vision.get("ort"), rounds),
        PeerRow(
            f"{step_name}, per step of {STEP_RUN} in a row", step["baseline"], step["served"], step.get("ort"), rounds
        ),
        PeerRow(
            f"{step_name}, alone after the pause",
            lone_step["baseline"],
            lone_step["served"],
            lone_step.get("ort"),
            rounds,
        ),
    ]
    return rows, info
