"""Dropping a memory-mapped artifact's pages: RSS goes down, data stays the same, written pages stay put."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from handler.florence.memory import drop_file_pages, drop_tensor_pages, mappings

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")

MIB = 1 << 20


def _resident_kb(path: Path) -> int:
    """Rss of this process's mappings of `path`, in kB."""
    target, total, inside = str(path.resolve()), 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:
                inside = fields[-1] == target
            elif inside and line.startswith("Rss:"):
                total += int(fields[1])
    return total


@pytest.fixture
def mapped(tmp_path: Path) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """A 16 MiB tensor saved and loaded back memory-mapped, as the handler loads the artifact."""
    original = torch.arange(4 * MIB, dtype=torch.int32)
    path = tmp_path / "weights.pt"
    torch.save({"w": original}, path)
    loaded = torch.load(path, mmap=True)["w"]
    assert int(loaded.sum()) == int(original.sum())  # touches every page
    return path, original, loaded


def test_dropping_file_pages_frees_them_and_keeps_the_data(mapped) -> None:
    path, original, loaded = mapped
    before = _resident_kb(path)
    assert before >= 15 * 1024
    assert drop_file_pages(path) >= 16 * MIB
    assert _resident_kb(path) < 1024
    assert torch.equal(loaded, original)  # pages fault back in from the file
    assert _resident_kb(path) >= 15 * 1024


def test_a_mapping_written_into_is_left_alone(mapped) -> None:
    path, _, loaded = mapped
    loaded[0] = -7  # a copy-on-write page: dropping it would revert the write
    assert any(m.anonymous_kb > 0 for m in mappings() if m.path == str(path.resolve()))
    assert drop_file_pages(path) == 0
    assert int(loaded[0]) == -7


def test_tensor_pages_only_when_file_backed(mapped) -> None:
    _path, original, loaded = mapped
    assert drop_tensor_pages(original.clone()) == 0  # heap memory: nothing to re-read it from
    dropped = drop_tensor_pages(loaded)
    assert 15 * MIB <= dropped <= 16 * MIB  # whole pages inside the tensor only
    assert torch.equal(loaded, original)


_REFAULTS = """
import resource, sys
from handler.florence.memory import reuse_freed_heap
if sys.argv[1] == "reuse":
    assert reuse_freed_heap()
def request():  # 10 MiB of 64 KiB buffers, below glibc's default mmap threshold: they come from the heap top
    return [bytearray(64 << 10) for _ in range(160)]
buffers = request()
del buffers  # the heap top is now 10 MiB of free memory
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
buffers = request()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.parametrize("mode", ["default", "reuse"])
def test_freed_request_buffers_are_reused_without_page_faults(mode: str) -> None:
    """Under glibc's defaults the freed heap top is trimmed, so the next request faults its pages in again."""
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", _REFAULTS, mode], capture_output=True, text=True, check=True, cwd=Path.cwd()
    )
    refaults = int(out.stdout.strip())
    pages = (10 << 20) // 4096
    if mode == "reuse":
        assert refaults < pages // 10
    else:
        assert refaults > pages // 2
