"""Box scores on the tiny model's held-out val: in range, higher for right boxes than wrong ones, and used by mAP."""

from __future__ import annotations

from pathlib import Path

import pytest

from handler.florence.artifact import load_artifact
from handler.florence.engine import predict_batch
from handler.florence.tasks import Task
from model_build.data.coco import open_rgb
from model_build.data.synth import write_val_split
from model_build.evaluate import EvalConfig, evaluate, split_records

VAL_IMAGES = 40


@pytest.fixture(scope="module")
def val_split(tmp_path_factory) -> Path:
    """The first images of the default held-out split (`model_build synth`'s seed), written fresh."""
    return write_val_split(tmp_path_factory.mktemp("val"), count=VAL_IMAGES)


@pytest.fixture(scope="module")
def report(tiny_artifact: Path, val_split: Path) -> dict:
    loaded = load_artifact(tiny_artifact)
    config = EvalConfig(model=tiny_artifact, data_dir=val_split, tasks=(Task.DETECT,))
    return evaluate(loaded.model, loaded.processor, config)["detect"]


def test_scores_are_probabilities(tiny_artifact: Path, val_split: Path) -> None:
    model = load_artifact(tiny_artifact).model
    records = split_records(val_split, "val2017", 8)
    images = [open_rgb(r.path) for r in records]
    boxes = [d for p in predict_batch(model, None, images, Task.DETECT) for d in p.detections]
    captions = predict_batch(model, None, images, Task.CAPTION)
    assert boxes and all(0.0 <= d.score <= 1.0 for d in boxes)
    assert len({d.score for d in boxes}) > 1  # a real signal, not a constant
    assert all(c.caption_score is not None and 0.0 < c.caption_score <= 1.0 for c in captions)


def test_right_boxes_score_higher_than_wrong_ones(report: dict) -> None:
    separation = report["scores"]
    assert separation["correct"] > 0 and separation["wrong"] > 0, separation
    assert separation["mean_score_correct"] > separation["mean_score_wrong"], separation


def test_report_puts_scored_and_constant_score_map_side_by_side(report: dict) -> None:
    constant = report["constant_score"]
    for metrics in (report, constant):
        assert 0.0 <= metrics["map"] <= metrics["map50"] <= 1.0
    # Ranking by score reorders boxes across images, so the two rankings give different figures.
    assert (report["map"], report["map50"]) != (constant["map"], constant["map50"])
