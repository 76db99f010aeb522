"""COCO-format inputs as labelling tools export them: what is read, what is skipped, what stops a command.

Each dataset here is written from scratch (a few small PNGs and hand-made JSON), so a test states the
exact input it is about; nothing trains.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handler.florence.engine import Prediction
from handler.florence.tasks import Detection, Task, parse_detections
from model_build.base.tiny import build_processor, build_tokenizer
from model_build.cli import main as cli
from model_build.data.coco import (
    DataError,
    ImageFrame,
    InputEncoder,
    Sample,
    caption_samples,
    check_targets,
    detection_samples,
    detections_by_image,
    load_samples,
    open_rgb,
)
from model_build.data.synth import caption_corpus
from model_build.evaluate import detection_metrics, read_references, split_records
from model_build.export.parity import box_iou
from model_build.training import _batches

SPLIT = "train2017"
RED = (220, 30, 30)


def red_box(image: Image.Image) -> tuple[float, float, float, float]:
    """The pixel box (x0, y0, x1, y1) of the reddish pixels of a decoded image."""
    pixels = np.asarray(image.convert("RGB")).astype(int)
    ys, xs = np.nonzero((pixels[..., 0] > 150) & (pixels[..., 1] < 100))
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def write_image(path: Path, size: tuple[int, int], box: tuple[int, int, int, int], orientation: int = 1) -> None:
    """A grey PNG with one red rectangle at `box` in its stored pixel grid, and an EXIF orientation tag."""
    image = Image.new("RGB", size, (128, 128, 128))
    image.paste(RED, box)
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes())


def write_coco(root: Path, images: list[dict], annotations: list[dict], categories: list[dict] | None = None) -> Path:
    """instances_ and captions_ files for SPLIT; captions are the annotations that carry a 'caption'."""
    folder = root / "annotations"
    folder.mkdir(parents=True, exist_ok=True)
    cats = categories if categories is not None else [{"id": 1, "name": "block"}]
    boxes = [a for a in annotations if "caption" not in a]
    captions = [a for a in annotations if "caption" in a]
    (folder / f"instances_{SPLIT}.json").write_text(
        json.dumps({"images": images, "annotations": boxes, "categories": cats})
    )
    (folder / f"captions_{SPLIT}.json").write_text(json.dumps({"images": images, "annotations": captions}))
    return root


@pytest.mark.parametrize("orientation", range(1, 9))
def test_frame_maps_boxes_like_exif_rotation_maps_pixels(tmp_path: Path, orientation: int) -> None:
    stored, box = (60, 40), (5, 8, 20, 30)
    write_image(tmp_path / "a.png", stored, box, orientation)
    upright = open_rgb(tmp_path / "a.png")  # decoded as serving decodes: EXIF applied
    frame = ImageFrame(stored[0], stored[1], upright.size, orientation, raw_grid=True)
    assert frame.to_upright(box) == pytest.approx(red_box(upright))
    assert frame.to_annotation(frame.to_upright(box)) == pytest.approx(box)


@pytest.mark.parametrize("json_size", ["stored", "upright", "half upright", "missing"])
def test_boxes_follow_an_exif_rotated_file_whatever_size_the_json_gives(tmp_path: Path, json_size: str) -> None:
    """A phone photo (orientation 6) labelled by a tool that honoured EXIF or one that did not."""
    stored, box = (80, 50), (10, 5, 30, 45)
    write_image(tmp_path / SPLIT / "p.png", stored, box, orientation=6)
    upright = open_rgb(tmp_path / SPLIT / "p.png")
    assert upright.size == (50, 80)
    truth = red_box(upright)
    sizes = {"stored": stored, "upright": (50, 80), "half upright": (25, 40), "missing": None}
    if json_size == "stored":
        bbox = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
    else:  # the tool saw the upright picture (possibly resized): the box is where the red is there
        scale = 1.0 if json_size != "half upright" else 0.5
        bbox = [truth[0] * scale, truth[1] * scale, (truth[2] - truth[0]) * scale, (truth[3] - truth[1]) * scale]
    record: dict = {"id": 1, "file_name": "p.png"}
    if sizes[json_size]:
        record["width"], record["height"] = sizes[json_size]
    root = write_coco(tmp_path, [record], [{"id": 1, "image_id": 1, "category_id": 1, "bbox": bbox}])
    [sample] = detection_samples(root, SPLIT)
    assert (sample.width, sample.height) == upright.size
    [parsed] = parse_detections(sample.target, sample.width, sample.height)
    assert box_iou(parsed.box, truth) > 0.9
    # eval maps a prediction on the upright image back into the JSON's frame: a perfect one scores 1
    _, boxes = detections_by_image(root, SPLIT)
    assert detection_metrics({1: Prediction(Task.DETECT, "", detections=boxes[1])}, root, SPLIT)["map50"] == 1.0


@pytest.mark.parametrize("tool", ["ignored EXIF", "honoured EXIF"])
def test_a_180_degree_photo_takes_its_frame_from_the_rotated_photos_of_the_same_file(tmp_path: Path, tool: str) -> None:
    """Orientation 3 keeps the shape, so only the file's 90-degree photos say which grid its tool used."""
    write_image(tmp_path / SPLIT / "r.png", (80, 50), (10, 5, 30, 45), orientation=6)
    write_image(tmp_path / SPLIT / "u.png", (80, 50), (10, 5, 30, 45), orientation=3)
    stored_box = [10, 5, 20, 40]
    if tool == "ignored EXIF":
        images = [{"id": 1, "file_name": "r.png", "width": 80, "height": 50}]
        boxes = {1: stored_box, 2: stored_box}
    else:
        up_r, up_u = red_box(open_rgb(tmp_path / SPLIT / "r.png")), red_box(open_rgb(tmp_path / SPLIT / "u.png"))
        images = [{"id": 1, "file_name": "r.png", "width": 50, "height": 80}]
        boxes = {i: [b[0], b[1], b[2] - b[0], b[3] - b[1]] for i, b in ((1, up_r), (2, up_u))}
    images.append({"id": 2, "file_name": "u.png", "width": 80, "height": 50})
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": boxes[i]} for i in (1, 2)]
    root = write_coco(tmp_path, images, anns)
    for sample in detection_samples(root, SPLIT):
        [parsed] = parse_detections(sample.target, sample.width, sample.height)
        assert box_iou(parsed.box, red_box(open_rgb(sample.image_path))) > 0.9


