"""Int8 quantization for CPU serving, behind one function.

`torch.ao.quantization` is deprecated in favour of torchao; keeping the call here means a switch
touches one place. Dynamic quantization stores every `nn.Linear` weight as int8 and quantizes
activations on the fly, which suits batch-1 CPU inference.
"""

from __future__ import annotations

import warnings

import torch


def quantize_for_serving(model: torch.nn.Module) -> torch.nn.Module:
    """Return the model with every `nn.Linear` dynamically quantized to int8 (weights int8, fp32 math)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model.eval(), {torch.nn.Linear}, dtype=torch.qint8)
