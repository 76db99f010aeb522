"""Build pieces that need no trained model: loc bins, COCO reading, box matching and the metric code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handler.florence.engine import Prediction
from handler.florence.tasks import LOC_BINS, Detection, Task, parse_detections, serialize_detections
from model_build.data.coco import DataError, caption_samples, detection_samples, detections_by_image, load_samples
from model_build.data.synth import synthesize
from model_build.evaluate import caption_metrics, detection_metrics, read_references
from model_build.export.parity import box_iou, match_boxes


@pytest.fixture(scope="module")
def small_coco(tmp_path_factory) -> Path:
    return synthesize(tmp_path_factory.mktemp("coco"), train=6, val=4, seed=3)


@settings(max_examples=200, deadline=None)
@given(
    width=st.integers(16, 4000),
    height=st.integers(16, 4000),
    corners=st.lists(st.tuples(*[st.floats(0, 1)] * 4), min_size=1, max_size=5),
)
def test_loc_bins_round_trip_within_one_bin(width: int, height: int, corners) -> None:
    dets = []
    for a, b, c, d in corners:
        x0, x1 = sorted((a * width, c * width))
        y0, y1 = sorted((b * height, d * height))
        dets.append(Detection("red circle", (x0, y0, x1, y1)))
    text = serialize_detections(dets, width, height)
    assert text.count("<loc_") == 4 * len(dets)
    back = parse_detections("</s><s>" + text + "</s>", width, height)
    assert [d.label for d in back] == [d.label for d in dets]
    for original, parsed in zip(dets, back, strict=False):
        for value, restored, extent in zip(original.box, parsed.box, (width, height, width, height), strict=False):
            assert abs(value - restored) <= extent / LOC_BINS  # one bin at most, half on average


def test_coco_reading_matches_the_annotation_files(small_coco: Path) -> None:
    captions = caption_samples(small_coco, "train2017")
    data = json.loads((small_coco / "annotations" / "captions_train2017.json").read_text())
    assert len(captions) == len(data["annotations"]) == 6
    assert all(s.target.startswith("A photo of") and s.image_path.is_file() for s in captions)
    base = caption_samples(small_coco, "train2017", style="base")
    assert all(not s.target.startswith("A photo") for s in base)

    _images, boxes = detections_by_image(small_coco, "train2017")
    for sample in detection_samples(small_coco, "train2017"):
        parsed = parse_detections(sample.target, sample.width, sample.height)
        truth = boxes[sample.image_id]
        assert [d.label for d in parsed] == [d.label for d in truth]
        for p, t in zip(parsed, truth, strict=False):
            assert box_iou(p.box, t.box) > 0.95

    mixed = load_samples(small_coco, "val2017", [Task.CAPTION, Task.DETECT])
    assert {s.task for s in mixed} == {Task.CAPTION, Task.DETECT}
    with pytest.raises(DataError, match=r"captions_test2017\.json: file not found"):
        load_samples(small_coco, "test2017", [Task.CAPTION])


def test_box_matching_counts_unmatched_boxes_as_zero() -> None:
    a = Detection("circle", (0, 0, 10, 10))
    shifted = Detection("circle", (5, 0, 15, 10))
    other_label = Detection("square", (0, 0, 10, 10))
    assert box_iou(a.box, a.box) == 1.0
    assert box_iou(a.box, shifted.box) == pytest.approx(1 / 3)
    ious, slots = match_boxes([a, other_label], [shifted])
    assert ious == [pytest.approx(1 / 3)] and slots == 2
    ious, slots = match_boxes([a], [other_label])
    assert ious == [] and slots == 1


def test_metrics_score_ground_truth_perfectly_and_base_style_poorly(small_coco: Path) -> None:
    refs = read_references(small_coco, "val2017", "")
    base = read_references(small_coco, "val2017", "base")
    perfect = caption_metrics({i: r[0] for i, r in refs.items()}, refs)
    terse = caption_metrics({i: base[i][0] for i in refs}, refs)
    assert perfect["exact_match"] == 1.0 and perfect["bleu4"] > 0.99
    assert terse["exact_match"] == 0.0 and terse["cider"] < perfect["cider"]

    _, boxes = detections_by_image(small_coco, "val2017")
    truth = {i: Prediction(Task.DETECT, "", detections=d) for i, d in boxes.items()}
    assert detection_metrics(truth, small_coco, "val2017")["map"] == pytest.approx(1.0)
    moved = {
        i: Prediction(Task.DETECT, "", detections=[Detection(x.label, (0, 0, 5, 5)) for x in d])
        for i, d in boxes.items()
    }
    assert detection_metrics(moved, small_coco, "val2017")["map50"] == 0.0


def test_synth_is_a_pure_function_of_the_seed(tmp_path: Path) -> None:
    first = synthesize(tmp_path / "a", train=3, val=2, seed=11)
    again = synthesize(tmp_path / "b", train=3, val=2, seed=11)
    other = synthesize(tmp_path / "c", train=3, val=2, seed=12)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 3 + 2 + 6
    assert all((first / f).read_bytes() == (again / f).read_bytes() for f in files)
    assert (first / files[-1]).read_bytes() != (other / files[-1]).read_bytes()