def test_a_json_size_of_another_shape_than_the_file_skips_the_image(tmp_path: Path, caplog) -> None:
    write_image(tmp_path / SPLIT / "a.png", (60, 40), (5, 5, 20, 20))
    write_image(tmp_path / SPLIT / "b.png", (60, 40), (5, 5, 20, 20))
    images = [
        {"id": 1, "file_name": "a.png", "width": 60, "height": 40},
        {"id": 2, "file_name": "b.png", "width": 40, "height": 60},  # no EXIF rotation explains it
    ]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [5, 5, 15, 15]} for i in (1, 2)]
    root = write_coco(tmp_path, images, anns)
    with caplog.at_level(logging.WARNING):
        assert [s.image_id for s in detection_samples(root, SPLIT)] == [1]
    assert "skipped 1 images whose width/height in the JSON have another shape than the file" in caplog.text


def test_bad_annotations_are_skipped_counted_or_clipped(tmp_path: Path, caplog) -> None:
    write_image(tmp_path / SPLIT / "sub" / "a.png", (100, 50), (0, 0, 1, 1))
    write_image(tmp_path / "elsewhere" / "b.png", (100, 50), (0, 0, 1, 1))
    write_image(tmp_path / SPLIT / "sub" / "d.png", (100, 50), (0, 0, 1, 1))
    images = [
        {"id": 1, "file_name": "sub/a.png", "width": 100, "height": 50},
        {"id": "b", "file_name": str(tmp_path / "elsewhere" / "b.png"), "width": 100, "height": 50},
        {"id": 3, "file_name": "missing.png", "width": 100, "height": 50},
        {"id": 4.0, "file_name": "sub/d.png", "width": 100, "height": 50},  # no annotations: no <OD> sample
    ]
    categories = [{"id": 1, "name": "  Red\tCar "}, {"id": 2, "name": "Red  Car"}, {"id": 7, "name": "Ünïcode 象"}]
    boxes: list = [
        [10, 10, 20, 20],  # kept as is
        [-10, 40, 30, 30],  # clipped to x 0..20, y 40..50
        [10.5, 5.25, 0, 10],  # no width
        [10, 10, -5, 5],  # negative width
        [200, 10, 5, 5],  # outside
        [1, 2, 3],  # not 4 numbers
        [1, 2, float("nan"), 4],  # not finite (json writes NaN)
        None,  # no bbox and no segmentation
    ]
    anns = [{"id": i, "image_id": 1, "category_id": 1, "bbox": b} for i, b in enumerate(boxes)]
    anns += [
        {"id": 20, "image_id": "b", "category_id": 7, "bbox": [0, 0, 50, 25]},
        {"id": 21, "image_id": "b", "category_id": 2, "bbox": [50, 25, 50, 25]},  # same name as 1: one label
        {"id": 22, "image_id": "b", "category_id": 1, "bbox": [0, 0, 99, 49], "iscrowd": 1, "segmentation": {}},
        {"id": 23, "image_id": 99, "category_id": 1, "bbox": [0, 0, 5, 5]},
        {"id": 24, "image_id": 3, "category_id": 1, "bbox": [0, 0, 5, 5]},
        {"id": 25, "image_id": 1, "category_id": 42, "bbox": [0, 0, 5, 5]},
        {"id": 30, "image_id": 1, "caption": "  A red\n car.  "},
        {"id": 31, "image_id": 1, "caption": " \t "},
        {"id": 32, "image_id": "b", "caption": None},
    ]
    root = write_coco(tmp_path, images, anns, categories)
    with caplog.at_level(logging.WARNING):
        samples = {s.image_id: s for s in detection_samples(root, SPLIT)}
        captions = caption_samples(root, SPLIT)
    assert set(samples) == {1, "b"}
    assert samples[1].image_path == tmp_path / SPLIT / "sub" / "a.png"
    assert parse_detections(samples[1].target, 100, 50) == [
        Detection("Red Car", (0.05, 40.025, 20.05, 49.975)),
        Detection("Red Car", (10.05, 10.025, 30.05, 30.025)),
    ]
    assert [d.label for d in parse_detections(samples["b"].target, 100, 50)] == ["Ünïcode 象", "Red Car"]
    assert [(c.image_id, c.target) for c in captions] == [(1, "A red car.")]
    for expected in (
        "skipped 2 boxes with zero or negative width or height",
        "skipped 1 boxes entirely outside their image",
        "skipped 3 annotations without a 'bbox' of 4 finite numbers or a readable segmentation",
        "skipped 2 annotations whose image_id is not a usable image",
        "skipped 1 annotations with an unknown category_id",
        "skipped 1 images whose file is missing",
        "skipped 2 captions that are missing, blank or not text",
    ):
        assert expected in caplog.text
    # eval scores against the same cleaned truth: categories of one name merged, crowd ignored
    _, truth = detections_by_image(root, SPLIT)
    perfect = {i: Prediction(Task.DETECT, "", detections=d) for i, d in truth.items()}
    assert detection_metrics(perfect, root, SPLIT)["map"] == pytest.approx(1.0)
    assert read_references(root, SPLIT, "") == {1: ["A red car."]}
    assert [r.json["id"] for r in split_records(root, SPLIT, None)] == [1, 4.0, "b"]


