"""Pretraining the embedded tiny base: scene pool, grid labels, the dense loss, and the shipped model itself."""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path

import pytest
import torch

from handler.florence.tasks import Task, parse_detections
from model_build.base.loading import load_base
from model_build.base.tiny import build_processor, build_tokenizer, new_tiny_model
from model_build.cli import main as cli
from model_build.data.coco import InputEncoder, caption_samples, detection_samples, open_rgb
from model_build.data.synth import COLORS, SHAPES, ShapeObject, caption_corpus, make_image, synthesize, write_val_split
from model_build.evaluate import EvalConfig, evaluate
from model_build.pretrain import scene_pool
from model_build.pretrain.dense_supervision import GRID, DenselySupervised, grid_targets
from model_build.pretrain.scene_pool import ScenePool, draw_scene


@pytest.fixture(scope="module")
def processor():
    return build_processor(build_tokenizer(caption_corpus()))


@pytest.fixture(scope="module")
def encoder(processor) -> InputEncoder:
    return InputEncoder(processor)


@pytest.fixture(scope="module")
def pool() -> ScenePool:
    return ScenePool(full=6, easy=2, seed=3, workers=1)


def test_grid_labels_mark_exactly_the_cells_whose_centre_lies_in_a_box() -> None:
    # 384 x 192 image: cells are 32 x 16 px; the box covers columns 1-2 and rows 0-5.
    circle = ShapeObject("circle", "blue", (32, 0, 96, 96))
    grid = grid_targets([circle], 384, 192)
    expected = torch.zeros(GRID, GRID, dtype=torch.bool)
    expected[0:6, 1:3] = True
    assert torch.equal(torch.from_numpy(grid.shape > 0), expected)
    assert set(grid.shape[grid.shape > 0]) == {SHAPES.index("circle") + 1}
    assert set(grid.color[grid.color > 0]) == {list(COLORS).index("blue") + 1}
    assert grid.bins[0, 1].tolist() == [83, 0, 250, 500]


def test_pool_scenes_match_the_processor_and_the_od_targets(pool: ScenePool, processor, encoder) -> None:
    scene = draw_scene((3, "full", 0))
    image, objects = make_image(random.Random("pretrain-3-full-0"))
    expected = processor(text=[Task.CAPTION.value], images=[image], return_tensors="pt")["pixel_values"]
    batch = pool.collate([(0, Task.CAPTION), (0, Task.DETECT)], encoder)
    assert torch.equal(batch["pixel_values"][0], expected[0])  # training sees what serving sees
    assert torch.equal(torch.from_numpy(scene.pixels), pool.pixels[0])

    decoded = processor.tokenizer.batch_decode(batch["labels"].clamp(min=0), skip_special_tokens=False)
    assert decoded[0].startswith("<s>" + pool.targets[Task.CAPTION][0] + "</s>")
    parsed = parse_detections(decoded[1], image.width, image.height)
    assert [d.label for d in parsed] == [o.shape for o in objects]
    assert batch["grid_shape"].shape == (2, GRID, GRID) and batch["grid_bins"].shape == (2, GRID, GRID, 4)
    prompt = processor(text=[Task.DETECT.value], images=[image], return_tensors="pt")["input_ids"][0]
    assert torch.equal(batch["input_ids"][1, : len(prompt)], prompt)


def test_encoder_batches_disk_samples_exactly_as_the_processor_does(processor, encoder, tmp_path: Path) -> None:
    data = synthesize(tmp_path, train=3, val=1, seed=2)
    samples = detection_samples(data, "train2017")[:2] + caption_samples(data, "train2017")[:1]
    batch = encoder.collate(samples)
    images = [open_rgb(s.image_path) for s in samples]
    reference = processor(text=[s.task.value for s in samples], images=images, return_tensors="pt", padding=True)
    assert torch.equal(batch["input_ids"], reference["input_ids"])
    assert torch.equal(batch["attention_mask"], reference["attention_mask"])
    assert torch.equal(batch["pixel_values"], reference["pixel_values"])
    assert (batch["labels"][:, 0] == processor.tokenizer.bos_token_id).all()


