"""Int8 quantization for CPU serving, behind one function.

`torch.ao.quantization` is deprecated in favour of torchao; keeping the call here means a switch
touches one place. Dynamic quantization stores every `nn.Linear` weight as int8 and quantizes
activations on the fly, which suits batch-1 CPU inference.
"""

from __future__ import annotations

import warnings

import torch


def quantize_for_serving(model: torch.nn.Module, int8_embedding: bool = False) -> torch.nn.Module:
    """Return a copy with every `nn.Linear` dynamically quantized to int8 (weights int8, fp32 math).

    `int8_embedding=False` is the seed recipe: the token embedding stays an fp32 table (150 MiB at
    base size) next to the int8 `lm_head` it is tied to. `int8_embedding=True` is what the artifact
    serves: the embedding takes the dequantized values of that int8 `lm_head`, so one int8 matrix
    holds both and the fast runtime (which looks rows up in it) computes exactly what this model does.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.ao.quantization import quantize_dynamic

        quantized = quantize_dynamic(model.eval(), {torch.nn.Linear}, dtype=torch.qint8)
    if int8_embedding:
        embedding = quantized.get_input_embeddings()
        with torch.no_grad():
            embedding.weight.copy_(quantized.lm_head.weight().dequantize())
    return quantized