def broken(name: str, root: Path) -> tuple[Path, str]:
    """A dataset broken in one way, and the file its error must name."""
    write_image(root / SPLIT / "a.png", (40, 30), (1, 1, 9, 9))
    image = {"id": 1, "file_name": "a.png", "width": 40, "height": 30}
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 8, 8]}
    instances = root / "annotations" / f"instances_{SPLIT}.json"
    cases: dict[str, tuple] = {
        "not json": ([image], [ann], None, '{"images": [', "not valid JSON"),
        "a list": ([image], [ann], None, "[]", "expected a JSON object"),
        "no images": ([], [ann], None, None, "the 'images' list is empty"),
        "images not a list": ([image], [ann], None, '{"images": {}, "annotations": []}', "no 'images' list"),
        "no annotations": ([image], [ann], None, '{"images": [{"id": 1, "file_name": "a.png"}]}', "no 'annotations'"),
        "duplicate image": ([image, image], [ann], None, None, "image id 1 is listed twice"),
        "one file, two ids": (
            [image, {**image, "id": 7, "file_name": "./a.png"}],
            [ann, {**ann, "id": 2, "image_id": 7, "bbox": [20, 10, 8, 8]}],
            None,
            None,
            f"images 1 and 7 are both {root / SPLIT / 'a.png'}: training would learn two partial box lists",
        ),
        "bad image id": ([{**image, "id": [1]}], [ann], None, None, "images[0] has no usable 'id'"),
        "no file_name": ([{"id": 1}], [ann], None, None, "image 1 has no 'file_name'"),
        "task token name": ([image], [ann], [{"id": 1, "name": "<OD>"}], None, "'<' and '>' delimit"),
        "loc token name": ([image], [ann], [{"id": 1, "name": "x<loc_5>"}], None, "'<' and '>' delimit"),
        "blank name": ([image], [ann], [{"id": 1, "name": "  "}], None, "category 1 has no name"),
        "no categories": ([image], [ann], [], None, "no 'categories' list"),
        "duplicate category": ([image], [ann], [{"id": 1, "name": "a"}] * 2, None, "category id 1 is listed twice"),
        "no split folder": ([{**image, "file_name": "gone.png"}], [ann], None, None, "none of its 1 images"),
    }
    images, anns, categories, raw, message = cases[name]
    write_coco(root, images, anns, categories)
    if raw is not None:
        instances.write_text(raw)
    if name == "no split folder":
        (root / SPLIT / "a.png").unlink()
        (root / SPLIT).rmdir()
        message += f" can be read; there is no folder {root / SPLIT}"
    return instances, message


