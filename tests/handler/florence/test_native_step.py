"""The decoder step in C (`runtime/native`): built here, close to the TorchScript step, exact where it must be.

Real forward passes of the embedded tiny model. The C step is not bit-identical to the TorchScript
step (per-row 8-bit activations, another summation order), so the two are compared by closeness and
by the tokens they choose; what is exact by construction is tested exactly: a batch row decodes as it
would alone, and the thread count changes nothing.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import time

import pytest
import torch

from handler.florence.runtime.native import step as native_step
from handler.florence.tasks import Task
from model_build.bench.baseline import tiny_model_and_processor
from model_build.export.serving_prep import prepare_for_serving

STEPS = 12


@pytest.fixture(scope="module")
def fast():
    torch.manual_seed(0)
    model, processor = tiny_model_and_processor()
    return prepare_for_serving(model, processor)


@pytest.fixture(scope="module")
def memories(fast):
    """The encoder outputs of a caption and an `<OD>` prompt (different lengths) for one random image."""
    from PIL import Image

    generator = torch.Generator().manual_seed(1)
    pixels = (torch.rand(64, 80, 3, generator=generator) * 255).to(torch.uint8).numpy()
    with torch.inference_mode():
        features = fast.image_features(fast.image_spec.to_pixels(Image.fromarray(pixels)))
        return [fast.text.encode(fast.encoder_inputs(task.value, features)) for task in (Task.CAPTION, Task.DETECT)]


@pytest.fixture
def isa():
    """Restores the best kernel after a test that chose another."""
    yield
    native_step.use_isa("avx512_vnni")


def _teacher_forced_logits(fast, memory, teacher: list[int], native: bool) -> torch.Tensor:
    from handler.florence.runtime.text import DecodeRequest

    text = fast.text
    text.use_native_decoder(native)
    try:
        request = DecodeRequest(memory, len(teacher), len(teacher), teacher=teacher)
        with torch.inference_mode():
            (decoded,) = text.greedy_batch(
                [request], fast.decode_spec.start_id, fast.decode_spec.eos_id, keep_logits=True
            )
    finally:
        text.use_native_decoder(True)
    assert decoded.logits is not None
    return decoded.logits


def test_the_c_step_is_built_and_serves_here(fast):
    """Where `pip install` could compile it (x86-64, a C compiler on PATH) the step must be built and used:
    a build that quietly failed would leave the service on the slower TorchScript step."""
    if platform.machine() not in ("x86_64", "AMD64") or not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no x86-64 C compiler here: the extension is optional, the TorchScript step serves")
    assert native_step.library_path() is not None, "setup.py did not build handler/florence/runtime/native"
    assert native_step.library() is not None
    assert fast.text.native_decoder() is not None
    assert {id(m) for m in fast.text.natively_packed()} >= {id(fast.text.lm_head)}


@pytest.mark.parametrize("kernel", ["avx512_vnni", "avx2"])
def test_c_step_logits_are_close_to_the_torchscript_steps(fast, memories, kernel, isa):
    """Along the TorchScript step's own greedy tokens, both kernels give logits within int8 noise of it."""
    if native_step.use_isa(kernel) != kernel:
        pytest.skip(f"this CPU has no {kernel}")
    memory = memories[1]
    with torch.inference_mode():
        fast.text.use_native_decoder(False)
        try:
            ids, _ = fast.text.greedy(memory, fast.decode_spec.start_id, fast.decode_spec.eos_id, STEPS, STEPS)
        finally:
            fast.text.use_native_decoder(True)
    teacher = ids[1:]
    reference = _teacher_forced_logits(fast, memory, teacher, native=False)
    ours = _teacher_forced_logits(fast, memory, teacher, native=True)
    spread = reference.std(-1, keepdim=True)
    relative = ((ours - reference).abs() / spread).max().item()
    assert 0 < relative < 0.1, relative  # not the same bits, and not far: int8 noise is a few percent of a spread
    top2 = reference.topk(2, -1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.2 * spread.squeeze(-1)
    assert clear.any()
    assert torch.equal(ours.argmax(-1)[clear], reference.argmax(-1)[clear])


def test_a_batch_row_decodes_exactly_as_it_does_alone(fast, memories):
    """Each activation row has its own quantization scale, so a row's logits do not depend on its companion
    (fbgemm's one scale per call made them differ); padded memories are cut at each row's length."""
    from handler.florence.runtime.text import DecodeRequest

    text, spec = fast.text, fast.decode_spec
    requests = [DecodeRequest(memory, STEPS, STEPS) for memory in memories]
    with torch.inference_mode():
        together = text.greedy_batch(requests, spec.start_id, spec.eos_id, keep_logits=True)
        alone = [text.greedy_batch([r], spec.start_id, spec.eos_id, keep_logits=True)[0] for r in requests]
    for batched, single in zip(together, alone, strict=True):
        assert batched.ids == single.ids
        assert torch.equal(batched.logits, single.logits)


def test_the_thread_count_changes_no_bit(fast, memories, monkeypatch):
    """Threads split rows and heads, never a sum, so 1, 2 and 3 threads give the same logits."""
    outputs = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(torch, "get_num_threads", lambda threads=threads: threads)
        outputs.append(_teacher_forced_logits(fast, memories[0], list(range(3, 3 + STEPS)), native=True))
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])


