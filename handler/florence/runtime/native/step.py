"""The decoder step in C (`decoder_step.c`), bound with ctypes: weights packed for it, state pointers, the call.

The TorchScript step (`runtime/decoder_step.py`) calls fbgemm once per int8 product, 37 times a
base-size step, and that chain streamed the 89 MB of weights at about half the host's bandwidth. The C
step does the same maths in one call, on a team of threads that each stream only their own rows
(docs/profile.md, section 3). It is built by `pip install` (setup.py, an optional extension: where it
does not build or the CPU lacks AVX2, `NativeDecoder.build` returns None and the TorchScript step
runs).

Not bit-identical to the TorchScript step: each activation row gets its own quantization scale (fbgemm
takes one per call, across the batch), with full 8-bit activations on AVX-512 VNNI (7-bit on AVX2, as
fbgemm's), and the float maths is summed in another order. The quality gate measures the path as run.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

BLOCK_ROWS = 64
"""Rows per block of a packed matrix (four 16-lane vpdpbusd accumulators); `decoder_step.c` has the same."""

COLUMN_GROUP = 4
"""Columns per group of a packed matrix: vpdpbusd sums four byte products into each int32 lane."""

ISA_NAMES = {0: "none", 1: "avx2", 2: "avx512_vnni"}
"""What `fl_best_isa` / `fl_use_isa` return, by name."""

_PACK_ROWS = 4096
"""Rows packed at a time: the temporaries stay a few MB even for the 39 MB `lm_head`."""

_LIBRARY_STEM = "_decoder_step"


class _Linear(ctypes.Structure):
    _fields_ = [
        ("in_features", ctypes.c_int32),
        ("out_features", ctypes.c_int32),
        ("in_padded", ctypes.c_int32),
        ("out_padded", ctypes.c_int32),
        ("weights", ctypes.c_void_p),
        ("scale", ctypes.c_void_p),
        ("row_sum", ctypes.c_void_p),
        ("zero_point", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
    ]


class _Layer(ctypes.Structure):
    _fields_ = [("linear", _Linear * 6), ("norm", ctypes.c_void_p * 6), ("eps", ctypes.c_float * 3)]


class _Model(ctypes.Structure):
    _fields_ = [
        ("layers", ctypes.c_int32),
        ("width", ctypes.c_int32),
        ("heads", ctypes.c_int32),
        ("vocab", ctypes.c_int32),
        ("position_offset", ctypes.c_int32),
        ("positions", ctypes.c_int32),
        ("layer", ctypes.c_void_p),
        ("head", _Linear),
        ("table", ctypes.c_void_p),
        ("table_scale", ctypes.c_float),
        ("table_zero_point", ctypes.c_int32),
        ("embed_scale", ctypes.c_float),
        ("position_table", ctypes.c_void_p),
        ("norm_weight", ctypes.c_void_p),
        ("norm_bias", ctypes.c_void_p),
        ("norm_eps", ctypes.c_float),
    ]


class _State(ctypes.Structure):
    _fields_ = [
        ("batch", ctypes.c_int32),
        ("cache_length", ctypes.c_int32),
        ("memory_length", ctypes.c_int32),
        ("cache", ctypes.c_void_p),
        ("cache_stride", ctypes.c_int64),
        ("memory_keys", ctypes.c_void_p),
        ("memory_values", ctypes.c_void_p),
        ("memory_stride", ctypes.c_int64),
        ("memory_lengths", ctypes.c_void_p),
    ]


def library_path() -> Path | None:
    """The built extension next to this file (`pip install` builds it), or None."""
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = here / f"{_LIBRARY_STEM}{suffix}"
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded C step, or None where it was not built or this CPU has no AVX2 (loaded once)."""
    path = library_path()
    if path is None:
        return None
    try:
        loaded = ctypes.CDLL(str(path))
    except OSError:
        return None
    loaded.fl_step.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int32,
        ctypes.c_int32,
        ctypes.c_void_p,
    ]
    loaded.fl_step.restype = ctypes.c_int
    loaded.fl_use_isa.argtypes = [ctypes.c_int]
    return loaded if loaded.fl_best_isa() > 0 else None


def use_isa(name: str) -> str:
    """Run the kernel for `name` ('avx2' or 'avx512_vnni', at most what this CPU has); returns the one in use.

    Tests run the AVX2 kernel on an AVX-512 machine with it; serving uses the best one.
    """
    lib = library()
    if lib is None:
        return "none"
    wanted = {value: key for key, value in ISA_NAMES.items()}[name]
    return ISA_NAMES[int(lib.fl_use_isa(wanted))]