BROKEN = [
    "not json",
    "a list",
    "no images",
    "images not a list",
    "no annotations",
    "duplicate image",
    "one file, two ids",
    "bad image id",
    "no file_name",
    "task token name",
    "loc token name",
    "blank name",
    "no categories",
    "duplicate category",
    "no split folder",
]


@pytest.mark.parametrize("name", BROKEN)
def test_an_unusable_file_stops_with_an_error_naming_it(tmp_path: Path, name: str) -> None:
    instances, message = broken(name, tmp_path)
    with pytest.raises(DataError) as caught:
        load_samples(tmp_path, SPLIT, [Task.DETECT])
    assert str(caught.value).startswith(f"{instances}: ") and message in str(caught.value)


@pytest.mark.parametrize("name", ["task token name", "one file, two ids", "captions not json"])
def test_eval_reads_every_truth_it_scores_against_before_any_model(tmp_path: Path, name: str, capsys) -> None:
    """The instances file's categories and boxes, and with both tasks the captions file, were read only after
    the whole split was predicted: on real COCO on a CPU, hours before the data error. Here a base that
    cannot load shows the order."""
    from safetensors.numpy import load_file, save_file

    from model_build.base.tiny import EMBEDDED_DIR

    base = shutil.copytree(EMBEDDED_DIR, tmp_path / "base")
    tensors = load_file(str(base / "model.safetensors"))
    save_file({k: v for k, v in tensors.items() if "encoder.layers.1." not in k}, str(base / "model.safetensors"))
    root = tmp_path / "data"
    if name == "captions not json":
        write_image(root / SPLIT / "a.png", (40, 30), (1, 1, 9, 9))
        write_coco(
            root, [{"id": 1, "file_name": "a.png"}], [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 8, 8]}]
        )
        broken_file, message = root / "annotations" / f"captions_{SPLIT}.json", "not valid JSON"
        broken_file.write_text('{"images": [')
    else:
        broken_file, message = broken(name, root)
    assert cli(["eval", "--base", str(base), "--data", str(root), "--split", SPLIT]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"eval: error: {broken_file}: " in last and message in last


def test_the_cli_prints_a_data_error_as_one_line_before_loading_any_model(tmp_path: Path, capsys) -> None:
    instances, message = broken("not json", tmp_path)
    assert cli(["finetune", "--data", str(tmp_path), "--run-dir", str(tmp_path / "run"), "--tasks", "detect"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"finetune: error: {instances}: not valid JSON (Expecting value at line 1, column 13)")
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err and message in err


def test_text_that_spells_a_special_token_is_refused_not_trained_as_that_token(tmp_path: Path, capsys) -> None:
    """The tiny tokenizer reads the text `</s>` as end-of-sequence and `<loc_5>` as a box coordinate; a
    caption holding them would teach the model to stop or place boxes inside captions (the old code trained it)."""
    write_image(tmp_path / SPLIT / "a.png", (40, 30), (1, 1, 9, 9))
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}]
    anns = [
        {"id": 40, "image_id": 1, "caption": "A red block."},
        {"id": 41, "image_id": 1, "caption": "a dog </s> <loc_5> <pad>"},
        {"id": 42, "image_id": 1, "caption": "<OD>"},
        {"id": 43, "image_id": 1, "caption": "a sign saying <exit> and 2 < 3 > 1"},  # no token: trained as written
    ]
    root = write_coco(tmp_path, images, anns)
    run = tmp_path / "run"
    argv = ["finetune", "--data", str(root), "--run-dir", str(run), "--tasks", "caption", "--steps", "1"]
    assert cli([*argv, "--batch-size", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert err.splitlines()[-1].endswith(
        f"finetune: error: {root / 'annotations' / f'captions_{SPLIT}.json'}: 2 captions contain the tokenizer's "
        "special tokens as text (</s>, <OD>, <loc_5>, <pad>; first: annotation id 41, 'a dog </s> <loc_5> <pad>'), "
        "which training would read as the tokens themselves (</s> ends a caption, <loc_N> is a box coordinate); "
        "rewrite or remove them"
    )
    assert not (run / "adapter").exists() and not (run / "checkpoint.pt").exists()


def test_a_category_name_that_spells_an_added_token_is_refused() -> None:
    """Names cannot hold '<' or '>' (refused when read); a base whose tokenizer adds a plain word is caught here."""
    tokenizer = build_tokenizer(caption_corpus())
    tokenizer.add_tokens(["zebra"])
    target = "A zebra<loc_1><loc_2><loc_3><loc_4>horse<loc_5><loc_6><loc_7><loc_8>"
    sample = Sample(Path("z.png"), 7, 40, 30, Task.DETECT, target, Path("instances.json"), "image id 7")
    with pytest.raises(
        DataError, match=r"^instances\.json: 1 <OD> targets \(category names\) contain .*\(zebra; first: image id 7"
    ):
        check_targets([sample], tokenizer)
    check_targets([replace(sample, target="horse<loc_5><loc_6><loc_7><loc_8>")], tokenizer)


def test_eval_of_captions_reads_the_captions_file_alone(tmp_path: Path, capsys) -> None:
    """`eval --tasks caption` took its images from the instances file: one listing fewer images scored the
    captions of those only, and one that did not parse stopped a run that never needed it."""
    for name in ("a.png", "b.png"):
        write_image(tmp_path / "val2017" / name, (40, 30), (1, 1, 9, 9))
    images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}]
    folder = tmp_path / "annotations"
    folder.mkdir()
    captions = [{"id": 10 + i, "image_id": i, "caption": "A red block."} for i in (1, 2)]
    (folder / "captions_val2017.json").write_text(json.dumps({"images": images, "annotations": captions}))
    argv = ["eval", "--base", "tiny", "--data", str(tmp_path), "--tasks", "caption"]
    for instances in (json.dumps({"images": images[:1], "annotations": [], "categories": []}), '{"images": ['):
        (folder / "instances_val2017.json").write_text(instances)
        assert cli(argv) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["images"] == report["caption"]["images"] == 2