def test_out_of_range_input_is_refused_before_anything_is_written(fast, memories):
    text = fast.text
    native = text.native_decoder()
    assert native is not None
    caches = [cache.zero_() for cache in text.self_attention_caches(1, 4)]
    cross = [layer.cross_kv(memories[0]) for layer in text.decoder_layers()]
    before = [c.clone() for c in caches]
    length = memories[0].shape[1]
    for tokens, step in ((torch.tensor([[native.vocab]]), 0), (torch.tensor([[-1]]), 0), (torch.tensor([[5]]), 4)):
        with pytest.raises(RuntimeError, match="out of range"):
            native.step_logits(tokens, step, caches, cross, [length], 2)
    with pytest.raises(RuntimeError, match="out of range"):
        native.step_logits(torch.tensor([[5]]), 0, caches, cross, [length + 1], 2)
    assert all(torch.equal(a, b) for a, b in zip(before, caches, strict=True))


def test_a_forked_child_starts_its_own_threads(fast, memories):
    """Workers started before a fork do not exist in the child; its first step must start new ones, not hang.

    The child calls only the C step (torch's own OpenMP pool is not fork-safe, whatever this runtime does).
    """
    text = fast.text
    native = text.native_decoder()
    assert native is not None
    cross = [layer.cross_kv(memories[0]) for layer in text.decoder_layers()]
    length = memories[0].shape[1]

    def one_step() -> torch.Tensor:
        caches = [cache.zero_() for cache in text.self_attention_caches(1, 2)]
        return native.step_logits(torch.tensor([[4]]), 0, caches, cross, [length], 2)

    first = one_step()  # the parent's worker thread starts here
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.write(write, b"same" if torch.equal(first, one_step()) else b"differ")
        finally:
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + 60
    while (waited := os.waitpid(child, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    if waited == (0, 0):
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        pytest.fail("the forked child's step hung")
    assert os.read(read, 16) == b"same" and waited[1] == 0


def test_without_the_library_the_torchscript_step_serves(fast, memories, monkeypatch):
    """Where the extension did not build (or the CPU lacks AVX2) `build` gives None and decoding still works."""
    monkeypatch.setattr(native_step, "library", lambda: None)
    text = fast.text
    text._native, text._native_tried = None, None
    try:
        assert text.native_decoder() is None
        with torch.inference_mode():
            ids, logits = text.greedy(memories[0], fast.decode_spec.start_id, fast.decode_spec.eos_id, 4, 4)
        assert len(ids) == 5 and logits.shape[0] == 4
    finally:
        text._native, text._native_tried = None, None
