"""The served int8 linear layer: plain tensors in the pickle, fbgemm's packed form built after loading, in parallel.

`torch.ao`'s dynamic `Linear` pickles an int8 tensor and repacks it for fbgemm inside unpickling, one
layer after the other on one core: 0.6-0.9 s of a Florence-2-base cold start. `Int8Linear` pickles the
same int8 weights and per-channel scales as ordinary tensors, so unpickling only maps them, and
`pack_int8_layers` packs every layer afterwards on a thread pool (fbgemm's packing releases the GIL).
The matmul is the same `quantized::linear_dynamic` call the `torch.ao` layer makes, on the same
packed weights, so outputs are bit-identical to it.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

from handler.florence.runtime.pickling import CachesNotPickled


class Int8Linear(CachesNotPickled, nn.Module):
    """y = x W^T + b with W int8 and x quantized per call (dynamic int8).

    `weight_scale` / `weight_zero_point` hold one value (per-tensor weights, as `quantize_dynamic`
    makes them) or one per output row (stacked q/k/v, whose parts keep their own scales).
    """

    weight_int8: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor
    bias: torch.Tensor | None
    caches = ("_packed",)

    def __init__(
        self,
        weight_int8: torch.Tensor,
        weight_scale: torch.Tensor,
        weight_zero_point: torch.Tensor,
        bias: torch.Tensor | None,
        reduce_range: bool,
    ) -> None:
        super().__init__()
        self.register_buffer("weight_int8", weight_int8.contiguous())
        self.register_buffer("weight_scale", weight_scale.to(torch.float64))
        self.register_buffer("weight_zero_point", weight_zero_point.to(torch.int64))
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        self.out_features, self.in_features = weight_int8.shape
        self.reduce_range = reduce_range
        self._packed: Any = None

    @classmethod
    def from_dynamic(cls, linear: nn.Module) -> Int8Linear:
        """The same layer as a `torch.ao` dynamic int8 `Linear` (per-tensor or per-channel weights)."""
        module: Any = linear
        weight = module.weight()
        if weight.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            scale = torch.tensor([weight.q_scale()], dtype=torch.float64)
            zero_point = torch.tensor([weight.q_zero_point()], dtype=torch.int64)
        else:
            scale, zero_point = weight.q_per_channel_scales(), weight.q_per_channel_zero_points()
        version = getattr(module, "version", None)  # torch.ao's module version 4 added reduce_range
        return cls(weight.int_repr(), scale, zero_point, module.bias(), version is not None and version >= 4)

    def packed(self) -> Any:
        """fbgemm's packed weights, built once (a plain attribute, so never pickled)."""
        packed = self._packed
        if packed is None:
            if self.weight_scale.numel() == 1:
                scale, zero_point = float(self.weight_scale), int(self.weight_zero_point)
                qweight = torch._make_per_tensor_quantized_tensor(self.weight_int8, scale, zero_point)
            else:
                qweight = torch._make_per_channel_quantized_tensor(
                    self.weight_int8, self.weight_scale, self.weight_zero_point, 0
                )
            packed = torch.ops.quantized.linear_prepack(qweight, self.bias)
            self._packed = packed
        return packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self.packed(), self.reduce_range)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def pack_int8_layers(
    model: nn.Module,
    threads: int | None = None,
    mapped_from: str | Path | None = None,
    skip: Iterable[nn.Module] = (),
) -> int:
    """Pack every int8 layer of `model` (each `Int8Linear`, and the tied embedding / `lm_head`, anything
    with `weight_int8` and `packed()`) on `threads` threads (torch's intra-op count by default), largest
    first; returns how many. Layers in `skip` (those the C decoder step packed for itself) are left.

    `mapped_from`: the file the weights are memory-mapped from (the artifact's `model.pt`). Each layer's
    mapped pages are dropped as soon as it is packed, as the loader drops the whole file afterwards: with
    every layer's pages resident until then, the load was the process's peak (650 MiB at base size,
    against 637 for the first caption and `/analyze` after it; docs/profile.md).
    """
    from handler.florence.memory import drop_tensor_pages, file_mappings

    skipped = {id(m) for m in skip}
    layers: list[Any] = [
        m
        for m in model.modules()
        if callable(getattr(m, "packed", None))
        and isinstance(getattr(m, "weight_int8", None), torch.Tensor)
        and id(m) not in skipped
    ]
    layers.sort(key=lambda m: m.weight_int8.numel(), reverse=True)
    among = file_mappings(mapped_from) if mapped_from is not None else []

    def pack(layer: Any) -> None:
        layer.packed()
        if among:
            drop_tensor_pages(layer.weight_int8, among)

    with ThreadPoolExecutor(max_workers=max(1, threads or torch.get_num_threads())) as pool:
        list(pool.map(pack, layers))
    return len(layers)