def test_map_without_a_ground_truth_box_is_undefined_not_zero(tmp_path: Path) -> None:
    """Every box of the split skipped (here: written as text) left nothing to find; mAP read 0.0 as if the
    model had missed them all."""
    write_image(tmp_path / SPLIT / "a.png", (40, 30), (1, 1, 9, 9))
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}]
    root = write_coco(tmp_path, images, [{"id": 1, "image_id": 1, "category_id": 1, "bbox": ["1", "1", "8", "8"]}])
    predicted = {1: Prediction(Task.DETECT, "", detections=[Detection("block", (1.0, 1.0, 9.0, 9.0), 0.9)])}
    report = detection_metrics(predicted, root, SPLIT)
    assert report["boxes"] == 0 and report["detections"] == 1
    assert report["map"] is report["map50"] is None
    assert report["constant_score"] == {"map": None, "map50": None}
    write_coco(tmp_path, images, [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 8, 8]}])
    assert detection_metrics(predicted, root, SPLIT)["map50"] == pytest.approx(1.0)


def test_map_scores_a_file_mixing_integer_and_string_category_ids(tmp_path: Path) -> None:
    """pycocotools sorts category ids: `1` beside `"x7"` was a TypeError traceback out of `eval`."""
    write_image(tmp_path / SPLIT / "a.png", (100, 80), (10, 10, 50, 60))
    images = [{"id": 1, "file_name": "a.png", "width": 100, "height": 80}]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 50]},
        {"id": 2, "image_id": 1, "category_id": "x7", "bbox": [60, 10, 20, 20]},
    ]
    root = write_coco(tmp_path, images, anns, [{"id": 1, "name": "block"}, {"id": "x7", "name": "circle"}])
    truth = [Detection("block", (10.0, 10.0, 50.0, 60.0), 0.9), Detection("circle", (60.0, 10.0, 80.0, 30.0), 0.8)]
    report = detection_metrics({1: Prediction(Task.DETECT, "", detections=truth)}, root, SPLIT)
    assert report["boxes"] == 2 and report["map"] == pytest.approx(1.0)
    assert report["scores"]["correct"] == 2


