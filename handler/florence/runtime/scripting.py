"""TorchScript for the runtime's hot functions, with the plain function as the fallback.

From Python, every op costs its argument conversion and dispatch; an op taking fbgemm's packed
weights about 9 µs more than inside a TorchScript graph. The decode step and the DaViT blocks run as
scripted functions of tensors and packed weights: the same ops on the same weights, so the same bits
as the plain functions (tested). `torch.jit.script` is deprecated in torch 2.13; where it is gone or
fails, `compiled` returns the plain function: same results, the slower call path.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    PackedInt8 = Any
else:
    # TorchScript resolves this name to fbgemm's packed-weights class; type checkers see Any.
    PackedInt8 = torch.classes.quantized.LinearPackedParamsBase

log = logging.getLogger(__name__)


def compiled(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`function` scripted by TorchScript, or `function` itself where scripting is unavailable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates torch.jit.script
            return torch.jit.script(function)
    except Exception as error:  # TorchScript removed or unable to compile: same maths, slower calls
        log.warning("%s runs uncompiled (%s: %s)", function.__name__, type(error).__name__, error)
        return function


@contextlib.contextmanager
def as_compiled() -> Iterator[None]:
    """Run compiled functions as compiled, with TorchScript's optimizing executor off.

    Its profiling runs and re-planning cost 30 ms of the first decode (a cold start's) and bought
    nothing measurable after: a 60-token base-size decode took 299.6 ms without it and 299.4 ms with
    it (min of 20 alternating rounds). The switch is thread-local; without TorchScript there is
    nothing to switch.
    """
    optimized_execution = getattr(torch.jit, "optimized_execution", None)
    if optimized_execution is None:
        yield
        return
    with optimized_execution(False):
        yield
