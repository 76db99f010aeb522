"""The fast runtime is at least as faithful to fp32 as the seed recipe, on the embedded tiny model.

Real forward passes everywhere: fp32, the seed recipe (`quantize_for_serving` + HF `generate`) and
the served runtime (`prepare_for_serving` + the lean batched decode) score a held-out synthetic split
side by side (the quality-parity rule of `model_build.export.quality`). The runtime is not bit-exact
with any reference any more; the exact facts that remain (stacked q/k/v, the folded conv residual,
batch rows with equal inputs) are tested exactly.
"""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
import torch

from handler.florence.engine import Engine
from handler.florence.runtime.model import is_fast
from handler.florence.tasks import MAX_NEW_TOKENS, Task
from model_build.bench.baseline import tiny_model_and_processor
from model_build.data.coco import open_rgb
from model_build.data.synth import synthesize
from model_build.export.quantize import quantize_for_serving
from model_build.export.serving_prep import prepare_for_serving
from tests.conftest import run_python

VAL_IMAGES = 12
QUALITY_IMAGES = 40


@pytest.fixture(scope="module")
def paths():
    torch.manual_seed(0)
    model, processor = tiny_model_and_processor()
    return quantize_for_serving(model, int8_embedding=True), prepare_for_serving(model, processor), processor


@pytest.fixture(scope="module")
def val_images(tmp_path_factory):
    root = synthesize(tmp_path_factory.mktemp("synth"), train=1, val=VAL_IMAGES, seed=3)
    return [open_rgb(p) for p in sorted((Path(root) / "val2017").glob("*.jpg"))]


def test_fast_model_is_marked_and_plain_is_not(paths):
    plain, fast, _ = paths
    assert is_fast(fast) and not is_fast(plain)


def test_pixels_are_the_processors(paths, val_images):
    _, fast, processor = paths
    for image in val_images[:8]:
        reference = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        assert torch.equal(fast.image_spec.to_pixels(image), reference)


def test_quality_parity_on_held_out_split(paths, tmp_path):
    """The issue-11 rule on a held-out split: served CIDEr, mAP@.5 and exact match hold up against the baseline's."""
    from model_build.data.synth import write_val_split
    from model_build.export.quality import split_quality

    model, processor = tiny_model_and_processor()
    root = write_val_split(tmp_path / "val", QUALITY_IMAGES, seed=11)
    report = split_quality(model, processor, paths[1], root, "val2017", QUALITY_IMAGES)
    scores = {s.path: s for s in report.scores}
    assert report.images == QUALITY_IMAGES
    assert scores["fp32"].cider > 1.0 and scores["fp32"].map50 > 0.3  # a trained model: the scores mean something
    assert report.passed, report.checks


def test_teacher_forced_fidelity_on_tiny_model(paths, val_images):
    from model_build.export.quality import teacher_forced_fidelity
    from model_build.export.serving_prep import task_prompt_ids

    model, processor = tiny_model_and_processor()
    tokens = {Task.CAPTION: 20, Task.DETECT: 40}
    fidelity = teacher_forced_fidelity(
        model, quantize_for_serving(model), paths[1], processor, val_images[:8], task_prompt_ids(processor, 384), tokens
    )
    assert {(r.task, r.path, r.steps) for r in fidelity.rows} == {
        (t.api_name, p, 8 * tokens[t]) for t in Task for p in ("baseline", "served")
    }
    assert all(0 <= r.mean_kl < 0.05 and r.top1_agreement >= 0.9 for r in fidelity.rows), fidelity.rows
    assert fidelity.passed, fidelity.checks


def _teacher_forced_batch(fast, features, prompts: list[str], tokens: list[int]):
    """Single decodes of each prompt, and the same prompts decoded as one batch fed the single decodes' ids."""
    from handler.florence.runtime.text import DecodeRequest

    spec = fast.decode_spec
    singles = [fast.generate(p, features, n, n, keep_logits=True) for p, n in zip(prompts, tokens, strict=True)]
    requests = [
        DecodeRequest(fast.text.encode(fast.encoder_inputs(p, features)), n, n, teacher=single.ids[1:])
        for p, n, single in zip(prompts, tokens, singles, strict=True)
    ]
    return singles, fast.text.greedy_batch(requests, spec.start_id, spec.eos_id, spec.forced_eos, keep_logits=True)