def test_a_missing_task_file_says_how_to_leave_the_task_out(tmp_path: Path) -> None:
    write_image(tmp_path / SPLIT / "a.png", (40, 30), (1, 1, 9, 9))
    root = write_coco(
        tmp_path, [{"id": 1, "file_name": "a.png"}], [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 8, 8]}]
    )
    (root / "annotations" / f"captions_{SPLIT}.json").unlink()
    with pytest.raises(DataError, match=r"captions_train2017\.json: file not found .* pass --tasks detect$"):
        load_samples(root, SPLIT, [Task.CAPTION, Task.DETECT])
    assert [s.task for s in load_samples(root, SPLIT, [Task.DETECT])] == [Task.DETECT]


def test_a_task_asked_for_without_a_usable_sample_stops_training(tmp_path: Path, capsys, caplog) -> None:
    """Every box with a category id the file does not list: `finetune` (caption,detect) trained captions
    alone, which erases `<OD>`, with only a warning about skipped annotations."""
    write_image(tmp_path / SPLIT / "a.png", (40, 30), (1, 1, 9, 9))
    anns = [
        {"id": 1, "image_id": 1, "category_id": 5, "bbox": [1, 1, 8, 8]},
        {"id": 2, "image_id": 1, "caption": "A red block."},
    ]
    root = write_coco(tmp_path, [{"id": 1, "file_name": "a.png"}], anns)
    run = tmp_path / "run"
    assert cli(["finetune", "--data", str(root), "--run-dir", str(run), "--batch-size", "1", "--steps", "1"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "skipped 1 annotations with an unknown category_id (first: annotations[0] category_id 5)" in caplog.text
    instances = root / "annotations" / f"instances_{SPLIT}.json"
    assert last.endswith(
        f"finetune: error: {instances}: no usable detect samples: no image has a box to train on (crowd regions "
        "are not); the warnings above count what was skipped; to train without it, pass --tasks caption"
    )
    assert not run.exists()
    assert [s.task for s in load_samples(root, SPLIT, [Task.CAPTION])] == [Task.CAPTION]


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "I;16", "CMYK", "1"])
def test_training_decodes_every_image_mode_as_serving_does(tmp_path: Path, mode: str) -> None:
    from handler.inputs.images import decode_image

    gradient = np.linspace(0, 1, 32 * 24).reshape(24, 32)
    if mode == "I;16":
        image = Image.fromarray((gradient * 4000).astype(np.uint16))  # 12-bit data in 16 bits
    else:
        image = Image.fromarray((gradient * 255).astype(np.uint8)).convert(mode)
    if mode in ("RGBA", "LA"):
        image.putalpha(0)  # fully transparent: serving shows it on white
    path = tmp_path / ("a.jpg" if mode == "CMYK" else "a.png")
    image.save(path)
    decoded = open_rgb(path)
    assert decoded.mode == "RGB" and decoded.size == (32, 24)
    assert np.array_equal(np.asarray(decoded), np.asarray(decode_image(path.read_bytes(), 10**9, 10**8).image))
    if mode in ("RGBA", "LA"):
        assert np.asarray(decoded).min() == 255
    if mode == "I;16":
        assert np.asarray(decoded).max() == 255 and np.asarray(decoded).min() == 0  # scaled, not clipped white


