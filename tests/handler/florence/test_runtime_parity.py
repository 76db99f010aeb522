"""The fast runtime answers exactly like the plain int8 HF path on the embedded tiny model.

Real forward passes on both sides: `quantize_for_serving(int8_embedding=True)` + the processor + HF
`generate` (the int8 model the artifact serves, run through `transformers`) against
`prepare_for_serving` + the lean decode loop, on synthetic val images. Parity here is bit-exact, not
approximate: dynamic int8 quantization turns one ulp of difference anywhere into different boxes
on a sizeable share of images (docs/parity.md measures how many).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from handler.florence.engine import Engine, predict_batch
from handler.florence.runtime.model import is_fast
from handler.florence.tasks import Task
from model_build.bench.baseline import tiny_model_and_processor
from model_build.data.coco import open_rgb
from model_build.data.synth import synthesize
from model_build.export.quantize import quantize_for_serving
from model_build.export.serving_prep import prepare_for_serving
from tests.conftest import REPO_ROOT

VAL_IMAGES = 40
AGREEMENT = 0.98


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


@pytest.mark.parametrize("task", list(Task))
def test_same_answers_as_plain_int8_on_val(paths, val_images, task):
    plain, fast, processor = paths
    agree = 0
    for image in val_images:
        ref = predict_batch(plain, processor, [image], task)[0]
        ours = predict_batch(fast, None, [image], task)[0]
        agree += ref.as_dict() == ours.as_dict() and ref.text == ours.text
    assert agree / len(val_images) >= AGREEMENT, f"{task.api_name}: {agree}/{len(val_images)} identical"


def test_pixels_and_image_features_are_bit_identical(paths, val_images):
    plain, fast, processor = paths
    with torch.inference_mode():
        for image in val_images[:8]:
            reference = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
            pixels = fast.image_spec.to_pixels(image)
            assert torch.equal(pixels, reference)
            assert torch.equal(fast.image_features(pixels), plain.get_image_features(reference).pooler_output)


def test_pinned_length_ids_and_logits_match(paths, val_images):
    """30 pinned `<OD>` steps: the same ids and the same logits, bit for bit."""
    plain, fast, processor = paths
    image = val_images[0]
    inputs = processor(text=[Task.DETECT.value], images=[image], return_tensors="pt")
    with torch.inference_mode():
        ref = plain.generate(
            **inputs,
            max_new_tokens=30,
            min_new_tokens=30,
            num_beams=1,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
        ours = fast.generate(Task.DETECT.value, fast.image_features(fast.image_spec.to_pixels(image)), 30, 30)
    assert ref.sequences[0].tolist() == ours.ids
    assert torch.equal(torch.stack(ref.logits)[:, 0], ours.logits)
    assert ours.text == processor.batch_decode(ref.sequences, skip_special_tokens=False)[0]


def test_int8_embedding_is_the_seed_recipe_plus_one_tied_table():
    """The served int8 model differs from the seed recipe only in the embedding: the int8 lm_head's values."""
    model, _ = tiny_model_and_processor()
    seed, served = quantize_for_serving(model), quantize_for_serving(model, int8_embedding=True)
    assert torch.equal(served.get_input_embeddings().weight, served.lm_head.weight().dequantize())
    assert not torch.equal(seed.get_input_embeddings().weight, served.get_input_embeddings().weight)
    assert torch.equal(model.get_input_embeddings().weight, seed.get_input_embeddings().weight)
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    linears = 0
    for (name, a), (_, b) in zip(seed.named_modules(), served.named_modules(), strict=False):
        if isinstance(a, DynamicLinear):
            linears += 1
            assert torch.equal(a.weight().int_repr(), b.weight().int_repr()), name
    assert linears > 50


def test_analyze_shares_the_image_and_matches_single_tasks(paths, val_images):
    _, fast, _ = paths
    engine = Engine(fast)
    image = val_images[1]
    both = engine.run(image, [Task.CAPTION, Task.DETECT])
    assert "vision" in both.timings_ms
    for task in Task:
        assert both.predictions[task].as_dict() == engine.run(image, [task]).predictions[task].as_dict()


def test_fast_artifact_loads_without_transformers(paths, tmp_path):
    """The served pickle unpickles and answers with torch + tokenizers alone (the cold-start saving)."""
    from model_build.export.writer import write_artifact

    _, fast, processor = paths
    write_artifact(fast, processor, tmp_path / "art", base_id="tiny", image_size=384, tasks=list(Task))
    val = tmp_path / "img.png"
    from PIL import Image

    Image.new("RGB", (320, 240), (200, 30, 30)).save(val)
    code = (
        "import sys; from PIL import Image; from handler.florence.artifact import load_artifact;"
        "from handler.florence.engine import Engine; from handler.florence.tasks import Task;"
        f"a = load_artifact({str(tmp_path / 'art')!r}); assert a.processor is None;"
        f"r = Engine.from_artifact(a).run(Image.open({str(val)!r}).convert('RGB'), [Task.CAPTION, Task.DETECT]);"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'));"
        "print(type(r.predictions[Task.CAPTION].caption).__name__)"
    )
    root = REPO_ROOT
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=root,
        env=dict(os.environ, PYTHONPATH=str(root)),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["[]", "str"]


def test_stacked_qkv_is_bit_identical_to_separate_int8_linears():
    from model_build.export.serving_prep import stack_int8_linears

    torch.manual_seed(1)
    parts = quantize_for_serving(torch.nn.Sequential(*[torch.nn.Linear(64, 48) for _ in range(3)]))
    stacked = stack_int8_linears(list(parts))
    for rows in (1, 37):
        x = torch.randn(1, rows, 64) * 3
        assert torch.equal(stacked(x), torch.cat([p(x) for p in parts], dim=-1))
