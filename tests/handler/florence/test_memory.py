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


def test_packing_drops_each_layers_mapped_pages_and_packs_the_head(tiny_artifact: Path) -> None:
    """The loader packs every int8 layer, the tied head too, and each layer's mapped pages leave RSS as soon
    as it is packed: held until the end, they made the load the process's peak at base size."""
    from handler.florence.artifact import load_model
    from handler.florence.runtime.int8 import pack_int8_layers

    def int8_layers(model: torch.nn.Module) -> list:
        return [m for m in model.modules() if isinstance(getattr(m, "weight_int8", None), torch.Tensor)]

    resident_after = {}
    for mapped_from in (None, tiny_artifact / "model.pt"):
        model = load_model(tiny_artifact / "model.pt")
        layers = int8_layers(model)
        # What packing can drop; the tied head drops its own table before packing, with or without.
        whole_pages = sum(_whole_pages(layer.weight_int8) for layer in layers if layer is not model.text.lm_head)
        assert sum(int(layer.weight_int8.sum()) for layer in layers) is not None  # every int8 page resident
        assert pack_int8_layers(model, threads=2, mapped_from=mapped_from) == len(layers)
        assert all(layer._packed is not None for layer in layers)
        assert model.text.lm_head in layers
        resident_after[mapped_from is not None] = _resident_kb(tiny_artifact / "model.pt") * 1024
        del model, layers
    assert whole_pages > 0
    assert resident_after[False] - resident_after[True] >= whole_pages * 0.9, (resident_after, whole_pages)


def _whole_pages(tensor: torch.Tensor) -> int:
    """Bytes of the whole pages inside `tensor`'s data: the edges share pages with other tensors."""
    import mmap

    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    return max(0, end // mmap.PAGESIZE * mmap.PAGESIZE - -(-start // mmap.PAGESIZE) * mmap.PAGESIZE)