def test_an_unreadable_image_file_is_a_data_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match=r"a\.png: "):
        open_rgb(tmp_path / "a.png")


def test_long_targets_are_cut_to_the_decoder_positions_at_a_box_boundary() -> None:
    processor = build_processor(build_tokenizer(caption_corpus()))
    encoder = InputEncoder(processor, max_target_tokens=40)
    many = "".join(f"circle<loc_{i}><loc_{i}><loc_{i + 5}><loc_{i + 5}>" for i in range(20))
    caption = "A photo of " + "a red circle, " * 50
    labels = encoder.encode(torch_pixels(2), [Task.DETECT, Task.CAPTION], [many, caption])["labels"]
    assert labels.shape[1] <= 40
    tokenizer = processor.tokenizer
    detect = tokenizer.decode([t for t in labels[0].tolist() if t >= 0], skip_special_tokens=False)
    boxes = parse_detections(detect, 1000, 1000)
    assert detect.endswith(">" + "</s>") and detect.count("<loc_") == 4 * len(boxes) > 0
    assert labels[1].tolist()[-1] == tokenizer.eos_token_id  # the caption fills the room and still ends


def torch_pixels(count: int):
    import torch

    return torch.zeros((count, 384, 384, 3), dtype=torch.uint8)


def test_fewer_samples_than_a_batch_still_train() -> None:
    batches = _batches(["a", "b", "c"], batch_size=8, seed=0)
    assert [sorted(next(batches)) for _ in range(2)] == [["a", "b", "c"]] * 2
    with pytest.raises(ValueError, match="no training samples"):
        next(_batches([], batch_size=8, seed=0))