def test_batch_rows_with_equal_inputs_decode_as_one(paths, val_images):
    """Batching shares the weight reads, not the answers: two copies of one prompt give the single decode's logits.

    Equal rows give the int8 linears the same activation scale, so only kernel rounding (ulps) may differ.
    """
    _, fast, _ = paths
    with torch.inference_mode():
        features = fast.image_features(fast.image_spec.to_pixels(val_images[0]))
        singles, pair = _teacher_forced_batch(fast, features, [Task.DETECT.value] * 2, [30, 30])
    for row in pair:
        assert row.ids == singles[0].ids
        assert row.logits.shape == (30, fast.text.lm_head.weight_int8.shape[0])
        torch.testing.assert_close(row.logits, singles[0].logits, rtol=0, atol=1e-4)


def test_batched_prompts_of_different_lengths_mask_the_padding(paths, val_images):
    """Caption and <OD> prompts differ in length; in one batch each still attends to its own encoder memory only."""
    _, fast, _ = paths
    prompts = [Task.CAPTION.value, Task.DETECT.value]
    assert len(fast.prompt_ids[prompts[0]]) != len(fast.prompt_ids[prompts[1]])
    with torch.inference_mode():
        features = fast.image_features(fast.image_spec.to_pixels(val_images[3]))
        singles, batched = _teacher_forced_batch(fast, features, prompts, [12, 24])
    for together, single in zip(batched, singles, strict=True):
        assert together.ids == single.ids and together.logits.shape == single.logits.shape
        # Only the shared activation scale of the int8 linears differs: logits stay close, nowhere near a
        # row that attended to the other row's padding.
        assert (together.logits - single.logits).abs().max() < 0.5


def test_rows_leave_the_batch_in_any_order(paths, val_images):
    """Three prompts that finish middle-first: the batch shrinks by a copy ([0, 2]), then by a view ([0])."""
    _, fast, _ = paths
    prompts = [Task.CAPTION.value, Task.DETECT.value, Task.DETECT.value]
    with torch.inference_mode():
        features = fast.image_features(fast.image_spec.to_pixels(val_images[2]))
        singles, batched = _teacher_forced_batch(fast, features, prompts, [24, 8, 16])
    for together, single in zip(batched, singles, strict=True):
        assert together.ids == single.ids and together.logits.shape == single.logits.shape
        assert (together.logits - single.logits).abs().max() < 0.5


def test_folded_residual_conv_is_conv_plus_input():
    from model_build.export.serving_prep import fold_residual

    torch.manual_seed(2)
    conv = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
    x = torch.randn(1, 8, 10, 12)
    with torch.no_grad():
        torch.testing.assert_close(fold_residual(conv)(x), conv(x) + x, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="depthwise"):
        fold_residual(torch.nn.Conv2d(8, 8, 3, padding=0, groups=8))


def test_int8_embedding_is_the_seed_recipe_plus_one_tied_table():
    """The served int8 model differs from the seed recipe only in the embedding: the int8 lm_head's values."""
    model, _ = tiny_model_and_processor()
    baseline, served = quantize_for_serving(model), quantize_for_serving(model, int8_embedding=True)
    assert torch.equal(served.get_input_embeddings().weight, served.lm_head.weight().dequantize())
    assert not torch.equal(baseline.get_input_embeddings().weight, served.get_input_embeddings().weight)
    assert torch.equal(model.get_input_embeddings().weight, baseline.get_input_embeddings().weight)
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    linears = 0
    for (name, a), (_, b) in zip(baseline.named_modules(), served.named_modules(), strict=False):
        if isinstance(a, DynamicLinear):
            linears += 1
            assert torch.equal(a.weight().int_repr(), b.weight().int_repr()), name
    assert linears > 50


def test_analyze_encodes_once_and_decodes_the_tasks_as_one_batch(paths, val_images):
    from handler.florence.engine import FastRuntime
    from handler.florence.runtime.model import GenerationRequest

    _, fast, _ = paths
    engine = Engine(fast)
    image = val_images[1]
    both = engine.run(image, [Task.CAPTION, Task.DETECT])
    assert {"vision", "caption", "detect", "total"} <= set(both.timings_ms)
    assert both.timings_ms["total"] >= max(both.timings_ms["caption"], both.timings_ms["detect"])
    with torch.inference_mode():
        features = fast.image_features(fast.image_spec.to_pixels(image))
        requests = [GenerationRequest(t.value, MAX_NEW_TOKENS[t]) for t in (Task.CAPTION, Task.DETECT)]
        generations = fast.generate_batch(requests, features)
    for task, generation in zip((Task.CAPTION, Task.DETECT), generations, strict=True):
        expected = FastRuntime(fast).parse(task, generation, image.size)
        assert both.predictions[task].as_dict() == expected.as_dict()
    # A single-task request decodes that task alone (a batch of one).
    caption = engine.run(image, [Task.CAPTION]).predictions[Task.CAPTION]
    with torch.inference_mode():
        alone = fast.generate(Task.CAPTION.value, features, MAX_NEW_TOKENS[Task.CAPTION])
    assert caption.text == alone.text


