"""Handing memory the loaded model no longer uses back to the OS, so the function's peak RSS stays low.

Unpickling the artifact repacks every int8 weight into fbgemm's own layout; from then on the
pickle's copies of those weights are dead. The pickle is memory-mapped (read lazily, fast), so its
pages count in RSS once touched. Dropping them is safe: a private mapping's clean pages equal the
file, so pages still in use (conv weights, norms, rows of the int8 embedding table) fault straight
back in from the page cache, and the rest are never read again. Linux + glibc only; elsewhere every
function here is a no-op.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import mmap
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MADV_DONTNEED = 4
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_THRESHOLD_BYTES = 32 << 20
"""glibc's ceiling for the mmap threshold on 64-bit: every request buffer below it comes from the heap."""
TRIM_THRESHOLD_BYTES = 256 << 20
"""Free heap kept at the top before glibc hands it back: more than one request's activations."""
_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$")


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    path: str
    anonymous_kb: int
    """Copy-on-write pages: where the process wrote into the mapping, the pages no longer equal the file."""

    @property
    def clean_file(self) -> bool:
        return self.path.startswith("/") and self.anonymous_kb == 0


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


def mappings() -> list[Mapping]:
    """This process's memory mappings, from /proc/self/smaps (empty where there is none)."""
    found: list[list] = []
    try:
        with open("/proc/self/smaps") as smaps:
            for line in smaps:
                header = _HEADER.match(line)
                if header:
                    found.append([int(header.group(1), 16), int(header.group(2), 16), header.group(3).strip(), 0])
                elif found and line.startswith("Anonymous:"):
                    found[-1][3] = int(line.split()[1])
    except OSError:
        return []
    return [Mapping(*fields) for fields in found]


def _drop(libc: ctypes.CDLL, start: int, end: int) -> int:
    return end - start if end > start and libc.madvise(start, end - start, MADV_DONTNEED) == 0 else 0


def file_mappings(path: str | Path) -> list[Mapping]:
    """The clean private mappings of `path` now (read once, for many `drop_tensor_pages` calls)."""
    target = os.path.realpath(path)
    return [m for m in mappings() if m.path == target and m.clean_file]


def drop_file_pages(path: str | Path) -> int:
    """Drop the resident pages of the clean private mappings of `path`; return the bytes advised."""
    libc = _libc()
    if libc is None:
        return 0
    return sum(_drop(libc, m.start, m.end) for m in file_mappings(path))


def drop_tensor_pages(tensor: torch.Tensor, among: list[Mapping] | None = None) -> int:
    """Drop the whole pages under `tensor`'s data if they come from a clean file mapping (else nothing).

    `among`: the mappings to look in (`file_mappings`), instead of reading /proc/self/smaps per call.
    """
    libc = _libc()
    if libc is None:
        return 0
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    first, last = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE, end // mmap.PAGESIZE * mmap.PAGESIZE
    for m in mappings() if among is None else among:
        if m.start <= first and last <= m.end and m.clean_file:
            return _drop(libc, first, last)
    return 0


def return_freed_heap() -> None:
    """Give the allocator's free pages back to the OS (glibc's `malloc_trim`)."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(AttributeError):  # not glibc
            libc.malloc_trim(0)


def reuse_freed_heap() -> bool:
    """Keep each request's freed buffers in the heap for the next request, instead of returning them.

    A request allocates the same large activations every time (19 MB per GELU at the first DaViT
    stage, 200 KB of logits per decode step). Under glibc's defaults the largest are mmapped and
    unmapped per call and the heap top is trimmed, so every request page-faults and zeroes them
    again. Fixed thresholds keep them: 6-10% off a caption at Florence-2-base size on 2 cores,
    with the same peak RSS (docs/profile.md). Call after the load-time `return_freed_heap`.
    Returns whether glibc took both settings.
    """
    libc = _libc()
    if libc is None:
        return False
    try:
        mallopt = libc.mallopt
    except AttributeError:  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