def test_a_region_without_a_bbox_is_boxed_from_its_polygon_or_rle(tmp_path: Path) -> None:
    from pycocotools import mask

    write_image(tmp_path / SPLIT / "a.png", (40, 30), (0, 0, 1, 1))
    pixels = np.zeros((30, 40), dtype=np.uint8, order="F")
    pixels[10:20, 5:25] = 1  # x 5..25, y 10..20
    compressed = mask.encode(pixels)
    compressed["counts"] = compressed["counts"].decode()  # as JSON carries it
    flat = pixels.flatten(order="F").tolist()
    runs, value, count = [], 0, 0
    for bit in flat:  # uncompressed RLE: alternating run lengths starting with zeros, column-major
        if bit != value:
            runs.append(count)
            value, count = bit, 0
        count += 1
    runs.append(count)
    segmentations = [
        [[5, 10, 25, 10, 25, 20, 5, 20]],
        compressed,
        {"size": [30, 40], "counts": runs},
        {"size": [30, 40], "counts": "not an rle"},
        [[5, 10, 25]],
    ]
    anns = [
        {"id": i, "image_id": 1, "category_id": 1, "bbox": None, "segmentation": seg}
        for i, seg in enumerate(segmentations)
    ]
    root = write_coco(tmp_path, [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}], anns)
    _, boxes = detections_by_image(root, SPLIT)
    assert [d.box for d in boxes[1]] == [(5.0, 10.0, 25.0, 20.0)] * 3


def test_an_image_too_large_to_decode_is_skipped_before_training_not_during_it(tmp_path: Path, caplog) -> None:
    write_image(tmp_path / SPLIT / "a.png", (40, 30), (1, 1, 9, 9))
    Image.new("1", (10_000, 9_000)).save(tmp_path / SPLIT / "scan.png")  # 90 MP, a few KB on disk
    images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "scan.png"}]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 8, 8]} for i in (1, 2)]
    root = write_coco(tmp_path, images, anns)
    with caplog.at_level(logging.WARNING):
        assert [s.image_id for s in detection_samples(root, SPLIT)] == [1]
    assert "skipped 1 images of more than 89478485 pixels" in caplog.text


def test_a_file_name_written_on_windows_finds_its_file(tmp_path: Path) -> None:
    write_image(tmp_path / SPLIT / "images" / "a.png", (40, 30), (1, 1, 9, 9))
    root = write_coco(
        tmp_path,
        [{"id": 1, "file_name": "images\\a.png"}],
        [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 8, 8]}],
    )
    [sample] = detection_samples(root, SPLIT)
    assert sample.image_path == tmp_path / SPLIT / "images" / "a.png"


@pytest.mark.parametrize("stored", ["NFD", "NFC"])
def test_an_accented_file_name_finds_its_file_in_either_unicode_form(tmp_path: Path, stored: str) -> None:
    """macOS keeps accented names decomposed (NFD); JSON from other tools has them composed (NFC). The
    image was skipped as missing whenever the two differed."""
    import unicodedata

    name = "café/crème brûlée.png"
    write_image(tmp_path / SPLIT / unicodedata.normalize(stored, name), (40, 30), (1, 1, 9, 9))
    written = unicodedata.normalize("NFC" if stored == "NFD" else "NFD", name)
    root = write_coco(
        tmp_path, [{"id": 1, "file_name": written}], [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 8, 8]}]
    )
    [sample] = detection_samples(root, SPLIT)
    assert sample.image_path.exists() and sample.image_path.name == unicodedata.normalize(stored, "crème brûlée.png")


def test_iscrowd_written_as_text_or_bool_means_what_it_says(tmp_path: Path) -> None:
    """`"iscrowd": "0"` (text, from CSV-to-COCO converters) is truthy: the box was a crowd region, left
    out of the targets. Text "0" and false are ordinary boxes; text "1" and true are crowds."""
    write_image(tmp_path / SPLIT / "a.png", (100, 50), (1, 1, 9, 9))
    flags = ["0", False, 0, "1", True, 1]
    anns = [
        {"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [i * 10, 5, 8, 8], "iscrowd": flag}
        for i, flag in enumerate(flags)
    ]
    root = write_coco(tmp_path, [{"id": 1, "file_name": "a.png"}], anns)
    [sample] = detection_samples(root, SPLIT)
    assert sample.target.count("block") == 3