def _padded(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


@dataclass
class PackedLinear:
    """An int8 matrix in `decoder_step.c`'s layout, with per-row scale, zero point, weight sum and bias."""

    in_features: int
    out_features: int
    weights: torch.Tensor
    scale: torch.Tensor
    row_sum: torch.Tensor
    zero_point: torch.Tensor
    bias: torch.Tensor | None

    @classmethod
    def pack(
        cls,
        weight_int8: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> PackedLinear:
        """`weight_int8` (out, in) with one scale / zero point or one per row, padded to whole blocks and
        column groups, stored block by block as [in / 4][4 x 16 rows][4 bytes] (`decoder_step.c`)."""
        rows, columns = weight_int8.shape
        out_padded, in_padded = _padded(rows, BLOCK_ROWS), _padded(columns, COLUMN_GROUP)
        packed = torch.empty(out_padded * in_padded, dtype=torch.int8)
        row_sum = torch.zeros(out_padded, dtype=torch.int32)
        for first in range(0, out_padded, _PACK_ROWS):
            last = min(first + _PACK_ROWS, out_padded)
            chunk = torch.zeros(last - first, in_padded, dtype=torch.int8)
            real = max(0, min(last, rows) - first)
            chunk[:real, :columns] = weight_int8[first : first + real]
            row_sum[first : first + real] = chunk[:real].sum(1, dtype=torch.int32)
            blocks = chunk.view(-1, 4, 16, in_padded // COLUMN_GROUP, COLUMN_GROUP).permute(0, 3, 1, 2, 4)
            packed[first * in_padded : last * in_padded].view(blocks.shape).copy_(blocks)

        def per_row(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
            """One value per padded row (a single value repeated), zero in the padding rows."""
            padded = torch.zeros(out_padded, dtype=dtype)
            padded[:rows] = values.to(dtype).reshape(-1).expand(rows)
            return padded

        padded_bias = None if bias is None else per_row(bias, torch.float32)
        return cls(
            columns,
            rows,
            packed,
            per_row(scale, torch.float32),
            row_sum,
            per_row(zero_point, torch.int32),
            padded_bias,
        )

    def struct(self) -> _Linear:
        return _Linear(
            self.in_features,
            self.out_features,
            _padded(self.in_features, COLUMN_GROUP),
            _padded(self.out_features, BLOCK_ROWS),
            self.weights.data_ptr(),
            self.scale.data_ptr(),
            self.row_sum.data_ptr(),
            self.zero_point.data_ptr(),
            None if self.bias is None else self.bias.data_ptr(),
        )


@dataclass
class _StepState:
    """The C state of one decode's buffers, built once for the lists it was made from (held, so their ids stay theirs)."""

    struct: _State
    arrays: list[Any]
    sources: tuple[Any, ...]


class NativeDecoder:
    """The packed decoder of one `TextModel`, and its step. Build with `build`; never pickled (a cache)."""

    def __init__(self, lib: ctypes.CDLL, model: _Model, keep: list[Any], heads: int, width: int, vocab: int) -> None:
        self._lib, self._model, self._keep = lib, model, keep
        self.heads, self.width, self.vocab = heads, width, vocab
        self._state: _StepState | None = None

    @classmethod
    def build(
        cls, text: Any, layers: list[Any], position_offset: int, mapped_from: str | Path | None = None
    ) -> NativeDecoder | None:
        """Pack `text`'s decoder layers (`DecoderLayer`s) and tied head for the C step, or None without it.
        `position_offset`: the decoder's first row of its learned position table (BART's 2).

        `mapped_from`: the artifact file the int8 weights are mapped from; each matrix's mapped pages
        are dropped once it is packed, as `int8.pack_int8_layers` does for fbgemm's copies.
        """
        lib = library()
        if lib is None:
            return None
        from handler.florence.memory import drop_tensor_pages, file_mappings

        among = file_mappings(mapped_from) if mapped_from is not None else []
        keep: list[Any] = []

        def packed(module: Any) -> _Linear:
            linear = PackedLinear.pack(module.weight_int8, module.weight_scale, module.weight_zero_point, module.bias)
            if among:
                drop_tensor_pages(module.weight_int8, among)
            keep.append(linear)
            return linear.struct()

        structs = (_Layer * len(layers))()
        for index, layer in enumerate(layers):
            norms: list[nn.LayerNorm] = layer.step_norms()
            params = [p.detach().float().contiguous() for norm in norms for p in (norm.weight, norm.bias)]
            keep.extend(params)
            structs[index].linear = (_Linear * 6)(*[packed(m) for m in layer.step_linears()])
            structs[index].norm = (ctypes.c_void_p * 6)(*[p.data_ptr() for p in params])
            structs[index].eps = (ctypes.c_float * 3)(*[float(norm.eps) for norm in norms])
        keep.append(structs)
        head = text.lm_head
        table: torch.Tensor = head.weight_int8
        head_linear = PackedLinear.pack(table, torch.tensor([head.scale]), torch.tensor([head.zero_point]), None)
        keep.append(head_linear)
        if among:
            drop_tensor_pages(table, among)  # lookups fault back the few rows they read
        positions = text.dec_positions.detach().float().contiguous()
        dec_norm = text.dec_norm
        norm_weight, norm_bias = (
            dec_norm.weight.detach().float().contiguous(),
            dec_norm.bias.detach().float().contiguous(),
        )
        keep.extend([table, positions, norm_weight, norm_bias])
        width = int(positions.shape[1])
        model = _Model(
            layers=len(layers),
            width=width,
            heads=int(layers[0].heads),
            vocab=int(table.shape[0]),
            position_offset=position_offset,
            positions=int(positions.shape[0]),
            layer=ctypes.cast(structs, ctypes.c_void_p),
            head=head_linear.struct(),
            table=table.data_ptr(),
            table_scale=float(head.scale),
            table_zero_point=int(head.zero_point),
            embed_scale=float(text.embed_scale),
            position_table=positions.data_ptr(),
            norm_weight=norm_weight.data_ptr(),
            norm_bias=norm_bias.data_ptr(),
            norm_eps=float(dec_norm.eps),
        )
        return cls(lib, model, keep, int(layers[0].heads), width, int(table.shape[0]))

    def _state_for(
        self,
        caches: list[torch.Tensor],
        cross: list[tuple[torch.Tensor, torch.Tensor]],
        memory_lengths: list[int],
    ) -> _State:
        state = self._state
        if (
            state is not None
            and state.sources[0] is caches
            and state.sources[1] is cross
            and state.sources[2] == memory_lengths
        ):
            return state.struct
        batch, _, heads, cache_length, head_width = caches[0].shape
        memory_length = cross[0][0].shape[2]
        for cache in caches:
            if cache.stride()[1:] != (heads * cache_length * head_width, cache_length * head_width, head_width, 1):
                raise ValueError("each self-attention cache row must be contiguous (batch, 2, heads, length, width)")
            if cache.stride(0) != caches[0].stride(0) or cache.dtype != torch.float32:
                raise ValueError("the self-attention caches must share one float32 layout")
        for keys, values in cross:
            for part in (keys, values):
                if part.stride()[1:] != (memory_length * head_width, head_width, 1) or part.stride(0) != cross[0][
                    0
                ].stride(0):
                    raise ValueError("cross-attention keys and values must be contiguous rows (batch, heads, S, width)")
        if len(memory_lengths) != batch:
            raise ValueError(f"{len(memory_lengths)} memory lengths for a batch of {batch}")
        cache_ptrs = (ctypes.c_void_p * len(caches))(*[c.data_ptr() for c in caches])
        key_ptrs = (ctypes.c_void_p * len(cross))(*[k.data_ptr() for k, _ in cross])
        value_ptrs = (ctypes.c_void_p * len(cross))(*[v.data_ptr() for _, v in cross])
        lengths = (ctypes.c_int32 * batch)(*memory_lengths)
        struct = _State(
            batch=batch,
            cache_length=cache_length,
            memory_length=memory_length,
            cache=ctypes.cast(cache_ptrs, ctypes.c_void_p),
            cache_stride=caches[0].stride(0),
            memory_keys=ctypes.cast(key_ptrs, ctypes.c_void_p),
            memory_values=ctypes.cast(value_ptrs, ctypes.c_void_p),
            memory_stride=cross[0][0].stride(0),
            memory_lengths=ctypes.cast(lengths, ctypes.c_void_p),
        )
        self._state = _StepState(
            struct, [cache_ptrs, key_ptrs, value_ptrs, lengths], (caches, cross, list(memory_lengths))
        )
        return struct

    def step_logits(
        self,
        tokens: torch.Tensor,
        step: int,
        caches: list[torch.Tensor],
        cross: list[tuple[torch.Tensor, torch.Tensor]],
        memory_lengths: list[int],
        threads: int,
    ) -> torch.Tensor:
        """(B, vocab) logits for the (B, 1) int64 `tokens` at position `step`; see `TextModel.step_logits`."""
        state = self._state_for(caches, cross, memory_lengths)
        ids = tokens.reshape(-1)
        if ids.dtype != torch.int64 or not ids.is_contiguous():
            ids = ids.to(torch.int64).contiguous()
        logits = torch.empty(ids.shape[0], self.vocab)
        status = self._lib.fl_step(
            ctypes.addressof(self._model), ctypes.addressof(state), ids.data_ptr(), step, threads, logits.data_ptr()
        )
        if status != 0:
            what = (
                "a token, step or memory length out of range" if status == -2 else "no threads or memory for the step"
            )
            raise RuntimeError(f"native decoder step failed: {what}")
        return logits