def test_easy_scenes_make_up_the_requested_share(pool: ScenePool) -> None:
    items = pool.items([Task.CAPTION], easy_share=0.5)
    easy = sum(index >= pool.full for index, _ in items)
    assert easy / len(items) == pytest.approx(0.5, abs=0.1)


def test_category_names_are_single_tokens_after_a_location(processor) -> None:
    for shape in SHAPES:
        tokens = processor.tokenizer.tokenize(f"<loc_5>{shape}<loc_9>")
        assert tokens == ["<loc_5>", shape, "<loc_9>"]


def test_dense_loss_adds_to_the_language_loss_and_reaches_the_vision_tower(pool: ScenePool, processor, encoder) -> None:
    model = new_tiny_model(processor.tokenizer, seed=0)
    batch = pool.collate([(i, Task.DETECT) for i in range(4)], encoder)
    plain = model(**{k: v for k, v in batch.items() if not k.startswith("grid_")}).loss
    supervised = DenselySupervised(model, processor.tokenizer, weight=1.0)
    total = supervised(**dict(batch)).loss
    assert total > plain + 1.0  # ~log(4) + log(5) + log(1000) at initialisation
    total.backward()
    stem = model.model.vision_tower.convs[0].conv.weight.grad
    assert stem is not None and stem.abs().sum() > 0
    assert supervised.heads.box.weight.grad.abs().sum() > 0
    supervised.weight = 0.0
    assert torch.allclose(supervised(**dict(batch)).loss, plain)


def test_pretrain_command_writes_a_loadable_native_model(tmp_path: Path) -> None:
    out, run = tmp_path / "tiny", tmp_path / "run"
    code = cli(
        [
            "pretrain-tiny",
            "--out",
            str(out),
            "--run-dir",
            str(run),
            "--val-dir",
            str(tmp_path / "val"),
            "--full-scenes",
            "8",
            "--easy-scenes",
            "4",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--workers",
            "1",
        ]
    )
    assert code == 0
    provenance = json.loads((out / "PROVENANCE.json").read_text())
    assert provenance["train"]["steps"] == 2 and provenance["val"]["images"] == 100
    assert (run / "loss.png").is_file() and json.loads((run / "eval.json").read_text())["images"] == 100
    model, processor = load_base(str(out))
    assert type(model).__name__ == "Florence2ForConditionalGeneration"
    assert not any("heads" in name for name in model.state_dict())  # the dense heads are not shipped
    assert processor.num_image_tokens == 145


def test_the_shipped_base_captions_in_base_style_and_finds_the_shapes(tmp_path: Path) -> None:
    """The committed embedded model on held-out val images: terse captions, boxes that overlap the truth."""
    data = write_val_split(tmp_path, count=20, seed=0)
    model, processor = load_base("tiny")
    report = evaluate(model.eval(), processor, EvalConfig(data_dir=data, caption_style="base"))
    assert report["caption"]["exact_match"] >= 0.7
    assert report["detect"]["map50"] >= 0.4


def test_ctrl_c_while_the_scene_workers_are_forked_stops_the_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C that lands while the pool forks (SIGINT ignored then, so workers are born deaf to it)
    must still reach the parent once the pool is built, and the pool must be terminated."""
    real_context = scene_pool.get_context
    pools = []

    class InterruptedWhileForking:
        def __init__(self, method: str) -> None:
            self.context = real_context(method)

        def Pool(self, workers: int, **options):  # multiprocessing's name
            pool = self.context.Pool(workers, **options)
            pools.append(pool)
            os.kill(os.getpid(), signal.SIGINT)  # the terminal's Ctrl-C, before the pool is handed back
            return pool

    monkeypatch.setattr(scene_pool, "get_context", InterruptedWhileForking)
    ran_on = False
    with pytest.raises(KeyboardInterrupt), scene_pool._pool_deaf_to_ctrl_c(2) as pool:
        ran_on = pool.map(abs, [-1, -2]) == [1, 2]
    assert not ran_on, "the parent went on working after Ctrl-C"
    assert pools and all(not worker.is_alive() for worker in pools[0]._pool)  # terminated by the pool's exit
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