def test_fast_artifact_loads_without_transformers(paths, tmp_path):
    """The served pickle unpickles and answers with torch + tokenizers alone (the cold-start saving);
    torch is first imported by the load itself, on its second thread beside the sha256 check."""
    from model_build.export.writer import write_artifact

    _, fast, processor = paths
    write_artifact(fast, processor, tmp_path / "art", base_id="tiny", image_size=384, tasks=list(Task))
    val = tmp_path / "img.png"
    from PIL import Image

    Image.new("RGB", (320, 240), (200, 30, 30)).save(val)
    code = (
        "import sys; from PIL import Image; from handler.florence.artifact import load_artifact;"
        "print('torch' in sys.modules);"
        f"a = load_artifact({str(tmp_path / 'art')!r}); assert a.processor is None;"
        "print(0 < a.torch_import_seconds < a.load_seconds);"
        "from handler.florence.engine import Engine; from handler.florence.tasks import MAX_NEW_TOKENS, Task;"
        f"r = Engine.from_artifact(a).run(Image.open({str(val)!r}).convert('RGB'), [Task.CAPTION, Task.DETECT]);"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'));"
        "print(type(r.predictions[Task.CAPTION].caption).__name__)"
    )
    out = run_python("-c", code, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["False", "True", "[]", "str"]


def test_stacked_qkv_is_bit_identical_to_separate_int8_linears():
    from model_build.export.serving_prep import stack_int8_linears

    torch.manual_seed(1)
    parts = quantize_for_serving(torch.nn.Sequential(*[torch.nn.Linear(64, 48) for _ in range(3)]))
    stacked = stack_int8_linears(list(parts))
    for rows in (1, 37):
        x = torch.randn(1, rows, 64) * 3
        assert torch.equal(stacked(x), torch.cat([p(x) for p in parts], dim=-1))


def test_loop_probabilities_are_the_kept_logits_softmax(paths, val_images):
    """The greedy loop scores each token before dropping its logits: the same numbers as scoring kept logits."""
    from handler.florence.runtime.text import chosen_token_probabilities

    _, fast, _ = paths
    with torch.inference_mode():
        features = fast.image_features(fast.image_spec.to_pixels(val_images[2]))
        kept = fast.generate(Task.DETECT.value, features, 25, 25, keep_logits=True)
        served = fast.generate(Task.DETECT.value, features, 25, 25)
    assert served.logits is None and served.ids == kept.ids
    expected = chosen_token_probabilities(kept.logits, torch.tensor(kept.ids[1:]))
    torch.testing.assert_close(torch.tensor(served.probabilities), expected, rtol=1e-5, atol=1e-7)
    assert len(served.probabilities) == 25 and all(0.0 < p <= 1.0 for p in served.probabilities)


def test_banded_mlp_matches_the_whole_map(paths, monkeypatch):
    """Large feature maps run the MLP a band of rows at a time: same answer up to int8 activation rounding."""
    import handler.florence.runtime.vision as vision

    _, fast, _ = paths
    mlp = next(m for m in fast.vision.modules() if isinstance(m, vision.Mlp))
    width = mlp.fc1.in_features
    x = torch.randn(1, 9, 7, width)
    with torch.inference_mode():
        whole = mlp(x)
        monkeypatch.setattr(vision, "HIDDEN_CHUNK_ELEMENTS", 3 * 7 * mlp.fc1.out_features)
        banded = mlp(x)
    assert banded.shape == whole.shape
    assert not torch.equal(banded, whole)  # three bands, three activation scales
    torch.testing.assert_close(banded, whole, rtol=0.05, atol=0.05 * float(whole.abs().max()))


@pytest.mark.parametrize("per_channel", [False, True])
def test_int8_linear_is_bit_identical_to_torch_ao_dynamic_linear(per_channel: bool):
    """The served layer pickles plain tensors and packs after loading; the matmul is the torch.ao layer's, bit for bit."""
    from handler.florence.runtime.int8 import Int8Linear, pack_int8_layers
    from model_build.export.serving_prep import stack_int8_linears, to_int8_linears

    torch.manual_seed(2)
    parts = quantize_for_serving(torch.nn.Sequential(*[torch.nn.Linear(64, 48) for _ in range(3)]))
    reference = stack_int8_linears(list(parts)) if per_channel else parts[0]
    holder = torch.nn.Sequential(copy.deepcopy(reference))
    assert to_int8_linears(holder) == 1 and isinstance(holder[0], Int8Linear)
    restored = pickle.loads(pickle.dumps(holder))  # what the artifact holds: no packed weights
    assert restored[0].__dict__["_packed"] is None
    assert pack_int8_layers(restored, threads=2) == 1
    for rows in (1, 37):
        x = torch.randn(1, rows, 64) * 3
        assert torch.equal(restored(x), reference(x))


def test_compiled_decoder_step_is_bit_identical_to_the_plain_function(paths, val_images, monkeypatch):
    """The decode loop's step (input, every layer, lm_head) runs as TorchScript; the same function run by
    Python gives the same bits, for a padded batch of two with its mask, step after step."""
    from handler.florence.runtime import decoder_step

    assert isinstance(decoder_step.decoder_step, torch.jit.ScriptFunction)  # compiled on this torch
    _, fast, _ = paths
    text = fast.text
    text.use_native_decoder(False)  # the TorchScript step, which serves where the C step is not built
    try:
        _assert_compiled_step_is_the_plain_one(fast, val_images, monkeypatch)
    finally:
        text.use_native_decoder(True)


def _assert_compiled_step_is_the_plain_one(fast, val_images, monkeypatch) -> None:
    from handler.florence.runtime import decoder_step
    from handler.florence.runtime import text as text_module

    text = fast.text
    with torch.inference_mode():
        features = fast.image_features(fast.image_spec.to_pixels(val_images[1]))
        memories = [text.encode(fast.encoder_inputs(t.value, features)) for t in (Task.CAPTION, Task.DETECT)]
        longest = max(m.shape[1] for m in memories)
        memory = torch.cat([torch.nn.functional.pad(m, (0, 0, 0, longest - m.shape[1])) for m in memories])
        mask = torch.zeros(2, 1, 1, longest)
        mask[0, :, :, memories[0].shape[1] :] = float("-inf")
        cross = [layer.cross_kv(memory) for layer in text.decoder_layers()]
        caches = [text.self_attention_caches(2, 8) for _ in range(2)]
        tokens = torch.tensor([[fast.decode_spec.start_id]] * 2)
        for step in range(6):
            outputs = []
            for step_fn, layer_caches in zip(
                (decoder_step.decoder_step, decoder_step._plain_decoder_step), caches, strict=True
            ):
                monkeypatch.setattr(text_module, "decoder_step", step_fn)
                with decoder_step.decode_execution():
                    outputs.append(text.step_logits(tokens, step, layer_caches, cross, mask))
            assert outputs[0].shape == (2, text.lm_head.weight_int8.shape[0])
            assert torch.equal(outputs[0], outputs[1])
            tokens = outputs[0].argmax(-1, keepdim=True)
        for compiled_cache, plain_cache in zip(*caches, strict=True):
            assert torch.equal(compiled_cache[:, :, :, :6], plain_cache[:, :, :, :6])  # the written positions


def test_decoder_input_is_the_embedding_lookup_position_and_norm(paths):
    """A step's input (int8 embedding row, scale, position, LayerNorm) as one function equals the module calls."""
    from handler.florence.runtime import decoder_step
    from handler.florence.runtime.text import POSITION_OFFSET

    _, fast, _ = paths
    text, head, norm = fast.text, fast.text.lm_head, fast.text.dec_norm
    with torch.inference_mode():
        for step, ids in ((0, [[fast.decode_spec.start_id]]), (5, [[7], [head.weight_int8.shape[0] - 1]])):
            tokens = torch.tensor(ids)
            rows = (head.weight_int8[tokens].float() - head.zero_point) * head.scale  # the int8 rows, dequantized
            embedded = rows * text.embed_scale if text.embed_scale != 1.0 else rows
            assert torch.equal(text.embed_tokens(tokens), embedded)
            expected = text.dec_norm(embedded + text.dec_positions[POSITION_OFFSET + step])
            norm_params = (norm.weight, norm.bias, norm.eps)
            got = decoder_step._plain_decoder_input(
                tokens, text.embedding(), text.dec_positions, POSITION_OFFSET + step, norm_params
            )
            assert got.shape == (len(ids), 1, head.weight_int8.shape[1])
            assert torch.equal(got, expected)


@pytest.mark.parametrize("native", [True, False])
def test_patch_embed_convs_are_stored_bf16_and_run_in_float32_where_bf16_is_not_native(paths, monkeypatch, native):
    """bf16 convs only where the CPU computes bf16 natively; elsewhere a float32 copy that is never pickled."""
    import handler.florence.runtime.vision as vision

    monkeypatch.setattr(vision, "native_bfloat16", lambda: native)
    _, fast, _ = paths
    embed = copy.deepcopy(fast.vision.embeds[1])
    assert embed.conv.weight.dtype == torch.bfloat16  # what serving_prep stores, on any build machine
    embed.__dict__["_float_conv"] = None
    x = torch.randn(1, 10, 12, embed.conv.in_channels)
    with torch.inference_mode():
        out = embed(x)
    float_conv = embed.__dict__["_float_conv"]
    assert (float_conv is None) == native
    if not native:
        assert float_conv.weight.dtype == torch.float32
        assert torch.equal(float_conv.weight, embed.conv.weight.float())
    assert out.dtype == torch.float32 and out.shape[1:3] == (5, 6)
    restored = pickle.loads(pickle.dumps(embed))
    assert restored.__dict__["_float_conv"] is None and restored.conv.weight.dtype == torch.bfloat16
    with torch.inference_mode():
        conv = copy.deepcopy(embed.conv).float()
        reference = conv((embed.norm(x) if embed.pre_norm else x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        if not embed.pre_norm:
            reference = embed.norm(reference)
    torch.testing.assert_close(out, reference, rtol=0.05, atol=0.05 * float(reference.abs().max()))


def test_bf16_window_attention_in_bands_matches_fp32_attention():
    """Window attention where bf16 is native: two bf16 matmuls, a band of windows at a time, close to fp32 SDPA."""
    from handler.florence.runtime.vision_block import bf16_attention

    torch.manual_seed(4)
    qkv = torch.randn(3, 6, 4, 49, 32)
    reference = torch.nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=32**-0.5)
    whole = bf16_attention(qkv, 32**-0.5, 2 << 20)
    banded = bf16_attention(qkv, 32**-0.5, 2 * 4 * 49 * 49)  # three bands of two windows
    assert banded.shape == whole.shape == reference.shape and banded.dtype == torch.float32
    torch.testing.assert_close(banded, whole, rtol=0, atol=1e-6)
    torch.testing.assert_close(whole, reference, rtol=0.02, atol=0.02)
    assert not torch.equal(whole, reference)  # bf16 really ran


def test_channel_attention_matmuls_equal_sdpa_over_channels():
    """DaViT's channel attention as two matmuls on views equals SDPA with channels as the sequence."""
    from handler.florence.runtime.int8 import Int8Linear
    from handler.florence.runtime.vision import ChannelAttention

    torch.manual_seed(5)
    batch, side, width, groups = 2, 7, 64, 4

    def int8_linear(outputs: int) -> Int8Linear:
        weight = torch.randint(-127, 128, (outputs, width), dtype=torch.int8)
        scale, zero_point = torch.tensor([0.01], dtype=torch.float64), torch.tensor([0])
        return Int8Linear(weight, scale, zero_point, torch.randn(outputs), reduce_range=True)

    qkv, proj = int8_linear(3 * width), int8_linear(width)
    attention = ChannelAttention(qkv, proj, groups)
    x = torch.randn(batch, side, side, width)
    tokens = side * side
    with torch.inference_mode():
        stacked = qkv(x.reshape(batch, tokens, width)).view(batch, tokens, 3, groups, width // groups)
        q, k, v = stacked.permute(2, 0, 3, 4, 1)  # (batch, groups, channels per group, tokens)
        mixed = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=tokens**-0.5)
        reference = proj(mixed.permute(0, 3, 1, 2).reshape(batch, tokens, width)).view(x.shape)
        torch.testing.assert_close(attention(x), reference, rtol=1e-5, atol=1e-5)


def test_compiled_davit_blocks_are_bit_identical_to_their_parts(paths, val_images):
    """Each DaViT block runs as one compiled call; the plain function and the modules' own parts
    (conv, norm, attention, MLP, called one by one) give the same bits."""
    from handler.florence.runtime import vision_block
    from handler.florence.runtime.vision import (
        ATTENTION_CHUNK_ELEMENTS,
        HIDDEN_CHUNK_ELEMENTS,
        MixingBlock,
        WindowAttention,
        native_bfloat16,
    )

    assert isinstance(vision_block.davit_block, torch.jit.ScriptFunction)
    _, fast, _ = paths
    tower = fast.vision
    kinds = set()
    with torch.inference_mode():
        x = fast.image_spec.to_pixels(val_images[0]).permute(0, 2, 3, 1).contiguous()
        for embed, blocks in zip(tower.embeds, tower.stages, strict=False):
            x = embed(x)
            for block in blocks:
                assert isinstance(block, MixingBlock)

                def conv(module, t):
                    return module(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

                by_parts = conv(block.conv1, x)
                by_parts = by_parts + block.attn(block.norm1(by_parts))
                by_parts = conv(block.conv2, by_parts)
                by_parts = by_parts + block.mlp(block.norm2(by_parts))
                w = block.weights()
                shared = (x, w.conv_weights, w.conv_biases, w.norm_params, w.norm_eps, w.packed, w.reduce_range)
                attn = block.attn
                if isinstance(attn, WindowAttention):
                    kinds.add("window")
                    attention = (True, attn.num_heads, attn.window, attn.scale)
                else:
                    kinds.add("channel")
                    attention = (False, attn.groups, 0, 1.0)
                chunks = (HIDDEN_CHUNK_ELEMENTS, ATTENTION_CHUNK_ELEMENTS)
                plain = vision_block._plain_block(*shared, w.hidden, *attention, native_bfloat16(), *chunks)
                compiled = block(x)
                assert torch.equal(compiled, plain) and torch.equal(compiled, by_parts)
                x = compiled
    assert kinds == {"window", "channel"}


def test_decode_execution_turns_onednn_off_and_always_restores_it():
    """The decode step's GELU takes torch's own kernel; oneDNN is back on for the vision tower afterwards."""
    from handler.florence.runtime.decoder_step import decode_execution

    assert torch.backends.mkldnn.enabled
    with decode_execution():
        assert not torch.backends.mkldnn.enabled
    assert torch.backends.mkldnn.enabled
    with pytest.raises(RuntimeError), decode_execution():
        raise RuntimeError("a failing decode")
    assert torch.backends.mkldnn.enabled


def test_modules_pickled_before_a_cache_existed_load_with_it_empty(paths, val_images, tmp_path):
    """Same artifact format, older runtime: a pickle without the caches added since (`_step_weights`,
    `_float_conv`, `_weights`, `_decode_weights`) still decodes."""
    from handler.florence.artifact import load_model
    from handler.florence.runtime.pickling import CachesNotPickled

    _, fast, _ = paths
    older = copy.deepcopy(fast)
    caches_dropped = 0
    for module in older.modules():
        if isinstance(module, CachesNotPickled) and type(module).__name__ in (
            "DecoderLayer",
            "PatchEmbed",
            "MixingBlock",
            "TextModel",
        ):
            for name in module.caches:
                module.__dict__.pop(name)
            caches_dropped += 1
    blocks = sum(len(stage) for stage in fast.vision.stages)
    assert caches_dropped == len(fast.text.dec_layers) + len(fast.vision.embeds) + blocks + 1
    original_getstate = CachesNotPickled.__getstate__

    def older_getstate(self):  # what the older runtime wrote: no entry for a cache it did not have
        return {name: value for name, value in original_getstate(self).items() if name in self.__dict__}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CachesNotPickled, "__getstate__", older_getstate)
        torch.save(older, tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt")
    assert all(layer.__dict__["_step_weights"] is None for layer in loaded.text.dec_layers)
    assert all(embed.__dict__["_float_conv"] is None for embed in loaded.vision.embeds)
    assert loaded.text.__dict__["_decode_weights"] is None
    image = val_images[0]
    expected = Engine(fast).run(image, [Task.CAPTION, Task.DETECT]).predictions
    assert Engine(loaded).run(image, [Task.CAPTION, Task.DETECT]).predictions == expected
